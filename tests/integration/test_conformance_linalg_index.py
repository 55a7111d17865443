"""Conformance of matmul, gather and index_select against numpy (values) and torch (dtypes).

matmul in every torch.matmul form (1-D x 1-D, 2-D, 1-D x 2-D, 2-D x 1-D, batched with broadcast
batch dims, size-0 and size-1 dims, odd sizes) on float32/float64 (BLAS) and integers (exact),
with transposed, sliced and expanded operands; gather and index_select with random valid indices
(repeats included) on every dtype, with non-contiguous data and index tensors.
"""

import numpy as np
import pytest

import picograd as pg
from conformance_util import DTYPES, LAYOUTS, Report, describe, make_input
from conformance_util import conn, rng, shared_daemon  # noqa: F401 (fixtures)

MATMUL_SHAPES = [
    ((7,), (7,)), ((1,), (1,)), ((13,), (13, 5)), ((3, 13), (13,)), ((3, 7), (7, 5)),
    ((1, 1), (1, 1)), ((13, 1), (1, 7)), ((5, 0), (0, 3)), ((0, 4), (4, 3)), ((4, 3), (3, 0)),
    ((2, 3, 7), (7, 5)), ((7,), (2, 7, 5)), ((2, 3, 7), (7,)), ((2, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 6)), ((1, 3, 4), (2, 1, 4, 2)), ((2, 1, 2, 3, 4), (3, 1, 4, 2)),
    ((0, 3, 4), (4, 2)), ((33, 65), (65, 17)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_matmul(conn, rng, dtype):
    rep = Report()
    domain = "any" if dtype.startswith("float") else "small"
    forms = [("@", lambda m, a, b: a @ b), ("pg.matmul", lambda m, a, b: m.matmul(a, b)),
             ("x.matmul", lambda m, a, b: a.matmul(b))]
    for layout in LAYOUTS:
        for k, (sa, sb) in enumerate(MATMUL_SHAPES):
            a = make_input(rng, sa, dtype, domain, layout)
            b = make_input(rng, sb, dtype, domain, LAYOUTS[(k + 1) % 4])
            inner = sa[-1]
            name, fn = forms[k % 3]
            rep.check(f"{describe(a[0])} {name} {describe(b[0])} ({layout}, "
                      f"{LAYOUTS[(k + 1) % 4]})", fn, [a, b], np.matmul, n=inner)
    rep.finish()


def test_matmul_mixed_with_elementwise(conn, rng):
    """relu(x @ w.T + b): the result of a BLAS matmul feeding broadcasting ops, and a chain."""
    rep = Report()
    for dtype in ("float32", "float64"):
        x = make_input(rng, (9, 13), dtype)
        w = make_input(rng, (6, 13), dtype)
        b = make_input(rng, (6,), dtype)
        rep.check(f"relu(x @ w.T + b) {dtype}", lambda m, x, w, b: (x @ w.T + b).relu(),
                  [x, w, b], lambda x, w, b: np.maximum(x @ w.T + b, 0), n=13)
        c = make_input(rng, (6, 4), dtype)
        rep.check(f"(x @ w.T) @ c {dtype}", lambda m, x, w, c: (x @ w.T) @ c, [x, w, c],
                  lambda x, w, c: (x @ w.T) @ c, n=13 * 6 * 4)
    rep.finish()


def _gather_ref(x, dim, idx):
    """torch.gather: out[i][j][k] = x[i][idx[i][j][k]][k] (dim 1), index may be smaller."""
    if x.ndim == 0:
        return x.reshape(()) if idx.ndim == 0 else x.reshape(1)[idx]
    sl = tuple(slice(0, n) if d != dim else slice(None) for d, n in enumerate(idx.shape))
    return np.take_along_axis(x[sl], idx, axis=dim)


GATHER_CASES = [((7,), 0, (7,)), ((7,), 0, (12,)), ((5, 6), 0, (3, 6)), ((5, 6), 1, (5, 9)),
                ((5, 6), -1, (2, 4)), ((3, 4, 5), 2, (3, 4, 2)), ((3, 4, 5), 1, (2, 7, 5)),
                ((3, 4, 5), 0, (3, 4, 5)), ((2, 3, 1, 4), 3, (2, 3, 1, 6)), ((4, 5), 1, (4, 0)),
                ((2, 1, 3, 2, 3), 2, (2, 1, 5, 2, 3))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather(conn, rng, dtype):
    rep = Report()
    for layout in LAYOUTS:
        for xs, dim, ishape in GATHER_CASES:
            x = make_input(rng, xs, dtype, "any", layout)
            idx = _index_tensor(rng.integers(0, xs[dim], ishape).astype(np.int64), layout)
            rep.check(f"gather({describe(x[0])}, {dim}, index {describe(idx[0])}, {layout})",
                      lambda m, t, i, d=dim: t.gather(d, i), [x, idx],
                      lambda a, i, d=dim: _gather_ref(a, d % a.ndim, i), exact_ref=True)
            rep.check(f"pg.gather({describe(x[0])}, {dim}, index {describe(idx[0])}, {layout})",
                      lambda m, t, i, d=dim: m.gather(t, d, i), [x, idx],
                      lambda a, i, d=dim: _gather_ref(a, d % a.ndim, i), exact_ref=True)
    rep.finish()


def _index_tensor(idx_np, layout):
    """A picograd tensor holding ``idx_np``, laid out like make_input's ``layout`` (no expand)."""
    if layout == "permute" and idx_np.ndim >= 2:
        perm = tuple(reversed(range(idx_np.ndim)))
        return idx_np, pg.from_numpy(np.ascontiguousarray(idx_np.transpose(perm))).permute(*perm)
    if layout == "slice" and idx_np.ndim >= 1:
        big = np.full((idx_np.shape[0] * 2 + 1,) + idx_np.shape[1:], -7, idx_np.dtype)
        big[1::2] = idx_np
        return idx_np, pg.from_numpy(big)[1::2]
    return idx_np, pg.from_numpy(idx_np.copy())


INDEX_SELECT_CASES = [((7,), 0, 5), ((7,), 0, 0), ((7,), -1, 12), ((5, 6), 0, 3), ((5, 6), 1, 9),
                      ((3, 4, 5), 2, 7), ((3, 4, 5), -2, 1), ((3, 0, 5), 0, 4),
                      ((2, 3, 1, 4, 2), 3, 6)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_index_select(conn, rng, dtype):
    rep = Report()
    for layout in LAYOUTS:
        for xs, dim, n in INDEX_SELECT_CASES:
            x = make_input(rng, xs, dtype, "any", layout)
            for idx_dtype in ("int64", "int32"):
                idx_np = rng.integers(0, xs[dim], (n,)).astype(idx_dtype)
                idx = _index_tensor(idx_np, layout)
                rep.check(f"index_select({describe(x[0])}, {dim}, {describe(idx[0])}, "
                          f"{layout})", lambda m, t, i, d=dim: t.index_select(d, i), [x, idx],
                          lambda a, i, d=dim: np.take(a, i, axis=d), exact_ref=True)
            rep.check(f"pg.index_select({describe(x[0])}, {dim}, {describe(idx[0])}, {layout})",
                      lambda m, t, i, d=dim: m.index_select(t, d, i), [x, idx],
                      lambda a, i, d=dim: np.take(a, i, axis=d), exact_ref=True)
    rep.finish()


def test_index_ops_feed_arithmetic(conn, rng):
    """Gathered and selected values used by later ops (the planner sees index outputs)."""
    rep = Report()
    x = make_input(rng, (6, 8), "float64", "any", "permute")
    idx = _index_tensor(rng.integers(0, 8, (6, 3)).astype(np.int64), "contig")
    sel = _index_tensor(rng.integers(0, 6, (4,)).astype(np.int64), "contig")
    rep.check("x.gather(1, idx).sum(1) * 2", lambda m, t, i: t.gather(1, i).sum(1) * 2, [x, idx],
              lambda a, i: np.take_along_axis(a, i, 1).sum(1) * 2, exact_ref=True, n=3)
    rep.check("x.index_select(0, sel).exp().mean(0)",
              lambda m, t, s: t.index_select(0, s).exp().mean(0), [x, sel],
              lambda a, s: np.exp(np.take(a, s, 0)).mean(0), exact_ref=True, n=4)
    rep.finish()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_large_matmul_and_index(conn, rng, layout):
    """Past the interpreter's parallel threshold, on strided operands."""
    rep = Report()
    for dtype in ("float32", "float64", "int64"):
        dom = "small" if dtype == "int64" else "any"
        a = make_input(rng, (96, 300), dtype, dom, layout)
        b = make_input(rng, (300, 80), dtype, dom, "permute")
        rep.check(f"{describe(a[0])} @ {describe(b[0])} ({layout})", lambda m, x, y: x @ y,
                  [a, b], np.matmul, n=300)
        c = make_input(rng, (4, 50, 60), dtype, dom, layout)
        d = make_input(rng, (60, 70), dtype, dom, "slice")
        rep.check(f"{describe(c[0])} @ {describe(d[0])} ({layout})", lambda m, x, y: x @ y,
                  [c, d], np.matmul, n=60)
    x = make_input(rng, (300, 257), "float64", "any", layout)
    idx = _index_tensor(rng.integers(0, 257, (300, 400)).astype(np.int64), layout)
    rep.check(f"gather({describe(x[0])}, 1, {describe(idx[0])}, {layout})",
              lambda m, t, i: t.gather(1, i), [x, idx],
              lambda a, i: np.take_along_axis(a, i, axis=1), exact_ref=True)
    sel = _index_tensor(rng.integers(0, 300, (500,)).astype(np.int64), layout)
    rep.check(f"index_select({describe(x[0])}, 0, {describe(sel[0])}, {layout})",
              lambda m, t, i: t.index_select(0, i), [x, sel],
              lambda a, i: np.take(a, i, axis=0), exact_ref=True)
    rep.finish()
