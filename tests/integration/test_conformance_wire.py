"""The `run` request on the wire (PROTOCOL.md section 6), through Connection.call only.

These do not depend on the Tensor API: kept outputs come back as handles usable with get/free,
inline outputs as dtype/shape/data, several outputs in the order asked, leaves (const with data
or a weak value, full, arange, rand/randn with seed and offset), dtype promotion with weak
scalars, and the graph's results against numpy.
"""

import numpy as np
import pytest

from picograd import DTYPES
from conformance_util import gen
from conformance_util import conn, rng, shared_daemon  # noqa: F401 (fixtures)


def _inp(h):
    return {"op": "input", "handle": h}


def _const(arr):
    arr = np.ascontiguousarray(arr)
    return {"op": "const", "dtype": str(arr.dtype) if arr.dtype != bool else "bool",
            "shape": list(arr.shape), "data": arr.tobytes()}


def _decode(out):
    """numpy array of an inline output."""
    assert set(out) >= {"dtype", "shape", "data"}, out
    return np.frombuffer(bytes(out["data"]), DTYPES[out["dtype"]]).reshape(out["shape"])


def _run(conn, nodes, *outs):
    """Runs and returns the reply's outputs; outs are (node, keep) pairs."""
    r = conn.call("run", nodes=nodes, outputs=[{"node": n, "keep": k} for n, k in outs])
    assert len(r["outputs"]) == len(outs), r
    return r["outputs"]


def test_keep_true_returns_a_handle(conn, rng):
    a = gen(rng, (3, 4), "float32")
    h = conn.put(a)
    t0 = conn.stats()["session"]["tensors"]
    out, = _run(conn, [_inp(h), {"op": "exp", "in": [0]}], (1, True))
    assert set(out) >= {"handle", "dtype", "shape"} and "data" not in out, out
    assert out["dtype"] == "float32" and out["shape"] == [3, 4]
    assert isinstance(out["handle"], int) and out["handle"] != h
    assert conn.stats()["session"]["tensors"] == t0 + 1
    got = conn.get(out["handle"])
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got, np.exp(a.astype(np.float64)), rtol=1e-5, atol=1e-6)
    # the kept tensor is an input like any other, and is independent of its source
    conn.free(h)
    out2, = _run(conn, [_inp(out["handle"]), {"op": "log", "in": [0]}], (1, False))
    np.testing.assert_allclose(_decode(out2), a, rtol=1e-5, atol=1e-6)
    conn.free(out["handle"])
    assert conn.stats()["session"]["tensors"] == t0 - 1


def test_keep_false_returns_data_inline(conn, rng):
    for dtype in ("float32", "float64", "int32", "int64", "bool"):
        a = gen(rng, (2, 3, 5), dtype)
        h = conn.put(a)
        t0 = conn.stats()["session"]["tensors"]
        out, = _run(conn, [_inp(h), {"op": "permute", "in": [0], "dims": [2, 0, 1]}], (1, False))
        assert "handle" not in out, out
        assert out["dtype"] == dtype and out["shape"] == [5, 2, 3]
        got = _decode(out)
        np.testing.assert_array_equal(got, a.transpose(2, 0, 1))
        assert conn.stats()["session"]["tensors"] == t0  # nothing stored
    # empty and rank-0 results
    out, = _run(conn, [{"op": "full", "shape": [0, 3], "value": 1.5}], (0, False))
    assert out["shape"] == [0, 3] and out["dtype"] == "float32" and bytes(out["data"]) == b""
    out, = _run(conn, [{"op": "full", "shape": [], "value": 7}], (0, False))
    assert out["shape"] == [] and out["dtype"] == "int64" and _decode(out)[()] == 7


def test_input_node_as_output(conn, rng):
    a = gen(rng, (4,), "int64")
    h = conn.put(a)
    inline, kept = _run(conn, [_inp(h)], (0, False), (0, True))
    np.testing.assert_array_equal(_decode(inline), a)
    np.testing.assert_array_equal(conn.get(kept["handle"]), a)
    conn.free(h)  # the kept output stays valid
    np.testing.assert_array_equal(conn.get(kept["handle"]), a)


