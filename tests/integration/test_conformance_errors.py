"""Bad input to `run`: every refusal has the documented code, a message naming the node, its op
and the shapes involved, and leaves the session exactly as it was (no new handle, no byte
allocated, existing tensors unchanged), and the connection and daemon keep working.

Most cases send raw `run` requests with Connection.call, so they test the daemon whatever the
Tensor API checks on its side; a few go through the Tensor API too.
"""

import numpy as np
import pytest

import picograd as pg
from picograd import PicogradError
from conformance_util import gen
from conformance_util import conn, rng, shared_daemon  # noqa: F401 (fixtures)

NODE_LIMIT = 65536


@pytest.fixture
def session(conn, rng):
    """The connection with three tensors already in the session: (conn, {name: (handle, array)})."""
    arrays = {"a": gen(rng, (2, 3), "float32"), "b": gen(rng, (4,), "float32"),
              "i": np.array([[0, 2, 1], [4, 3, 0]], dtype=np.int64),
              "x": gen(rng, (1, 1, 3, 3), "float32"), "big": gen(rng, (5, 6), "float64")}
    return conn, {k: (conn.put(v), v) for k, v in arrays.items()}


def _inp(h):
    return {"op": "input", "handle": h}


def _state(conn):
    s = conn.stats()["session"]
    return s["tensors"], s["bytes"]


def expect_error(sess, nodes, outputs, codes, node=None, op=None, contains=()):
    """Sends the run, expects PicogradError with a code in ``codes`` and a message naming
    ``node "N"`` and ``op`` and every string in ``contains``; then checks nothing changed."""
    conn, tensors = sess
    codes = (codes,) if isinstance(codes, str) else tuple(codes)
    before = _state(conn)
    errs_before = conn.stats()["errors"]
    with pytest.raises(PicogradError) as ei:
        conn.call("run", nodes=nodes, outputs=outputs)
    e = ei.value
    assert e.code in codes, f"code {e.code!r} (message {e.message!r}), expected one of {codes}"
    if node is not None:
        assert f"node {node}" in e.message, f"message does not name node {node}: {e.message!r}"
    if op is not None:
        assert op in e.message, f"message does not name op {op!r}: {e.message!r}"
    for text in contains:
        assert text in e.message, f"message does not mention {text!r}: {e.message!r}"
    after = _state(conn)
    assert after == before, (f"a failed run changed the session: (tensors, bytes) {before} -> "
                             f"{after}")
    errs_after = conn.stats()["errors"]
    assert errs_after.get(e.code, 0) > errs_before.get(e.code, 0), "error not counted in stats"
    for name, (h, arr) in tensors.items():
        got = conn.get(h)
        assert got.dtype == arr.dtype and np.array_equal(got, arr), f"tensor {name} changed"
    # the connection still serves runs
    ok = conn.call("run", nodes=[_inp(tensors["a"][0]), {"op": "neg", "in": [0]}],
                   outputs=[{"node": 1, "keep": False}])
    assert ok["outputs"][0]["shape"] == [2, 3]
    return e


# --- graph structure ------------------------------------------------------------------------

def test_forward_reference(session):
    conn, t = session
    expect_error(session, [_inp(t["a"][0]), {"op": "neg", "in": [2]}, {"op": "neg", "in": [0]}],
                 [{"node": 2, "keep": False}], "bad_request", node=1, op="neg")


def test_self_reference(session):
    conn, t = session
    expect_error(session, [_inp(t["a"][0]), {"op": "add", "in": [0, 1]}],
                 [{"node": 1, "keep": False}], "bad_request", node=1, op="add")


