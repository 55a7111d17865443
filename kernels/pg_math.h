/*
 * pg_math.h - float32 transcendental functions that a compiler can vectorize.
 *
 * libm's expf, tanhf and friends are opaque calls, one element at a time: a fused kernel around
 * them runs at a few hundred million elements per second however simple the rest of its loop is.
 * These versions are straight-line float arithmetic (range reduction, a polynomial, exponent bits
 * built with integer ops) with branches written as selects, so `cc -O3 -march=native` turns a
 * loop of them into AVX code. Accuracy: within 2 ulp of the correctly rounded result for exp,
 * log and tanh (Cephes' polynomials), about 1e-6 relative for the erfc-based GELU; subnormal
 * exp results round to 0 or the nearest subnormal.
 *
 * The same text serves twice: the reference interpreter includes this header for float32
 * values, and the C renderer pastes it verbatim into every generated kernel (CMake embeds it as
 * a string), so compiled kernels and the interpreter agree bit for bit. That only holds while
 * both evaluate the expressions exactly as written: no -ffast-math, and -ffp-contract=off (an
 * FMA rounds once where the text rounds twice). Polynomials use explicit fused multiply-adds
 * (__builtin_fmaf): one instruction where the CPU has FMA, and the same correctly rounded
 * result from libm's fmaf where it does not (the interpreter's generic x86-64 build).
 *
 *   before: out[i] = (float)exp((double)x[i]);     one libm call per element
 *   after:  out[i] = pg_expf(x[i]);                8 lanes per AVX instruction
 *
 * Self-contained on purpose (no includes, no globals): kernels compile it as is.
 */
#ifndef PG_MATH_H
#define PG_MATH_H

static inline float pg_bits_to_f(unsigned int b) {
    float f;
    __builtin_memcpy(&f, &b, sizeof(f));
    return f;
}

static inline unsigned int pg_f_to_bits(float f) {
    unsigned int b;
    __builtin_memcpy(&b, &f, sizeof(b));
    return b;
}

/* e^x. x = n ln2 + r with |r| <= ln2/2 (Cody-Waite: ln2 split in two so n*C1 is exact), e^r by
 * Cephes' degree-6 polynomial, 2^n as two exponent fields so that n may run from -150 to 128
 * (overflow to inf and gradual underflow come out of the final multiplies). */
static inline float pg_expf(float x) {
    float xc = x < 88.8f ? x : 88.8f;          /* NaN: 88.8 here, selected back below */
    xc = xc > -104.0f ? xc : -104.0f;
    /* + 1.5 * 2^23 rounds to an integer (exactly: the fma rounds once) */
    float n = __builtin_fmaf(xc, 1.44269504088896341f, 12582912.0f) - 12582912.0f;
    float r = __builtin_fmaf(n, -0.693359375f, xc);
    r = __builtin_fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = __builtin_fmaf(p, r, 1.3981999507e-3f);
    p = __builtin_fmaf(p, r, 8.3334519073e-3f);
    p = __builtin_fmaf(p, r, 4.1665795894e-2f);
    p = __builtin_fmaf(p, r, 1.6666665459e-1f);
    p = __builtin_fmaf(p, r, 5.0000001201e-1f);
    float y = __builtin_fmaf(p, r * r, r) + 1.0f;
    int ni = (int)n;
    int h = ni >> 1; /* floor(n / 2): gcc and clang shift negative ints arithmetically */
    float s1 = pg_bits_to_f((unsigned int)(h + 127) << 23);
    float s2 = pg_bits_to_f((unsigned int)(ni - h + 127) << 23);
    y = y * s1 * s2;
    return x != x ? x : y;
}

/* ln x. x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = f - f^2/2 + f^3 P(f) for f = m - 1
 * (Cephes), ln 2 split in two as in pg_expf. Subnormals are scaled up first; 0 gives -inf,
 * negatives NaN, inf inf. */
