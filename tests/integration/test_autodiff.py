"""Reverse-mode differentiation in the daemon: the `grad` and `detach` nodes (PROTOCOL.md).

Every differentiable wire op is checked three ways on random data (never zeros):

  - against float64 central finite differences of L(x) = sum(f(x) * gy), evaluated by the daemon
    itself in float64 (one `run` holds every perturbed evaluation), at a few random coordinates
    of every input;
  - against PyTorch autograd (torch.autograd.grad with the same gy) in float64, tightly;
  - against PyTorch autograd in float32, with float32 tolerances.

How to add an op: write it once as ``fn(m, *xs)`` where ``m`` is ``torch`` or ``picograd`` (the
APIs agree), add a ``Case(name, fn, inputs)`` to CASES. Inputs are ``(shape, domain)`` for a
random float input (differentiated) or a numpy integer array (an index: not differentiated).
Domains: "any" (normal), "pos" (in [0.5, 2]: log, sqrt, pow bases), "nz" (|x| in [0.5, 2] with
a random sign: divisors), "sep" (distinct values at least 0.05 apart: max/min without ties).
``fd=False`` skips the finite differences (for ties, where the derivative is a convention).

Then the rest of the contract: zeros for an input y does not depend on, no gradient through
`detach`, one reverse sweep shared by all `grad` nodes of one (y, gy) (seen in `explain`),
second derivatives, compiled kernels equal to the interpreter on a backward graph, and the
structured errors (which leave the daemon serving).
"""

import math
import os
import zlib

import numpy as np
import pytest
import torch

import picograd as pg
from picograd import PicogradError
from conformance_util import conn, shared_daemon  # noqa: F401 (fixtures)

torch.set_num_threads(1)


def F(m):
    return m.nn.functional


class Case:
    def __init__(self, name, fn, inputs, fd=True, gy=True):
        self.name, self.fn, self.inputs, self.fd, self.gy = name, fn, inputs, fd, gy

    def __repr__(self):
        return self.name


def make(rng, spec):
    if isinstance(spec, np.ndarray):
        return spec
    shape, domain = spec
    if domain == "any":
        a = rng.standard_normal(shape)
    elif domain == "pos":
        a = rng.uniform(0.5, 2.0, shape)
    elif domain == "nz":
        a = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    elif domain == "sep":  # a shuffled grid: no two values closer than 0.05
        n = math.prod(shape)
        a = (rng.permutation(n) - n / 2) * 0.05 + rng.uniform(0.001, 0.01)
        a = a.reshape(shape)
    else:
        raise ValueError(domain)
    a = np.asarray(a, dtype=np.float64)
    a[a == 0] = 0.25  # never an exact zero
    return a


def idx(*values):
    return np.array(values, dtype=np.int64)


RI = np.random.default_rng(5)  # fixed index tensors for the cases below
GATHER_IDX = RI.integers(0, 4, (3, 4))        # into [3, 4] along dim 1 (repeats: summed back)
GATHER_IDX0 = RI.integers(0, 5, (2, 3))       # into [5, 3] along dim 0
SEL_IDX = idx(2, 0, 2, 1)                     # repeated row 2
EMB_IDX = RI.integers(0, 6, (2, 5))
CE_TARGET = idx(1, 0, 3, 3)

