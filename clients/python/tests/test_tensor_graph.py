"""Unit tests of the lazy Tensor API (picograd.tensor, shapes, functional, nn.functional) that
need no daemon.

Graph building and shape/dtype inference are checked directly on pending tensors, and against
torch's own answers when torch is installed. Realization is checked against FakeConn, a stand-in
Connection that records every request and evaluates a small subset of the `run` ops with numpy,
so the whole path (one run per realization, kept handles, inline data, frees pipelined in front,
error sites) is exercised without picogradd.
Run: PYTHONPATH=clients/python python3 -m pytest clients/python/tests/test_tensor_graph.py
"""

import gc
import itertools
import pickle
import sys
import threading

import numpy as np
import pytest

import picograd as pg
import picograd.nn.functional as F
from picograd import PicogradError, client, shapes

T = sys.modules["picograd.tensor"]  # the module; pg.tensor is the function


# ---------------------------------------------------------------------------------------------
# A fake connection
# ---------------------------------------------------------------------------------------------


class FakeConn:
    """Just enough of Connection for the tensor layer: put, send/recv (pipelined, in order),
    exchange, server_info, closed and _call_lock. ``requests`` records (op, fields); ``store``
    holds the live tensors by handle; ``fail`` makes the next run reply with that error
    message."""

    def __init__(self):
        self.server_info = {"session": 1, "limits": {}}
        self.closed = False
        self._call_lock = threading.RLock()
        self.requests = []
        self.store = {}
        self._replies = []
        self._handles = itertools.count(1)
        self.fail = None

    def put(self, arr):
        h = next(self._handles)
        self.store[h] = np.array(arr)
        self.requests.append(("put", {"shape": list(np.shape(arr))}))
        return h

    def send(self, op, **fields):
        self.requests.append((op, fields))
        rid = len(self.requests)
        try:
            reply = {"id": rid, "ok": True}
            reply.update(getattr(self, "_op_" + op)(**fields))
        except PicogradError as exc:
            reply = {"id": rid, "ok": False, "error": {"code": exc.code, "message": exc.message}}
        self._replies.append(reply)
        return rid

    def recv(self):
        return self._replies.pop(0)

    def exchange(self, op, fields):  # Connection.exchange: send() and recv() in one call
        rid = self.send(op, **fields)
        return rid, self.recv()

    def ops(self):
        return [op for op, _ in self.requests]

    # -- ops ---------------------------------------------------------------------------------

    def _op_ping(self):
        return {}

    def _op_free(self, handle):
        if handle not in self.store:
            raise PicogradError("unknown_handle", f"handle {handle}")
        del self.store[handle]
        return {}

    def _op_get(self, handle):
        a = self.store[handle]
        return {"dtype": pg.as_dtype(a.dtype).name, "shape": list(a.shape), "data": a.tobytes()}

    def _op_run(self, nodes, outputs, free=()):
        try:
            return self._run(nodes, outputs)
        finally:  # the daemon releases a run's `free` handles whether or not it succeeds
            for h in free:
                self.store.pop(h, None)

    def _run(self, nodes, outputs):
        if self.fail:
            msg, self.fail = self.fail, None
            raise PicogradError("bad_shape", msg)
        vals = []
        for n in nodes:
            args = [vals[i] for i in n.get("in", [])]
            vals.append(np.asarray(_EVAL[n["op"]](n, *args)))
        out = []
        for o in outputs:
            a = np.array(vals[o["node"]], order="C")
            meta = {"dtype": pg.as_dtype(a.dtype).name, "shape": list(a.shape)}
            if o["keep"]:
                h = next(self._handles)
                self.store[h] = a
                meta["handle"] = h
            else:
                meta["data"] = a.tobytes()
            out.append(meta)
        return {"outputs": out}


def _const(n):
    v = n["value"]
    return np.array(v, dtype=shapes.scalar_type(v).numpy_dtype)


_EVAL = {
    "input": None,  # filled in per connection below
    "const": _const,
    "full": lambda n: np.full(n["shape"], n["value"], dtype=pg.as_dtype(n["dtype"]).numpy_dtype),
    "arange": lambda n: np.arange(n["start"], n["end"], n["step"]).astype(
        pg.as_dtype(n["dtype"]).numpy_dtype),
    "add": lambda n, a, b: np.add(a, b),
    "mul": lambda n, a, b: np.multiply(a, b),
    "sub": lambda n, a, b: np.subtract(a, b),
    "gt": lambda n, a, b: np.greater(a, b),
    "neg": lambda n, a: -a,
    "cast": lambda n, a: a.astype(pg.as_dtype(n["dtype"]).numpy_dtype),
    "sum": lambda n, a: a.sum(axis=tuple(n["dims"]) if "dims" in n else None,
                              keepdims=n.get("keepdim", False)),
    "reshape": lambda n, a: a.reshape(n["shape"]),
    "permute": lambda n, a: a.transpose(n["dims"]),
    "slice": lambda n, a: a[tuple(slice(*s) for s in n["slices"])],
    "matmul": lambda n, a, b: a @ b,
}


