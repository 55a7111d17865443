"""Helpers of the op conformance suite (tests/integration/test_conformance_*.py).

The suite checks every op of picograd's lazy Tensor API (and of the daemon's `run`) against an
oracle: numpy for values (computed in float64, or exactly for integers and bools), torch 1.13 on
the CPU for the dtype and shape PyTorch gives (the client promises PyTorch semantics), and torch
itself for the values of the NN primitives (conv2d, pooling, losses, ...), computed in float64.

How to add an op to the suite:
  1. Write the op once as ``fn(m, *xs)``, where ``m`` is a module (``torch`` or ``picograd``) and
     ``xs`` its tensors, e.g. ``lambda m, x: m.exp(x)`` or ``lambda m, x, y: x.maximum(y)``. The
     same code runs in torch (which gives the expected dtype and shape, and says by raising that a
     dtype is not applicable) and in picograd.
  2. Give a numpy reference ``ref(*arrays)`` (inputs arrive as float64 unless ``exact_ref``), or
     none to compare with torch in float64 ("native": torch in the inputs' own dtypes, for
     overflow and special values).
  3. Make inputs with ``make_input(rng, shape, dtype, domain, layout)``: random data in the op's
     domain ("pos" for log, "nonzero" for divisors, ...), laid out in picograd as a contiguous
     upload or as a non-contiguous view (permute, slice with steps, expand) of one.
  4. Call ``Report.check(ctx, fn, inputs, ref)`` for each case; ``Report.finish()`` fails the test
     with every failing case listed (input description, expected, got).

Tolerances: float64 rtol 1e-10 / atol 1e-12, float32 rtol 1e-5 / atol 1e-6, atol scaled by ``n``
(the number of elements reduced into one result); integer and bool results must be exact.
"""

import math
import warnings
import zlib

import numpy as np
import pytest
import torch

import picograd as pg

FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
DTYPES = FLOATS + INTS + ("bool",)
LAYOUTS = ("contig", "permute", "slice", "expand")

# Data of a dtype is never all zeros, and each op gets data from its domain.
_INT_RANGES = {          # inclusive bounds of random ints per domain
    "any": (-50, 50),
    "pos": (1, 100),
    "nonneg": (0, 100),
    "small": (-5, 5),
    "ties": (-3, 3),
    "exp": (-15, 15),
    "unit": (-2, 2),
    "base": (1, 5),
    "expo": (0, 4),
    "wide": (-(1 << 30), 1 << 30),
    "frac": (-3, 3),
}

warnings.filterwarnings("ignore", message=".*non-writable tensors.*")
warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def torch_dtype_name(dt):
    """'float32' for torch.float32 (and the like)."""
    return str(dt).replace("torch.", "")


def gen(rng, shape, dtype, domain="any"):
    """A random numpy array of ``shape`` and ``dtype`` with values from ``domain``.

    Domains: any (normal*2, ints -50..50), pos (> 0), nonneg, nonzero (|x| >= 0.2, ints != 0),
    small (|x| <= 3 or 5), ties (few distinct values, so == and argmax ties happen), exp (safe for
    exp), unit (|x| in [0.5, 1.5] with random sign: safe for prod), base (positive pow base),
    expo (pow exponent), wide (ints over about +-2^30, floats over about +-1e6), frac (floats
    k * 0.65 for small k, so zeros, fractions and negatives to truncate), mostly (about 12%
    zeros, bools 85% true: for all()).
    """
    shape = tuple(int(d) for d in shape)
    if dtype == "bool":
        if domain == "mostly":
            return np.asarray(rng.random(shape) < 0.85)
        if domain in ("pos", "nonzero", "base"):
            return np.asarray(rng.random(shape) < 0.8) if shape else np.ones((), dtype=bool)
        return np.asarray(rng.random(shape) < 0.5)
    if dtype in FLOATS:
        if domain == "any":
            a = rng.standard_normal(shape) * 2
        elif domain == "pos":
            a = rng.uniform(0.1, 4.0, shape)
        elif domain == "nonneg":
            a = rng.uniform(0.0, 4.0, shape)
        elif domain == "nonzero":
            a = rng.uniform(0.2, 4.0, shape) * rng.choice([-1.0, 1.0], shape)
        elif domain == "small":
            a = rng.uniform(-3.0, 3.0, shape)
        elif domain == "ties":
            a = rng.integers(-3, 4, shape).astype(np.float64) / 2
        elif domain == "exp":
            a = rng.uniform(-8.0, 8.0, shape)
        elif domain == "unit":
            a = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        elif domain == "base":
            a = rng.uniform(0.5, 2.5, shape)
        elif domain == "expo":
            a = rng.uniform(-2.0, 2.0, shape)
        elif domain == "wide":
            a = rng.standard_normal(shape) * 1e6
        elif domain == "frac":
            a = rng.integers(-8, 9, shape) * 0.65
        elif domain == "mostly":
            a = np.where(rng.random(shape) < 0.12, 0.0, rng.standard_normal(shape) + 0.01)
        else:
            raise ValueError(domain)
        a = np.asarray(a)
        if domain not in ("ties", "frac", "mostly"):  # these want some zeros
            a = np.where(a == 0, 0.5, a)
        return a.astype(dtype)
    if domain == "nonzero":
        a = rng.integers(1, 51, shape) * rng.choice([-1, 1], shape)
        return np.asarray(a).astype(dtype)
    if domain == "mostly":
        a = np.where(rng.random(shape) < 0.12, 0, rng.integers(1, 10, shape))
        return np.asarray(a).astype(dtype)
    lo, hi = _INT_RANGES[domain]
    return np.asarray(rng.integers(lo, hi, shape, endpoint=True)).astype(dtype)