static inline float pg_logf(float x) {
    int tiny = x < 1.17549435e-38f;
    float xs = tiny ? x * 8388608.0f : x;      /* 2^23 */
    unsigned int b = pg_f_to_bits(xs);
    int e = (int)((b >> 23) & 0xffu) - 126 - (tiny ? 23 : 0);
    float m = pg_bits_to_f((b & 0x007fffffu) | 0x3f000000u); /* in [0.5, 1) */
    int lo = m < 0.707106781186547524f;
    e = lo ? e - 1 : e;
    float f = lo ? m + m - 1.0f : m - 1.0f;
    float z = f * f;
    float p = 7.0376836292e-2f;
    p = __builtin_fmaf(p, f, -1.1514610310e-1f);
    p = __builtin_fmaf(p, f, 1.1676998740e-1f);
    p = __builtin_fmaf(p, f, -1.2420140846e-1f);
    p = __builtin_fmaf(p, f, 1.4249322787e-1f);
    p = __builtin_fmaf(p, f, -1.6668057665e-1f);
    p = __builtin_fmaf(p, f, 2.0000714765e-1f);
    p = __builtin_fmaf(p, f, -2.4999993993e-1f);
    p = __builtin_fmaf(p, f, 3.3333331174e-1f);
    float y = p * f * z;
    float fe = (float)e;
    y = y + fe * -2.12194440e-4f;
    y = y - 0.5f * z;
    float r = f + y;
    r = r + fe * 0.693359375f;
    r = x == 0.0f ? -__builtin_inff() : r;
    r = x < 0.0f ? __builtin_nanf("") : r;
    r = x == __builtin_inff() ? x : r;
    return x != x ? x : r;
}

/* tanh x: Cephes' odd polynomial below |x| = 0.625, 1 - 2 / (e^2|x| + 1) with x's sign above. */
static inline float pg_tanhf(float x) {
    float ax = x < 0.0f ? -x : x;
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = __builtin_fmaf(p, z, 2.06390887954e-2f);
    p = __builtin_fmaf(p, z, -5.37397155531e-2f);
    p = __builtin_fmaf(p, z, 1.33314422036e-1f);
    p = __builtin_fmaf(p, z, -3.33332819422e-1f);
    float small = p * z * x + x;
    small = x == 0.0f ? x : small; /* keeps the sign of zero */
    float big = 1.0f - 2.0f / (pg_expf(ax + ax) + 1.0f);
    big = x < 0.0f ? -big : big;
    return ax < 0.625f ? small : big;
}

static inline float pg_sigmoidf(float x) { return 1.0f / (1.0f + pg_expf(-x)); }

static inline float pg_siluf(float x) { return x / (1.0f + pg_expf(-x)); }

/* GELU with the tanh approximation: 0.5 x (1 + tanh(u)) = x / (1 + e^-2u), which avoids the
 * cancellation of 1 + tanh(u) for negative u and costs one exp. */
static inline float pg_gelu_tanhf(float x) {
    float u = 0.79788456080286535588f * (x + 0.044715f * x * x * x);
    return x / (1.0f + pg_expf(-2.0f * u));
}

/* erfc z for z >= 0 (Numerical Recipes' erfcc, relative error below 1.2e-7). */
static inline float pg_erfc_pos(float z) {
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = __builtin_fmaf(p, t, -0.82215223f);
    p = __builtin_fmaf(p, t, 1.48851587f);
    p = __builtin_fmaf(p, t, -1.13520398f);
    p = __builtin_fmaf(p, t, 0.27886807f);
    p = __builtin_fmaf(p, t, -0.18628806f);
    p = __builtin_fmaf(p, t, 0.09678418f);
    p = __builtin_fmaf(p, t, 0.37409196f);
    p = __builtin_fmaf(p, t, 1.00002368f);
    p = __builtin_fmaf(p, t, -1.26551223f);
    return t * pg_expf(p - z * z);
}

/* Exact GELU: 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2), accurate in both tails. */
static inline float pg_geluf(float x) {
    float z = x * -0.70710678118654752440f;
    float az = z < 0.0f ? -z : z;
    float c = pg_erfc_pos(az);
    c = z < 0.0f ? 2.0f - c : c;
    return 0.5f * x * c;
}

#endif /* PG_MATH_H */
