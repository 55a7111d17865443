"""Conformance of picograd's reductions and scans against numpy (values) and torch 1.13 (dtypes).

sum mean prod max min any all var std logsumexp argmax argmin cumsum: over everything, over each
axis (positive and negative), over tuples of axes where torch takes them, with and without
keepdim, on rank 0 to 5, size-0 and size-1 dims, non-contiguous inputs and every dtype torch
accepts (sum/prod/cumsum of bool and int32 give int64; mean/var/std of ints are refused by torch
and not tested). Float tolerances grow with the number of elements reduced into one result.
"""

import numpy as np
import pytest

import picograd as pg
from conformance_util import (DTYPES, LAYOUTS, Report, describe, make_input, reduced_count,
                              torch_accepts)
from conformance_util import conn, rng, shared_daemon  # noqa: F401 (fixtures)

CONTIG_SHAPES = [(), (1,), (7,), (0,), (3, 7), (13, 1), (3, 0), (2, 3, 5), (2, 1, 3, 4),
                 (2, 3, 1, 2, 3)]
STRIDED_SHAPES = [(3, 7), (2, 3, 5), (0, 4), (2, 1, 3, 4)]


def _axes(dims, ndim):
    if dims is None:
        return None
    dims = dims if isinstance(dims, tuple) else (dims,)
    return tuple(d % max(ndim, 1) for d in dims) if ndim else ()


def _np_reduce(f, keepdim_default=False):
    """A reference f(a, axis, keepdims) adapted to rank-0 inputs (where dim 0 / -1 is allowed)."""
    def ref(a, dims, keepdim):
        if a.ndim == 0:
            return np.asarray(f(a.reshape(1), axis=0, keepdims=False)).reshape(())
        return f(a, axis=_axes(dims, a.ndim), keepdims=keepdim)
    return ref


def _var(ddof):
    return lambda a, axis, keepdims: np.var(a, axis=axis, ddof=ddof, keepdims=keepdims)


def _std(ddof):
    return lambda a, axis, keepdims: np.std(a, axis=axis, ddof=ddof, keepdims=keepdims)


def _logsumexp(a, axis, keepdims):
    if a.size == 0:
        return np.log(np.sum(np.exp(a), axis=axis, keepdims=keepdims))
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    r = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return r if keepdims else np.squeeze(r, axis=axis if axis is not None else None)


def _any(a, axis, keepdims):
    return np.any(a != 0, axis=axis, keepdims=keepdims)


def _all(a, axis, keepdims):
    return np.all(a != 0, axis=axis, keepdims=keepdims)


# name: (method name, numpy reference f(a, axis, keepdims), domain, takes a tuple of dims,
#        extra keyword arguments)
REDUCE = {
    "sum": ("sum", np.sum, "any", True, {}),
    "mean": ("mean", np.mean, "any", True, {}),
    "prod": ("prod", np.prod, "unit", False, {}),
    "any": ("any", _any, "ties", False, {}),
    "all": ("all", _all, "mostly", False, {}),
    "var": ("var", _var(1), "any", True, {}),
    "var_unbiased_false": ("var", _var(0), "any", True, {"unbiased": False}),
    "std": ("std", _std(1), "any", True, {}),
    "std_unbiased_false": ("std", _std(0), "any", True, {"unbiased": False}),
    "logsumexp": ("logsumexp", _logsumexp, "any", True, {}),
}


def _dim_variants(ndim, tuples):
    """None (all), each axis, -1, and (where supported) a tuple of the first and last axis."""
    out = [None]
    if ndim == 0:
        return out + [0, -1]
    out += list(range(ndim)) + [-1]
    if tuples and ndim >= 2:
        out += [(0, ndim - 1), (-1, 0)]
    if tuples and ndim >= 3:
        out += [(0, 1, 2)]
    return out


def _reduce_cases(rep, rng, name, dtype, layouts_shapes):
    meth, f, domain, tuples, kwargs = REDUCE[name]
    ref = _np_reduce(f)
    for layout, shapes in layouts_shapes:
        for shape in shapes:
            x = make_input(rng, shape, dtype, domain, layout)
            for dims in _dim_variants(len(shape), tuples):
                n = reduced_count(shape, _axes(dims, len(shape)) if shape else None)
                for keepdim in ((False,) if dims is None else (False, True)):
                    if dims is None:
                        fn = (lambda m, t, meth=meth, kw=kwargs: getattr(t, meth)(**kw))
                        if name == "logsumexp":  # torch needs dim: reduce over all of them
                            fn = (lambda m, t: t.logsumexp(dim=tuple(range(len(t.shape))))
                                  if len(t.shape) else t.logsumexp(dim=0))
                    else:
                        fn = (lambda m, t, meth=meth, d=dims, k=keepdim, kw=kwargs:
                              getattr(t, meth)(dim=d, keepdim=k, **kw))
                    rep.check(f"{name}({describe(x[0])}, dim={dims}, keepdim={keepdim}, "
                              f"{layout})", fn, [x],
                              lambda a, d=dims, k=keepdim: ref(a, d, k), n=n)