CASES = [
    # ---- unary ----
    Case("neg", lambda m, x: -x, [((3, 4), "any")]),
    Case("abs", lambda m, x: x.abs(), [((3, 4), "nz")]),
    Case("exp", lambda m, x: x.exp(), [((3, 4), "any")]),
    Case("log", lambda m, x: x.log(), [((3, 4), "pos")]),
    Case("sqrt", lambda m, x: x.sqrt(), [((3, 4), "pos")]),
    Case("rsqrt", lambda m, x: x.rsqrt(), [((3, 4), "pos")]),
    Case("sin", lambda m, x: x.sin(), [((3, 4), "any")]),
    Case("cos", lambda m, x: x.cos(), [((3, 4), "any")]),
    Case("tanh", lambda m, x: x.tanh(), [((3, 4), "any")]),
    Case("sigmoid", lambda m, x: x.sigmoid(), [((3, 4), "any")]),
    Case("relu", lambda m, x: x.relu(), [((3, 4), "nz")]),
    Case("gelu", lambda m, x: F(m).gelu(x), [((3, 4), "any")]),
    Case("gelu_tanh", lambda m, x: F(m).gelu(x, approximate="tanh"), [((3, 4), "any")]),
    Case("silu", lambda m, x: F(m).silu(x), [((3, 4), "any")]),
    Case("erf", lambda m, x: m.erf(x), [((3, 4), "any")]),
    Case("reciprocal", lambda m, x: x.reciprocal(), [((3, 4), "nz")]),
    Case("square", lambda m, x: x.square(), [((3, 4), "any")]),
    Case("sign", lambda m, x: x.sign() * x, [((3, 4), "nz")]),
    Case("clamp", lambda m, x: x.clamp(-0.7, 0.9), [((4, 5), "sep")]),
    Case("clamp_min", lambda m, x: x.clamp(min=0.1), [((4, 5), "sep")]),
    Case("cast_f64", lambda m, x: x.to(m.float64).sin(), [((3, 4), "any")]),
    Case("cast_f32", lambda m, x: (x.to(m.float32) * 2).to(m.float64), [((3, 4), "any")],
         fd=False),  # a float32 round trip is below any finite-difference step
    # ---- binary, with broadcasting and Python numbers ----
    Case("add", lambda m, a, b: a + b, [((3, 1, 4), "any"), ((5, 1), "any")]),
    Case("sub", lambda m, a, b: a - b, [((4,), "any"), ((3, 4), "any")]),
    Case("mul", lambda m, a, b: a * b, [((2, 3, 1), "any"), ((1, 4), "any")]),
    Case("div", lambda m, a, b: a / b, [((3, 4), "any"), ((4,), "nz")]),
    Case("pow", lambda m, a, b: a ** b, [((3, 4), "pos"), ((3, 1), "any")]),
    Case("pow_scalar", lambda m, a: a ** 2.5 + 3.0 ** a, [((3, 4), "pos")]),
    Case("maximum", lambda m, a, b: m.maximum(a, b), [((3, 4), "sep"), ((4,), "any")]),
    Case("minimum", lambda m, a, b: m.minimum(a, b), [((3, 4), "sep"), ((3, 1), "any")]),
    Case("scalar_ops", lambda m, x: (2 - x) * 3 / (x * x + 1) + 0.5, [((5,), "any")]),
    Case("where", lambda m, c, a, b: m.where(c > 0, a, b),
         [((3, 4), "nz"), ((3, 4), "any"), ((4,), "any")]),
    Case("masked_fill", lambda m, x: x.masked_fill(x > 0.3, 2.0) * x, [((3, 4), "sep")]),
    # ---- reductions ----
    Case("sum_all", lambda m, x: x.sum(), [((3, 4), "any")]),
    Case("sum_dims", lambda m, x: x.sum(dim=(0, 2)), [((2, 3, 4), "any")]),
    Case("sum_keepdim_neg", lambda m, x: x.sum(dim=-1, keepdim=True), [((2, 3, 4), "any")]),
    Case("prod_dim", lambda m, x: x.prod(dim=1), [((3, 4), "nz")]),
    Case("prod_all", lambda m, x: x.prod(), [((2, 3), "nz")]),
    Case("max_all", lambda m, x: x.max(), [((3, 4), "sep")]),
    Case("max_dim", lambda m, x: x.max(dim=1).values, [((3, 4), "sep")]),
    Case("max_dim_keep_neg", lambda m, x: x.max(dim=-2, keepdim=True).values,
         [((2, 3, 4), "sep")]),
    Case("min_dim", lambda m, x: x.min(dim=0)[0], [((3, 4), "sep")]),
    Case("amax_dims", lambda m, x: x.amax(dim=(0, 2)), [((2, 3, 4), "sep")]),
    Case("amin_keep", lambda m, x: x.amin(dim=(1,), keepdim=True), [((2, 3, 4), "sep")]),
    Case("mean", lambda m, x: x.mean(dim=(0, -1)), [((2, 3, 4), "any")]),
    Case("mean_all", lambda m, x: x.mean(), [((3, 4), "any")]),
    Case("var", lambda m, x: x.var(dim=1), [((3, 5), "any")]),
    Case("var_keep_unbiased0", lambda m, x: x.var(dim=-1, unbiased=False, keepdim=True),
         [((2, 3, 4), "any")]),
    Case("std", lambda m, x: x.std(dim=0), [((4, 3), "any")]),
    Case("std_all", lambda m, x: x.std(), [((4, 3), "any")]),
    Case("logsumexp", lambda m, x: x.logsumexp(dim=1), [((3, 5), "any")]),
    Case("logsumexp_keep_neg", lambda m, x: x.logsumexp(dim=-3, keepdim=True),
         [((2, 3, 4), "any")]),
    Case("cumsum", lambda m, x: x.cumsum(dim=1), [((3, 5), "any")]),
    Case("cumsum_neg", lambda m, x: x.cumsum(dim=-3), [((3, 2, 2), "any")]),
    # ---- movement ----
    Case("reshape", lambda m, x: x.reshape(4, 6) * m.arange(24.0).reshape(4, 6),
         [((2, 3, 4), "any")]),
    Case("reshape_noncontig", lambda m, x: x.permute(2, 0, 1).reshape(4, 6).sin(),
         [((2, 3, 4), "any")]),
    Case("permute", lambda m, x: x.permute(1, 2, 0).exp(), [((2, 3, 4), "any")]),
    Case("transpose", lambda m, x: x.T.tanh(), [((3, 4), "any")]),
    Case("expand", lambda m, x: x.expand(2, 3, 4).sin(), [((3, 1), "any")]),
    Case("slice_step", lambda m, x: x[1:, ::2].sin(), [((4, 7), "any")]),
    Case("slice_step3_neg", lambda m, x: x[-5:-1, 1::3, :].exp(), [((6, 8, 2), "any")]),
    Case("slice_index", lambda m, x: x[1, 2:] * x[:, 0].sum(), [((3, 5), "any")]),
    Case("pad", lambda m, x: F(m).pad(x, (1, 2, 0, 1)).sin(), [((2, 3, 4), "any")]),
    Case("pad_value", lambda m, x: F(m).pad(x, (2, 0), value=1.5) * 2, [((3, 4), "any")]),
    Case("cat", lambda m, a, b: m.cat([a, b, a], dim=1).sin(),
         [((2, 3), "any"), ((2, 2), "any")]),
    Case("stack", lambda m, a, b: m.stack([a, b], dim=-1).cos(),
         [((2, 3), "any"), ((2, 3), "any")]),
    Case("flip", lambda m, x: x.flip(0, 2) * m.arange(24.0).reshape(2, 3, 4),
         [((2, 3, 4), "any")]),
    Case("squeeze_unsqueeze", lambda m, x: x.unsqueeze(1).squeeze(2).sin(), [((3, 1, 4), "any")]),
    # ---- linear algebra and indexing ----
    Case("matmul_2d", lambda m, a, b: m.matmul(a, b), [((3, 4), "any"), ((4, 5), "any")]),
    Case("matmul_1d_1d", lambda m, a, b: m.matmul(a, b), [((4,), "any"), ((4,), "any")]),
    Case("matmul_1d_2d", lambda m, a, b: m.matmul(a, b), [((4,), "any"), ((4, 3), "any")]),
    Case("matmul_2d_1d", lambda m, a, b: m.matmul(a, b), [((3, 4), "any"), ((4,), "any")]),
    Case("matmul_batched_bcast", lambda m, a, b: m.matmul(a, b),
         [((2, 1, 3, 4), "any"), ((3, 4, 2), "any")]),
    Case("linear", lambda m, x, w, b: F(m).linear(x, w, b),
         [((5, 3), "any"), ((4, 3), "any"), ((4,), "any")]),
    Case("linear_nobias", lambda m, x, w: F(m).linear(x, w), [((2, 5, 3), "any"), ((4, 3), "any")]),
    Case("gather", lambda m, x, i: x.gather(1, i), [((3, 4), "any"), GATHER_IDX]),
    Case("gather_dim0", lambda m, x, i: x.gather(0, i), [((5, 3), "any"), GATHER_IDX0]),
    Case("index_select", lambda m, x, i: x.index_select(0, i), [((3, 4), "any"), SEL_IDX]),
    Case("index_select_dim1", lambda m, x, i: x.index_select(-1, i), [((2, 3, 4), "any"),
                                                                        SEL_IDX]),
    Case("embedding", lambda m, i, w: F(m).embedding(i, w), [EMB_IDX, ((6, 3), "any")]),
    # ---- NN ----
    Case("softmax", lambda m, x: x.softmax(dim=1), [((3, 5), "any")]),
    Case("softmax_neg", lambda m, x: x.softmax(dim=-3), [((3, 2, 4), "any")]),
    Case("log_softmax", lambda m, x: x.log_softmax(dim=-1), [((3, 5), "any")]),
    Case("cross_entropy", lambda m, x, t: F(m).cross_entropy(x, t), [((4, 5), "any"), CE_TARGET],
         gy=False),
    Case("cross_entropy_sum", lambda m, x, t: F(m).cross_entropy(x, t, reduction="sum"),
         [((4, 5), "any"), CE_TARGET]),
    Case("cross_entropy_none", lambda m, x, t: F(m).cross_entropy(x, t, reduction="none"),
         [((4, 5), "any"), CE_TARGET]),
    Case("mse_loss", lambda m, a, b: F(m).mse_loss(a, b), [((3, 4), "any"), ((3, 4), "any")],
         gy=False),
    Case("mse_loss_none", lambda m, a, b: F(m).mse_loss(a, b, reduction="none"),
         [((3, 4), "any"), ((3, 4), "any")]),
    Case("layer_norm", lambda m, x, w, b: F(m).layer_norm(x, (4,), w, b),
         [((2, 3, 4), "any"), ((4,), "any"), ((4,), "any")]),
    Case("layer_norm_2d_noaffine", lambda m, x: F(m).layer_norm(x, (3, 4), eps=1e-3),
         [((2, 3, 4), "any")]),
    Case("conv2d", lambda m, x, w, b: F(m).conv2d(x, w, b),
         [((2, 3, 6, 5), "any"), ((4, 3, 3, 2), "any"), ((4,), "any")]),
    Case("conv2d_stride_pad_dil", lambda m, x, w: F(m).conv2d(x, w, stride=2, padding=(2, 1),
                                                              dilation=(1, 2)),
         [((1, 2, 7, 8), "any"), ((3, 2, 3, 3), "any")]),
    Case("conv2d_groups", lambda m, x, w, b: F(m).conv2d(x, w, b, stride=(1, 2), padding=1,
                                                         groups=2),
         [((2, 4, 5, 6), "any"), ((6, 2, 3, 3), "any"), ((6,), "any")]),
    Case("max_pool2d", lambda m, x: F(m).max_pool2d(x, 2), [((2, 3, 6, 6), "sep")]),
    Case("max_pool2d_overlap", lambda m, x: F(m).max_pool2d(x, 3, stride=2, padding=1,
                                                            dilation=1),
         [((1, 2, 7, 6), "sep")]),
    Case("max_pool2d_dilation_3d", lambda m, x: F(m).max_pool2d(x, 2, stride=1, dilation=2),
         [((2, 6, 5), "sep")]),
    Case("avg_pool2d", lambda m, x: F(m).avg_pool2d(x, 3, stride=2, padding=1),
         [((2, 2, 7, 6), "any")]),
    Case("avg_pool2d_exclude_pad", lambda m, x: F(m).avg_pool2d(x, 3, stride=2, padding=1,
                                                                count_include_pad=False),
         [((2, 2, 7, 6), "any")]),
    # ---- compositions ----
    Case("mlp", lambda m, x, w1, w2: (F(m).gelu(x @ w1) @ w2).softmax(dim=-1),
         [((4, 3), "any"), ((3, 5), "any"), ((5, 2), "any")]),
    Case("shared_input", lambda m, x: x * x.exp() + x.sin() * x, [((3, 4), "any")]),
]