def make_input(rng, shape, dtype, domain="any", layout="contig"):
    """Returns (numpy array, picograd tensor) holding the same random values of ``shape``.

    layout: "contig" uploads the array; "permute" uploads it transposed and permutes it back;
    "slice" uploads a larger random array and takes every 2nd (last axis: 3rd) element from
    index 1; "expand" uploads an array with some dims of size 1 (and maybe one fewer leading dim)
    and expands it, so the numpy array is that array broadcast. Rank 0 is always contiguous, and
    "permute" needs rank >= 2.
    """
    shape = tuple(int(d) for d in shape)
    r = len(shape)
    if layout == "contig" or r == 0 or (layout == "permute" and r < 2):
        a = gen(rng, shape, dtype, domain)
        return a, pg.from_numpy(a.copy())
    if layout == "permute":
        a = gen(rng, shape, dtype, domain)
        perm = tuple(reversed(range(r)))
        base = np.ascontiguousarray(a.transpose(perm))
        return a, pg.from_numpy(base).permute(*perm)
    if layout == "slice":
        a = gen(rng, shape, dtype, domain)
        steps = [2] * (r - 1) + [3]
        big = gen(rng, [d * s + 1 for d, s in zip(shape, steps)], dtype, domain)
        idx = tuple(slice(1, None, s) for s in steps)
        big[idx] = a
        return a, pg.from_numpy(big)[idx]
    if layout == "expand":
        base_shape = list(shape)
        candidates = [i for i, d in enumerate(shape) if d != 1]
        if candidates:  # expand at least one real dim
            base_shape[candidates[int(rng.integers(len(candidates)))]] = 1
        for i in range(r):
            if rng.random() < 0.3:
                base_shape[i] = 1
        if r >= 2 and rng.random() < 0.5:
            base_shape = base_shape[1:]  # expand adds a leading dim
        base = gen(rng, base_shape, dtype, domain)
        a = np.broadcast_to(base, shape).copy()
        return a, pg.from_numpy(base).expand(*shape)
    raise ValueError(layout)


def describe(a):
    """A short description of a numpy input for failure messages."""
    s = f"{a.dtype}{list(a.shape)}"
    if a.size <= 6:
        s += f"={a.tolist()!r}"
    return s


def tolerance(dtype, n=1):
    """(rtol, atol) for results of ``dtype`` with ``n`` elements reduced into each."""
    n = max(int(n), 1)
    if dtype == "float64":
        return 1e-10, 1e-12 * n
    if dtype == "float32":
        return 1e-5, 1e-6 * n
    return 0.0, 0.0