REDUCE_PARAMS = [(name, dt) for name, (meth, _, _, _, kw) in REDUCE.items() for dt in DTYPES
                 if torch_accepts(lambda m, t, meth=meth, kw=kw: getattr(t, meth)(dim=0, **kw),
                                  dt)]


@pytest.mark.parametrize("name,dtype", REDUCE_PARAMS)
def test_reduce(conn, rng, name, dtype):
    rep = Report()
    _reduce_cases(rep, rng, name, dtype, [("contig", CONTIG_SHAPES)] +
                  [(layout, STRIDED_SHAPES) for layout in LAYOUTS[1:]])
    rep.finish()


def _np_maxmin(is_max):
    def ref(a, dim, keepdim):
        f = np.max if is_max else np.min
        g = np.argmax if is_max else np.argmin
        if a.ndim == 0:
            return a, np.zeros((), np.int64)
        v = f(a, axis=dim, keepdims=keepdim)
        i = g(a, axis=dim)
        if keepdim:
            i = np.expand_dims(i, dim)
        return v, i
    return ref


@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_min(conn, rng, op, dtype):
    """x.max() is a tensor; x.max(dim) is a (values, indices) pair of the first extreme."""
    rep = Report()
    for layout, shapes in [("contig", CONTIG_SHAPES)] + [(lt, STRIDED_SHAPES)
                                                         for lt in LAYOUTS[1:]]:
        for shape in shapes:
            x = make_input(rng, shape, dtype, "ties", layout)
            npf = np.max if op == "max" else np.min
            rep.check(f"{op}({describe(x[0])}, {layout})", lambda m, t: getattr(t, op)(), [x],
                      lambda a: npf(a) if a.size else np.nan)
            for dim in range(-1, len(shape)) if shape else (0, -1):
                for keepdim in (False, True):
                    ref = _np_maxmin(op == "max")
                    rep.check(f"{op}({describe(x[0])}, dim={dim}, keepdim={keepdim}, {layout})",
                              lambda m, t, d=dim, k=keepdim: tuple(getattr(t, op)(dim=d,
                                                                                   keepdim=k)),
                              [x], lambda a, d=dim, k=keepdim: ref(a, d % max(a.ndim, 1), k),
                              exact_ref=True)
    rep.finish()


def test_max_dim_returns_named_pair(conn, rng):
    """torch.return_types.max: .values and .indices, unpackable as a pair."""
    a = rng.integers(-5, 6, (4, 6)).astype(np.float32)
    r = pg.from_numpy(a).max(dim=1)
    values, indices = r
    np.testing.assert_array_equal(r.values.numpy(), a.max(axis=1))
    np.testing.assert_array_equal(r.indices.numpy(), a.argmax(axis=1))
    np.testing.assert_array_equal(values.numpy(), a.max(axis=1))
    np.testing.assert_array_equal(indices.numpy(), a.argmax(axis=1))
    assert indices.dtype == pg.int64
    r = pg.from_numpy(a).min(1, keepdim=True)
    np.testing.assert_array_equal(r.values.numpy(), a.min(axis=1, keepdims=True))
    np.testing.assert_array_equal(r.indices.numpy(), a.argmin(axis=1)[:, None])


@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != "bool"])
def test_argmax_argmin(conn, rng, op, dtype):
    """The index of the first extreme (ties are common in this data), as int64."""
    rep = Report()
    npf = np.argmax if op == "argmax" else np.argmin
    for layout, shapes in [("contig", CONTIG_SHAPES)] + [(lt, STRIDED_SHAPES)
                                                         for lt in LAYOUTS[1:]]:
        for shape in shapes:
            x = make_input(rng, shape, dtype, "ties", layout)
            rep.check(f"{op}({describe(x[0])}, {layout})", lambda m, t: getattr(t, op)(), [x],
                      lambda a: npf(a), exact_ref=True)
            for dim in range(-1, len(shape)) if shape else (0, -1):
                for keepdim in (False, True):
                    def ref(a, d=dim, k=keepdim):
                        if a.ndim == 0:
                            return np.zeros((), np.int64)
                        i = npf(a, axis=d)
                        return np.expand_dims(i, d) if k else i
                    rep.check(f"{op}({describe(x[0])}, dim={dim}, keepdim={keepdim}, {layout})",
                              lambda m, t, d=dim, k=keepdim: getattr(t, op)(dim=d, keepdim=k),
                              [x], ref, exact_ref=True)
    rep.finish()