def _torch_grads(case, arrays, wrt, gy, np_dtype):
    tdt = torch.float32 if np_dtype == np.float32 else torch.float64
    ts = []
    for k, a in enumerate(arrays):
        if k in wrt:
            ts.append(torch.tensor(a.astype(np_dtype), requires_grad=True))
        else:
            ts.append(torch.tensor(a))
    y = case.fn(torch, *ts)
    g = None if gy is None else torch.tensor(gy, dtype=tdt)
    out = torch.autograd.grad(y, [ts[k] for k in wrt], g, allow_unused=True)
    return [np.zeros(arrays[k].shape, np_dtype) if o is None else o.detach().numpy()
            for k, o in zip(wrt, out)]


def _compare(what, got, want, rtol, atol):
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    if got.shape != want.shape:
        return f"{what}: shape {got.shape}, expected {want.shape}"
    if not np.allclose(got, want, rtol=rtol, atol=atol * scale):
        err = np.max(np.abs(got.astype(np.float64) - want))
        return f"{what}: max error {err:.3g} (scale {scale:.3g})\n got {got}\n want {want}"
    return None


def _fd_check(case, arrays, wrt, gy, got64, rng, failures):
    """Central differences of L = sum(f(x) * gy) in float64, evaluated by the daemon: every
    perturbed input is built lazily (x + h * onehot) and all L's come back from one run."""
    ts = [pg.tensor(a) for a in arrays]
    gyt = None if gy is None else pg.tensor(gy)
    losses, where = [], []
    for j, k in enumerate(wrt):
        a = arrays[k]
        n = a.size
        coords = rng.choice(n, size=min(n, 6), replace=False)
        for c in coords:
            h = 1e-6 * max(1.0, abs(a.reshape(-1)[c]))
            onehot = (pg.arange(n) == int(c)).reshape(a.shape) if a.ndim else pg.tensor(1.0)
            for s in (1.0, -1.0):
                xs = list(ts)
                xs[k] = ts[k] + onehot.to(pg.float64) * (s * h)
                y = case.fn(pg, *xs)
                losses.append(y.sum() if gyt is None else (y * gyt).sum())
            where.append((j, k, int(c), h))
    vals = pg.stack(losses).numpy()
    for q, (j, k, c, h) in enumerate(where):
        fd = (vals[2 * q] - vals[2 * q + 1]) / (2 * h)
        g = got64[j].reshape(-1)[c]
        if not np.isclose(g, fd, rtol=1e-5, atol=1e-6 * max(1.0, abs(fd))):
            failures.append(f"{case.name}: d/dx{k}[{c}] = {g!r}, finite differences {fd!r}")


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_gradient(conn, case):
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    arrays = [make(rng, spec) for spec in case.inputs]
    wrt = [k for k, a in enumerate(arrays) if a.dtype.kind == "f"]
    y64 = case.fn(torch, *[torch.tensor(a) for a in arrays])
    gy = rng.standard_normal(tuple(y64.shape)) if case.gy or y64.numel() != 1 else None
    failures = []
    got64 = None
    for np_dtype in (np.float64, np.float32):
        ts = [pg.tensor(a.astype(np_dtype) if a.dtype.kind == "f" else a) for a in arrays]
        y = case.fn(pg, *ts)
        gyt = None if gy is None else pg.tensor(gy.astype(np_dtype))
        grads = pg.autograd.grad(y, [ts[k] for k in wrt], gyt)
        for g, k in zip(grads, wrt):
            assert g.shape == arrays[k].shape and g.dtype == ts[k].dtype  # client-side rule
        pg.realize(*grads)
        got = [g.numpy() for g in grads]
        want = _torch_grads(case, arrays, wrt, None if gy is None else gy.astype(np_dtype),
                            np_dtype)
        rtol, atol = (1e-9, 1e-10) if np_dtype == np.float64 else (2e-4, 2e-5)
        for k, a, b in zip(wrt, got, want):
            assert a.dtype == np_dtype
            msg = _compare(f"{case.name} {np.dtype(np_dtype)} d/dx{k} vs torch", a, b, rtol, atol)
            if msg:
                failures.append(msg)
        if np_dtype == np.float64:
            got64 = got
    if case.fd:
        _fd_check(case, arrays, wrt, gy, got64, rng, failures)
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# Ties: where the derivative is a convention, picograd follows torch (PROTOCOL.md)
# ---------------------------------------------------------------------------------------------

