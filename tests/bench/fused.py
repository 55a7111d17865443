#!/usr/bin/python3
"""Fused-kernel benchmark: elementwise chains and row ops in picogradd against numpy, PyTorch eager
and a hand-fused C loop, with the machine's memory bandwidth as the yardstick.

What it does, in one run:

1. Compiles a small C library (``cc -O3 -march=native -ffast-math -fopenmp``, 2 OpenMP threads)
   holding a STREAM-like triad ``a[i] = b[i] + s * c[i]`` and hand-fused loops for benchmarks 1
   and 2, and loads it with ctypes. The triad on three float64 arrays of 64 MiB gives the
   machine's memory bandwidth in GB/s (STREAM's convention: 24 bytes per element, no
   write-allocate traffic), measured at the start and again at the end of the run.
2. Starts ``build/bin/picogradd`` on a Unix socket in a temporary folder (with ``--cache-dir`` on
   an empty folder when the daemon has that flag) and uploads the inputs once: they stay resident
   in the daemon, so no tensor bytes cross the socket while timing.
3. Runs every graph once on that fresh daemon. When ``stats`` reports the JIT's counters
   (``compile_seconds`` and ``kernels.compiled``), the growth of both over that first run gives
   the cold compile time per kernel of that graph.
4. Times each benchmark beside numpy, PyTorch eager (``torch.set_num_threads(2)``) and, for 1 and
   2, the C loop, in rounds that run every side once in a rotating order, so that a slow spell of
   a shared machine hits all sides alike. OpenMP threads (PyTorch's, the C loop's) sleep as
   soon as a call ends (OMP_WAIT_POLICY=PASSIVE, set by the script unless already set): with
   libgomp's default they spin for ~10 ms of CPU after every call, which on 2 cores halves the
   CPUs of whatever side runs next. Every timed call starts with cold caches (64 MiB written
   first): the host sides share one input array, which would otherwise stay cached from one
   side to the next while the daemon's copy does not. The median of the rounds is reported:

   1. ``(relu(a*b+c)*d).sum()`` on 4M float32, picograd timed as ``.item()`` (one round trip);
   2. ``softmax(x, dim=1)`` on 4096x1024 float32, picograd timed as ``pg.realize(y)``: the
      result stays in the daemon as a handle, nothing is fetched;
   3. ``layer_norm(x, [1024])`` on 4096x1024 float32 (kept, as 2);
   4. ``gelu(x * 1.5 + 0.5, approximate="tanh") * 2`` on 4M float32 (kept, as 2).

   The first run of every side is a warm-up whose result is compared with a float64 numpy
   reference; any disagreement stops the run with a non-zero exit.
5. Times a 10-node graph (a chain of 9 adds on a 4-element tensor) run over and over, which after
   the first run only hits the daemon's caches, beside ``ping``: the difference of the medians is
   the daemon's per-run dispatch cost above the transport floor. ``stats`` read around every
   block of runs gives the same cost measured inside the daemon (its ``runs`` counters: a
   worker's time from starting the run to its reply, split into prepare, plan and execute),
   which is what the issue's target (at most 20 µs per cached 10-node run) is checked against.

It prints markdown tables (and writes them to ``--out FILE``) after a line describing the machine:

    /usr/bin/python3 tests/bench/fused.py            # full run, about a minute
    /usr/bin/python3 tests/bench/fused.py --quick    # fewer rounds: a smoke run

The machine is usually small (2 cores) and shared, so quote medians and the ratios of sides
measured in the same rounds; absolute numbers move from run to run.
"""

import argparse
import ctypes
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

# Before numpy, torch or the C loop load libgomp (see the docstring, point 4).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "clients", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import Server  # noqa: E402  (the same child-process helper as the transfer bench)

MiB = 1 << 20
THREADS = 2  # OpenMP threads of the C library, torch.set_num_threads

N_FLAT = 4 << 20  # elements of the flat benchmarks (1 and 4): 16 MiB of float32 each
ROWS, COLS = 4096, 1024  # softmax and layer_norm input: 16 MiB of float32
TRIAD_BYTES = 64 * MiB  # per triad array (float64), far beyond any cache
CHAIN_NODES = 10  # nodes of the dispatch graph: one input and 9 adds

