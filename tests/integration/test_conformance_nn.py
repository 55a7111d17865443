"""Conformance of picograd.nn.functional against torch.nn.functional 1.13 (values in float64).

relu gelu (both approximations) silu sigmoid tanh softmax log_softmax (every dim, and logits
large enough to overflow a naive exp) cross_entropy (mean/sum/none, batched and not) mse_loss
linear (with and without bias) conv2d (stride, padding, dilation, groups, bias) max_pool2d and
avg_pool2d (padding, stride, dilation, count_include_pad) layer_norm (with and without affine
parameters) one_hot embedding pad, on float32 and float64 with non-contiguous inputs. torch
computes the reference from float64 copies of the inputs; the dtype and shape come from torch
run on the inputs as they are.
"""

import numpy as np
import pytest
from scipy.special import erf

import picograd as pg
from conformance_util import LAYOUTS, Report, describe, make_input
from conformance_util import conn, rng, shared_daemon  # noqa: F401 (fixtures)

FLOAT_DTYPES = ["float32", "float64"]
SHAPES = [(), (7,), (0,), (3, 7), (13, 1), (2, 3, 5), (2, 1, 3, 2, 3)]


def F(m):
    return m.nn.functional


ACTIVATIONS = {
    "relu": (lambda m, x: F(m).relu(x), lambda a: np.maximum(a, 0)),
    "gelu": (lambda m, x: F(m).gelu(x), lambda a: a * (1 + erf(a / np.sqrt(2))) / 2),
    "gelu_none": (lambda m, x: F(m).gelu(x, approximate="none"),
                  lambda a: a * (1 + erf(a / np.sqrt(2))) / 2),
    "gelu_tanh": (lambda m, x: F(m).gelu(x, approximate="tanh"),
                  lambda a: a / 2 * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))),
    "silu": (lambda m, x: F(m).silu(x), lambda a: a / (1 + np.exp(-a))),
    "sigmoid": (lambda m, x: F(m).sigmoid(x), lambda a: 1 / (1 + np.exp(-a))),
    "tanh": (lambda m, x: F(m).tanh(x), np.tanh),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_activation(conn, rng, name, dtype):
    """Against numpy/scipy and against torch."""
    fn, ref = ACTIVATIONS[name]
    rep = Report()
    for layout in LAYOUTS:
        for shape in SHAPES:
            x = make_input(rng, shape, dtype, "any", layout)
            rep.check(f"{name}({describe(x[0])}, {layout}) vs numpy", fn, [x], ref)
            rep.check(f"{name}({describe(x[0])}, {layout}) vs torch", fn, [x])
    rep.finish()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_softmax_log_softmax(conn, rng, dtype):
    rep = Report()
    for layout in LAYOUTS:
        for shape in [(7,), (3, 7), (13, 1), (2, 3, 5), (2, 0, 3), (2, 1, 3, 2, 3)]:
            for scale in (1, 60):  # 60 * N(0, 4) overflows a naive exp in float32
                x = make_input(rng, shape, dtype, "any", layout)
                x = (x[0] * scale, x[1] * scale) if scale != 1 else x
                for dim in list(range(len(shape))) + [-1]:
                    n = shape[dim]
                    for name in ("softmax", "log_softmax"):
                        rep.check(f"F.{name}({describe(x[0])}*{scale}, dim={dim}, {layout})",
                                  lambda m, t, d=dim, f=name: getattr(F(m), f)(t, dim=d), [x],
                                  n=n)
                        rep.check(f"x.{name}({dim}) on {describe(x[0])}*{scale} ({layout})",
                                  lambda m, t, d=dim, f=name: getattr(t, f)(d), [x], n=n)
    rep.finish()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cross_entropy(conn, rng, dtype):
    rep = Report()
    for layout in ("contig", "permute", "slice"):
        for n, c in [(5, 7), (1, 3), (13, 1), (8, 13), (64, 10)]:
            logits = make_input(rng, (n, c), dtype, "any", layout)
            tgt_np = rng.integers(0, c, (n,)).astype(np.int64)
            target = (tgt_np, _tensor(tgt_np))
            for red in ("mean", "sum", "none"):
                rep.check(f"cross_entropy({describe(logits[0])}, {describe(tgt_np)}, {red}, "
                          f"{layout})",
                          lambda m, x, t, r=red: F(m).cross_entropy(x, t, reduction=r),
                          [logits, target], n=c * n)
            rep.check(f"cross_entropy({describe(logits[0])}) default reduction ({layout})",
                      lambda m, x, t: F(m).cross_entropy(x, t), [logits, target], n=c * n)
    # Unbatched: logits [C], target [].
    for c in (1, 6):
        logits = make_input(rng, (c,), dtype)
        tgt_np = np.asarray(rng.integers(0, c), dtype=np.int64)
        for red in ("mean", "sum", "none"):
            rep.check(f"cross_entropy({describe(logits[0])}, {tgt_np}, {red})",
                      lambda m, x, t, r=red: F(m).cross_entropy(x, t, reduction=r),
                      [logits, (tgt_np, _tensor(tgt_np))], n=c)
    # Large logits: the log-sum-exp must be stable.
    logits = make_input(rng, (4, 5), dtype)
    logits = (logits[0] * 80, logits[1] * 80)
    tgt_np = rng.integers(0, 5, (4,)).astype(np.int64)
    rep.check("cross_entropy(80 * logits)", lambda m, x, t: F(m).cross_entropy(x, t, reduction=
                                                                                 "none"),
              [logits, (tgt_np, _tensor(tgt_np))], n=5)
    rep.finish()