TIE_CASES = [
    # torch.max(x, dim) and max_pool2d route to the first maximal element ...
    ("max_dim_first", lambda m, x: x.max(dim=1).values),
    ("min_dim_first", lambda m, x: x.min(dim=-1, keepdim=True).values),
    ("max_pool2d_relu_zeros", lambda m, x: F(m).max_pool2d(x.relu(), 2)),
    ("max_pool2d_overlap_ties", lambda m, x: F(m).max_pool2d(x.relu(), 3, stride=1, padding=1)),
    # ... a full max/min or amax over several dims splits evenly among the ties ...
    ("max_all_split", lambda m, x: x.max()),
    ("amin_dims_split", lambda m, x: x.amin(dim=(0, 1))),
    # ... and maximum/minimum give half to each side of a tie.
    ("maximum_half", lambda m, x: m.maximum(x, x.flip(-1))),
    ("minimum_half", lambda m, x: m.minimum(x.relu(), x * 0 + 0.0)),
    ("relu_at_zero", lambda m, x: (x - x.flip(0)).relu()),
]


@pytest.mark.parametrize("name,fn", TIE_CASES, ids=[c[0] for c in TIE_CASES])
def test_ties_like_torch(conn, name, fn):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    a = rng.integers(-2, 3, (2, 2, 4, 4)).astype(np.float64)  # many ties, relu zeros
    a[a == 0] = -1.0
    a[0, 0, 0, :2] = 2.0  # an exact tie in a row and in a pooling window
    for np_dtype in (np.float64, np.float32):
        x = pg.tensor(a.astype(np_dtype))
        y = fn(pg, x)
        gy = rng.standard_normal(tuple(y.shape)).astype(np_dtype)
        (g,) = pg.autograd.grad(y, x, pg.tensor(gy))
        tx = torch.tensor(a.astype(np_dtype), requires_grad=True)
        (tg,) = torch.autograd.grad(fn(torch, tx), tx, torch.tensor(gy))
        np.testing.assert_allclose(g.numpy(), tg.numpy(), rtol=1e-6, atol=1e-6, err_msg=name)