# (seconds per benchmark, minimum rounds, maximum rounds), (triad reps per measurement),
# (dispatch warm-up, dispatch timed iterations)
FULL = dict(seconds=5.0, min_rounds=9, max_rounds=60, triad_reps=15, disp=(200, 2000))
QUICK = dict(seconds=1.0, min_rounds=3, max_rounds=10, triad_reps=5, disp=(50, 300))
DISP_BLOCK = 100  # dispatch iterations per side before switching sides
DISP_TARGET_US = 20.0  # the target: a cached 10-node run, in the daemon
RUN_PHASES = ("prepare", "plan", "execute")  # the phases of stats' "runs" counters

C_SOURCE = r"""
/* fused.c - the C side of tests/bench/fused.py: the practical ceiling of one pass over memory. */
#include <math.h>
#include <omp.h>

/* Returns the number of threads a parallel region of `nt` threads really gets. */
int fb_threads(int nt) {
    int got = 0;
#pragma omp parallel num_threads(nt)
    {
#pragma omp single
        got = omp_get_num_threads();
    }
    return got;
}

/* a[i] = b[i] + s * c[i]: STREAM's triad. */
void fb_triad(double *restrict a, const double *restrict b, const double *restrict c, double s,
              long n, int nt) {
#pragma omp parallel for simd num_threads(nt) schedule(static)
    for (long i = 0; i < n; i++)
        a[i] = b[i] + s * c[i];
}

/* Returns sum(relu(a*b+c)*d) in one pass, float accumulators (as a fast kernel would). */
double fb_chain_sum(const float *restrict a, const float *restrict b, const float *restrict c,
                    const float *restrict d, long n, int nt) {
    float s = 0.0f;
#pragma omp parallel for simd num_threads(nt) schedule(static) reduction(+ : s)
    for (long i = 0; i < n; i++) {
        float t = a[i] * b[i] + c[i];
        s += (t > 0.0f ? t : 0.0f) * d[i];
    }
    return s;
}

/* y = softmax(x, dim=1) of a rows x cols matrix: one row (4 KiB) stays in L1 for its 3 passes. */
void fb_softmax_rows(const float *restrict x, float *restrict y, long rows, long cols, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float m = xr[0];
        for (long j = 1; j < cols; j++)
            m = xr[j] > m ? xr[j] : m;
        float s = 0.0f;
        for (long j = 0; j < cols; j++) {
            float e = expf(xr[j] - m);
            yr[j] = e;
            s += e;
        }
        float inv = 1.0f / s;
        for (long j = 0; j < cols; j++)
            yr[j] *= inv;
    }
}
"""
C_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]


# ------------------------------------------------------------------------------------------------
# The daemon
# ------------------------------------------------------------------------------------------------