def test_input_index_out_of_range(session):
    conn, t = session
    expect_error(session, [_inp(t["a"][0]), {"op": "neg", "in": [99]}],
                 [{"node": 1, "keep": False}], "bad_request", node=1, op="neg")
    expect_error(session, [_inp(t["a"][0]), {"op": "neg", "in": [-1]}],
                 [{"node": 1, "keep": False}], "bad_request", node=1, op="neg")
    expect_error(session, [_inp(t["a"][0]), {"op": "neg", "in": [1 << 40]}],
                 [{"node": 1, "keep": False}], "bad_request", node=1, op="neg")


def test_output_node_out_of_range(session):
    conn, t = session
    expect_error(session, [_inp(t["a"][0]), {"op": "neg", "in": [0]}],
                 [{"node": 2, "keep": False}], "bad_request")
    expect_error(session, [_inp(t["a"][0])], [{"node": -1, "keep": True}], "bad_request")


def test_unknown_op(session):
    conn, t = session
    e = expect_error(session, [_inp(t["a"][0]), {"op": "frobnicate", "in": [0]}],
                     [{"node": 1, "keep": False}], "unknown_op", node=1, op="frobnicate")
    assert "frobnicate" in e.message
    # an op that exists as a request op but not as a graph op
    expect_error(session, [_inp(t["a"][0]), {"op": "put", "in": [0]}],
                 [{"node": 1, "keep": False}], "unknown_op", node=1, op="put")


def test_unknown_attribute(session):
    conn, t = session
    expect_error(session, [_inp(t["a"][0]), {"op": "neg", "in": [0], "alpha": 2}],
                 [{"node": 1, "keep": False}], "bad_request", node=1, op="neg",
                 contains=("alpha",))
    # a typo of a real attribute never silently means the default
    expect_error(session, [_inp(t["a"][0]), {"op": "sum", "in": [0], "dim": [1]}],
                 [{"node": 1, "keep": False}], "bad_request", node=1, op="sum",
                 contains=("dim",))
    expect_error(session, [_inp(t["a"][0]), {"op": "input", "handle": t["b"][0], "shape": [4]}],
                 [{"node": 1, "keep": False}], "bad_request", node=1, op="input")


def test_wrong_arity(session):
    conn, t = session
    a, b = t["a"][0], t["b"][0]
    cases = [
        ([_inp(a), {"op": "add", "in": [0]}], "add"),
        ([_inp(a), {"op": "neg", "in": [0, 0]}], "neg"),
        ([_inp(a), _inp(b), {"op": "where", "in": [0, 1]}], "where"),
        ([_inp(a), {"op": "matmul", "in": [0, 0, 0]}], "matmul"),
        ([_inp(a), {"op": "input", "handle": a, "in": [0]}], "input"),
        ([_inp(a), {"op": "exp"}], "exp"),
        ([_inp(a), {"op": "cat", "in": [], "dim": 0}], "cat"),
        ([_inp(a), {"op": "linear", "in": [0]}], "linear"),
        ([_inp(a), {"op": "conv2d", "in": [0, 0, 0, 0]}], "conv2d"),
    ]
    for nodes, op in cases:
        expect_error(session, nodes, [{"node": len(nodes) - 1, "keep": False}], "bad_request",
                     node=len(nodes) - 1, op=op)


def test_missing_or_mistyped_attributes(session):
    conn, t = session
    a = t["a"][0]
    cases = [
        ({"op": "reshape", "in": [0]}, "reshape"),
        ({"op": "cast", "in": [0]}, "cast"),
        ({"op": "sum", "in": [0], "dims": "all"}, "sum"),
        ({"op": "reshape", "in": [0], "shape": 6}, "reshape"),
        ({"op": "slice", "in": [0], "slices": [[0, 1]]}, "slice"),
        ({"op": "gelu", "in": [0], "approximate": "fast"}, "gelu"),
        ({"op": "clamp", "in": [0], "min": "zero"}, "clamp"),
        ({"op": "sum", "in": [0], "keepdim": "yes"}, "sum"),
    ]
    for node, op in cases:
        expect_error(session, [_inp(a), node], [{"node": 1, "keep": False}], "bad_request",
                     node=1, op=op)
    expect_error(session, [_inp(t["i"][0]), {"op": "one_hot", "in": [0]}],
                 [{"node": 1, "keep": False}], "bad_request", node=1, op="one_hot")
    expect_error(session, [_inp(a), _index_const([0, 2]),
                           {"op": "cross_entropy", "in": [0, 1], "reduction": "avg"}],
                 [{"node": 2, "keep": False}], "bad_request", node=2, op="cross_entropy")
    expect_error(session, [{"op": "const"}], [{"node": 0, "keep": False}], "bad_request", node=0,
                 op="const")
    expect_error(session, [{"op": "input"}], [{"node": 0, "keep": False}], "bad_request", node=0,
                 op="input")