def test_first_max_gradient_is_elementwise(conn):
    """The first-maximum mask of max_pool2d's gradient is a min of positions broadcast back
    (autodiff.c, first_of): no scan, and no copy of the windows to put them last."""
    x = pg.tensor(np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32))
    y = F(pg).max_pool2d(x, 2)
    (g,) = pg.autograd.grad(y, x, pg.ones(*y.shape))
    text = pg.explain(g)
    assert "cumsum" not in text and " min " in text, text

@pytest.mark.parametrize("zeros", [1, 2])
def test_prod_with_zeros(conn, zeros):
    """prod's gradient is exact with zeros: with one zero, the product of the others lands on
    it; with two, everything is 0 (torch agrees)."""
    rng = np.random.default_rng(zeros)
    a = rng.uniform(0.5, 2.0, (3, 5))
    a[0, 1] = 0.0
    a[2, 4] = 0.0
    if zeros == 2:
        a[0, 3] = 0.0
    for dims in ((1,), None):
        x = pg.tensor(a)
        y = x.prod(dim=1) if dims else x.prod()
        gy = rng.standard_normal(tuple(y.shape))
        (g,) = pg.autograd.grad(y, x, pg.tensor(gy))
        tx = torch.tensor(a, requires_grad=True)
        ty = tx.prod(dim=1) if dims else tx.prod()
        (tg,) = torch.autograd.grad(ty, tx, torch.tensor(gy))
        np.testing.assert_allclose(g.numpy(), tg.numpy(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The rest of the contract
# ---------------------------------------------------------------------------------------------


def test_unrelated_input_gets_zeros(conn):
    rng = np.random.default_rng(1)
    x = pg.tensor(rng.standard_normal((3, 4)))
    z = pg.tensor(rng.standard_normal((2, 5)).astype(np.float32))
    y = (x.exp() * 2).sum()
    later = x * 3  # made after y: y cannot depend on it
    gz, gl, gx = pg.autograd.grad(y, [z, later, x])
    assert gz.dtype == pg.float32 and gz.shape == (2, 5)
    np.testing.assert_array_equal(gz.numpy(), np.zeros((2, 5), np.float32))
    np.testing.assert_array_equal(gl.numpy(), np.zeros((3, 4)))
    np.testing.assert_allclose(gx.numpy(), 2 * np.exp(x.numpy()), rtol=1e-12)
    # y with respect to itself is the seed.
    (gy,) = pg.autograd.grad(y, y)
    assert gy.numpy() == 1.0


def test_detach_stops_the_gradient(conn):
    rng = np.random.default_rng(2)
    a = rng.standard_normal(6)
    x = pg.tensor(a)
    (g,) = pg.autograd.grad((x.detach() * x).sum(), x)  # d/dx of c * x with c = x's value
    np.testing.assert_allclose(g.numpy(), a, rtol=1e-15)
    (g,) = pg.autograd.grad((x.detach() ** 2).sum(), x)
    np.testing.assert_array_equal(g.numpy(), np.zeros(6))
    d = x.detach()
    np.testing.assert_array_equal(d.numpy(), a)  # the value flows
    (g,) = pg.autograd.grad((d.exp() * x).sum(), d)  # a gradient *to* a detached node
    np.testing.assert_allclose(g.numpy(), np.exp(a) * a, rtol=1e-14)


def test_several_outputs_and_grad_outputs(conn):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 4))
    gy1 = rng.standard_normal((3, 4))
    x = pg.tensor(a)
    y1, y2 = x.sin(), (x * x).sum()
    (g,) = pg.autograd.grad([y1, y2], x, [pg.tensor(gy1), None])
    np.testing.assert_allclose(g.numpy(), np.cos(a) * gy1 + 2 * a, rtol=1e-12)