def _tensor(a):
    return pg.from_numpy(np.array(a, order="C", copy=True))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_mse_loss(conn, rng, dtype):
    rep = Report()
    for layout in LAYOUTS:
        for shape in [(), (7,), (3, 7), (2, 3, 5), (2, 1, 3, 2, 3)]:
            x = make_input(rng, shape, dtype, "any", layout)
            y = make_input(rng, shape, dtype, "any")
            size = int(np.prod(shape))
            for red in ("mean", "sum", "none"):
                rep.check(f"mse_loss({describe(x[0])}, {red}, {layout})",
                          lambda m, a, b, r=red: F(m).mse_loss(a, b, reduction=r), [x, y],
                          n=size * 4)
            rep.check(f"mse_loss({describe(x[0])}) default ({layout})",
                      lambda m, a, b: F(m).mse_loss(a, b), [x, y], n=size * 4)
    rep.finish()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_linear(conn, rng, dtype):
    rep = Report()
    for layout in LAYOUTS:
        for xs, out in [((13,), 5), ((4, 13), 7), ((2, 3, 13), 1), ((0, 13), 3), ((6, 1), 4),
                        ((2, 1, 3, 7), 6)]:
            inp = xs[-1]
            x = make_input(rng, xs, dtype, "any", layout)
            w = make_input(rng, (out, inp), dtype, "any", "permute" if layout != "contig"
                           else "contig")
            b = make_input(rng, (out,), dtype, "any", "slice" if layout != "contig" else "contig")
            rep.check(f"linear({describe(x[0])}, w{list(w[0].shape)}, bias, {layout})",
                      lambda m, a, w, b: F(m).linear(a, w, b), [x, w, b], n=inp)
            rep.check(f"linear({describe(x[0])}, w{list(w[0].shape)}, no bias, {layout})",
                      lambda m, a, w: F(m).linear(a, w), [x, w], n=inp)
            rep.check(f"linear({describe(x[0])}, w{list(w[0].shape)}, bias=None, {layout})",
                      lambda m, a, w: F(m).linear(a, w, None), [x, w], n=inp)
    rep.finish()