@pytest.mark.parametrize("dtype", DTYPES)
def test_cumsum(conn, rng, dtype):
    rep = Report()
    for layout, shapes in [("contig", CONTIG_SHAPES)] + [(lt, STRIDED_SHAPES)
                                                         for lt in LAYOUTS[1:]]:
        for shape in shapes:
            x = make_input(rng, shape, dtype, "any", layout)
            for dim in range(-1, len(shape)) if shape else (0, -1):
                n = shape[dim] if shape else 1
                rep.check(f"cumsum({describe(x[0])}, dim={dim}, {layout})",
                          lambda m, t, d=dim: t.cumsum(dim=d), [x],
                          lambda a, d=dim: np.cumsum(a, axis=d) if a.ndim else a, n=n)
                rep.check(f"pg.cumsum({describe(x[0])}, {dim}, {layout})",
                          lambda m, t, d=dim: m.cumsum(t, d), [x],
                          lambda a, d=dim: np.cumsum(a, axis=d) if a.ndim else a, n=n)
    rep.finish()


def test_sum_int32_accumulates_in_int64(conn, rng):
    """sum(int32) is int64 and does not wrap at 2^31 (torch promotes before summing)."""
    rep = Report()
    for shape, dims in (((64,), None), ((8, 16), 1), ((4, 5, 6), (0, 2))):
        x = make_input(rng, shape, "int32", "wide")
        rep.check(f"sum({describe(x[0])}, dim={dims})",
                  lambda m, t, d=dims: t.sum() if d is None else t.sum(dim=d), [x],
                  lambda a, d=dims: np.sum(a.astype(np.int64), axis=d), exact_ref=True)
        rep.check(f"cumsum({describe(x[0])})", lambda m, t: t.cumsum(0), [x],
                  lambda a: np.cumsum(a.astype(np.int64), axis=0), exact_ref=True)
    x = make_input(rng, (3, 1000), "bool")
    rep.check("sum(bool[3, 1000])", lambda m, t: t.sum(dim=1), [x],
              lambda a: a.sum(axis=1), exact_ref=True)
    rep.finish()


MODULE_REDUCE = [
    ("pg.sum(x)", lambda m, t: m.sum(t), lambda a: np.sum(a), None),
    ("pg.sum(x, 1)", lambda m, t: m.sum(t, 1), lambda a: np.sum(a, axis=1), 1),
    ("pg.sum(x, (0, 2), keepdim=True)", lambda m, t: m.sum(t, (0, 2), keepdim=True),
     lambda a: np.sum(a, axis=(0, 2), keepdims=True), (0, 2)),
    ("pg.mean(x, -1)", lambda m, t: m.mean(t, -1), lambda a: np.mean(a, axis=-1), -1),
    ("pg.prod(x, 0)", lambda m, t: m.prod(t, 0), lambda a: np.prod(a, axis=0), 0),
    ("pg.max(x)", lambda m, t: m.max(t), lambda a: np.max(a), None),
    ("pg.min(x)", lambda m, t: m.min(t), lambda a: np.min(a), None),
    ("pg.argmax(x, 1)", lambda m, t: m.argmax(t, 1), lambda a: np.argmax(a, axis=1), 1),
    ("pg.argmin(x)", lambda m, t: m.argmin(t), lambda a: np.argmin(a), None),
    ("pg.var(x, 1)", lambda m, t: m.var(t, 1), lambda a: np.var(a, axis=1, ddof=1), 1),
    ("pg.std(x)", lambda m, t: m.std(t), lambda a: np.std(a, ddof=1), None),
    ("pg.logsumexp(x, 2)", lambda m, t: m.logsumexp(t, 2), lambda a: _logsumexp(a, 2, False), 2),
    ("pg.any(x)", lambda m, t: m.any(t), lambda a: np.any(a != 0), None),
    ("pg.all(x)", lambda m, t: m.all(t), lambda a: np.all(a != 0), None),
    ("pg.cumsum(x, 1)", lambda m, t: m.cumsum(t, 1), lambda a: np.cumsum(a, axis=1), 1),
]


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_reduce_module_functions(conn, rng, dtype):
    rep = Report()
    for name, fn, ref, dims in MODULE_REDUCE:
        x = make_input(rng, (3, 4, 5), dtype, "unit" if "prod" in name else "ties", "permute")
        n = reduced_count((3, 4, 5), dims)
        rep.check(f"{name} on {describe(x[0])}", fn, [x], ref, n=n)
    rep.finish()