def test_second_derivative(conn):
    rng = np.random.default_rng(4)
    a = rng.standard_normal(5)
    x = pg.tensor(a)
    (g,) = pg.autograd.grad((x ** 3).sum() + (x.sin() * x).sum(), x)
    (h,) = pg.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(h.numpy(), 6 * a + 2 * np.cos(a) - a * np.sin(a), rtol=1e-10)
    # through a conv2d (window / unwindow) and a gather (scatter_add / gather) too
    xs = rng.standard_normal((1, 2, 5, 5))
    ws = rng.standard_normal((3, 2, 3, 3))
    idxs = rng.integers(0, 3, (1, 2, 3, 3))
    tx = torch.tensor(xs, requires_grad=True)
    tw = torch.tensor(ws, requires_grad=True)
    for m, xx, ww in ((pg, pg.tensor(xs), pg.tensor(ws)), (torch, tx, tw)):
        out = F(m).conv2d(xx, ww, padding=1).tanh()
        out = out.gather(1, m.tensor(idxs) if m is torch else pg.tensor(idxs))
        if m is pg:
            (gx,) = pg.autograd.grad(out.sum(), xx)
            (hw,) = pg.autograd.grad((gx * gx).sum(), ww)
            got = hw.numpy()
        else:
            (gx,) = torch.autograd.grad(out.sum(), xx, create_graph=True)
            (hw,) = torch.autograd.grad((gx * gx).sum(), ww)
            want = hw.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def _raw_run(conn, nodes, outputs, op="run"):
    return conn.call(op, nodes=nodes, outputs=[{"node": o, "keep": False} for o in outputs])