def test_const_data_length_mismatch(session):
    expect_error(session, [{"op": "const", "dtype": "float32", "shape": [2, 3], "data": b"\0" * 20}],
                 [{"node": 0, "keep": False}], "bad_request", node=0, op="const")


def test_bad_dtype(session):
    conn, t = session
    a = t["a"][0]
    expect_error(session, [_inp(a), {"op": "cast", "in": [0], "dtype": "float16"}],
                 [{"node": 1, "keep": False}], "bad_dtype", node=1, op="cast")
    expect_error(session, [{"op": "const", "dtype": "complex64", "shape": [1], "data": b"\0" * 8}],
                 [{"node": 0, "keep": False}], "bad_dtype", node=0, op="const")
    expect_error(session, [{"op": "full", "shape": [2], "value": 1, "dtype": "int8"}],
                 [{"node": 0, "keep": False}], "bad_dtype", node=0, op="full")


def test_unknown_handle(session, shared_daemon):
    expect_error(session, [_inp(987654321), {"op": "neg", "in": [0]}],
                 [{"node": 1, "keep": False}], "unknown_handle", node=0, op="input")
    conn, t = session
    h = conn.put(np.ones(3, np.float32))
    conn.free(h)
    expect_error(session, [_inp(h)], [{"node": 0, "keep": True}], "unknown_handle", node=0,
                 op="input")
    # another session's handle is not this session's
    with pg.Connection(shared_daemon.unix_url) as other:
        h2 = other.put(np.ones(3, np.float32))
        if all(h2 != v[0] for v in t.values()):
            expect_error(session, [_inp(h2)], [{"node": 0, "keep": False}], "unknown_handle",
                         node=0, op="input")


def test_malformed_run_fields(session):
    conn, t = session
    a = t["a"][0]
    good_nodes = [_inp(a), {"op": "neg", "in": [0]}]
    good_out = [{"node": 1, "keep": False}]
    for nodes, outputs in [
            (None, good_out), (good_nodes, None), ("nodes", good_out), (good_nodes, "x"),
            ([_inp(a), {"op": "neg", "in": ["0"]}], good_out),
            ([_inp(a), {"op": "neg", "in": 0}], good_out),
            ([_inp(a), {"in": [0]}], good_out), ([_inp(a), {"op": 7, "in": [0]}], good_out),
            ([_inp(a), [1, 2]], good_out),
            (good_nodes, [{"node": 1, "keep": "yes"}]), (good_nodes, [{"keep": False}]),
            (good_nodes, [1])]:
        fields = {k: v for k, v in (("nodes", nodes), ("outputs", outputs)) if v is not None}
        before = _state(conn)
        with pytest.raises(PicogradError) as ei:
            conn.call("run", **fields)
        assert ei.value.code == "bad_request", (nodes, outputs, ei.value)
        assert _state(conn) == before
    assert conn.call("run", nodes=good_nodes, outputs=good_out)["ok"] is True


# --- shapes ---------------------------------------------------------------------------------