def compare(got, want, dtype, n=1, rtol=None, atol=None):
    """Returns None when numpy array ``got`` matches ``want`` for a result of ``dtype``, else why.

    Integers and bools must be equal; floats within the tolerance, with NaN and +-inf where
    ``want`` has them.
    """
    want = np.asarray(want)
    if got.shape != want.shape:
        return f"shape {list(got.shape)}, expected {list(want.shape)}"
    if got.size == 0:
        return None
    if dtype not in FLOATS:
        w = want.astype(dtype)
        if np.array_equal(got, w):
            return None
        bad = np.argwhere(got != w)
        i = tuple(bad[0])
        return (f"{len(bad)} of {got.size} elements differ; first at {list(i)}: got "
                f"{got[i]!r}, expected {w[i]!r}" + _small(got, w))
    dr, da = tolerance(dtype, n)
    rtol = dr if rtol is None else rtol
    atol = da if atol is None else atol
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        nan_bad = np.isnan(g) != np.isnan(w)
        inf_w = np.isinf(w)
        inf_bad = (np.isinf(g) != inf_w) | (inf_w & (g != w))
        fin = np.isfinite(w) & np.isfinite(g)
        err = np.where(fin, np.abs(g - w), 0.0)
        bad = nan_bad | inf_bad | (err > atol + rtol * np.abs(np.where(fin, w, 0.0)))
    if not bad.any():
        return None
    idx = np.argwhere(bad)
    i = tuple(idx[0])
    worst = float(err.max()) if fin.any() else float("nan")
    return (f"{len(idx)} of {got.size} elements off (rtol {rtol:g}, atol {atol:g}); first at "
            f"{list(i)}: got {g[i]!r}, expected {w[i]!r}; max abs err {worst:.3g}" + _small(g, w))


def _small(g, w):
    if g.size <= 8:
        return f"; got {g.tolist()!r}, expected {w.tolist()!r}"
    return ""


def _to_torch(a):
    return torch.from_numpy(np.array(a, order="C", copy=True))


def _as_list(x):
    return list(x) if isinstance(x, (tuple, list)) else [x]


class Report:
    """Collects the failing cases of one test and fails it once, listing all of them."""

    MAX_LINES = 40

    def __init__(self):
        self.failures = []
        self.passed = 0
        self.skipped = 0

    def fail(self, ctx, why):
        self.failures.append(f"{ctx}: {why}")

    def check(self, ctx, fn, inputs, ref=None, n=1, rtol=None, atol=None, exact_ref=False,
              ref_dtype=None):
        """Checks one case; returns True if it passed (or is not applicable in torch).

        ``fn(m, *tensors)``: the op, run by torch on the numpy inputs and by picograd on the
        picograd inputs. ``inputs``: (numpy array, picograd tensor) pairs, or plain Python values
        passed unchanged to both. ``ref(*arrays)``: the numpy reference; array inputs arrive as
        float64 (or unchanged with ``exact_ref``); it may return a tuple for tuple results. When
        ``ref`` is None, torch on float64 copies of the float inputs is the reference; "native"
        takes torch's results in the inputs' own dtypes (float32 overflow included).
        ``ref_dtype`` overrides the expected dtype name(s) (default: what torch gives).
        """
        arrays = [x[0] if isinstance(x, tuple) else x for x in inputs]
        tensors = [x[1] if isinstance(x, tuple) else x for x in inputs]
        t_in = [_to_torch(a) if isinstance(a, np.ndarray) else a for a in arrays]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t_out = fn(torch, *t_in)
        except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError):
            self.skipped += 1
            return True  # torch refuses it: not applicable
        t_outs = _as_list(t_out)
        want_dtypes = ([torch_dtype_name(t.dtype) for t in t_outs] if ref_dtype is None
                       else _as_list(ref_dtype))
        want_shapes = [tuple(t.shape) for t in t_outs]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(ref, str) and ref == "native":
                wants = [t.detach().numpy() for t in t_outs]
            elif ref is None:
                t64 = [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                       for x in t_in]
                wants = [t.detach().numpy() for t in _as_list(fn(torch, *t64))]
            else:
                r_in = [a.astype(np.float64) if isinstance(a, np.ndarray) and not exact_ref
                        else a for a in arrays]
                wants = [np.asarray(w) for w in _as_list(ref(*r_in))]
        try:
            got = fn(pg, *tensors)
        except Exception as exc:  # noqa: BLE001 - reported as a failing case
            self.fail(ctx, f"raised {type(exc).__name__}: {exc}")
            return False
        gots = _as_list(got)
        if len(gots) != len(t_outs):
            self.fail(ctx, f"returned {len(gots)} results ({type(got).__name__}), expected "
                           f"{len(t_outs)}")
            return False
        ok = True
        for k, (g, wd, ws, w) in enumerate(zip(gots, want_dtypes, want_shapes, wants)):
            label = ctx if len(gots) == 1 else f"{ctx} [result {k}]"
            why = self._check_tensor(g, wd, ws, w, n, rtol, atol)
            if why:
                self.fail(label, why)
                ok = False
        if ok:
            self.passed += 1
        return ok

    @staticmethod
    def _check_tensor(g, want_dtype, want_shape, want, n, rtol, atol):
        try:
            dt = g.dtype
            shape = tuple(g.shape)
        except Exception as exc:  # noqa: BLE001
            return f"no dtype/shape: {type(exc).__name__}: {exc}"
        problems = []
        if dt != getattr(pg, want_dtype, want_dtype):
            problems.append(f"dtype {dt}, expected {want_dtype}")
        if shape != want_shape:
            problems.append(f"shape {list(shape)}, expected {list(want_shape)}")
        try:
            arr = g.numpy()
        except Exception as exc:  # noqa: BLE001
            return "; ".join(problems + [f".numpy() raised {type(exc).__name__}: {exc}"])
        if not isinstance(arr, np.ndarray):
            return "; ".join(problems + [f".numpy() returned {type(arr).__name__}"])
        if arr.dtype != np.dtype(want_dtype):
            problems.append(f"numpy dtype {arr.dtype}, expected {want_dtype}")
            if arr.dtype.kind != np.dtype(want_dtype).kind:
                return "; ".join(problems)
        why = compare(arr, np.broadcast_to(want, want_shape) if want.shape != want_shape
                      and want.size == 1 else want, want_dtype, n, rtol, atol)
        if why:
            problems.append(why)
        return "; ".join(problems) or None

    def expect_equal(self, ctx, got, want, dtype=None, n=1, rtol=None, atol=None):
        """Compares a numpy array already fetched from picograd with ``want``."""
        got = np.asarray(got)
        dtype = dtype or str(np.asarray(want).dtype)
        problems = []
        if got.dtype != np.dtype(dtype):
            problems.append(f"dtype {got.dtype}, expected {dtype}")
        why = compare(got, want, dtype, n, rtol, atol)
        if why:
            problems.append(why)
        if problems:
            self.fail(ctx, "; ".join(problems))
            return False
        self.passed += 1
        return True

    def finish(self, min_passed=1):
        """Fails the test when any case failed (listing them) or fewer than ``min_passed`` ran."""
        if self.failures:
            lines = self.failures[:self.MAX_LINES]
            more = len(self.failures) - len(lines)
            text = "\n".join(lines) + (f"\n... and {more} more" if more > 0 else "")
            pytest.fail(f"{len(self.failures)} failing case(s), {self.passed} passed:\n{text}",
                        pytrace=False)
        assert self.passed >= min_passed, (f"only {self.passed} cases ran "
                                           f"({self.skipped} not applicable in torch)")