def test_grad_nodes_share_one_sweep(conn):
    """All grad nodes of one (y, gy) share one reverse sweep: in `explain`, the primitives of the
    backward graph all come from the first of them (each primitive names the request node that
    made it); a grad node with another gy makes its own."""
    rng = np.random.default_rng(6)
    ha = conn.put(rng.standard_normal((3, 4)))
    hb = conn.put(rng.standard_normal((4, 5)))
    hg = conn.put(rng.standard_normal((3, 5)))
    nodes = [
        {"op": "input", "handle": ha},                 # 0
        {"op": "input", "handle": hb},                 # 1
        {"op": "matmul", "in": [0, 1]},                # 2
        {"op": "tanh", "in": [2]},                     # 3
        {"op": "sum", "in": [3]},                      # 4  y
        {"op": "grad", "in": [4, 0]},                  # 5  first of (4, -)
        {"op": "grad", "in": [4, 1]},                  # 6  shares 5's sweep
        {"op": "input", "handle": hg},                 # 7
        {"op": "grad", "in": [3, 1, 7]},               # 8  another (y, gy): its own sweep
        {"op": "grad", "in": [3, 0, 7]},               # 9  shares 8's sweep
    ]
    reply = _raw_run(conn, nodes, [5, 6, 8, 9], op="explain")
    made_by = {p["node"] for p in reply["graph"]}
    assert 5 in made_by and 8 in made_by
    assert 6 not in made_by and 9 not in made_by, reply["text"]
    out = _raw_run(conn, nodes, [5, 6, 8, 9])["outputs"]
    got = [np.frombuffer(o["data"], np.float64).reshape(o["shape"]) for o in out]
    a = torch.tensor(conn.get(ha), requires_grad=True)
    b = torch.tensor(conn.get(hb), requires_grad=True)
    t = (a @ b).tanh()
    ga, gb = torch.autograd.grad(t.sum(), [a, b], retain_graph=True)
    gb2, ga2 = torch.autograd.grad(t, [b, a], torch.tensor(conn.get(hg)))
    for g, w in zip(got, (ga, gb, gb2, ga2)):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(bool(os.environ.get("PICOGRAD_CUDA_HOST_KERNELS")),
                    reason="emulated GPU kernels run as compiled C: no --jit off daemon")