def test_reduce_of_large_sums(conn, rng):
    """Longer reductions (10^5 elements) stay within the length-scaled tolerance."""
    rep = Report()
    for dtype in ("float32", "float64"):
        x = make_input(rng, (100000,), dtype)
        rep.check(f"sum({dtype}[100000])", lambda m, t: t.sum(), [x], lambda a: a.sum(), n=1e5)
        rep.check(f"mean({dtype}[100000])", lambda m, t: t.mean(), [x], lambda a: a.mean(),
                  n=100)
        y = make_input(rng, (300, 500), dtype, "any", "permute")
        rep.check(f"var({dtype}[300, 500], dim=0)", lambda m, t: t.var(dim=0), [y],
                  lambda a: a.var(axis=0, ddof=1), n=300)
        rep.check(f"logsumexp({dtype}[300, 500], dim=1)", lambda m, t: t.logsumexp(dim=1), [y],
                  lambda a: _logsumexp(a, 1, False), n=500)
    rep.finish()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_large_reductions(conn, rng, layout):
    """Reductions and scans past the interpreter's parallel threshold, on strided inputs."""
    rep = Report()
    shape = (257, 311)
    for dtype in ("float32", "float64", "int32", "bool"):
        x = make_input(rng, shape, dtype, "ties", layout)
        for dim in (None, 0, 1):
            n = reduced_count(shape, dim)
            for name, fn, ref in (
                    ("sum", lambda m, t, d=dim: t.sum() if d is None else t.sum(dim=d),
                     lambda a, d=dim: np.sum(a, axis=d)),
                    ("amax", lambda m, t, d=dim: t.max() if d is None else t.max(dim=d)[0],
                     lambda a, d=dim: np.max(a, axis=d)),
                    ("argmin", lambda m, t, d=dim: t.argmin() if d is None else t.argmin(dim=d),
                     lambda a, d=dim: np.argmin(a, axis=d)),
                    ("any", lambda m, t, d=dim: (t > 1).any() if d is None else
                     (t > 1).any(dim=d), lambda a, d=dim: np.any(a > 1, axis=d))):
                rep.check(f"{name}({describe(x[0])}, dim={dim}, {layout})", fn, [x], ref, n=n,
                          exact_ref=name == "argmin")
            if dim is not None:
                rep.check(f"cumsum({describe(x[0])}, {dim}, {layout})",
                          lambda m, t, d=dim: t.cumsum(d), [x],
                          lambda a, d=dim: np.cumsum(a, axis=d), n=n)
                if dtype.startswith("float"):
                    rep.check(f"var({describe(x[0])}, {dim}, {layout})",
                              lambda m, t, d=dim: t.var(d), [x],
                              lambda a, d=dim: np.var(a, axis=d, ddof=1), n=n)
                    rep.check(f"logsumexp({describe(x[0])}, {dim}, {layout})",
                              lambda m, t, d=dim: t.logsumexp(d), [x],
                              lambda a, d=dim: _logsumexp(a, d, False), n=n)
    rep.finish()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_special_value_reductions(conn, dtype):
    """NaN propagates through sum/max/min/cumsum (argmax points at it); logsumexp survives
    +inf and all -inf rows; softmax of rows with -inf (masking) and of all -inf, against torch."""
    nan, inf = float("nan"), float("inf")
    rows = np.array([[1.0, nan, 3.0, -1.0], [inf, 1.0, 2.0, 0.5], [-inf, -inf, -inf, -inf],
                     [-inf, 0.0, 1.0, -inf], [inf, -inf, 0.0, 1.0], [2.0, 2.0, -3.0, 1e30]],
                    dtype=dtype)
    x = (rows, pg.from_numpy(rows.copy()))
    rep = Report()
    cases = [("sum(1)", lambda m, t: t.sum(1)), ("mean(1)", lambda m, t: t.mean(1)),
             ("prod(1)", lambda m, t: t.prod(1)), ("max(1)", lambda m, t: tuple(t.max(1))),
             ("min(1)", lambda m, t: tuple(t.min(1))), ("max()", lambda m, t: t.max()),
             ("argmax(1)", lambda m, t: t.argmax(1)), ("argmin(1)", lambda m, t: t.argmin(1)),
             ("cumsum(1)", lambda m, t: t.cumsum(1)), ("logsumexp(1)", lambda m, t: t.logsumexp(1)),
             ("var(1)", lambda m, t: t.var(1)), ("any(1)", lambda m, t: t.any(1)),
             ("softmax(1)", lambda m, t: t.softmax(1)),
             ("log_softmax(1)", lambda m, t: t.log_softmax(1))]
    for name, fn in cases:
        rep.check(f"{name} of {rows.tolist()}", fn, [x], "native", n=4)
    rep.finish()