@pytest.fixture
def conn(monkeypatch):
    """A FakeConn installed as picograd's default connection."""
    fake = FakeConn()
    _EVAL["input"] = lambda n: fake.store[n["handle"]]
    monkeypatch.setattr(client, "_default", fake)
    return fake


# ---------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------


def test_dtype_objects_and_aliases():
    assert str(pg.float32) == "float32" and repr(pg.float32) == "picograd.float32"
    assert pg.float is pg.float32 and pg.double is pg.float64
    assert pg.long is pg.int64 and pg.int is pg.int32 and str(pg.bool) == "bool"
    assert pg.float32 == "float32" and pg.float32 != pg.float64
    assert pg.as_dtype("long") is pg.int64
    assert pg.as_dtype(np.float64) is pg.float64
    assert pg.as_dtype(np.dtype(">i4")) is pg.int32
    assert pg.as_dtype(float) is pg.float64 and pg.as_dtype(bool) is pg.bool
    assert pickle.loads(pickle.dumps(pg.int64)) is pg.int64
    with pytest.raises(TypeError):
        pg.as_dtype(np.uint8)
    with pytest.raises(TypeError):
        pg.as_dtype("complex64")


def test_builtins_still_work_inside_picograd():
    # The package exports max/min/sum/float/int/bool; make sure they are picograd's there
    # and that the builtins are untouched everywhere else.
    assert pg.max is not max and pg.float is pg.float32
    assert max(1, 2) == 2 and float("1.5") == 1.5


# ---------------------------------------------------------------------------------------------
# Shape and dtype inference (pure)
# ---------------------------------------------------------------------------------------------


def test_broadcast_and_its_error():
    assert shapes.broadcast("add", (2, 1), (3,)) == (2, 3)
    assert shapes.broadcast("where", (1,), (4, 1), (5,)) == (4, 5)
    with pytest.raises(PicogradError, match=r"add: shapes \[2, 3\] and \[4\] do not broadcast"):
        shapes.broadcast("add", (2, 3), (4,))


def test_promotion_tiers():
    f32, f64, i32, i64, b = pg.float32, pg.float64, pg.int32, pg.int64, pg.bool
    D, Z, W = shapes.DIMS, shapes.ZERO_DIM, shapes.WEAK

    def rt(*ops):
        return shapes.result_type(*ops)

    assert rt((i32, D), (f32, D)) is f32
    assert rt((i64, D), (f64, D)) is f64
    assert rt((b, D), (i32, D)) is i32
    assert rt((f32, D), (i64, W)) is f32          # x + 2 keeps float32
    assert rt((f64, D), (f32, W)) is f64          # x + 2.0 keeps float64
    assert rt((i32, D), (f32, W)) is f32          # int tensor + 2.5 -> float32
    assert rt((i32, D), (i64, W)) is i32          # int32 + 2 stays int32
    assert rt((b, D), (i64, W)) is i64            # bool + 1 -> int64
    assert rt((b, D), (b, W)) is b
    assert rt((f32, W), (i64, W)) is f32          # where(c, 1.0, 0)
    assert rt((f32, D), (f64, Z)) is f32          # a 0-d tensor does not promote ...
    assert rt((i32, D), (i64, Z)) is i32
    assert rt((i32, D), (f64, Z)) is f64          # ... unless it brings a higher category
    assert rt((b, D), (i32, Z)) is i32
    assert rt((i32, Z), (f32, W)) is f32
    assert rt((f64, Z), (f32, Z)) is f64


def test_matmul_shapes():
    mm = shapes.matmul
    assert mm("m", (3,), (3,)) == ()
    assert mm("m", (2, 3), (3,)) == (2,)
    assert mm("m", (3,), (3, 4)) == (4,)
    assert mm("m", (5, 2, 3), (3, 4)) == (5, 2, 4)
    assert mm("m", (1, 2, 3), (7, 3, 4)) == (7, 2, 4)
    with pytest.raises(PicogradError, match="cannot be multiplied"):
        mm("m", (2, 3), (4, 5))
    with pytest.raises(PicogradError):
        mm("m", (), (3,))