# ---------------------------------------------------------------------------------------------
# Fixtures (import them into a test module: `from conformance_util import conn, rng`)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    """One picogradd for a whole test module (starting one per test would dominate the time).

    It is checked like conftest's daemons at the end (exit status 0 after SIGTERM, no sanitizer
    report); a test during which it dies fails, and the next test gets a fresh one.
    """
    from conftest import Daemon  # the integration tests' daemon runner

    d = Daemon(tmp_path_factory.mktemp("conformance"), name="pg")
    d.start()
    yield d
    d.teardown()


@pytest.fixture
def conn(shared_daemon):
    """A Connection (a fresh session) to the module's daemon, made picograd's default."""
    d = shared_daemon
    if d.proc.poll() is not None:  # an earlier test killed it: that test already failed
        d.start()
    c = pg.connect(d.unix_url)
    yield c
    c.close()
    if d.proc.poll() is not None:
        log = d.log()[-4000:]
        d.expect_clean_exit = False
        pytest.fail(f"picogradd died (status {d.proc.returncode}) during this test:\n{log}",
                    pytrace=False)
    d.check_log()


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's id: the same data on every run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def reduced_count(shape, dims):
    """Elements reduced into each result for a reduction of ``shape`` over ``dims`` (None: all)."""
    if dims is None:
        return max(math.prod(shape), 1)
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    return max(math.prod(shape[d] for d in dims), 1)


def torch_accepts(fn, *dtypes, shape=(3,)):
    """Whether torch runs ``fn(torch, *tensors)`` on ones of these dtypes (an applicable case)."""
    xs = [torch.ones(shape, dtype=getattr(torch, d)) for d in dtypes]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(torch, *xs)
    except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError):
        return False
    return True
