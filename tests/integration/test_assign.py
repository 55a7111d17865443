"""The `assign` node (PROTOCOL.md, `run`): state that lives in the daemon.

`{"op": "assign", "in": [value], "handle": h}` points session handle h at the value's tensor when
the run commits. These tests send raw `run` requests through the Python client's Connection and
check, against a real daemon (and the ASan build, via PICOGRAD_DAEMON):

(a) the value: `get` after the run shows it; an assign node is also an ordinary result (an output,
    an input of later nodes) and runs when no output names it;
(b) the ordering: every `input(h)` of the run reads the old value, and a kept output equal to
    `input(h)` stays the old value after h moves on (nothing is written in place);
(c) refusals: shape, dtype, unknown handle, another session's handle, two assigns to one handle,
    and a run that fails later (at lowering or while running) each leave the session unchanged,
    with a structured error naming the node, and the daemon keeps serving;
(d) a parameter-update loop: 200 repeated assign runs neither leak tensors nor bytes, and every
    run after the first hits the plan cache.
"""

import numpy as np
import pytest

from picograd.client import Connection, PicogradError

NP = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
      "bool": np.bool_}


def decode(o):
    return np.frombuffer(o["data"], dtype=NP[o["dtype"]]).reshape(o["shape"])


def out(node, keep=False):
    return {"node": node, "keep": keep}


@pytest.fixture
def conn(daemon):
    c = Connection(daemon.unix_url)
    c.call("hello", version=1, client="test_assign")
    yield c
    c.close()


def refused(c, nodes, outputs, code, *words):
    """Sends a run that must fail with `code`; checks that the message names every word."""
    with pytest.raises(PicogradError) as ei:
        c.call("run", nodes=nodes, outputs=outputs)
    assert ei.value.code == code, str(ei.value)
    for w in words:
        assert w in str(ei.value), f"{w!r} not in {ei.value}"
    return ei.value


# ---------------------------------------------------------------------------------------------
# (a) the value
# ---------------------------------------------------------------------------------------------

def test_hello_lists_node_ops(conn):
    node_ops = conn.server_info["node_ops"]
    assert {"input", "const", "add", "matmul", "softmax", "assign"} <= set(node_ops)
    assert "run" not in node_ops and "assign" not in conn.server_info["ops"]


def test_assign_then_get_shows_new_value(conn):
    w = conn.put(np.array([1.0, 2.0, 3.0], np.float32))
    nodes = [{"op": "input", "handle": w},
             {"op": "const", "value": 2.0},
             {"op": "mul", "in": [0, 1]},
             {"op": "assign", "in": [2], "handle": w}]
    r = conn.call("run", nodes=nodes, outputs=[])
    assert r["outputs"] == []
    np.testing.assert_array_equal(conn.get(w), [2.0, 4.0, 6.0])
    # Again: the handle is the same, its value moves on.
    conn.call("run", nodes=nodes, outputs=[])
    np.testing.assert_array_equal(conn.get(w), [4.0, 8.0, 12.0])


def test_assign_result_is_an_output_and_an_input(conn):
    w = conn.put(np.array([[1, 2], [3, 4]], np.int64))
    nodes = [{"op": "input", "handle": w},
             {"op": "const", "value": 10},
             {"op": "add", "in": [0, 1]},
             {"op": "assign", "in": [2], "handle": w},
             {"op": "sum", "in": [3]}]
    r = conn.call("run", nodes=nodes, outputs=[out(3), out(4), out(3, keep=True)])
    o = r["outputs"]
    np.testing.assert_array_equal(decode(o[0]), [[11, 12], [13, 14]])
    assert decode(o[1]) == 50
    kept = o[2]["handle"]
    assert kept != w
    np.testing.assert_array_equal(conn.get(kept), [[11, 12], [13, 14]])
    np.testing.assert_array_equal(conn.get(w), [[11, 12], [13, 14]])
    # Another run on w leaves the kept output alone (they shared a tensor; none is written).
    conn.call("run", nodes=nodes[:4], outputs=[])
    np.testing.assert_array_equal(conn.get(w), [[21, 22], [23, 24]])
    np.testing.assert_array_equal(conn.get(kept), [[11, 12], [13, 14]])