def test_reshape_expand_and_axes():
    assert shapes.reshape("r", (2, 6), (3, -1)) == (3, 4)
    with pytest.raises(PicogradError, match="invalid for input of size 12"):
        shapes.reshape("r", (2, 6), (5, -1))
    assert shapes.expand("e", (2, 1), (3, -1, 4)) == (3, 2, 4)
    with pytest.raises(PicogradError):
        shapes.expand("e", (2, 3), (2, 4))
    assert shapes.norm_dims("sum", (-1, 0), 3) == (0, 2)
    with pytest.raises(IndexError):
        shapes.norm_dim("sum", 3, 3)
    with pytest.raises(PicogradError):
        shapes.norm_dims("sum", (1, -2), 3)


def test_window_shapes():
    assert shapes.conv2d("c", (1, 3, 32, 32), (8, 3, 5, 5), [1, 1], [2, 2], [1, 1], 1) == \
        (1, 8, 32, 32)
    assert shapes.conv2d("c", (2, 4, 9, 9), (6, 2, 3, 3), [2, 2], [0, 0], [2, 2], 2) == \
        (2, 6, 3, 3)
    assert shapes.pool2d("p", (1, 1, 7, 7), [2, 2], [2, 2], [0, 0], [1, 1]) == (1, 1, 3, 3)
    with pytest.raises(PicogradError):
        shapes.conv2d("c", (1, 3, 2, 2), (8, 3, 5, 5), [1, 1], [0, 0], [1, 1], 1)


# ---------------------------------------------------------------------------------------------
# Pending tensors: nodes, shapes and dtypes without a daemon
# ---------------------------------------------------------------------------------------------


def test_ops_build_nodes_without_sending():
    x = pg.zeros(2, 3)
    y = (x * 2 + 1).sum(dim=1)
    assert not y.is_realized and y.handle is None and y.connection is None
    assert y.shape == (2,) and y.dtype is pg.float32 and isinstance(y.shape, pg.Size)
    nodes, _, _ = T._build([y])
    assert nodes == [
        {"op": "full", "shape": [2, 3], "value": 0.0, "dtype": "float32"},
        {"op": "const", "value": 2},
        {"op": "mul", "in": [0, 1]},
        {"op": "const", "value": 1},
        {"op": "add", "in": [2, 3]},
        {"op": "sum", "in": [4], "dims": [1], "keepdim": False},
    ]


def test_shared_subgraphs_and_equal_constants_are_emitted_once():
    x = pg.ones(4)
    a = x.exp()
    b = a + a * 2 + 2
    nodes, _, _ = T._build([b, a])
    assert [n["op"] for n in nodes] == ["full", "exp", "const", "mul", "add", "add"]
    # 2 and 2.0 are different constants (one is an int, one a float).
    c = x * 2 + 2.0
    assert [n["op"] for n in T._build([c])[0]].count("const") == 2


def test_grad_detach_erf_nodes():
    """autograd.grad adds one `grad` node per (output, input), summed over outputs; shapes and
    dtypes are the inputs'; detach and erf are nodes of their own."""
    x = pg.ones(2, 3)
    w = pg.ones(3, dtype=pg.float64)
    y = (x * w).sum()
    gx, gw = pg.autograd.grad(y, [x, w])
    assert gx.shape == (2, 3) and gx.dtype is pg.float32 and gw.dtype is pg.float64
    nodes, _, _ = T._build([gx, gw])
    grads = [n for n in nodes if n["op"] == "grad"]
    assert len(grads) == 2 and all(len(n["in"]) == 2 for n in grads)
    assert grads[0]["in"][0] == grads[1]["in"][0]  # one y: the daemon shares one sweep
    (g,) = pg.autograd.grad([x.exp(), y], x, [pg.ones(2, 3), None])
    assert g._op == "add" and [i._op for i in g._inputs] == ["grad", "grad"]
    assert len(g._inputs[0]._inputs) == 3 and len(g._inputs[1]._inputs) == 2
    d = x.detach()
    assert d._op == "detach" and d.shape == x.shape and d.dtype is x.dtype
    assert pg.erf(pg.arange(3)).dtype is pg.float32 and x.erf()._op == "erf"
    with pytest.raises(shapes.ShapeError, match="non-scalar output"):
        pg.autograd.grad(x.exp(), x)
    with pytest.raises(shapes.ShapeError, match="int64"):
        pg.autograd.grad(y, pg.arange(3))
    with pytest.raises(TypeError):
        pg.autograd.grad(y, [x, 3])