def daemon_has_flag(daemon, flag):
    """True when ``daemon --help`` mentions ``flag`` (older builds lack --cache-dir)."""
    try:
        r = subprocess.run([daemon, "--help"], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in (r.stdout + r.stderr).decode("utf-8", "replace")


def flatten(d, prefix=""):
    """{"kernels": {"compiled": 3}} -> {"kernels.compiled": 3}."""
    out = {}
    for k, v in d.items():
        key = prefix + str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_counters(stats):
    """The daemon's ``runs`` counters and plan-cache misses from a stats reply, as a flat dict
    (count, seconds, <phase>_seconds, misses), or None when the daemon does not report them."""
    runs = stats.get("runs")
    if not isinstance(runs, dict) or not {"count", "seconds"} <= set(runs):
        return None
    out = {k: runs.get(k, 0) for k in ("count", "seconds")}
    out.update({p: runs.get(p + "_seconds", 0.0) for p in RUN_PHASES})
    out["misses"] = stats.get("plans", {}).get("misses", 0)
    return out


def per_run_us(c0, c1, calls):
    """Per-run in-daemon µs (total and phases) between two run_counters() readings around
    ``calls`` runs, or None without counters. Raises when the daemon counted another number."""
    if c0 is None or c1 is None:
        return None
    n = c1["count"] - c0["count"]
    if n != calls:
        raise RuntimeError("stats counted %d runs for %d run calls" % (n, calls))
    out = {k: (c1[k] - c0[k]) / n * 1e6 for k in ("seconds",) + RUN_PHASES}
    out["misses"] = c1["misses"] - c0["misses"]
    return out


def jit_counters(stats):
    """(compile_seconds, kernels compiled) from a stats reply, or None when it has neither.

    Accepts the counters at the top level or nested one level (``kernels.compiled``,
    ``kernels.compile_seconds``, ``jit.compile_seconds``, ...).
    """
    flat = flatten(stats)
    secs = [k for k in flat if k == "compile_seconds" or k.endswith(".compile_seconds")]
    comp = [k for k in flat if k in ("kernels.compiled", "kernels_compiled")]
    comp = comp or [k for k in flat if k.endswith(".compiled")]
    if not secs or not comp:
        return None
    try:
        return float(flat[secs[0]]), int(flat[comp[0]])
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------
# The C library
# ------------------------------------------------------------------------------------------------


def build_c_library(tmp, cc):
    src = os.path.join(tmp, "fused.c")
    lib = os.path.join(tmp, "libfused.so")
    with open(src, "w") as f:
        f.write(C_SOURCE)
    cmd = [cc] + C_FLAGS + ["-shared", "-fPIC", "-o", lib, src, "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("compiling the C baseline failed: %s\n%s" % (" ".join(cmd), r.stderr))
    so = ctypes.CDLL(lib)
    P, L, I, D = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_double
    so.fb_threads.argtypes, so.fb_threads.restype = [I], I
    so.fb_triad.argtypes, so.fb_triad.restype = [P, P, P, D, L, I], None
    so.fb_chain_sum.argtypes, so.fb_chain_sum.restype = [P, P, P, P, L, I], D
    so.fb_softmax_rows.argtypes, so.fb_softmax_rows.restype = [P, P, L, L, I], None
    return so, " ".join([cc] + C_FLAGS)


def ptr(arr):
    assert arr.flags.c_contiguous
    return arr.ctypes.data


def measure_triad(so, reps):
    """Per-rep seconds of the triad on three 64 MiB float64 arrays (after one warm-up rep)."""
    n = TRIAD_BYTES // 8
    a = np.zeros(n)
    b = np.full(n, 1.0)
    c = np.full(n, 2.0)
    pa, pb, pc = ptr(a), ptr(b), ptr(c)
    so.fb_triad(pa, pb, pc, 3.0, n, THREADS)
    if not (a[0] == 7.0 and a[-1] == 7.0 and a[n // 2] == 7.0):
        raise RuntimeError("triad check failed: a[0] = %r" % a[0])
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        so.fb_triad(pa, pb, pc, 3.0, n, THREADS)
        times.append(time.perf_counter() - t0)
    return times, 3 * TRIAD_BYTES


# ------------------------------------------------------------------------------------------------
# Benchmarks
# ------------------------------------------------------------------------------------------------


class Bench:
    """One benchmark: a callable per side, a checker, and the bytes one pass must move."""

    def __init__(self, name, nbytes, sides, check):
        self.name = name
        self.nbytes = nbytes  # minimum memory traffic: inputs read once, output written once
        self.sides = sides  # ordered {side: (prepare, timed)}: prepare() untimed, timed(p)
        self.check = check  # check(side, result) raises on disagreement
        self.times = {s: [] for s in sides}


def check_close(name, side, got, ref, rtol, atol):
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape:
        raise RuntimeError("%s: %s gave shape %r, expected %r" % (name, side, got.shape,
                                                                  ref.shape))
    if not np.allclose(got, ref, rtol=rtol, atol=atol):
        err = np.abs(got - ref)
        i = np.unravel_index(np.argmax(err - rtol * np.abs(ref)), ref.shape)
        raise RuntimeError("%s: %s disagrees with the float64 reference: max |diff| %.3g, "
                           "at %r got %r expected %r (rtol %g, atol %g)"
                           % (name, side, err.max(), tuple(int(j) for j in i), got[i], ref[i],
                              rtol, atol))


def make_benches(pg, F, torch, TF, so, host, dev):
    """The four benchmarks. ``host`` holds the numpy inputs, ``dev`` the resident pg tensors."""
    a, b, c, d, x = host["a"], host["b"], host["c"], host["d"], host["x"]
    ta, tb, tc, td, tx = (torch.from_numpy(v) for v in (a, b, c, d, x))  # shared memory
    pa, pb, pc, pd, px = (ptr(v) for v in (a, b, c, d, x))
    ga, gb, gc, gd, gx = dev["a"], dev["b"], dev["c"], dev["d"], dev["x"]
    f64 = {k: v.astype(np.float64) for k, v in host.items()}
    benches = []

    # 1. (relu(a*b+c)*d).sum(): reads 4 arrays, writes a scalar.
    terms = np.maximum(f64["a"] * f64["b"] + f64["c"], 0) * f64["d"]
    ref1, abs1 = np.array(terms.sum()), float(np.abs(terms).sum())
    del terms

    def check1(side, got):
        # float32 accumulation of 4M signed terms: allow 1e-6 of the sum of |terms|.
        check_close("chain+sum", side, got, ref1, 1e-4, 1e-6 * abs1)

    benches.append(Bench("1. (relu(a*b+c)*d).sum(), 4M", 4 * a.nbytes, {
        "picograd": (lambda: (F.relu(ga * gb + gc) * gd).sum(), lambda y: y.item()),
        "numpy": (None, lambda _: float((np.maximum(a * b + c, 0) * d).sum())),
        "torch": (None, lambda _: (torch.relu(ta * tb + tc) * td).sum().item()),
        "C": (None, lambda _: so.fb_chain_sum(pa, pb, pc, pd, a.size, THREADS)),
    }, check1))

    # 2. softmax(x, dim=1): reads x, writes y.
    e = np.exp(f64["x"] - f64["x"].max(axis=1, keepdims=True))
    ref2 = e / e.sum(axis=1, keepdims=True)
    del e
    c_out = np.empty_like(x)
    pco = ptr(c_out)

    def np_softmax(_):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        e /= e.sum(axis=1, keepdims=True)
        return e

    def c_softmax(_):
        so.fb_softmax_rows(px, pco, ROWS, COLS, THREADS)
        return c_out

    benches.append(Bench("2. softmax(x, dim=1), 4096x1024", 2 * x.nbytes, {
        "picograd": (lambda: F.softmax(gx, dim=1), lambda y: pg.realize(y)),
        "numpy": (None, np_softmax),
        "torch": (None, lambda _: torch.softmax(tx, dim=1)),
        "C": (None, c_softmax),
    }, lambda side, got: check_close("softmax", side, got, ref2, 1e-4, 1e-7)))

    # 3. layer_norm(x, [1024]) without weight and bias: reads x, writes y.
    mu = f64["x"].mean(axis=1, keepdims=True)
    ref3 = (f64["x"] - mu) / np.sqrt(f64["x"].var(axis=1, keepdims=True) + 1e-5)
    del mu

    def np_layer_norm(_):
        xc = x - x.mean(axis=1, keepdims=True)
        var = np.einsum("ij,ij->i", xc, xc)[:, None] / np.float32(COLS)
        xc /= np.sqrt(var + np.float32(1e-5))
        return xc

    benches.append(Bench("3. layer_norm(x, [1024]), 4096x1024", 2 * x.nbytes, {
        "picograd": (lambda: F.layer_norm(gx, [COLS]), lambda y: pg.realize(y)),
        "numpy": (None, np_layer_norm),
        "torch": (None, lambda _: TF.layer_norm(tx, [COLS])),
    }, lambda side, got: check_close("layer_norm", side, got, ref3, 1e-4, 1e-4)))

    # 4. gelu(a * 1.5 + 0.5, approximate="tanh") * 2: reads a, writes y.
    u = f64["a"] * 1.5 + 0.5
    ref4 = u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))
    del u
    k0, k1 = np.float32(np.sqrt(2 / np.pi)), np.float32(0.044715)

    def np_gelu(_):
        u = a * np.float32(1.5) + np.float32(0.5)
        t = u * u
        t *= k1 * u
        t += u
        t *= k0
        np.tanh(t, out=t)
        t += 1
        t *= u  # 0.5 * u * (1 + tanh) * 2
        return t

    benches.append(Bench("4. gelu(a*1.5+0.5, tanh)*2, 4M", 2 * a.nbytes, {
        "picograd": (lambda: F.gelu(ga * 1.5 + 0.5, approximate="tanh") * 2,
                     lambda y: pg.realize(y)),
        "numpy": (None, np_gelu),
        "torch": (None, lambda _: TF.gelu(ta * 1.5 + 0.5, approximate="tanh") * 2),
    }, lambda side, got: check_close("gelu", side, got, ref4, 1e-4, 1e-4)))
    return benches


# Every timed call starts with cold caches: numpy, PyTorch and the C loop all read the same host
# array, so whichever runs right after another would find its 16 MiB input still in the last
# level cache, while the daemon's copy of it was evicted. Writing a buffer larger than any
# cache first makes every side read its inputs from memory, as a real workload would.
_FLUSH = np.zeros(64 << 18, dtype=np.float32)  # 64 MiB


def flush_caches():
    np.add(_FLUSH, 1.0, out=_FLUSH)


def run_side(bench, side):
    """One untimed prepare and one timed call; returns (seconds, result)."""
    prepare, timed = bench.sides[side]
    p = prepare() if prepare else None
    flush_caches()
    t0 = time.perf_counter()
    r = timed(p)
    t1 = time.perf_counter()
    return t1 - t0, r


def as_checkable(side, r):
    """The result as numpy, fetching a kept picograd tensor (outside any timing)."""
    if hasattr(r, "numpy") and not isinstance(r, np.ndarray):
        return r.numpy()
    if hasattr(r, "item") and not isinstance(r, np.ndarray):
        return r.item()
    return r


def run_bench(bench, cfg):
    """Warm-up (checked) for every side, then rotating rounds until the time budget is spent."""
    sides = list(bench.sides)
    for side in sides:
        _, r = run_side(bench, side)
        bench.check(side, as_checkable(side, r))
        del r
    t_end = time.perf_counter() + cfg["seconds"]
    i = 0
    while i < cfg["min_rounds"] or (i < cfg["max_rounds"] and time.perf_counter() < t_end):
        k = i % len(sides)
        for side in sides[k:] + sides[:k]:
            dt, r = run_side(bench, side)
            bench.times[side].append(dt)
            del r
        i += 1
    return i


def bench_dispatch(pg, conn, tm, warmup, iters):
    """Interleaved blocks of ping, a prebuilt 10-node run and pg.realize of the same graph.

    Returns {name: per-call seconds} and, under "daemon", {"run"|"realize": [per-block dicts of
    in-daemon µs per run (per_run_us), one per timed block]} (empty lists when the daemon has no
    ``runs`` counters). The prebuilt run sends the node list the tensor layer builds
    (tm._build) with ``conn.call("run")`` and gets its 4 values inline, so it pays no Python
    graph building and leaves no handle; the realize side rebuilds the graph each time (untimed)
    and keeps its result, like a user's loop. The stats calls around a block are not timed.
    """
    x = pg.tensor(np.arange(4, dtype=np.float32))

    def chain():
        y = x
        for _ in range(CHAIN_NODES - 1):
            y = y + x
        return y

    nodes, _, _ = tm._build([chain()])
    if len(nodes) != CHAIN_NODES:
        raise RuntimeError("dispatch graph has %d nodes, expected %d" % (len(nodes),
                                                                          CHAIN_NODES))
    outputs = [{"node": CHAIN_NODES - 1, "keep": False}]
    got = tm._decode(conn.call("run", nodes=nodes, outputs=outputs)["outputs"][0])
    if not np.array_equal(got, np.arange(4, dtype=np.float32) * CHAIN_NODES):
        raise RuntimeError("dispatch graph gave %r" % (got,))

    clock = time.perf_counter
    res = {"ping": [], "run": [], "realize": [], "daemon": {"run": [], "realize": []}}

    def daemon_block(side, c0, n):
        us = per_run_us(c0, run_counters(conn.stats()), n)
        if us is not None:
            res["daemon"][side].append(us)

    def block(n, record):
        for _ in range(n):
            t0 = clock()
            conn.ping()
            t1 = clock()
            if record:
                res["ping"].append(t1 - t0)
        c0 = run_counters(conn.stats()) if record else None
        for _ in range(n):
            t0 = clock()
            conn.call("run", nodes=nodes, outputs=outputs)
            t1 = clock()
            if record:
                res["run"].append(t1 - t0)
        if record:
            daemon_block("run", c0, n)
            c0 = run_counters(conn.stats())
        for _ in range(n):
            y = chain()
            t0 = clock()
            pg.realize(y)
            t1 = clock()
            if record:
                res["realize"].append(t1 - t0)
        if record:
            daemon_block("realize", c0, n)

    block(warmup, False)
    done = 0
    while done < iters:
        n = min(DISP_BLOCK, iters - done)
        block(n, True)
        done += n
    pg.flush(conn)
    return res


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def machine_line(torch):
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return ("Machine: %s, %d cores (%d usable), %s %s, Python %s, numpy %s, torch %s "
            "(%d threads)" % (model, os.cpu_count(), len(os.sched_getaffinity(0)),
                              platform.system(), platform.release(),
                              platform.python_version(), np.__version__, torch.__version__,
                              torch.get_num_threads()))


def ms(t):
    return "%.2f" % (t * 1e3) if t is not None else "-"


def ratio(num, den):
    return "%.2f" % (num / den) if num is not None and den else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run")
    ap.add_argument("--daemon", default=os.path.join(REPO, "build", "bin", "picogradd"),
                    help="picogradd binary (default build/bin/picogradd)")
    ap.add_argument("--daemon-arg", action="append", default=[],
                    help="extra argument for picogradd (repeatable), "
                         "e.g. --daemon-arg=--threads=2")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"),
                    help="C compiler for the baseline library (default $CC, else cc)")
    ap.add_argument("--seconds", type=float,
                    help="time budget per benchmark (default 5, --quick 1)")
    ap.add_argument("--out", help="also write the markdown tables to this file")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    if args.seconds is not None:
        cfg["seconds"] = args.seconds

    if not os.access(args.daemon, os.X_OK):
        sys.exit("fused.py: %s is not an executable; build the project first" % args.daemon)

    import torch
    import torch.nn.functional as TF
    import picograd as pg
    import picograd.nn.functional as F
    tm = sys.modules["picograd.tensor"]  # the module (pg.tensor is the function)

    torch.set_num_threads(THREADS)
    machine = machine_line(torch)

    tmp = tempfile.mkdtemp(prefix="pg-bench-fused-")
    errors = []
    daemon = None
    t_start = time.perf_counter()
    try:
        so, c_cmd = build_c_library(tmp, args.cc)
        c_threads = so.fb_threads(THREADS)

        argv = [args.daemon, "--listen", "unix://%s/pg.sock" % tmp]
        cache_note = "daemon has no --cache-dir"
        if any(a.startswith("--cache-dir") for a in args.daemon_arg):
            cache_note = "--cache-dir from --daemon-arg"
        elif daemon_has_flag(args.daemon, "--cache-dir"):
            os.mkdir(os.path.join(tmp, "cache"))
            argv += ["--cache-dir", os.path.join(tmp, "cache")]
            cache_note = "--cache-dir on an empty folder"
        daemon = Server("picogradd", argv + args.daemon_arg, tmp)
        url = daemon.wait_urls(1)[0]
        conn = pg.connect(url)

        print(machine)
        print("C baseline: %s, %d OpenMP threads; daemon: %s (%s)"
              % (c_cmd, c_threads, " ".join(argv[1:] + args.daemon_arg), cache_note))
        sys.stdout.flush()

        triad1, triad_bytes = measure_triad(so, cfg["triad_reps"])
        print("Triad: %.1f GB/s (median of %d)" % (triad_bytes / statistics.median(triad1) / 1e9,
                                                     len(triad1)))
        sys.stdout.flush()

        rng = np.random.default_rng(12345)
        host = {k: rng.standard_normal(N_FLAT, dtype=np.float32) for k in "abcd"}
        host["x"] = rng.standard_normal((ROWS, COLS), dtype=np.float32)
        dev = {k: pg.tensor(v) for k, v in host.items()}  # resident for the whole run

        benches = make_benches(pg, F, torch, TF, so, host, dev)

        # Cold runs: the first run of every graph on the fresh daemon, JIT counters around it.
        cold = []  # (name, first-run seconds, compile seconds delta, kernels compiled delta)
        counters = jit_counters(conn.stats())
        for bench in benches:
            before = conn.stats()
            dt, r = run_side(bench, "picograd")
            after = conn.stats()
            del r
            c0, c1 = jit_counters(before), jit_counters(after)
            cold.append((bench.name, dt, c1[0] - c0[0] if c0 and c1 else None,
                         c1[1] - c0[1] if c0 and c1 else None))

        for bench in benches:
            rounds = run_bench(bench, cfg)
            t = {s: statistics.median(v) for s, v in bench.times.items()}
            print("  %s: %d rounds; %s" % (bench.name, rounds, ", ".join(
                "%s %.2f ms" % (s, v * 1e3) for s, v in t.items())))
            sys.stdout.flush()

        # The dispatch graph: its cold run first, then the interleaved blocks.
        x4 = pg.tensor(np.ones(4, dtype=np.float32))
        y = x4
        for _ in range(CHAIN_NODES - 1):
            y = y + x4
        before = conn.stats()
        t0 = time.perf_counter()
        pg.realize(y)
        dt = time.perf_counter() - t0
        after = conn.stats()
        c0, c1 = jit_counters(before), jit_counters(after)
        cold.append(("%d-node add chain, 4 elements" % CHAIN_NODES, dt,
                     c1[0] - c0[0] if c0 and c1 else None, c1[1] - c0[1] if c0 and c1 else None))
        del y, x4
        disp = bench_dispatch(pg, conn, tm, *cfg["disp"])
        print("  dispatch: %d calls each; ping %.1f µs, run %.1f µs%s" % (
            len(disp["ping"]), statistics.median(disp["ping"]) * 1e6,
            statistics.median(disp["run"]) * 1e6,
            " (%.1f µs in the daemon)" % statistics.median(
                b["seconds"] for b in disp["daemon"]["run"]) if disp["daemon"]["run"] else ""))
        sys.stdout.flush()

        triad2, _ = measure_triad(so, cfg["triad_reps"])
        conn.close()
        elapsed = time.perf_counter() - t_start
    except Exception:
        errors.append(traceback.format_exc().rstrip())
    finally:
        if daemon is not None:
            status = daemon.stop()
            if status not in (0, None):
                errors.append("picogradd exited with status %s; log tail:\n%s"
                              % (status, daemon.tail()))

    if errors:
        print("\nfused.py FAILED (files kept in %s):" % tmp, file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(tmp, ignore_errors=True)

    # -- tables ---------------------------------------------------------------------------------
    triad_all = triad1 + triad2
    triad_bw = triad_bytes / statistics.median(triad_all) / 1e9
    lines = [
        machine,
        "C baseline: `%s`, %d OpenMP threads. Daemon: %s." % (c_cmd, c_threads, cache_note),
        "Triad (a[i] = b[i] + s*c[i], 3 x 64 MiB float64, 2 threads): median %.1f GB/s "
        "(start %.1f, end %.1f, best %.1f)"
        % (triad_bw, triad_bytes / statistics.median(triad1) / 1e9,
           triad_bytes / statistics.median(triad2) / 1e9, triad_bytes / min(triad_all) / 1e9),
        "",
        "| benchmark | picograd ms | numpy ms | torch ms | C ms | vs numpy | vs torch | vs C "
        "| GB/s | % triad |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    side_bw = []
    for bench in benches:
        t = {s: statistics.median(v) for s, v in bench.times.items()}
        pgt = t["picograd"]
        bw = bench.nbytes / pgt / 1e9
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %.0f %% |" % (
            bench.name, ms(pgt), ms(t.get("numpy")), ms(t.get("torch")), ms(t.get("C")),
            ratio(t.get("numpy"), pgt), ratio(t.get("torch"), pgt), ratio(t.get("C"), pgt),
            bw, 100 * bw / triad_bw))
        side_bw.append((bench, t))
    lines.append("| triad (C, 2 threads) | - | - | - | %s | - | - | - | %.2f | 100 %% |"
                 % (ms(statistics.median(triad_all)), triad_bw))
    lines += [
        "",
        "Medians of %s rounds per benchmark, every side once per round in a rotating order. "
        "vs X = X ms / picograd ms (above 1: picograd is faster). GB/s = the bytes one pass must "
        "move (inputs read once, output written once; GB = 10^9) / picograd's median; %% triad "
        "compares it with the triad's median." % "/".join(
            str(len(b.times["picograd"])) for b in benches),
        "",
        "Effective bandwidth of every side (GB/s, % triad):",
        "",
        "| benchmark | MB moved | picograd | numpy | torch | C |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for bench, t in side_bw:
        cells = []
        for s in ("picograd", "numpy", "torch", "C"):
            if s in t:
                bw = bench.nbytes / t[s] / 1e9
                cells.append("%.2f (%.0f %%)" % (bw, 100 * bw / triad_bw))
            else:
                cells.append("-")
        lines.append("| %s | %.1f | %s |" % (bench.name, bench.nbytes / 1e6, " | ".join(cells)))

    lines += ["", "Cold runs (the first run of each graph on the fresh daemon, %s):" % cache_note,
              ""]
    if counters is None:
        lines += ["The daemon's `stats` reports no `compile_seconds` / `kernels.compiled`: it "
                  "compiles nothing (reference interpreter), so there is no compile time to "
                  "report.", "",
                  "| graph | first run ms |", "|---|---:|"]
        lines += ["| %s | %.2f |" % (name, dt * 1e3) for name, dt, _, _ in cold]
    else:
        lines += ["| graph | first run ms | kernels compiled | compile s | ms per kernel |",
                  "|---|---:|---:|---:|---:|"]
        per_kernel = []
        for name, dt, secs, n in cold:
            pk = secs / n * 1e3 if n else None
            if pk is not None:
                per_kernel.append(pk)
            lines.append("| %s | %.2f | %d | %.3f | %s |"
                         % (name, dt * 1e3, n, secs, "%.1f" % pk if pk is not None else "-"))
        lines += ["", "Cold compile time per kernel: median %s ms over %d graphs."
                  % ("%.1f" % statistics.median(per_kernel) if per_kernel else "-",
                     len(per_kernel))]

    pm = statistics.median(disp["ping"]) * 1e6
    rm = statistics.median(disp["run"]) * 1e6
    zm = statistics.median(disp["realize"]) * 1e6

    def in_daemon(side):
        """The side's in-daemon cells: total and phases, medians over the blocks (µs)."""
        blocks = disp["daemon"][side]
        if not blocks:
            return ["-"] * (1 + len(RUN_PHASES))
        return ["%.1f" % statistics.median(b[k] for b in blocks)
                for k in ("seconds",) + RUN_PHASES]

    lines += [
        "",
        "Dispatch of a cached %d-node graph (a chain of adds on 4 float32), median of %d calls "
        "each, interleaved in blocks of %d:" % (CHAIN_NODES, len(disp["ping"]), DISP_BLOCK),
        "",
        "| call | median µs | minus ping µs | in daemon µs | prepare | plan | execute |",
        "|---|---:|---:|---:|---:|---:|---:|",
        "| `ping` (transport floor) | %.1f | - | - | - | - | - |" % pm,
        "| `run`, prebuilt nodes, result inline | %.1f | %.1f | %s |"
        % (rm, rm - pm, " | ".join(in_daemon("run"))),
        "| `pg.realize(y)`, graph rebuilt untimed, result kept | %.1f | %.1f | %s |"
        % (zm, zm - pm, " | ".join(in_daemon("realize"))),
        "",
        "Dispatch cost ≈ the `run` row minus ping: decoding, lowering and checking the graph, "
        "the plan (cache) lookup, a compute worker's round trip and the result's allocation. The "
        "realize row adds the client's graph encoding and the free of the previous result "
        "(pipelined in front of the run).",
    ]
    blocks = disp["daemon"]["run"]
    if blocks:
        dm = statistics.median(b["seconds"] for b in blocks)
        misses = sum(b["misses"] for b in blocks + disp["daemon"]["realize"])
        lines += [
            "",
            "In daemon = the growth of `stats` `runs.seconds` over `runs.count` across each block, "
            "median of %d blocks: a worker's time from starting the run to its reply packed and "
            "its temporaries freed; prepare = reading the request, lowering and the graph passes, "
            "plan = the plan-cache lookup, execute = the steps. The rest of the round trip is the "
            "client, the socket, the event loop (which unpacks the frame) and the hand-off to a "
            "worker and back. Plan-cache misses while timing: %d." % (len(blocks), misses),
            "",
            "Target: a plan-cache hit for a %d-node graph dispatched in <= %.0f µs inside the "
            "daemon: **%s** (%.1f µs, the prebuilt `run`)."
            % (CHAIN_NODES, DISP_TARGET_US, "met" if dm <= DISP_TARGET_US else "not met", dm),
        ]
    else:
        lines += ["", "The daemon's `stats` has no `runs` counters: no in-daemon time to report."]
    lines += [
        "",
        "Measured in %.0f s." % elapsed,
    ]
    table = "\n".join(lines) + "\n"
    print()
    print(table, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