def test_compiled_backward_equals_interpreter(daemon_factory):
    """A training step's backward graph fuses like any graph: compiled kernels (every loop
    compiled) give exactly the interpreter's values, erf's derivative included."""
    interp = daemon_factory(["--jit", "off"], name="interp")
    jit = daemon_factory(["--jit-min-work", "0"], name="jit")
    rng = np.random.default_rng(7)
    xs = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    ws = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    ls = rng.standard_normal((8, 5)).astype(np.float32)
    results = []
    for d in (interp, jit):
        with pg.connect(d.unix_url) as c:
            x, w, lw = pg.tensor(xs, conn=c), pg.tensor(ws, conn=c), pg.tensor(ls, conn=c)
            h = F(pg).conv2d(x, w, padding=1)
            h = F(pg).layer_norm(F(pg).gelu(h), (6,))
            h = F(pg).max_pool2d(h, 2).reshape(2, -1)[:, :8] @ lw
            loss = F(pg).cross_entropy(h, pg.tensor(np.array([1, 4]), conn=c)) + pg.erf(h).mean()
            grads = pg.autograd.grad(loss, [x, w, lw])
            pg.realize(loss, *grads)
            results.append([t.numpy() for t in (loss, *grads)])
            if d is jit:  # compiled now, or earlier into the shared kernel cache
                k = c.stats()["kernels"]
                assert k["compiled"] + k["disk_hits"] > 0, k
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_errors_are_structured_and_the_daemon_keeps_serving(conn):
    rng = np.random.default_rng(8)
    hx = conn.put(rng.standard_normal((3, 4)))
    hi = conn.put(np.arange(4, dtype=np.int64))
    hg = conn.put(rng.standard_normal((4, 3)))
    base = [{"op": "input", "handle": hx}, {"op": "exp", "in": [0]}]  # y = exp(x) [3, 4]
    cases = [
        ([{"op": "grad", "in": [1, 0]}], "bad_request",
         "node 2 (grad): y has shape [3, 4]; a non-scalar output needs an output gradient (in[2])"),
        ([{"op": "input", "handle": hi}, {"op": "sum", "in": [2]}, {"op": "grad", "in": [1, 2]}],
         "bad_dtype", "node 4 (grad): x (in[1]) is int64"),
        ([{"op": "input", "handle": hi}, {"op": "sum", "in": [2]}, {"op": "grad", "in": [3, 0]}],
         "bad_dtype", "node 4 (grad): y (in[0]) is int64"),
        ([{"op": "input", "handle": hg}, {"op": "grad", "in": [1, 0, 2]}], "bad_shape",
         "node 3 (grad): the output gradient gy (in[2]) has shape [4, 3]; y has shape [3, 4]"),
        ([{"op": "grad", "in": [1]}], "bad_request", "node 2 (grad) takes 2 to 3 inputs, got 1"),
        ([{"op": "grad", "in": [1, 0], "create_graph": True}], "bad_request",
         "unknown attribute 'create_graph'"),
        ([{"op": "detach", "in": [5]}], "bad_request", "input 0 must be the index of an earlier"),
    ]
    for extra, code, text in cases:
        with pytest.raises(PicogradError) as exc:
            _raw_run(conn, base + extra, [len(base) + len(extra) - 1])
        assert exc.value.code == code, exc.value
        assert text in exc.value.message, exc.value.message
        conn.ping()
    # The daemon still computes gradients afterwards, and counted the errors.
    out = _raw_run(conn, base + [{"op": "sum", "in": [1]}, {"op": "grad", "in": [2, 0]}], [3])
    g = np.frombuffer(out["outputs"][0]["data"], np.float64).reshape(3, 4)
    np.testing.assert_allclose(g, np.exp(conn.get(hx)), rtol=1e-15)
    assert conn.stats()["errors"]["bad_dtype"] >= 2


def test_client_side_rules(conn):
    x = pg.tensor(np.ones((3, 4)))
    i = pg.tensor(np.arange(3))
    with pytest.raises(pg.ShapeError) as exc:
        pg.autograd.grad(x.exp(), x)
    assert exc.value.code == "bad_request"
    with pytest.raises(pg.ShapeError) as exc:
        pg.autograd.grad(x.sum(), i)
    assert exc.value.code == "bad_dtype"
    with pytest.raises(pg.ShapeError) as exc:
        pg.autograd.grad(x.exp(), x, pg.tensor(np.ones((4, 3))))
    assert exc.value.code == "bad_shape"
    with pytest.raises(ValueError):
        pg.autograd.grad([x.sum(), x.sum()], x, [None])
    assert x.detach().shape == (3, 4) and pg.erf(i).dtype == pg.float32