def test_deep_graph_builds_without_recursion():
    x = pg.zeros(3)
    for _ in range(20000):
        x = x + 1
    nodes, _, _ = T._build([x])
    assert len(nodes) == 20002  # full, one shared const, 20000 adds
    assert nodes[-1]["in"] == [len(nodes) - 2, 1]


def test_creation_sites_point_at_this_file():
    y = pg.zeros(2) + 1
    file, line = y._site
    assert file == __file__ and isinstance(line, int)


@pytest.mark.parametrize("expr,shape,dtype", [
    (lambda x, i: x + i, (2, 3), "float32"),
    (lambda x, i: i * 2, (2, 3), "int64"),
    (lambda x, i: i / 2, (2, 3), "float32"),
    (lambda x, i: i + 2.5, (2, 3), "float32"),
    (lambda x, i: i.int() * 2, (2, 3), "int32"),
    (lambda x, i: (x > 0).sum(), (), "int64"),
    (lambda x, i: i.int().sum(0), (3,), "int64"),
    (lambda x, i: i.mean(), (), "float32"),
    (lambda x, i: x.double().exp(), (2, 3), "float64"),
    (lambda x, i: i.sqrt(), (2, 3), "float32"),
    (lambda x, i: x.max(dim=1).indices, (2,), "int64"),
    (lambda x, i: x.argmax(keepdim=True), (1, 1), "int64"),
    (lambda x, i: x.argmax(), (), "int64"),
    (lambda x, i: x.var(1, keepdim=True), (2, 1), "float32"),
    (lambda x, i: x.logsumexp(-1), (2,), "float32"),
    (lambda x, i: i.cumsum(0), (2, 3), "int64"),
    (lambda x, i: (x > 0) & (x < 1), (2, 3), "bool"),
    (lambda x, i: ~(x > 0), (2, 3), "bool"),
    (lambda x, i: x @ x.T, (2, 2), "float32"),
    (lambda x, i: x.T, (3, 2), "float32"),
    (lambda x, i: pg.where(x > 0, x, 0), (2, 3), "float32"),
    (lambda x, i: pg.where(x > 0, 1.0, 0), (2, 3), "float32"),
    (lambda x, i: pg.cat([x, i], 1), (2, 6), "float32"),
    (lambda x, i: pg.stack([x, x], 2), (2, 3, 2), "float32"),
    (lambda x, i: x.clamp(min=0), (2, 3), "float32"),
    (lambda x, i: i.clamp(0.5, 1.5), (2, 3), "float32"),
    (lambda x, i: x.softmax(1), (2, 3), "float32"),
    (lambda x, i: x.unsqueeze(0).expand(4, -1, -1), (4, 2, 3), "float32"),
    (lambda x, i: x.reshape(-1), (6,), "float32"),
    (lambda x, i: x.flatten(), (6,), "float32"),
    (lambda x, i: x.unsqueeze(1).squeeze(), (2, 3), "float32"),
    (lambda x, i: x.permute(1, 0), (3, 2), "float32"),
    (lambda x, i: x.transpose(0, 1), (3, 2), "float32"),
    (lambda x, i: x.flip(0), (2, 3), "float32"),
    (lambda x, i: x.gather(1, i), (2, 3), "float32"),
    (lambda x, i: x.index_select(1, i[0]), (2, 3), "float32"),
    (lambda x, i: x.masked_fill(x > 0, 1.0), (2, 3), "float32"),
    (lambda x, i: i.square(), (2, 3), "int64"),
    (lambda x, i: (x > 0).square(), (2, 3), "int64"),
    (lambda x, i: 2 ** i, (2, 3), "int64"),
    (lambda x, i: i ** 0.5, (2, 3), "float32"),
    (lambda x, i: 1 - x, (2, 3), "float32"),
    (lambda x, i: -x, (2, 3), "float32"),
    (lambda x, i: x.std(unbiased=False), (), "float32"),
    (lambda x, i: x.prod(1), (2,), "float32"),
    (lambda x, i: x.any(), (), "bool"),
    (lambda x, i: x.sum(dim=(0, 1), keepdim=True), (1, 1), "float32"),
])
def test_inference(expr, shape, dtype):
    x = pg.zeros(2, 3)
    i = pg.zeros(2, 3, dtype=pg.int64)
    y = expr(x, i)
    assert (tuple(y.shape), str(y.dtype)) == (shape, dtype)


torch = None
try:
    import torch  # noqa: F811