def test_add_shape_mismatch_names_both_shapes(session):
    conn, t = session
    expect_error(session, [_inp(t["a"][0]), _inp(t["b"][0]), {"op": "add", "in": [0, 1]}],
                 [{"node": 2, "keep": False}], "bad_shape", node=2, op="add",
                 contains=("[2, 3]", "[4]"))
    expect_error(session, [_inp(t["b"][0]), _inp(t["a"][0]), {"op": "mul", "in": [0, 1]}],
                 [{"node": 2, "keep": False}], "bad_shape", node=2, op="mul",
                 contains=("[4]", "[2, 3]"))


def test_invalid_axes(session):
    conn, t = session
    a = t["a"][0]  # rank 2
    codes = ("bad_request", "bad_shape")  # an attribute out of range for the input's shape
    cases = [
        ({"op": "sum", "in": [0], "dims": [2]}, "sum"),
        ({"op": "mean", "in": [0], "dims": [-3]}, "mean"),
        ({"op": "max", "in": [0], "dims": [0, 0]}, "max"),
        ({"op": "permute", "in": [0], "dims": [0, 0]}, "permute"),
        ({"op": "permute", "in": [0], "dims": [0]}, "permute"),
        ({"op": "permute", "in": [0], "dims": [1, 2]}, "permute"),
        ({"op": "softmax", "in": [0], "dim": 5}, "softmax"),
        ({"op": "argmax", "in": [0], "dim": -3}, "argmax"),
        ({"op": "cumsum", "in": [0], "dim": 2}, "cumsum"),
        ({"op": "flip", "in": [0], "dims": [3]}, "flip"),
        ({"op": "cat", "in": [0, 0], "dim": 2}, "cat"),
        ({"op": "stack", "in": [0, 0], "dim": 4}, "stack"),
        ({"op": "var", "in": [0], "dims": [7]}, "var"),
    ]
    for node, op in cases:
        expect_error(session, [_inp(a), node], [{"node": 1, "keep": False}], codes, node=1, op=op)


def test_reshape_to_a_different_size(session):
    conn, t = session
    a = t["a"][0]
    e = expect_error(session, [_inp(a), {"op": "reshape", "in": [0], "shape": [4, 2]}],
                     [{"node": 1, "keep": False}], "bad_shape", node=1, op="reshape",
                     contains=("[4, 2]",))
    assert "[2, 3]" in e.message or " 6" in e.message, e.message
    expect_error(session, [_inp(a), {"op": "reshape", "in": [0], "shape": [-1, 4]}],
                 [{"node": 1, "keep": False}], ("bad_shape",), node=1, op="reshape")
    expect_error(session, [_inp(a), {"op": "reshape", "in": [0], "shape": [-1, -1]}],
                 [{"node": 1, "keep": False}], ("bad_shape", "bad_request"), node=1, op="reshape")
    expect_error(session, [_inp(a), {"op": "expand", "in": [0], "shape": [2, 4]}],
                 [{"node": 1, "keep": False}], "bad_shape", node=1, op="expand")


def test_matmul_inner_mismatch(session):
    conn, t = session
    e = expect_error(session, [_inp(t["a"][0]), _inp(t["big"][0]), {"op": "cast", "in": [1],
                                                                     "dtype": "float32"},
                               {"op": "matmul", "in": [0, 2]}],
                     [{"node": 3, "keep": False}], "bad_shape", node=3, op="matmul",
                     contains=("[2, 3]", "[5, 6]"))
    assert e
    expect_error(session, [_inp(t["b"][0]), _inp(t["a"][0]), {"op": "matmul", "in": [0, 1]}],
                 [{"node": 2, "keep": False}], "bad_shape", node=2, op="matmul",
                 contains=("[4]", "[2, 3]"))
    # a 0-d operand
    expect_error(session, [_inp(t["a"][0]), {"op": "const", "value": 2.0},
                           {"op": "matmul", "in": [0, 1]}],
                 [{"node": 2, "keep": False}], "bad_shape", node=2, op="matmul")


