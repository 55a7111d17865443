"""Conformance of picograd's movement ops and indexing against numpy (values) and torch (dtypes).

reshape view permute transpose T unsqueeze squeeze flatten expand contiguous flip cat stack and
basic indexing (ints, negative ints, slices with steps, out-of-range slice bounds, None, ...),
each on contiguous and non-contiguous inputs (permuted, sliced with steps, expanded) of every
dtype, and chains of them (a view of a view of a view, then a reshape that must copy).
Results are copies of input elements, so they must match exactly.
"""

import itertools

import numpy as np
import pytest

from conformance_util import DTYPES, LAYOUTS, Report, describe, make_input
from conformance_util import conn, rng, shared_daemon  # noqa: F401 (fixtures)


def _check(rep, ctx, fn, inputs, ref):
    rep.check(ctx, fn, inputs, ref, exact_ref=True)


def _layouts(dtype):
    """Every layout for one dtype of each item size (1, 4, 8 bytes); two for the others."""
    return LAYOUTS if dtype in ("float32", "float64", "bool") else ("contig", "slice")


RESHAPES = {
    (): [(), (1,), (1, 1), (-1,)],
    (7,): [(7,), (7, 1), (1, 7), (-1,), (1, -1, 1)],
    (0,): [(0,), (0, 5), (2, 0, -1), (3, 0)],
    (3, 4): [(12,), (4, 3), (2, 6), (2, -1), (-1, 3), (2, 2, 3), (1, 12, 1), (3, 2, 2)],
    (2, 3, 5): [(30,), (6, 5), (5, 6), (2, 15), (3, 2, 5), (-1,), (2, 3, 5, 1), (1, 2, 1, 15)],
    (2, 1, 3, 2, 3): [(36,), (6, 6), (2, 3, 2, 3), (4, 9), (3, 4, 3), (1, 1, 1, 1, 36)],
    (1,): [(), (1, 1, 1)],
    (13, 1): [(13,), (1, 13)],
}


@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_view_flatten(conn, rng, dtype):
    rep = Report()
    for layout in _layouts(dtype):
        for shape, targets in RESHAPES.items():
            x = make_input(rng, shape, dtype, "any", layout)
            for k, new in enumerate(targets):
                _check(rep, f"reshape({describe(x[0])}, {new}, {layout})",
                       lambda m, t, n=new: t.reshape(n), [x], lambda a, n=new: a.reshape(n))
                if k == 1:
                    _check(rep, f"reshape(*{new}) of {describe(x[0])} ({layout})",
                           lambda m, t, n=new: t.reshape(*n), [x], lambda a, n=new: a.reshape(n))
                    _check(rep, f"pg.reshape({describe(x[0])}, {new}, {layout})",
                           lambda m, t, n=new: m.reshape(t, n), [x],
                           lambda a, n=new: a.reshape(n))
                if layout == "contig":
                    _check(rep, f"view({describe(x[0])}, {new})",
                           lambda m, t, n=new: t.view(*n), [x], lambda a, n=new: a.reshape(n))
            nd = len(shape)
            _check(rep, f"flatten({describe(x[0])}, {layout})", lambda m, t: t.flatten(), [x],
                   lambda a: a.reshape(-1))
            for start in range(nd):
                for end in range(start, nd):
                    for s, e in ((start, end), (start - nd, end - nd)):
                        _check(rep, f"flatten({describe(x[0])}, {s}, {e}, {layout})",
                               lambda m, t, s=s, e=e: t.flatten(s, e), [x],
                               lambda a, s=s, e=e: _flatten(a, s, e))
            _check(rep, f"contiguous({describe(x[0])}, {layout})", lambda m, t: t.contiguous(),
                   [x], lambda a: a)
    rep.finish()


def _flatten(a, s, e):
    s, e = s % a.ndim, e % a.ndim
    return a.reshape(a.shape[:s] + (int(np.prod(a.shape[s:e + 1])),) + a.shape[e + 1:])