except ImportError:
    pass


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's notes on x.T and padding="same"
@pytest.mark.parametrize("name,fn", [
    ("add_int_float", lambda m, x, i, b: i + x),
    ("int32_weak_float", lambda m, x, i, b: i.int() * 1.5),
    ("bool_plus_int", lambda m, x, i, b: b + 1),
    ("bool_plus_bool", lambda m, x, i, b: b + True),
    ("div_int", lambda m, x, i, b: i / i),
    ("pow_weak", lambda m, x, i, b: 3 ** i),
    ("sum_bool", lambda m, x, i, b: b.sum(1)),
    ("prod_int32", lambda m, x, i, b: i.int().prod()),
    ("mean_keepdim", lambda m, x, i, b: x.mean((0, 2), keepdim=True)),
    ("max_dim", lambda m, x, i, b: x.max(1, keepdim=True).values),
    ("argmin", lambda m, x, i, b: x.argmin(-1)),
    ("cumsum_bool", lambda m, x, i, b: b.cumsum(1)),
    ("var_corr", lambda m, x, i, b: x.var(1, correction=0)),
    ("matmul_batch", lambda m, x, i, b: x @ x.transpose(1, 2)),
    ("matmul_vec", lambda m, x, i, b: x @ m.ones(4)),
    ("where_scalar", lambda m, x, i, b: m.where(b, i, 2.5)),
    ("clamp_int_float", lambda m, x, i, b: i.clamp(min=0.5)),
    ("index", lambda m, x, i, b: x[1, ..., None, 1:3]),
    ("index_neg", lambda m, x, i, b: x[-1, :, -2]),
    ("index_step", lambda m, x, i, b: x[:, ::2, 1:-1:2]),
    ("T", lambda m, x, i, b: x.T),
    ("flatten", lambda m, x, i, b: x.flatten(1)),
    ("squeeze", lambda m, x, i, b: x[:, :1].squeeze(1)),
    ("cat_promote", lambda m, x, i, b: m.cat([i, x], 2)),
    ("stack_neg", lambda m, x, i, b: m.stack([x, x], -1)),
    ("logsumexp", lambda m, x, i, b: x.logsumexp((1, 2))),
    ("std_all", lambda m, x, i, b: x.std()),
    ("eye", lambda m, x, i, b: m.eye(3, 4)),
    ("arange_float", lambda m, x, i, b: m.arange(0, 1, 0.3)),
    ("arange_neg", lambda m, x, i, b: m.arange(5, 0, -2)),
    ("full_int", lambda m, x, i, b: m.full((2,), 7)),
    ("rand_like", lambda m, x, i, b: m.rand_like(x)),
    ("sign", lambda m, x, i, b: i.sign()),
    ("reciprocal_int", lambda m, x, i, b: i.reciprocal()),
    ("maximum", lambda m, x, i, b: m.maximum(i.int(), x.double())),
    ("zero_dim_lower", lambda m, x, i, b: x + x.double().sum()),
    ("zero_dim_higher", lambda m, x, i, b: i.int() * x.double().sum()),
    ("zero_dim_int", lambda m, x, i, b: m.where(b, i.int(), i.sum())),
    ("zero_dim_cmp", lambda m, x, i, b: i.int() < x.double().sum()),
    ("zero_dims_only", lambda m, x, i, b: x.sum() + i.int().sum()),
    ("flip_varargs", lambda m, x, i, b: x.flip(0, 2)),
])
def test_inference_matches_torch(name, fn):
    tx = torch.zeros(2, 3, 4)
    px = pg.zeros(2, 3, 4)
    want = fn(torch, tx, tx.long(), tx > 0)
    got = fn(pg, px, px.long(), px > 0)
    assert tuple(got.shape) == tuple(want.shape), name
    assert str(got.dtype) == str(want.dtype).replace("torch.", ""), name


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's notes on x.T and padding="same"
@pytest.mark.parametrize("name,fn", [
    ("conv", lambda F, m: F.conv2d(m.zeros(2, 4, 9, 11), m.zeros(6, 2, 3, 3), m.zeros(6),
                                   stride=(2, 1), padding=1, dilation=(1, 2), groups=2)),
    ("conv_same", lambda F, m: F.conv2d(m.zeros(1, 3, 8, 8), m.zeros(4, 3, 4, 4),
                                        padding="same")),
    ("conv_unbatched", lambda F, m: F.conv2d(m.zeros(3, 8, 8), m.zeros(4, 3, 3, 3))),
    ("maxpool", lambda F, m: F.max_pool2d(m.zeros(1, 2, 9, 9), 3, 2, 1)),
    ("avgpool", lambda F, m: F.avg_pool2d(m.zeros(2, 9, 9), (2, 3))),
    ("linear", lambda F, m: F.linear(m.zeros(5, 2, 3), m.zeros(4, 3), m.zeros(4))),
    ("layer_norm", lambda F, m: F.layer_norm(m.zeros(2, 3, 4), (3, 4))),
    ("ce", lambda F, m: F.cross_entropy(m.zeros(5, 3), m.zeros(5, dtype=m.long))),
    ("ce_none", lambda F, m: F.cross_entropy(m.zeros(5, 3), m.zeros(5, dtype=m.long),
                                             reduction="none")),
    ("mse", lambda F, m: F.mse_loss(m.zeros(5, 3), m.ones(5, 3), reduction="sum")),
    ("one_hot", lambda F, m: F.one_hot(m.zeros(2, 3, dtype=m.long), 4)),
    ("embedding", lambda F, m: F.embedding(m.zeros(2, 3, dtype=m.long), m.zeros(10, 5))),
    ("pad", lambda F, m: F.pad(m.zeros(2, 3, 4), (1, 2, 0, 3))),
    ("pad_crop", lambda F, m: F.pad(m.zeros(2, 3, 4), (-1, 2, 1, -2))),
    ("gelu", lambda F, m: F.gelu(m.zeros(3), approximate="tanh")),
    ("silu_int", lambda F, m: F.silu(m.zeros(3))),
    ("log_softmax", lambda F, m: F.log_softmax(m.zeros(2, 3), dim=0)),
])
def test_nn_inference_matches_torch(name, fn):
    import torch.nn.functional as TF
    want = fn(TF, torch)
    got = fn(F, pg)
    assert tuple(got.shape) == tuple(want.shape), name
    assert str(got.dtype) == str(want.dtype).replace("torch.", ""), name