def test_conv2d_kernel_larger_than_padded_input(session):
    conn, t = session
    x = t["x"][0]  # [1, 1, 3, 3]
    w5 = {"op": "const", "dtype": "float32", "shape": [1, 1, 5, 5], "data": b"\0" * 100}
    w3 = {"op": "const", "dtype": "float32", "shape": [1, 1, 3, 3], "data": b"\0" * 36}
    expect_error(session, [_inp(x), w5, {"op": "conv2d", "in": [0, 1]}],
                 [{"node": 2, "keep": False}], "bad_shape", node=2, op="conv2d")
    expect_error(session, [_inp(x), w3, {"op": "conv2d", "in": [0, 1], "dilation": [2, 2]}],
                 [{"node": 2, "keep": False}], "bad_shape", node=2, op="conv2d")
    expect_error(session, [_inp(x), {"op": "max_pool2d", "in": [0], "kernel_size": [4, 4]}],
                 [{"node": 1, "keep": False}], "bad_shape", node=1, op="max_pool2d")
    # channel mismatch
    w2 = {"op": "const", "dtype": "float32", "shape": [1, 2, 1, 1], "data": b"\0" * 8}
    expect_error(session, [_inp(x), w2, {"op": "conv2d", "in": [0, 1]}],
                 [{"node": 2, "keep": False}], "bad_shape", node=2, op="conv2d",
                 contains=("[1, 1, 3, 3]", "[1, 2, 1, 1]"))
    # padding makes the same kernel fit: not an error
    r = conn.call("run", nodes=[_inp(x), w5, {"op": "conv2d", "in": [0, 1], "padding": [1, 1]}],
                  outputs=[{"node": 2, "keep": False}])
    assert r["outputs"][0]["shape"] == [1, 1, 1, 1]


def test_zero_or_negative_slice_step(session):
    conn, t = session
    a = t["a"][0]
    for step in (0, -1):
        expect_error(session, [_inp(a), {"op": "slice", "in": [0],
                                         "slices": [[None, None, step]]}],
                     [{"node": 1, "keep": False}], "bad_request", node=1, op="slice")
    # more slices than axes
    expect_error(session, [_inp(a), {"op": "slice", "in": [0],
                                     "slices": [[0, 1, 1], [0, 1, 1], [0, 1, 1]]}],
                 [{"node": 1, "keep": False}], ("bad_request", "bad_shape"), node=1, op="slice")


def test_rank_over_limit(session):
    expect_error(session, [{"op": "full", "shape": [1] * 9, "value": 1.0}],
                 [{"node": 0, "keep": False}], "bad_shape", node=0, op="full")
    expect_error(session, [{"op": "full", "shape": [2, -3], "value": 1.0}],
                 [{"node": 0, "keep": False}], ("bad_shape", "bad_request"), node=0, op="full")


# --- data-dependent errors --------------------------------------------------------------------

def _index_const(values, shape=None):
    arr = np.asarray(values, dtype=np.int64)
    return {"op": "const", "dtype": "int64", "shape": list(arr.shape if shape is None else shape),
            "data": arr.tobytes()}


DATA_CODES = ("bad_request", "bad_shape")


@pytest.mark.parametrize("bad", [6, -1, 1 << 40])
def test_gather_index_out_of_range(session, bad):
    conn, t = session
    # a kept output next to the failing node: nothing may be created
    expect_error(session, [_inp(t["big"][0]), _index_const([[0, 1], [2, bad]]),
                           {"op": "gather", "in": [0, 1], "dim": 1}, {"op": "neg", "in": [0]}],
                 [{"node": 3, "keep": True}, {"node": 2, "keep": True}], DATA_CODES, node=2,
                 op="gather")