def test_assign_from_another_handle_and_itself(conn):
    a = conn.put(np.arange(6, dtype=np.float64).reshape(2, 3))
    b = conn.put(np.ones((2, 3), np.float64))
    # b <- a, a <- a (a no-op), in one run
    conn.call("run", nodes=[{"op": "input", "handle": a},
                            {"op": "assign", "in": [0], "handle": b},
                            {"op": "assign", "in": [0], "handle": a}], outputs=[])
    np.testing.assert_array_equal(conn.get(b), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(conn.get(a), np.arange(6).reshape(2, 3))
    # a moves on; b, which shares a's old tensor, does not.
    conn.call("run", nodes=[{"op": "input", "handle": a}, {"op": "neg", "in": [0]},
                            {"op": "assign", "in": [1], "handle": a}], outputs=[])
    np.testing.assert_array_equal(conn.get(a), -np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(conn.get(b), np.arange(6).reshape(2, 3))
    conn.free(a)
    conn.free(b)
    assert conn.stats()["session"]["tensors"] == 0


def test_assign_of_a_view_and_a_constant(conn):
    w = conn.put(np.zeros((3, 2), np.float32))
    x = conn.put(np.arange(6, dtype=np.float32).reshape(2, 3))
    conn.call("run", nodes=[{"op": "input", "handle": x},
                            {"op": "permute", "in": [0], "dims": [1, 0]},
                            {"op": "assign", "in": [1], "handle": w}], outputs=[])
    np.testing.assert_array_equal(conn.get(w), np.arange(6).reshape(2, 3).T)
    conn.call("run", nodes=[{"op": "full", "shape": [3, 2], "value": 7.0},
                            {"op": "assign", "in": [0], "handle": w}], outputs=[])
    np.testing.assert_array_equal(conn.get(w), np.full((3, 2), 7.0))


# ---------------------------------------------------------------------------------------------
# (b) ordering
# ---------------------------------------------------------------------------------------------

def test_inputs_read_the_old_value(conn):
    w = conn.put(np.array([1.0, 2.0], np.float32))
    # The assign comes first in the node list; later readers of input(w) still see the old value.
    nodes = [{"op": "input", "handle": w},
             {"op": "const", "value": 100.0},
             {"op": "add", "in": [0, 1]},
             {"op": "assign", "in": [2], "handle": w},
             {"op": "input", "handle": w},
             {"op": "mul", "in": [4, 4]}]
    r = conn.call("run", nodes=nodes, outputs=[out(0), out(4), out(5)])
    o = [decode(x) for x in r["outputs"]]
    np.testing.assert_array_equal(o[0], [1.0, 2.0])
    np.testing.assert_array_equal(o[1], [1.0, 2.0])
    np.testing.assert_array_equal(o[2], [1.0, 4.0])
    np.testing.assert_array_equal(conn.get(w), [101.0, 102.0])


def test_kept_input_is_a_snapshot_of_the_old_value(conn):
    w = conn.put(np.array([5.0, 6.0], np.float64))
    nodes = [{"op": "input", "handle": w},
             {"op": "sqrt", "in": [0]},
             {"op": "assign", "in": [1], "handle": w}]
    r = conn.call("run", nodes=nodes, outputs=[out(0, keep=True)])
    snap = r["outputs"][0]["handle"]
    np.testing.assert_array_equal(conn.get(snap), [5.0, 6.0])
    np.testing.assert_allclose(conn.get(w), np.sqrt([5.0, 6.0]))
    conn.call("run", nodes=nodes, outputs=[])
    np.testing.assert_array_equal(conn.get(snap), [5.0, 6.0])


def test_get_in_flight_keeps_its_tensor(conn):
    """A `get` pipelined before an assign of the same handle answers the old value."""
    n = 1 << 20
    w = conn.put(np.zeros(n, np.float32))
    g = conn.send("get", handle=w)
    r = conn.send("run", nodes=[{"op": "full", "shape": [n], "value": 1.0},
                                {"op": "assign", "in": [0], "handle": w}], outputs=[])
    g2 = conn.send("get", handle=w)
    replies = [conn.recv() for _ in range(3)]
    assert [x["id"] for x in replies] == [g, r, g2] and all(x["ok"] for x in replies)
    assert not np.frombuffer(replies[0]["data"], np.float32).any()
    assert (np.frombuffer(replies[2]["data"], np.float32) == 1.0).all()


def test_explain_shows_assigns_and_changes_nothing(conn):
    w = conn.put(np.array([1.0, 2.0], np.float32))
    nodes = [{"op": "input", "handle": w}, {"op": "exp", "in": [0]},
             {"op": "assign", "in": [1], "handle": w}]
    ex = conn.call("explain", nodes=nodes, outputs=[])
    assert len(ex["assigns"]) == 1
    a = ex["assigns"][0]
    assert a["node"] == 2 and a["handle"] == w
    assert ex["graph"][a["value"]]["op"] == "exp"
    assert "== assigns: 1 ==" in ex["text"]
    assert f"node 2 (assign): handle {w} <- %{a['value']}" in ex["text"]
    # The value is computed by some step even though no output names it.
    assert any(a["value"] == s["output"] for s in ex["groups"])
    np.testing.assert_array_equal(conn.get(w), [1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# (c) refusals leave the session unchanged
# ---------------------------------------------------------------------------------------------

def test_refusals(conn, daemon):
    w = conn.put(np.array([1.0, 2.0, 3.0], np.float32))
    i = conn.put(np.array([1, 2, 3], np.int32))
    before = conn.stats()["session"]

    def unchanged():
        np.testing.assert_array_equal(conn.get(w), [1.0, 2.0, 3.0])
        np.testing.assert_array_equal(conn.get(i), [1, 2, 3])
        s = conn.stats()["session"]
        assert (s["tensors"], s["bytes"]) == (before["tensors"], before["bytes"])

    x = {"op": "input", "handle": w}
    # shape
    refused(conn, [x, {"op": "reshape", "in": [0], "shape": [3, 1]},
                   {"op": "assign", "in": [1], "handle": w}], [], "bad_shape",
            "node 2 (assign)", "[3, 1]", "[3]", f"handle {w}")
    unchanged()
    # dtype
    refused(conn, [x, {"op": "cast", "in": [0], "dtype": "float64"},
                   {"op": "assign", "in": [1], "handle": w}], [], "bad_dtype",
            "node 2 (assign)", "float64", "float32")
    unchanged()
    refused(conn, [x, {"op": "assign", "in": [0], "handle": i}], [], "bad_dtype",
            "node 1 (assign)", "int32")
    unchanged()
    # unknown handle, never issued / freed / missing / wrong type
    refused(conn, [x, {"op": "assign", "in": [0], "handle": 999}], [], "unknown_handle",
            "node 1 (assign)", "handle 999")
    tmp = conn.put(np.zeros(3, np.float32))
    conn.free(tmp)
    refused(conn, [x, {"op": "assign", "in": [0], "handle": tmp}], [], "unknown_handle",
            "node 1 (assign)", f"handle {tmp}")
    refused(conn, [x, {"op": "assign", "in": [0]}], [], "bad_request",
            "node 1 (assign)", "handle")
    refused(conn, [x, {"op": "assign", "in": [0], "handle": "w"}], [], "bad_request",
            "node 1 (assign)", "handle")
    refused(conn, [x, {"op": "assign", "handle": w}], [], "bad_request", "node 1 (assign)",
            "inputs")
    refused(conn, [x, {"op": "assign", "in": [0], "handle": w, "value": 1}], [], "bad_request",
            "node 1 (assign)", "value")
    unchanged()
    # two assigns to one handle, even of the same value
    refused(conn, [x, {"op": "neg", "in": [0]},
                   {"op": "assign", "in": [1], "handle": w},
                   {"op": "assign", "in": [0], "handle": w}], [], "bad_request",
            "node 3 (assign)", f"handle {w}", "node 2")
    unchanged()
    # an error in a later node: nothing is assigned
    refused(conn, [x, {"op": "neg", "in": [0]},
                   {"op": "assign", "in": [1], "handle": w},
                   {"op": "full", "shape": [2], "value": 1.0},
                   {"op": "add", "in": [2, 3]}], [out(4)], "bad_shape", "node 4 (add)")
    unchanged()
    # an error while running (an index out of range): nothing is assigned, no handle is made
    refused(conn, [x, {"op": "neg", "in": [0]},
                   {"op": "assign", "in": [1], "handle": w},
                   {"op": "const", "dtype": "int64", "shape": [1],
                    "data": np.array([7], np.int64).tobytes()},
                   {"op": "gather", "in": [2, 3], "dim": 0}],
            [out(4, keep=True), out(2, keep=True)], "bad_request", "node 4 (gather)",
            "out of range")
    unchanged()
    # an empty output list needs an assign
    refused(conn, [x], [], "bad_request", "outputs")
    unchanged()
    # the daemon keeps serving: a good assign still works
    conn.call("run", nodes=[x, {"op": "neg", "in": [0]},
                            {"op": "assign", "in": [1], "handle": w}], outputs=[])
    np.testing.assert_array_equal(conn.get(w), [-1.0, -2.0, -3.0])
    errors = conn.stats()["errors"]
    assert errors.get("bad_shape", 0) >= 1 and errors.get("unknown_handle", 0) >= 2


def test_another_sessions_handle(conn, daemon):
    a = [conn.put(np.full(2, k, np.float32)) for k in range(3)]
    other = Connection(daemon.unix_url)
    try:
        other.call("hello", version=1, client="other")
        mine = other.put(np.zeros(2, np.float32))
        theirs = max(a)
        assert theirs != mine
        refused(other, [{"op": "input", "handle": mine},
                        {"op": "assign", "in": [0], "handle": theirs}], [], "unknown_handle",
                "node 1 (assign)", f"handle {theirs}", "this session")
        np.testing.assert_array_equal(conn.get(theirs), [2.0, 2.0])
        np.testing.assert_array_equal(other.get(mine), [0.0, 0.0])
        # The other session's own assigns do not touch this one's same-numbered handle.
        other.call("run", nodes=[{"op": "full", "shape": [2], "value": 9.0},
                                 {"op": "assign", "in": [0], "handle": mine}], outputs=[])
        np.testing.assert_array_equal(other.get(mine), [9.0, 9.0])
        np.testing.assert_array_equal(conn.get(mine), [float(mine - 1)] * 2)
    finally:
        other.close()


# ---------------------------------------------------------------------------------------------
# (d) a parameter update loop
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("jit", ["on", "off"])
def test_update_loop_neither_leaks_nor_replans(daemon_factory, tmp_path, jit):
    d = daemon_factory(extra_args=["--jit", jit, "--jit-min-work", "0",
                                   "--cache-dir", str(tmp_path / "kcache")])
    c = Connection(d.unix_url)
    c.call("hello", version=1, client="loop")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((64, 32)).astype(np.float32)
    g0 = rng.standard_normal((64, 32)).astype(np.float32)
    w, g = c.put(w0), c.put(g0)
    m = c.put(np.zeros((64, 32), np.float32))
    # momentum SGD: m <- 0.9 m + g; w <- w - lr m, with a learning rate that changes per step
    def step(lr):
        return c.call("run", nodes=[
            {"op": "input", "handle": w}, {"op": "input", "handle": g},
            {"op": "input", "handle": m},
            {"op": "const", "value": 0.9}, {"op": "mul", "in": [2, 3]},
            {"op": "add", "in": [4, 1]},
            {"op": "assign", "in": [5], "handle": m},
            {"op": "const", "value": lr},  # a weak scalar: not baked into kernels
            {"op": "mul", "in": [6, 7]}, {"op": "sub", "in": [0, 8]},
            {"op": "assign", "in": [9], "handle": w},
            {"op": "sum", "in": [9]}], outputs=[out(11)])

    step(0.01)
    s0 = c.stats()
    ref_w, ref_m = w0.copy(), np.zeros_like(w0)
    ref_m = np.float32(0.9) * ref_m + g0
    ref_w = ref_w - np.float32(0.01) * ref_m
    for k in range(200):
        lr = 0.01 / (1 + k)
        r = step(lr)
        ref_m = np.float32(0.9) * ref_m + g0
        ref_w = ref_w - np.float32(lr) * ref_m
    s1 = c.stats()
    np.testing.assert_allclose(c.get(w), ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c.get(m), ref_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(decode(r["outputs"][0]), ref_w.sum(), rtol=1e-4)
    assert s1["tensors"] == s0["tensors"]
    # bytes_in_use also counts the `stats` request frame being answered (its id grows).
    assert abs(s1["bytes_in_use"] - s0["bytes_in_use"]) < 64
    assert s1["session"]["tensors"] == s0["session"]["tensors"] == 3
    assert s1["session"]["bytes"] == s0["session"]["bytes"]
    if jit == "on":
        assert s1["plans"]["hits"] - s0["plans"]["hits"] == 200
        assert s1["plans"]["misses"] == s0["plans"]["misses"]
        assert s1["kernels"]["compiled"] == s0["kernels"]["compiled"]
    c.close()


# ---------------------------------------------------------------------------------------------
# (e) the Python hook: picograd.tensor._commit
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def pgconn(daemon):
    import picograd as pg
    c = pg.connect(daemon.unix_url, timeout=60)
    yield c
    c.close()


def test_commit_assigns_and_outputs(pgconn):
    import picograd as pg
    from picograd.tensor import _commit
    w = pg.tensor([1.0, 2.0, 3.0])
    b = pg.tensor(0.5)
    h_w, h_b = w.handle, b.handle
    loss = ((w * 2 + b) ** 2).sum()
    # One run: loss from the old values, snapshot of old w, new w and b.
    out = _commit([(w, w - 0.1 * w), (b, b + 1)], [loss, w])
    assert out[0] is loss and loss.is_realized
    np.testing.assert_allclose(loss.item(), ((np.array([1, 2, 3]) * 2 + 0.5) ** 2).sum())
    snap = out[1]
    assert snap is not w and snap.handle not in (h_w, h_b)
    np.testing.assert_allclose(snap.numpy(), [1.0, 2.0, 3.0])
    assert (w.handle, b.handle) == (h_w, h_b)
    np.testing.assert_allclose(w.numpy(), [0.9, 1.8, 2.7], rtol=1e-6)
    assert b.item() == 1.5
    # keep=False: data only, the old values of targets.
    arr, = _commit([(w, pg.zeros(3))], [w], keep=False)
    np.testing.assert_allclose(arr, [0.9, 1.8, 2.7], rtol=1e-6)
    np.testing.assert_array_equal(w.numpy(), [0, 0, 0])
    assert _commit([(b, pg.tensor(7.0))]) == []
    assert b.item() == 7.0
    # Nothing to assign and only realized outputs: returned as they are, no run.
    runs = pgconn.stats()["runs"]["count"]
    assert _commit([], [w, b])[1] is b and _commit() == []
    assert pgconn.stats()["runs"]["count"] == runs


def test_commit_refusals_change_nothing(pgconn):
    import picograd as pg
    from picograd.tensor import _commit
    w = pg.tensor([1.0, 2.0])
    i = pg.tensor([1, 2])
    with pytest.raises(pg.ShapeError, match="shape"):
        _commit([(w, pg.ones(3))])
    with pytest.raises(pg.PicogradError) as ei:
        _commit([(w, i)])
    assert ei.value.code == "bad_dtype"
    with pytest.raises(pg.PicogradError, match="realized"):
        _commit([(w * 2, w)])
    with pytest.raises(pg.PicogradError, match="both assign"):
        _commit([(w, w + 1), (w, w + 2)])
    # A daemon error at run time: nothing is assigned, and it names the user's line.
    bad = pg.tensor([1.0, 2.0]).gather(0, pg.tensor([5]))
    with pytest.raises(pg.PicogradError) as ei:
        _commit([(w, w * 10)], [bad])
    assert "out of range" in str(ei.value) and "test_assign.py" in str(ei.value)
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])


def test_commit_update_loop_frees_and_hits_plans(pgconn):
    import gc
    import picograd as pg
    from picograd.tensor import _commit
    rng = np.random.default_rng(1)
    X = rng.standard_normal((32, 4)).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5, 3.0], np.float32) + 0.25
    Xt, yt = pg.tensor(X), pg.tensor(y)
    w, b = pg.tensor(np.zeros(4, np.float32)), pg.tensor(np.zeros((), np.float32))
    # Gradient of mean((Xw + b - y)^2) written out by hand (no autograd here).
    def step(lr):
        r = Xt @ w + b - yt
        gw = (Xt.T @ r) * (2.0 / 32)
        gb = r.mean() * 2.0
        loss, = _commit([(w, w - lr * gw), (b, b - lr * gb)], [(r * r).mean()], keep=False)
        return float(loss)
    first = step(0.1)
    gc.collect()
    s0 = pgconn.stats()
    for _ in range(200):
        last = step(0.1)
    gc.collect()
    pg.flush()
    s1 = pgconn.stats()
    assert last < first * 1e-3
    np.testing.assert_allclose(w.numpy(), [1.0, -2.0, 0.5, 3.0], atol=1e-3)
    assert s1["session"]["tensors"] == s0["session"]["tensors"]
    assert s1["plans"]["hits"] - s0["plans"]["hits"] == 200


# ---------------------------------------------------------------------------------------------
# A run's `free` list: handles the client dropped travel with the run (one request per step)
# ---------------------------------------------------------------------------------------------


def test_run_free_list_releases_handles(conn):
    a = conn.put(np.arange(3, dtype=np.float32))
    b = conn.put(np.ones(3, np.float32))
    n0 = conn.call("stats")["session"]["tensors"]
    r = conn.call("run", nodes=[{"op": "input", "handle": b}, {"op": "neg", "in": [0]}],
                  outputs=[out(1)], free=[a, 999999])  # an unknown handle is ignored
    np.testing.assert_array_equal(decode(r["outputs"][0]), -np.ones(3, np.float32))
    assert conn.call("stats")["session"]["tensors"] == n0 - 1
    with pytest.raises(PicogradError) as e:
        conn.call("get", handle=a)
    assert e.value.code == "unknown_handle"


def test_run_free_list_applies_when_the_run_fails(conn):
    a = conn.put(np.arange(3, dtype=np.float32))
    with pytest.raises(PicogradError) as e:
        conn.call("run", nodes=[{"op": "input", "handle": 12345}], outputs=[out(0)], free=[a])
    assert e.value.code == "unknown_handle"
    with pytest.raises(PicogradError):
        conn.call("get", handle=a)


def test_run_free_list_must_be_handles(conn):
    a = conn.put(np.arange(3, dtype=np.float32))
    for bad in ("x", [a, "y"], [-1], {"h": a}):
        with pytest.raises(PicogradError) as e:
            conn.call("run", nodes=[{"op": "input", "handle": a}], outputs=[out(0)], free=bad)
        assert e.value.code == "bad_request" and "'free'" in e.value.message
    np.testing.assert_array_equal(decode(conn.call("get", handle=a)), np.arange(3))