def test_zero_dim_operands_are_cast_for_the_daemon():
    x = pg.zeros(3)
    s = pg.zeros(2, dtype=pg.float64).sum()
    y = x + s
    assert y.dtype is pg.float32
    ops = [n["op"] for n in T._build([y])[0]]
    assert ops == ["full", "full", "sum", "cast", "add"]
    assert T._build([y])[0][3]["dtype"] == "float32"


def test_nn_nodes_carry_pairs_on_the_wire():
    y = F.conv2d(pg.zeros(1, 3, 8, 8), pg.zeros(4, 3, 3, 3), stride=2, padding=1)
    assert y._attrs == {"stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    p = F.max_pool2d(pg.zeros(1, 3, 8, 8), 2)
    assert p._attrs == {"kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0],
                        "dilation": [1, 1]}
    a = F.avg_pool2d(pg.zeros(1, 3, 8, 8), 2, count_include_pad=False)
    assert a._attrs["count_include_pad"] is False and "dilation" not in a._attrs
    g = F.gelu(pg.zeros(2))
    assert g._op == "gelu" and g._attrs == {"approximate": "none"}
    with pytest.raises(NotImplementedError):
        F.max_pool2d(pg.zeros(1, 1, 4, 4), 2, ceil_mode=True)


def test_client_side_errors_look_like_the_daemons():
    x = pg.zeros(2, 3)
    with pytest.raises(PicogradError, match=r"add: shapes \[2, 3\] and \[4\]") as info:
        x + pg.zeros(4)
    assert isinstance(info.value, RuntimeError)  # as torch raises it
    with pytest.raises(IndexError):
        x.sum(2)
    with pytest.raises(PicogradError, match="matmul"):
        x @ x
    with pytest.raises(PicogradError, match="invalid for input of size 6"):
        x.reshape(4, 2)


# ---------------------------------------------------------------------------------------------
# Indexing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    0, -1, (1, 2), (slice(None), 1), (slice(1, None), slice(None, None, 2)),
    (None, Ellipsis, 1), (Ellipsis, None), (1, None, slice(0, 2)), slice(5, 1),
    (slice(-2, None), -3), Ellipsis, (), (slice(None, 100),), np.int64(1),
])
def test_index_shapes_match_numpy(key):
    ref = np.zeros((2, 4, 3))
    x = pg.zeros(2, 4, 3)
    assert tuple(x[key].shape) == ref[key].shape


def test_index_nodes():
    x = pg.zeros(2, 4, 3)
    y = x[1, :, ::2]
    nodes, _, _ = T._build([y])
    assert nodes[1] == {"op": "slice", "in": [0], "slices": [[1, 2, 1], [0, 4, 1], [0, 3, 2]]}
    assert nodes[2] == {"op": "reshape", "in": [1], "shape": [4, 2]}
    assert x[:, :] is x  # nothing to do, nothing built
    # Trailing whole axes are not sent.
    assert T._build([x[1:]])[0][1]["slices"] == [[1, 2, 1]]