@pytest.mark.parametrize("bad", [5, -1])
def test_index_select_embedding_cross_entropy_out_of_range(session, bad):
    conn, t = session
    big = t["big"][0]  # [5, 6] float64
    expect_error(session, [_inp(big), _index_const([0, bad, 1]),
                           {"op": "index_select", "in": [0, 1], "dim": 0}],
                 [{"node": 2, "keep": False}], DATA_CODES, node=2, op="index_select")
    expect_error(session, [_index_const([[1, 2], [bad, 0]]), _inp(big),
                           {"op": "embedding", "in": [0, 1]}],
                 [{"node": 2, "keep": True}], DATA_CODES, node=2, op="embedding")
    expect_error(session, [_inp(big), _index_const([0, 1, 2, 3, bad + 1 if bad > 0 else bad]),
                           {"op": "cross_entropy", "in": [0, 1]}],
                 [{"node": 2, "keep": False}], DATA_CODES, node=2, op="cross_entropy")


@pytest.mark.parametrize("bad", [5, -1])
def test_one_hot_class_out_of_range(session, bad):
    """torch.nn.functional.one_hot refuses classes outside [0, num_classes)."""
    expect_error(session, [_index_const([1, bad, 0]), {"op": "one_hot", "in": [0],
                                                        "num_classes": 5}],
                 [{"node": 1, "keep": False}], DATA_CODES, node=1, op="one_hot")


def test_index_dtype_must_be_integer(session):
    conn, t = session
    expect_error(session, [_inp(t["big"][0]), _inp(t["big"][0]),
                           {"op": "gather", "in": [0, 1], "dim": 1}],
                 [{"node": 2, "keep": False}], ("bad_dtype", "bad_request"), node=2, op="gather")


# --- limits -----------------------------------------------------------------------------------

def _chain(n):
    return ([{"op": "const", "value": 1.0, "dtype": "float32"}] +
            [{"op": "neg", "in": [i]} for i in range(n - 1)])


def test_node_limit(session):
    conn, t = session
    r = conn.call("run", nodes=_chain(NODE_LIMIT), outputs=[{"node": NODE_LIMIT - 1,
                                                             "keep": False}])
    out = r["outputs"][0]
    assert out["dtype"] == "float32" and out["shape"] == []
    assert np.frombuffer(out["data"], np.float32)[0] == (-1.0) ** (NODE_LIMIT - 1)
    e = expect_error(session, _chain(NODE_LIMIT + 1), [{"node": 0, "keep": False}], "too_large")
    assert "65536" in e.message or "65,536" in e.message, e.message


def test_input_count_limit(session):
    conn, t = session
    a = t["b"][0]
    nodes = [_inp(a), {"op": "cat", "in": [0] * 1024, "dim": 0}]
    r = conn.call("run", nodes=nodes, outputs=[{"node": 1, "keep": False}])
    assert r["outputs"][0]["shape"] == [4096]
    expect_error(session, [_inp(a), {"op": "cat", "in": [0] * 1025, "dim": 0}],
                 [{"node": 1, "keep": False}], ("too_large", "bad_request"), node=1, op="cat")