def test_multiple_outputs_in_request_order(conn, rng):
    a = gen(rng, (3, 5), "float64")
    h = conn.put(a)
    nodes = [_inp(h), {"op": "sum", "in": [0], "dims": [1]}, {"op": "max", "in": [0]},
             {"op": "argmax", "in": [0], "dim": 0}, {"op": "gt", "in": [0, 2]}]
    outs = _run(conn, nodes, (3, False), (1, True), (4, False), (1, False), (2, True), (3, False))
    assert [("handle" in o) for o in outs] == [False, True, False, False, True, False]
    np.testing.assert_array_equal(_decode(outs[0]), a.argmax(axis=0))
    assert outs[0]["dtype"] == "int64"
    np.testing.assert_allclose(conn.get(outs[1]["handle"]), a.sum(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(_decode(outs[2]), a > a.max())
    assert outs[2]["dtype"] == "bool"
    np.testing.assert_allclose(_decode(outs[3]), a.sum(axis=1), rtol=1e-12)
    assert conn.get(outs[4]["handle"])[()] == a.max()
    np.testing.assert_array_equal(_decode(outs[5]), _decode(outs[0]))
    assert outs[1]["handle"] != outs[4]["handle"]


def test_const_leaves(conn, rng):
    for dtype in ("float32", "float64", "int32", "int64", "bool"):
        a = gen(rng, (2, 3), dtype)
        out, = _run(conn, [_const(a)], (0, False))
        assert out["dtype"] == dtype
        np.testing.assert_array_equal(_decode(out), a)
    out, = _run(conn, [{"op": "const", "value": 3, "dtype": "float64"}], (0, False))
    assert out["dtype"] == "float64" and out["shape"] == [] and _decode(out)[()] == 3.0
    out, = _run(conn, [{"op": "const", "value": True, "dtype": "bool"}], (0, False))
    assert out["dtype"] == "bool" and _decode(out)[()]


# (tensor dtype, weak value, expected result dtype of tensor + value)
WEAK = [("int32", 2, "int32"), ("int64", 2, "int64"), ("bool", 1, "int64"),
        ("float32", 2, "float32"), ("float64", 2, "float64"), ("int32", 2.5, "float32"),
        ("int64", 2.5, "float32"), ("bool", 2.5, "float32"), ("float32", 2.5, "float32"),
        ("float64", 2.5, "float64")]


@pytest.mark.parametrize("dtype,value,want", WEAK)
def test_weak_scalar_const(conn, rng, dtype, value, want):
    a = gen(rng, (4,), dtype, "small")
    h = conn.put(a)
    for op, f in (("add", np.add), ("mul", np.multiply), ("sub", np.subtract)):
        if dtype == "bool" and op == "sub":
            continue
        for order in ((0, 1), (1, 0)):
            out, = _run(conn, [_inp(h), {"op": "const", "value": value},
                               {"op": op, "in": list(order)}], (2, False))
            assert out["dtype"] == want, (dtype, value, op, order, out["dtype"])
            x, y = a.astype(np.float64), float(value)
            expect = f(x, y) if order == (0, 1) else f(y, x)
            np.testing.assert_allclose(_decode(out).astype(np.float64), expect, rtol=1e-6)
    # with a dtype the const is a tensor like any other
    out, = _run(conn, [_inp(h), {"op": "const", "value": value, "dtype": "float64"},
                       {"op": "expand", "in": [1], "shape": [4]}, {"op": "add", "in": [0, 2]}],
                (3, False))
    assert out["dtype"] == "float64"
    np.testing.assert_allclose(_decode(out), a.astype(np.float64) + value, rtol=1e-12)


# (op, input dtypes, extra attributes, expected dtype)
PROMOTION = [
    ("add", ("int32", "float32"), {}, "float32"), ("add", ("int64", "float32"), {}, "float32"),
    ("add", ("int32", "int64"), {}, "int64"), ("add", ("bool", "int32"), {}, "int32"),
    ("mul", ("float32", "float64"), {}, "float64"), ("sub", ("int32", "float64"), {}, "float64"),
    ("div", ("int64", "int64"), {}, "float32"), ("div", ("int32", "bool"), {}, "float32"),
    ("div", ("float64", "int32"), {}, "float64"), ("lt", ("int32", "float64"), {}, "bool"),
    ("eq", ("bool", "bool"), {}, "bool"), ("maximum", ("int32", "float32"), {}, "float32"),
    ("pow", ("int64", "int64"), {}, "int64"), ("pow", ("float32", "int64"), {}, "float32"),
    ("logical_and", ("float32", "int32"), {}, "bool"),
    ("exp", ("int32",), {}, "float32"), ("sqrt", ("int64",), {}, "float32"),
    ("sigmoid", ("bool",), {}, "float32"), ("neg", ("int32",), {}, "int32"),
    ("sum", ("int32",), {}, "int64"), ("sum", ("bool",), {}, "int64"),
    ("sum", ("float32",), {}, "float32"), ("prod", ("int32",), {}, "int64"),
    ("mean", ("int64",), {}, "float32"), ("mean", ("float64",), {}, "float64"),
    ("max", ("int32",), {}, "int32"), ("argmax", ("float64",), {}, "int64"),
    ("any", ("float32",), {}, "bool"), ("cumsum", ("int32",), {"dim": 0}, "int64"),
    ("cast", ("float64",), {"dtype": "int32"}, "int32"),
    ("where", ("bool", "int32", "float64"), {}, "float64"),
    ("matmul", ("float64", "float64"), {}, "float64"),
]


@pytest.mark.parametrize("op,dtypes,attrs,want", PROMOTION)
def test_dtype_promotion(conn, rng, op, dtypes, attrs, want):
    arrays = [gen(rng, (3, 3), d, "base") for d in dtypes]
    nodes = [_const(a) for a in arrays] + [dict({"op": op, "in": list(range(len(arrays)))},
                                                **attrs)]
    out, = _run(conn, nodes, (len(arrays), False))
    assert out["dtype"] == want, (op, dtypes, out)
    got = _decode(out)
    assert got.dtype == np.dtype(want)


def test_full_and_arange_leaves(conn):
    cases = [({"op": "full", "shape": [2, 3], "value": 2.5}, np.full((2, 3), 2.5, np.float32)),
             ({"op": "full", "shape": [2], "value": 4}, np.full(2, 4, np.int64)),
             ({"op": "full", "shape": [3], "value": True}, np.ones(3, bool)),
             ({"op": "full", "shape": [2], "value": 1, "dtype": "float64"}, np.ones(2)),
             ({"op": "arange", "start": 0, "end": 5, "step": 1}, np.arange(5)),
             ({"op": "arange", "start": 1, "end": 2, "step": 0.25},
              np.arange(1, 2, 0.25, dtype=np.float32)),
             ({"op": "arange", "start": 10, "end": 0, "step": -3}, np.arange(10, 0, -3)),
             ({"op": "arange", "start": 0, "end": 4, "step": 1, "dtype": "float64"},
              np.arange(4.0)),
             ({"op": "arange", "start": 0, "end": 0, "step": 1}, np.arange(0))]
    for node, want in cases:
        out, = _run(conn, [node], (0, False))
        got = _decode(out)
        assert got.dtype == want.dtype, (node, got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want, err_msg=str(node))


@pytest.mark.parametrize("op", ["rand", "randn"])
def test_random_leaves_counter_based(conn, op):
    """Same seed and offset -> same numbers; element i uses counter offset + i."""
    def draw(shape, seed, offset=None, dtype=None):
        node = {"op": op, "shape": shape, "seed": seed}
        if offset is not None:
            node["offset"] = offset
        if dtype is not None:
            node["dtype"] = dtype
        out, = _run(conn, [node], (0, False))
        return _decode(out)
    a = draw([1000], 7)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(draw([1000], 7, 0), a)
    np.testing.assert_array_equal(draw([10, 100], 7).reshape(-1), a)
    np.testing.assert_array_equal(draw([400], 7, 600), a[600:])
    assert not np.array_equal(draw([1000], 8), a)
    if op == "rand":
        assert a.min() >= 0 and a.max() < 1
    d = draw([1000], 7, dtype="float64")
    assert d.dtype == np.float64
    np.testing.assert_array_equal(draw([500], 7, 500, dtype="float64"), d[500:])
    assert abs(d.mean() - (0.5 if op == "rand" else 0.0)) < 0.1


def test_random_identical_for_any_thread_count(daemon_factory):
    import picograd
    outs = []
    for threads in ("1", "4"):
        d = daemon_factory(extra_args=["--threads", threads], name=f"t{threads}")
        with picograd.Connection(d.unix_url) as c:
            r = c.call("run", nodes=[{"op": "rand", "shape": [300, 1000], "seed": 11},
                                     {"op": "randn", "shape": [300, 1000], "seed": 12}],
                       outputs=[{"node": 0, "keep": False}, {"node": 1, "keep": False}])
            outs.append([_decode(o).copy() for o in r["outputs"]])
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_graph_against_numpy(conn, rng):
    """A small graph with broadcasting, views, a reduction and a matmul, checked end to end."""
    x = gen(rng, (4, 6), "float64")
    w = gen(rng, (6, 3), "float64")
    hx, hw = conn.put(x), conn.put(w)
    nodes = [_inp(hx), _inp(hw),
             {"op": "matmul", "in": [0, 1]},                                   # 2: [4, 3]
             {"op": "const", "value": 0.5},                                    # 3
             {"op": "mul", "in": [2, 3]},                                      # 4: [4, 3]
             {"op": "slice", "in": [4], "slices": [[None, None, 2]]},          # 5: [2, 3]
             {"op": "slice", "in": [0], "slices": [[None, None, 2], [1, None, 2]]},  # 6: [2, 3]
             {"op": "sum", "in": [6], "dims": [1], "keepdim": True},           # 7: [2, 1]
             {"op": "add", "in": [5, 7]},                                      # 8: [2, 3]
             {"op": "relu", "in": [8]}]                                        # 9
    out, = _run(conn, nodes, (9, False))
    want = np.maximum((x @ w * 0.5)[::2] + x[::2, 1::2].sum(axis=1, keepdims=True), 0)
    assert out["dtype"] == "float64" and out["shape"] == [2, 3]
    np.testing.assert_allclose(_decode(out), want, rtol=1e-10, atol=1e-12)


def test_large_inline_output(conn, rng):
    a = gen(rng, (1024, 1024), "float32")
    h = conn.put(a)
    out, = _run(conn, [_inp(h), {"op": "neg", "in": [0]}], (1, False))
    np.testing.assert_array_equal(_decode(out), -a)