def test_index_errors():
    x = pg.zeros(2, 3)
    with pytest.raises(IndexError, match="index 2 is out of bounds for dimension 0 with size 2"):
        x[2]
    with pytest.raises(IndexError):
        x[0, -4]
    with pytest.raises(IndexError):
        x[0, 0, 0]
    with pytest.raises(ValueError, match="step must be greater than zero"):
        x[::-1]
    with pytest.raises(TypeError):
        x["a"]
    with pytest.raises(TypeError):
        x[0] = 1
    assert len(x) == 2 and [tuple(r.shape) for r in x] == [(3,), (3,)]
    with pytest.raises(TypeError):
        len(x.sum())


# ---------------------------------------------------------------------------------------------
# Random numbers
# ---------------------------------------------------------------------------------------------


def test_rand_offsets_advance_and_manual_seed_replays():
    pg.manual_seed(5)
    a = pg.rand(2, 3)
    b = pg.randn(4)
    c = pg.rand_like(a)
    assert (a._attrs["seed"], a._attrs["offset"]) == (5, 0)
    assert (b._op, b._attrs["offset"]) == ("randn", 6)
    assert c._attrs["offset"] == 10
    pg.manual_seed(5)
    assert pg.rand(2, 3)._attrs == a._attrs
    with pytest.raises(TypeError):
        pg.rand(2, dtype=pg.int64)


# ---------------------------------------------------------------------------------------------
# Realization against the fake connection
# ---------------------------------------------------------------------------------------------


def test_tensor_uploads_with_torch_default_dtypes(conn):
    assert pg.tensor(1.5).dtype is pg.float32
    assert pg.tensor([1, 2]).dtype is pg.int64
    assert pg.tensor([True]).dtype is pg.bool
    assert pg.tensor(np.zeros(2)).dtype is pg.float64
    assert pg.tensor(np.zeros(2, np.int32)).dtype is pg.int32
    assert pg.tensor([1, 2], dtype=pg.float64).dtype is pg.float64
    assert pg.tensor([0.1], dtype=pg.float64).tolist() == [0.1]  # not rounded via float32
    assert pg.tensor([1e300, 1e-300], dtype=pg.bool).tolist() == [True, True]
    assert pg.from_numpy(np.ones((2, 2), np.float32)).is_realized
    with pytest.raises(PicogradError, match="bad_dtype"):
        pg.tensor(np.zeros(2, np.uint8))
    assert pg.tensor([]).shape == (0,)
    assert "run" not in conn.ops()  # uploads are eager puts


def test_numpy_is_one_run_with_a_kept_and_an_inline_output(conn):
    x = pg.tensor([[1.0, 2.0], [3.0, 4.0]])
    y = (x @ x.T).sum(1)
    conn.requests.clear()
    out = y.numpy()
    assert conn.ops() == ["run"]
    run = conn.requests[0][1]
    top = len(run["nodes"]) - 1
    assert run["outputs"] == [{"node": top, "keep": True}, {"node": top, "keep": False}]
    assert run["nodes"][0] == {"op": "input", "handle": x.handle}
    np.testing.assert_allclose(out, [16.0, 36.0])
    assert out.flags.writeable
    # y is now a handle and has let go of its graph.
    assert y.is_realized and y._inputs == () and y.connection is conn
    conn.requests.clear()
    assert y.tolist() == [16.0, 36.0]
    assert conn.ops() == ["get"]


def test_realize_runs_everything_once(conn):
    x = pg.arange(6).reshape(2, 3)
    a = x * 2
    b = a + 1
    c = a.sum()
    assert pg.realize(b, c) == (b, c)
    assert conn.ops() == ["run"]
    assert b.is_realized and c.is_realized and not a.is_realized
    assert b.tolist() == [[1, 3, 5], [7, 9, 11]] and c.item() == 30


def test_scalar_conversions_and_repr(conn):
    x = pg.tensor([[1.0, 2.0]])
    assert repr(x) == "tensor([[1., 2.]], dtype=float32)"
    assert repr(pg.tensor(3)) == "tensor(3, dtype=int64)"
    s = x.sum()
    assert float(s) == 3.0 and int(s) == 3 and s.item() == 3.0 and f"{s:.1f}" == "3.0"
    assert bool(s > 2) and not bool(s > 5)
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(x > 0)
    with pytest.raises(RuntimeError):
        x.item()
    np.testing.assert_array_equal(np.asarray(x), [[1.0, 2.0]])
    assert np.asarray(x, dtype=np.float64).dtype == np.float64
    assert pickle.loads(pickle.dumps(x)).tolist() == [[1.0, 2.0]]