def test_intermediate_over_max_memory(daemon_factory):
    """A 1 GiB intermediate under --max-memory 64M: refused before anything is allocated."""
    d = daemon_factory(extra_args=["--max-memory", "64M"])
    with pg.Connection(d.unix_url) as c:
        keep = np.arange(12, dtype=np.float32)
        h = c.put(keep)
        s0 = c.stats()
        n = 1 << 14
        nodes = [{"op": "full", "shape": [n], "value": 1.0},
                 {"op": "reshape", "in": [0], "shape": [n, 1]},
                 {"op": "reshape", "in": [0], "shape": [1, n]},
                 {"op": "mul", "in": [1, 2]},
                 {"op": "sum", "in": [3]}]
        with pytest.raises(PicogradError) as ei:
            c.call("run", nodes=nodes, outputs=[{"node": 4, "keep": True}])
        e = ei.value
        assert e.code in ("out_of_memory", "too_large"), (e.code, e.message)
        assert "node " in e.message, e.message
        s1 = c.stats()
        assert s1["bytes_in_use"] == s0["bytes_in_use"]
        assert s1["tensors"] == s0["tensors"]
        assert s1["session"]["tensors"] == s0["session"]["tensors"]
        assert s1["bytes_peak"] < 64 << 20
        np.testing.assert_array_equal(c.get(h), keep)
        # a graph that fits still runs on the same connection
        r = c.call("run", nodes=[{"op": "full", "shape": [1000, 1000], "value": 2.0},
                                 {"op": "sum", "in": [0]}], outputs=[{"node": 1, "keep": False}])
        assert np.frombuffer(r["outputs"][0]["data"], np.float32)[0] == 2e6

        # the same through the Tensor API
        pg.connect(d.unix_url)
        x = pg.zeros(n)
        with pytest.raises(PicogradError) as ei:
            (x[:, None] * x[None, :]).sum().item()
        assert ei.value.code in ("out_of_memory", "too_large"), ei.value
        s2 = c.stats()
        assert s2["bytes_peak"] < 64 << 20
        assert (pg.ones(10) * 2).sum().item() == 20.0
        pg.default_connection().close()


# --- the same mistakes through the Tensor API ---------------------------------------------------

def _raises(fn):
    """Runs fn (build and realize); returns the exception it raised (or fails)."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - any error type torch-like code may raise
        return exc
    pytest.fail("no error raised")


def _check_api_error(exc, code, *texts):
    if isinstance(exc, PicogradError):
        assert exc.code == code or (isinstance(code, tuple) and exc.code in code), exc
        for text in texts:
            assert text in exc.message, (text, exc.message)
    else:
        assert isinstance(exc, (RuntimeError, IndexError, ValueError, TypeError)), repr(exc)


def test_api_errors_leave_tensors_usable(conn, rng):
    a = gen(rng, (2, 3), "float32")
    b = gen(rng, (4,), "float32")
    x, y = pg.from_numpy(a), pg.from_numpy(b)
    xv = (x * 1).numpy()
    e = _raises(lambda: (x + y).numpy())
    _check_api_error(e, "bad_shape", "[2, 3]", "[4]")
    e = _raises(lambda: (x @ y).numpy())
    _check_api_error(e, "bad_shape", "[2, 3]", "[4]")
    e = _raises(lambda: x.reshape(4, 2).numpy())
    _check_api_error(e, "bad_shape", "[4, 2]")
    e = _raises(lambda: x.sum(dim=2).numpy())
    _check_api_error(e, ("bad_request", "bad_shape"))
    e = _raises(lambda: x.permute(0, 0).numpy())
    _check_api_error(e, ("bad_request", "bad_shape"))
    e = _raises(lambda: pg.nn.functional.conv2d(pg.zeros(1, 1, 3, 3), pg.zeros(1, 1, 5, 5))
                .numpy())
    _check_api_error(e, "bad_shape")
    # data-dependent: found by the daemon while running
    big = pg.from_numpy(gen(rng, (5, 6), "float64"))
    e = _raises(lambda: big.gather(1, pg.tensor([[0, 1], [2, 6]])).numpy())
    assert isinstance(e, (PicogradError, RuntimeError, IndexError)), repr(e)
    e = _raises(lambda: pg.nn.functional.embedding(pg.tensor([0, 9]), big).numpy())
    assert isinstance(e, (PicogradError, RuntimeError, IndexError)), repr(e)
    e = _raises(lambda: big.index_select(0, pg.tensor([7])).numpy())
    assert isinstance(e, (PicogradError, RuntimeError, IndexError)), repr(e)
    # everything made before still works
    np.testing.assert_array_equal((x * 1).numpy(), xv)
    np.testing.assert_array_equal((x + y[:3]).numpy(), a + b[:3])
    conn.ping()