# (x shape, weight shape, kwargs)
CONV_CASES = [
    ((1, 1, 5, 5), (1, 1, 3, 3), {}),
    ((2, 3, 7, 9), (4, 3, 3, 3), {"stride": 1, "padding": 1}),
    ((2, 3, 7, 9), (4, 3, 3, 2), {"stride": (2, 1), "padding": (1, 0)}),
    ((1, 4, 13, 11), (6, 2, 3, 3), {"groups": 2, "padding": 2, "dilation": 2}),
    ((2, 6, 8, 8), (6, 1, 3, 3), {"groups": 6, "stride": 2, "padding": 1}),
    ((1, 2, 9, 7), (3, 2, 1, 1), {"stride": 3}),
    ((3, 2, 5, 6), (5, 2, 5, 6), {}),
    ((1, 3, 10, 12), (2, 3, 4, 3), {"stride": (3, 2), "padding": (2, 1), "dilation": (1, 2)}),
    ((2, 4, 6, 6), (4, 4, 3, 3), {"padding": 0, "dilation": 1, "groups": 1, "stride": 1}),
    ((0, 2, 5, 5), (3, 2, 3, 3), {"padding": 1}),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_conv2d(conn, rng, dtype):
    rep = Report()
    for k, (xs, ws, kw) in enumerate(CONV_CASES):
        for layout in LAYOUTS:
            x = make_input(rng, xs, dtype, "any", layout)
            w = make_input(rng, ws, dtype, "any", LAYOUTS[(k + 1) % 4])
            b = make_input(rng, (ws[0],), dtype, "any")
            n = ws[1] * ws[2] * ws[3]
            rep.check(f"conv2d({describe(x[0])}, w{list(ws)}, bias, {kw}, {layout})",
                      lambda m, a, w, b, kw=kw: F(m).conv2d(a, w, b, **kw), [x, w, b], n=n)
            rep.check(f"conv2d({describe(x[0])}, w{list(ws)}, no bias, {kw}, {layout})",
                      lambda m, a, w, kw=kw: F(m).conv2d(a, w, **kw), [x, w], n=n)
    # torch's positional order: input, weight, bias, stride, padding, dilation, groups
    x = make_input(rng, (1, 4, 9, 9), dtype)
    w = make_input(rng, (2, 2, 3, 3), dtype)
    rep.check("conv2d positional (x, w, None, 2, 1, 2, 2)",
              lambda m, a, w: F(m).conv2d(a, w, None, 2, 1, 2, 2), [x, w], n=18)
    rep.finish()


POOL_CASES = [
    ((1, 1, 4, 4), {"kernel_size": 2}),
    ((2, 3, 7, 9), {"kernel_size": 3, "stride": 2}),
    ((2, 3, 7, 9), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ((1, 2, 8, 7), {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 1)}),
    ((1, 2, 13, 13), {"kernel_size": 3, "stride": 1, "padding": 1}),
    ((2, 1, 5, 6), {"kernel_size": (5, 6)}),
    ((1, 3, 6, 6), {"kernel_size": 1, "stride": 2}),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_max_pool2d(conn, rng, dtype):
    rep = Report()
    cases = POOL_CASES + [((1, 2, 11, 10), {"kernel_size": 3, "stride": 2, "padding": 1,
                                              "dilation": 2}),
                          ((2, 2, 9, 9), {"kernel_size": 2, "dilation": (2, 3)})]
    for xs, kw in cases:
        for layout in LAYOUTS:
            x = make_input(rng, xs, dtype, "ties" if layout == "contig" else "any", layout)
            rep.check(f"max_pool2d({describe(x[0])}, {kw}, {layout})",
                      lambda m, a, kw=kw: F(m).max_pool2d(a, **kw), [x])
    x = make_input(rng, (1, 2, 8, 8), dtype)
    rep.check("max_pool2d positional (x, 3, 2, 1)", lambda m, a: F(m).max_pool2d(a, 3, 2, 1), [x])
    rep.finish()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_avg_pool2d(conn, rng, dtype):
    rep = Report()
    for xs, kw in POOL_CASES:
        for layout in LAYOUTS:
            x = make_input(rng, xs, dtype, "any", layout)
            ks = kw["kernel_size"]
            n = ks * ks if isinstance(ks, int) else ks[0] * ks[1]
            for cip in (True, False):
                args = dict(kw, count_include_pad=cip)
                rep.check(f"avg_pool2d({describe(x[0])}, {args}, {layout})",
                          lambda m, a, kw=args: F(m).avg_pool2d(a, **kw), [x], n=n)
            rep.check(f"avg_pool2d({describe(x[0])}, {kw}, default count_include_pad, {layout})",
                      lambda m, a, kw=kw: F(m).avg_pool2d(a, **kw), [x], n=n)
    rep.finish()


LAYER_NORM_CASES = [((5, 7), (7,)), ((2, 3, 8), (8,)), ((2, 3, 8), (3, 8)), ((13,), (13,)),
                    ((4, 1), (1,)), ((2, 1, 3, 2, 5), (2, 5)), ((0, 6), (6,))]


def _layer_norm_atol(x, w, ns, dtype, eps):
    """The absolute error layer_norm may have: rounding in x - mean is amplified by
    |w| / sqrt(var + eps), which is large for rows of (nearly) equal values (expanded inputs,
    normalized_shape (1,)), on top of the usual length-scaled tolerance."""
    n = int(np.prod(ns))
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    if x.size == 0:
        return 0.0
    var = np.var(x.astype(np.float64), axis=axes).min()
    wmax = max(float(np.abs(w).max()), 1.0) if w is not None else 1.0
    unit = 1e-6 if dtype == "float32" else 1e-15
    base = 1e-6 * n if dtype == "float32" else 1e-12 * n
    return base + unit * float(np.abs(x).max()) * wmax / np.sqrt(var + eps)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_layer_norm(conn, rng, dtype):
    rep = Report()
    for xs, ns in LAYER_NORM_CASES:
        n = int(np.prod(ns))
        for layout in LAYOUTS:
            x = make_input(rng, xs, dtype, "any", layout)
            x = (x[0] + 3, x[1] + 3)  # a mean far from 0
            w = make_input(rng, ns, dtype, "any", layout)
            b = make_input(rng, ns, dtype, "any")
            tol = _layer_norm_atol(x[0], w[0], ns, dtype, 1e-5)
            rep.check(f"layer_norm({describe(x[0])}, {ns}, weight, bias, {layout})",
                      lambda m, a, w, b, ns=ns: F(m).layer_norm(a, ns, w, b), [x, w, b], n=n,
                      atol=tol)
            rep.check(f"layer_norm({describe(x[0])}, {ns}, {layout})",
                      lambda m, a, ns=ns: F(m).layer_norm(a, ns), [x], n=n,
                      atol=_layer_norm_atol(x[0], None, ns, dtype, 1e-5))
            rep.check(f"layer_norm({describe(x[0])}, {ns}, weight only, eps=1e-3, {layout})",
                      lambda m, a, w, ns=ns: F(m).layer_norm(a, ns, weight=w, eps=1e-3),
                      [x, w], n=n, atol=_layer_norm_atol(x[0], w[0], ns, dtype, 1e-3))
            rep.check(f"layer_norm({describe(x[0])}, list {list(ns)}, bias only, {layout})",
                      lambda m, a, b, ns=ns: F(m).layer_norm(a, list(ns), None, b), [x, b], n=n,
                      atol=_layer_norm_atol(x[0], None, ns, dtype, 1e-5))
    rep.finish()


def test_one_hot(conn, rng):
    rep = Report()
    for shape, c in [((), 4), ((7,), 7), ((3, 5), 10), ((0,), 3), ((2, 3, 4), 1),
                     ((2, 1, 3, 2), 5)]:
        idx_np = np.asarray(rng.integers(0, c, shape), dtype=np.int64)
        for layout in ("contig", "slice", "permute"):
            idx = _index_input(idx_np, layout)
            rep.check(f"one_hot({describe(idx_np)}, {c}, {layout})",
                      lambda m, i, c=c: F(m).one_hot(i, c), [idx],
                      lambda i, c=c: np.eye(c, dtype=np.int64)[i], exact_ref=True)
            rep.check(f"one_hot({describe(idx_np)}, num_classes={c}, {layout})",
                      lambda m, i, c=c: F(m).one_hot(i, num_classes=c), [idx],
                      lambda i, c=c: np.eye(c, dtype=np.int64)[i], exact_ref=True)
    rep.finish()


def _index_input(idx_np, layout):
    """(array, picograd tensor) for an index array, contiguous or as a strided view."""
    if layout == "permute" and idx_np.ndim >= 2:
        perm = tuple(reversed(range(idx_np.ndim)))
        return idx_np, pg.from_numpy(np.ascontiguousarray(idx_np.transpose(perm))).permute(*perm)
    if layout == "slice" and idx_np.ndim >= 1:
        big = np.full((2 * idx_np.shape[0] + 1,) + idx_np.shape[1:], -3, idx_np.dtype)
        big[1::2] = idx_np
        return idx_np, pg.from_numpy(big)[1::2]
    return idx_np, _tensor(idx_np)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_embedding(conn, rng, dtype):
    rep = Report()
    for shape, (n, d) in [((5,), (10, 4)), ((), (3, 7)), ((2, 3), (13, 1)), ((0,), (4, 2)),
                          ((2, 1, 4), (6, 5)), ((9,), (1, 3))]:
        for idx_dtype in ("int64", "int32"):
            idx_np = np.asarray(rng.integers(0, n, shape), dtype=idx_dtype)
            for layout in ("contig", "slice", "permute"):
                w = make_input(rng, (n, d), dtype, "any", layout)
                idx = _index_input(idx_np, layout)
                rep.check(f"embedding({describe(idx_np)}, w{[n, d]}, {layout})",
                          lambda m, i, w: F(m).embedding(i, w), [idx, w],
                          lambda i, w: w[i.astype(np.int64)], exact_ref=True)
    rep.finish()


PADS = [(1, 2), (0, 0), (3, 0, 1, 1), (2, 1, 0, 3, 1, 1), (0, 1, 0, 0, 0, 0, 2, 0)]


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
def test_pad(conn, rng, dtype):
    rep = Report()
    value = {"float32": -1.5, "float64": 2.25, "int32": 7, "int64": -3, "bool": True}[dtype]
    for layout in LAYOUTS:
        for shape in [(3,), (3, 4), (2, 3, 4), (2, 0, 3, 1), (2, 1, 3, 2, 3)]:
            x = make_input(rng, shape, dtype, "any", layout)
            for pad in PADS:
                if len(pad) > 2 * len(shape):
                    continue
                np_pad = [(0, 0)] * len(shape)
                for i in range(len(pad) // 2):
                    np_pad[len(shape) - 1 - i] = (pad[2 * i], pad[2 * i + 1])
                rep.check(f"pad({describe(x[0])}, {pad}, {layout})",
                          lambda m, a, p=pad: F(m).pad(a, p), [x],
                          lambda a, p=np_pad: np.pad(a, p), exact_ref=True)
                rep.check(f"pad({describe(x[0])}, {pad}, value={value!r}, {layout})",
                          lambda m, a, p=pad: F(m).pad(a, p, value=value), [x],
                          lambda a, p=np_pad: np.pad(a, p, constant_values=value),
                          exact_ref=True)
    rep.finish()


def test_small_network_forward(conn, rng):
    """conv -> relu -> max_pool -> flatten -> linear -> log_softmax -> cross_entropy as one graph."""
    rep = Report()
    for dtype in FLOAT_DTYPES:
        x = make_input(rng, (4, 3, 12, 12), dtype)
        w1 = make_input(rng, (8, 3, 3, 3), dtype)
        b1 = make_input(rng, (8,), dtype)
        w2 = make_input(rng, (10, 8 * 6 * 6), dtype)
        b2 = make_input(rng, (10,), dtype)
        y_np = rng.integers(0, 10, (4,)).astype(np.int64)
        y = (y_np, _tensor(y_np))

        def net(m, x, w1, b1, w2, b2, y):
            f = F(m)
            h = f.max_pool2d(f.relu(f.conv2d(x, w1, b1, padding=1)), 2)
            logits = f.linear(h.flatten(1), w2, b2)
            return f.cross_entropy(logits, y), f.log_softmax(logits, dim=1).argmax(1)

        rep.check(f"small network forward ({dtype})", net, [x, w1, b1, w2, b2, y], n=27 * 288)
    rep.finish()