PERMUTE_SHAPES = [(7,), (3, 7), (2, 3, 5), (2, 0, 3), (2, 3, 1, 4), (2, 1, 3, 2, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_permute_transpose(conn, rng, dtype):
    rep = Report()
    for layout in _layouts(dtype):
        for shape in PERMUTE_SHAPES + [()]:
            nd = len(shape)
            x = make_input(rng, shape, dtype, "any", layout)
            perms = list(itertools.permutations(range(nd)))
            if len(perms) > 6:
                perms = [perms[i] for i in rng.choice(len(perms), 6, replace=False)]
            for k, p in enumerate(perms):
                _check(rep, f"permute({describe(x[0])}, {p}, {layout})",
                       lambda m, t, p=p: t.permute(*p), [x], lambda a, p=p: a.transpose(p))
                if k < 2:
                    neg = tuple(d - nd for d in p)
                    _check(rep, f"permute({describe(x[0])}, {neg}, {layout})",
                           lambda m, t, p=neg: t.permute(p), [x], lambda a, p=p: a.transpose(p))
            pairs = [(d0, d1) for d0 in range(nd) for d1 in range(d0, nd)]
            pairs += [(-1, 0), (0, -nd)] if nd else [(0, 0), (-1, 0)]
            for d0, d1 in pairs:
                _check(rep, f"transpose({describe(x[0])}, {d0}, {d1}, {layout})",
                       lambda m, t, d0=d0, d1=d1: t.transpose(d0, d1), [x],
                       lambda a, d0=d0, d1=d1: np.swapaxes(a, d0, d1) if a.ndim else a)
            if nd == 2:
                _check(rep, f"({describe(x[0])}).T ({layout})", lambda m, t: t.T, [x],
                       lambda a: a.T)
                _check(rep, f"pg.transpose({describe(x[0])}, 0, 1) ({layout})",
                       lambda m, t: m.transpose(t, 0, 1), [x], lambda a: a.T)
            if nd >= 1:
                _check(rep, f"pg.permute({describe(x[0])}) ({layout})",
                       lambda m, t: m.permute(t, tuple(reversed(range(nd)))), [x],
                       lambda a: a.transpose(tuple(reversed(range(nd)))))
    rep.finish()


@pytest.mark.parametrize("dtype", DTYPES)
def test_unsqueeze_squeeze(conn, rng, dtype):
    rep = Report()
    for layout in _layouts(dtype):
        for shape in [(), (1,), (7,), (3, 1, 7), (1, 4, 1), (0, 1, 3), (2, 1, 3, 1, 2)]:
            nd = len(shape)
            x = make_input(rng, shape, dtype, "any", layout)
            for d in range(-nd - 1, nd + 1):
                _check(rep, f"unsqueeze({describe(x[0])}, {d}, {layout})",
                       lambda m, t, d=d: t.unsqueeze(d), [x],
                       lambda a, d=d: np.expand_dims(a, d))
            _check(rep, f"pg.unsqueeze({describe(x[0])}, -1, {layout})",
                   lambda m, t: m.unsqueeze(t, -1), [x], lambda a: np.expand_dims(a, -1))
            _check(rep, f"squeeze({describe(x[0])}, {layout})", lambda m, t: t.squeeze(), [x],
                   np.squeeze)
            for d in range(-nd, nd) if nd else (0, -1):
                _check(rep, f"squeeze({describe(x[0])}, {d}, {layout})",
                       lambda m, t, d=d: t.squeeze(d), [x],
                       lambda a, d=d: np.squeeze(a, d) if a.ndim and a.shape[d] == 1 else a)
    rep.finish()


EXPANDS = [((), (4,)), ((), (2, 3)), ((1,), (5,)), ((3, 1), (3, 4)), ((3, 1), (-1, 4)),
           ((3, 1), (2, 3, 6)), ((1, 1), (0, 5)), ((2, 1, 3), (2, 4, 3)), ((2, 1, 3), (-1, 4, -1)),
           ((4,), (3, 2, 4)), ((1, 3, 1, 2, 1), (2, 3, 4, 2, 5)), ((3,), (3,))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_expand(conn, rng, dtype):
    rep = Report()
    for layout in _layouts(dtype):
        for shape, new in EXPANDS:
            x = make_input(rng, shape, dtype, "any", layout)
            out = tuple(s if n == -1 else n for s, n in
                        zip((None,) * (len(new) - len(shape)) + shape, new))
            _check(rep, f"expand({describe(x[0])}, {new}, {layout})",
                   lambda m, t, n=new: t.expand(*n), [x],
                   lambda a, o=out: np.broadcast_to(a, o))
            _check(rep, f"expand({describe(x[0])}, tuple {new}, {layout})",
                   lambda m, t, n=new: t.expand(n), [x],
                   lambda a, o=out: np.broadcast_to(a, o))
            # an expanded tensor feeding arithmetic and a reshape (which must copy)
            _check(rep, f"expand({describe(x[0])}, {new}).reshape(-1) ({layout})",
                   lambda m, t, n=new: t.expand(*n).reshape(-1), [x],
                   lambda a, o=out: np.broadcast_to(a, o).reshape(-1))
    rep.finish()


def _index_cases(shape):
    nd = len(shape)
    if nd == 0:
        return [None, Ellipsis, (), (None, None), (Ellipsis, None)]
    cases = [0, -1, slice(None), slice(1, None), slice(None, None, 2), slice(1, None, 3),
             slice(-3, None), slice(-100, 100), slice(5, 2), slice(100, None), None, Ellipsis,
             (Ellipsis, None), (None, Ellipsis, 0), (slice(None, None, 2), None)]
    if nd >= 2:
        cases += [(slice(None), 1), (Ellipsis, -1), (1, -2), (slice(None), None, slice(1, 5, 2)),
                  (slice(None, None, 3), slice(None, None, 2)), (slice(-2, None), slice(None, -1)),
                  (-1, slice(None, None, 4))]
    if nd >= 3:
        cases += [(1, slice(None), 2), (Ellipsis, 1, slice(None, None, 2)),
                  (slice(1, 2), None, slice(None), -1), (0, 0, 0), (None, 1, None, 2, None),
                  (slice(None), slice(None, None, 5), slice(2, None, 2))]
    return cases


def _fmt_index(idx):
    parts = idx if isinstance(idx, tuple) else (idx,)
    out = []
    for p in parts:
        if p is None:
            out.append("None")
        elif p is Ellipsis:
            out.append("...")
        elif isinstance(p, slice):
            out.append(":".join("" if v is None else str(v) for v in (p.start, p.stop, p.step)))
        else:
            out.append(str(p))
    return "[" + ", ".join(out) + "]"


@pytest.mark.parametrize("dtype", DTYPES)
def test_basic_indexing(conn, rng, dtype):
    """Ints, negative ints, slices (steps, negative and out-of-range bounds), None, ...."""
    rep = Report()
    for layout in _layouts(dtype):
        for shape in [(), (7,), (0,), (6, 13), (5, 6, 7), (3, 0, 4), (2, 3, 4, 5, 3)]:
            x = make_input(rng, shape, dtype, "any", layout)
            for idx in _index_cases(shape):
                if shape and shape[0] == 0 and isinstance(idx if not isinstance(idx, tuple)
                                                           else idx[0], int):
                    continue  # no row to take
                _check(rep, f"{describe(x[0])}{_fmt_index(idx)} ({layout})",
                       lambda m, t, i=idx: t[i], [x], lambda a, i=idx: a[i])
    rep.finish()


@pytest.mark.parametrize("dtype", DTYPES)
def test_chained_views(conn, rng, dtype):
    """Views of views, then ops that must see the composed strides and offsets."""
    rep = Report()
    chains = [
        ("x.permute(2,0,1)[1:, ::2].transpose(0,2).reshape(-1)",
         lambda m, t: t.permute(2, 0, 1)[1:, ::2].transpose(0, 2).reshape(-1),
         lambda a: a.transpose(2, 0, 1)[1:, ::2].swapaxes(0, 2).reshape(-1)),
        ("x[::2, 1:, ::3].unsqueeze(1).expand(-1, 3, -1, -1).flip(3)",
         lambda m, t: t[::2, 1:, ::3].unsqueeze(1).expand(-1, 3, -1, -1).flip(3),
         lambda a: np.flip(np.broadcast_to(a[::2, 1:, ::3][:, None],
                                           (a[::2].shape[0], 3) + a[::2, 1:, ::3].shape[1:]),
                           3)),
        ("x.transpose(0,1).reshape(6,-1)[:, 1::2].T",
         lambda m, t: t.transpose(0, 1).reshape(6, -1)[:, 1::2].T,
         lambda a: a.swapaxes(0, 1).reshape(6, -1)[:, 1::2].T),
        ("x[1].T.flatten()[3:]", lambda m, t: t[1].T.flatten()[3:],
         lambda a: a[1].T.reshape(-1)[3:]),
        ("x.flip(0, 2)[..., None].squeeze(-1).permute(1, 2, 0)",
         lambda m, t: t.flip(0, 2)[..., None].squeeze(-1).permute(1, 2, 0),
         lambda a: np.flip(a, (0, 2)).transpose(1, 2, 0)),
    ]
    for layout in _layouts(dtype):
        x = make_input(rng, (4, 6, 7), dtype, "any", layout)
        for name, fn, ref in chains:
            _check(rep, f"{name} on {describe(x[0])} ({layout})", fn, [x], ref)
    rep.finish()


@pytest.mark.parametrize("dtype", DTYPES)
def test_flip(conn, rng, dtype):
    rep = Report()
    for layout in _layouts(dtype):
        for shape in [(), (7,), (0, 3), (3, 7), (2, 3, 5), (2, 1, 3, 2, 3)]:
            nd = len(shape)
            x = make_input(rng, shape, dtype, "any", layout)
            subsets = [()] if nd == 0 else [s for r in range(1, nd + 1)
                                            for s in itertools.combinations(range(nd), r)][:10]
            for dims in subsets:
                _check(rep, f"flip({describe(x[0])}, {dims}, {layout})",
                       lambda m, t, d=dims: t.flip(d), [x],
                       lambda a, d=dims: np.flip(a, d) if d else a)
            if nd:
                _check(rep, f"flip({describe(x[0])}, -1, {layout})",
                       lambda m, t: t.flip(-1), [x], lambda a: np.flip(a, -1))
                _check(rep, f"pg.flip({describe(x[0])}, [0], {layout})",
                       lambda m, t: m.flip(t, [0]), [x], lambda a: np.flip(a, 0))
    rep.finish()


CATS = [([(2, 3), (4, 3)], 0), ([(2, 3), (2, 5)], 1), ([(2, 3), (2, 5)], -1),
        ([(2, 0, 3), (2, 4, 3), (2, 1, 3)], 1), ([(7,)], 0), ([(3,), (0,), (4,)], 0),
        ([(1, 2, 3, 2, 1), (1, 2, 3, 2, 4)], 4), ([(2, 3, 4)] * 5, -2), ([(0, 3), (0, 3)], 1)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cat_stack(conn, rng, dtype):
    rep = Report()
    for layout in _layouts(dtype):
        for shapes, dim in CATS:
            xs = [make_input(rng, s, dtype, "any", layout if i % 2 == 0 else "contig")
                  for i, s in enumerate(shapes)]
            desc = ", ".join(describe(x[0]) for x in xs)
            _check(rep, f"cat([{desc}], {dim}, {layout})",
                   lambda m, *ts, d=dim: m.cat(list(ts), dim=d), xs,
                   lambda *a, d=dim: np.concatenate(a, axis=d))
            _check(rep, f"cat(({desc}), {dim}, {layout}) positional",
                   lambda m, *ts, d=dim: m.cat(tuple(ts), d), xs,
                   lambda *a, d=dim: np.concatenate(a, axis=d))
        for shape, n in [((), 3), ((5,), 2), ((2, 3), 4), ((0, 2), 2), ((2, 1, 3, 2), 3)]:
            xs = [make_input(rng, shape, dtype, "any", layout if i else "contig")
                  for i in range(n)]
            for dim in range(-len(shape) - 1, len(shape) + 1):
                _check(rep, f"stack({n} x {describe(xs[0][0])}, {dim}, {layout})",
                       lambda m, *ts, d=dim: m.stack(list(ts), dim=d), xs,
                       lambda *a, d=dim: np.stack(a, axis=d))
    rep.finish()


def test_cat_stack_promote(conn, rng):
    """cat and stack of mixed dtypes promote like torch."""
    rep = Report()
    for ta in DTYPES:
        for tb in DTYPES:
            a = make_input(rng, (2, 3), ta, "small")
            b = make_input(rng, (4, 3), tb, "small", "permute")
            rep.check(f"cat([{describe(a[0])}, {describe(b[0])}])",
                      lambda m, x, y: m.cat([x, y]), [a, b],
                      lambda x, y: np.concatenate([x, y]))
            c = make_input(rng, (2, 3), tb, "small", "slice")
            rep.check(f"stack([{describe(a[0])}, {describe(c[0])}], 1)",
                      lambda m, x, y: m.stack([x, y], 1), [a, c],
                      lambda x, y: np.stack([x, y], 1))
    rep.finish()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_large_movement(conn, rng, layout):
    """Copies past the interpreter's parallel threshold: permute+reshape, cat, flip, pad."""
    rep = Report()
    for dtype in ("float32", "float64", "bool"):
        x = make_input(rng, (40, 50, 33), dtype, "any", layout)
        y = make_input(rng, (40, 7, 33), dtype, "any")
        _check(rep, f"permute(2,0,1).reshape(-1) of {describe(x[0])} ({layout})",
               lambda m, t: t.permute(2, 0, 1).reshape(-1), [x],
               lambda a: a.transpose(2, 0, 1).reshape(-1))
        _check(rep, f"cat({describe(x[0])}, {describe(y[0])}, 1) ({layout})",
               lambda m, a, b: m.cat([a, b], 1), [x, y], lambda a, b: np.concatenate([a, b], 1))
        _check(rep, f"flip(0, 2)[::3, 1::2] of {describe(x[0])} ({layout})",
               lambda m, t: t.flip((0, 2))[::3, 1::2], [x], lambda a: np.flip(a, (0, 2))[::3, 1::2])
        _check(rep, f"stack 3 x {describe(y[0])} ({layout})",
               lambda m, t: m.stack([t, t, t], 2), [y], lambda a: np.stack([a, a, a], 2))
    rep.finish()