def test_numpy_operands_defer_to_the_tensor(conn):
    x = pg.tensor([1.0, 2.0])
    y = np.array([10.0, 20.0], np.float32) + x
    assert isinstance(y, pg.Tensor) and y.tolist() == [11.0, 22.0]


def test_dead_tensors_are_freed_in_front_of_the_next_request(conn):
    x = pg.tensor([1.0, 2.0])
    y = x + 1
    h = x.handle
    del x
    gc.collect()
    assert h in conn.store  # y's pending graph still references x: not freed
    y.realize()
    hy = y.handle
    del y
    gc.collect()
    assert h in conn.store and hy in conn.store  # queued, not sent
    conn.requests.clear()
    z = pg.ones(2).realize()
    assert conn.ops() == ["run"]  # the run carries them (its `free` field)
    assert sorted(conn.requests[0][1]["free"]) == sorted([h, hy])
    assert h not in conn.store and hy not in conn.store
    del z
    gc.collect()
    pg.flush()
    assert conn.store == {}


def test_many_frees_go_in_batches(conn):
    ts = [pg.tensor(float(i)) for i in range(100)]
    del ts
    gc.collect()
    conn.requests.clear()
    pg.ones(1).numpy()
    assert conn.ops() == ["run"] and len(conn.requests[0][1]["free"]) == 100
    assert conn.store.keys() == {max(conn.store)}  # only the new result remains
    ts = [pg.tensor(float(i)) for i in range(100)]
    del ts
    gc.collect()
    conn.requests.clear()
    pg.flush()  # any other request: `free`s pipelined in batches in front of it
    assert conn.ops().count("free") >= 100 and conn.ops()[-1] == "ping"


def test_frees_of_an_old_session_are_dropped(conn):
    x = pg.tensor([1.0])
    conn.server_info = {"session": 2}  # a reconnect: handle numbers start over
    del x
    gc.collect()
    conn.requests.clear()
    pg.flush()
    assert conn.ops() == ["ping"]


def test_daemon_errors_name_the_creation_site(conn):
    x = pg.tensor([1.0, 2.0])
    y = x.neg()  # the node the fake daemon will blame
    z = y + 1
    conn.fail = "node 1 (neg): something is wrong with [2]"
    with pytest.raises(PicogradError) as info:
        z.numpy()
    err = info.value
    assert err.code == "bad_shape"
    line = y._site[1]
    assert err.message.endswith(f"\n  (created at {__file__}:{line})")
    assert not z.is_realized  # still pending: the failed run changed nothing


def test_clone_shares_the_handle_and_copy_works(conn):
    x = pg.tensor([1, 2])
    c = x.clone()
    assert c is not x and c.handle == x.handle
    del x
    gc.collect()
    pg.flush()
    assert c.tolist() == [1, 2]  # the shared handle stays alive while c does
    import copy
    assert copy.deepcopy(c).handle == c.handle


def test_big_graphs_run_in_pieces(conn, monkeypatch):
    monkeypatch.setattr(T, "MAX_RUN_NODES", 40)
    monkeypatch.setattr(T, "RUN_CHUNK", 20)
    x = pg.zeros(2)
    for _ in range(100):
        x = x + 1
    assert x.tolist() == [100.0, 100.0]
    runs = [f for op, f in conn.requests if op == "run"]
    assert len(runs) > 1 and all(len(r["nodes"]) <= 40 for r in runs)


def test_cat_splits_past_the_input_limit(monkeypatch):
    monkeypatch.setattr(pg.functional, "MAX_NODE_INPUTS", 4)
    ts = [pg.zeros(1) for _ in range(10)]
    y = pg.cat(ts)
    assert y.shape == (10,)
    assert all(len(n.get("in", [])) <= 4 for n in T._build([y])[0])


def test_mixing_connections_is_refused(conn):
    x = pg.tensor([1.0])
    other = FakeConn()
    y = pg.tensor([1.0], conn=other)
    with pytest.raises(PicogradError, match="different connections"):
        x + y


def test_fetching_several_tensors_is_one_run(conn):
    a, b = pg.tensor([1, 2]), pg.tensor([[1.5]])
    c = a * 2
    conn.requests.clear()
    got = T._execute(fetch=[a, b, c, a])
    assert conn.ops() == ["run"]
    assert [g.tolist() for g in got] == [[1, 2], [[1.5]], [2, 4], [1, 2]]
    assert c.is_realized
