"""The prepared-run cache (server/prepcache.c): a `run` repeated with new handles is not lowered again.

A training step is one `run` whose request is the same every step but for the handles of its
`input` nodes. The daemon keys a request by its nodes and outputs with every handle replaced by
its ordinal, and keeps the prepared graph and plan; `stats` counts `prepared.hits`/`misses`.
These tests check, against a daemon with the cache (the default) and one without it
(`--prepared-cache 0`, the oracle), that:

(a) a step-like run (inputs, `grad` nodes, an update with a learning rate, `assign`s) repeated
    with new input handles gives bit-for-bit the results of the uncached daemon, with and
    without the JIT, and hits the cache from its second run on;
(b) the pattern of handles is part of the key (input(a), input(a) is not input(a), input(b)), and
    so is which handles share one tensor (a kept snapshot of input(a) is a + 0 with CSE);
(c) a would-be hit whose session differs falls back to the normal path: another shape is
    answered (or refused) as without the cache, and cached beside the first, an unknown handle gets the usual
    unknown_handle naming the node, an assign to another session's handle is still refused;
(d) a new learning rate (a weak scalar) is a new entry with the right result; a graph with
    const data is not cached and leaves no tensor behind; `explain` is not cached;
(e) two sessions running one cached step at once both get the right results.
"""

import threading

import numpy as np
import pytest

from picograd.client import Connection, PicogradError

NP = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
      "bool": np.bool_}


def decode(o):
    return np.frombuffer(o["data"], dtype=NP[o["dtype"]]).reshape(o["shape"])


def out(node, keep=False):
    return {"node": node, "keep": keep}


def connect(d, name):
    c = Connection(d.unix_url)
    c.call("hello", version=1, client=name)
    return c


@pytest.fixture(params=[[], ["--jit", "off"]], ids=["jit", "nojit"])
def pair(daemon_factory, request):
    """(cached, plain): the same daemon with the prepared-run cache and without it."""
    cached = daemon_factory(extra_args=request.param, name="cached")
    plain = daemon_factory(extra_args=request.param + ["--prepared-cache", "0"], name="plain")
    a, b = connect(cached, "cached"), connect(plain, "plain")
    yield a, b
    a.close()
    b.close()


def step_nodes(hw, hb, hx, hy, lr=0.1):
    """One gradient-descent step of y ~ tanh(x @ w + b): loss, gradients, update, assigns."""
    return [
        {"op": "input", "handle": hw},                       # 0  w [4, 3]
        {"op": "input", "handle": hb},                       # 1  b [3]
        {"op": "input", "handle": hx},                       # 2  x [B, 4]
        {"op": "input", "handle": hy},                       # 3  y [B, 3]
        {"op": "matmul", "in": [2, 0]},                      # 4
        {"op": "add", "in": [4, 1]},                         # 5
        {"op": "tanh", "in": [5]},                           # 6
        {"op": "mse_loss", "in": [6, 3]},                    # 7  loss
        {"op": "grad", "in": [7, 0]},                        # 8  dloss/dw
        {"op": "grad", "in": [7, 1]},                        # 9  dloss/db
        {"op": "const", "value": lr},                        # 10 the learning rate (weak)
        {"op": "mul", "in": [8, 10]},                        # 11
        {"op": "sub", "in": [0, 11]},                        # 12
        {"op": "mul", "in": [9, 10]},                        # 13
        {"op": "sub", "in": [1, 13]},                        # 14
        {"op": "assign", "in": [12], "handle": hw},          # 15
        {"op": "assign", "in": [14], "handle": hb},          # 16
    ]


STEP_OUTPUTS = [out(7), out(8), out(9)]


def numpy_step(w, b, x, y, lr):
    z = np.tanh(x.astype(np.float64) @ w + b)
    loss = np.mean((z - y) ** 2)
    dz = 2 * (z - y) / z.size * (1 - z * z)
    gw, gb = x.T.astype(np.float64) @ dz, dz.sum(axis=0)
    return loss, gw, gb, w - lr * gw, b - lr * gb


class Model:
    """Parameters w, b in one session, and a step that sends new x, y handles every time."""

    def __init__(self, c, seed=0):
        self.c = c
        rng = np.random.default_rng(seed)
        self.w = c.put(rng.standard_normal((4, 3)).astype(np.float32))
        self.b = c.put(rng.standard_normal(3).astype(np.float32))

    def step(self, x, y, lr=0.1):
        hx, hy = self.c.put(x), self.c.put(y)
        r = self.c.call("run", nodes=step_nodes(self.w, self.b, hx, hy, lr),
                        outputs=STEP_OUTPUTS)
        self.c.free(hx)
        self.c.free(hy)
        return [decode(o) for o in r["outputs"]]

    def params(self):
        return self.c.get(self.w), self.c.get(self.b)


def batches(n, rows=8, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((rows, 4)).astype(np.float32),
             rng.standard_normal((rows, 3)).astype(np.float32)) for _ in range(n)]


def prepared(c):
    return c.stats()["prepared"]


# ---------------------------------------------------------------------------------------------
# (a) a repeated step
# ---------------------------------------------------------------------------------------------

def test_step_matches_uncached_daemon(pair):
    cached, plain = pair
    mc, mp = Model(cached), Model(plain)
    s0 = prepared(cached)
    for x, y in batches(12):
        w, b = mc.params()
        rc, rp = mc.step(x, y), mp.step(x, y)
        for a, e in zip(rc, rp):
            assert a.dtype == e.dtype and a.shape == e.shape
            np.testing.assert_array_equal(a, e)
        loss, gw, gb, w1, b1 = numpy_step(w, b, x, y, 0.1)
        np.testing.assert_allclose(rc[0], loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rc[1], gw, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(rc[2], gb, rtol=1e-4, atol=1e-6)
        for a, e in zip(mc.params(), mp.params()):
            np.testing.assert_array_equal(a, e)
        np.testing.assert_allclose(mc.params()[0], w1, rtol=1e-5, atol=1e-6)
    s1 = prepared(cached)
    assert s1["misses"] - s0["misses"] == 1
    assert s1["hits"] - s0["hits"] == 11
    assert prepared(plain) == {"hits": 0, "misses": 0}


def test_hit_plans_nothing_and_counts_as_a_plan_hit(daemon):
    c = connect(daemon, "plans")
    m = Model(c)
    data = batches(6)
    m.step(*data[0])
    s0 = c.stats()
    for x, y in data[1:]:
        m.step(x, y)
    s1 = c.stats()
    assert s1["prepared"]["hits"] - s0["prepared"]["hits"] == 5
    assert s1["plans"]["misses"] == s0["plans"]["misses"]
    assert s1["plans"]["hits"] - s0["plans"]["hits"] == 5
    assert s1["kernels"]["compiled"] == s0["kernels"]["compiled"]
    # the session's tensors are its own: w, b (the batches were freed)
    assert s1["session"]["tensors"] == 2
    c.close()


# ---------------------------------------------------------------------------------------------
# (b) the key: handle pattern and shared tensors
# ---------------------------------------------------------------------------------------------

def add_two(ha, hb):
    return [{"op": "input", "handle": ha}, {"op": "input", "handle": hb},
            {"op": "add", "in": [0, 1]}]


def test_handle_pattern_is_part_of_the_key(daemon):
    c = connect(daemon, "pattern")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 100, dtype=np.float32)
    ha, hb, hc = c.put(a), c.put(b), c.put(a * 3)
    run = lambda x, y: decode(c.call("run", nodes=add_two(x, y), outputs=[out(2)])["outputs"][0])
    s0 = prepared(c)
    np.testing.assert_array_equal(run(ha, ha), a + a)           # miss: pattern (0, 0)
    np.testing.assert_array_equal(run(ha, hb), a + b)           # miss: pattern (0, 1)
    np.testing.assert_array_equal(run(hb, hb), b + b)           # hit (0, 0)
    np.testing.assert_array_equal(run(hc, hb), a * 3 + b)       # hit (0, 1)
    np.testing.assert_array_equal(run(hb, ha), b + a)           # hit (0, 1)
    s1 = prepared(c)
    assert (s1["misses"] - s0["misses"], s1["hits"] - s0["hits"]) == (2, 3)
    c.close()


def test_handles_sharing_a_tensor_do_not_share_an_entry(daemon):
    c = connect(daemon, "alias")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    ha, hb = c.put(a), c.put(a + 10)
    # A kept output of input(a) is a second handle on a's very tensor: CSE merges the two
    # inputs of a run that reads both, so that graph must not serve two distinct tensors.
    snap = c.call("run", nodes=[{"op": "input", "handle": ha}],
                  outputs=[out(0, keep=True)])["outputs"][0]["handle"]
    run = lambda x, y: decode(c.call("run", nodes=add_two(x, y), outputs=[out(2)])["outputs"][0])
    np.testing.assert_array_equal(run(ha, snap), a + a)         # cached with one input
    np.testing.assert_array_equal(run(ha, hb), a + a + 10)      # same key, distinct tensors
    np.testing.assert_array_equal(run(snap, ha), a + a)         # and back
    np.testing.assert_array_equal(run(hb, ha), a + 10 + a)
    c.close()


# ---------------------------------------------------------------------------------------------
# (c) a session that differs falls back to the normal path
# ---------------------------------------------------------------------------------------------

def error_of(c, nodes, outputs):
    with pytest.raises(PicogradError) as ei:
        c.call("run", nodes=nodes, outputs=outputs)
    return ei.value.code, str(ei.value)


def test_other_shape_falls_back(pair):
    cached, plain = pair
    mc, mp = Model(cached), Model(plain)
    x, y = batches(1)[0]
    mc.step(x, y)
    mp.step(x, y)
    mc.step(x, y)
    mp.step(x, y)
    h0 = prepared(cached)["hits"]
    # Another batch size: the same request, an input of another shape.
    for x2, y2 in batches(2, rows=5, seed=7):
        for a, e in zip(mc.step(x2, y2), mp.step(x2, y2)):
            np.testing.assert_array_equal(a, e)
    assert prepared(cached)["hits"] == h0 + 1  # the second 5-row batch hits the new entry
    # A shape that does not fit the graph: the normal error, word for word.
    for c, m in ((cached, mc), (plain, mp)):
        bad = c.put(np.zeros((8, 5), np.float32))
        hy = c.put(y)
        m.bad_err = error_of(c, step_nodes(m.w, m.b, bad, hy), STEP_OUTPUTS)
    assert mc.bad_err == mp.bad_err
    assert mc.bad_err[0] == "bad_shape" and "node 4 (matmul)" in mc.bad_err[1]
    # and the state is untouched: the next step agrees again, and both batch shapes kept their
    # entries (a last batch that is smaller does not evict the others)
    h1 = prepared(cached)["hits"]
    for a, e in zip(mc.step(x, y), mp.step(x, y)):
        np.testing.assert_array_equal(a, e)
    x2, y2 = batches(1, rows=5, seed=9)[0]
    for a, e in zip(mc.step(x2, y2), mp.step(x2, y2)):
        np.testing.assert_array_equal(a, e)
    assert prepared(cached)["hits"] == h1 + 2


def test_unknown_handle_on_a_would_be_hit(pair):
    cached, plain = pair
    errs = []
    for c in (cached, plain):
        m = Model(c)
        x, y = batches(1)[0]
        m.step(x, y)
        m.step(x, y)
        hy = c.put(y)
        before = m.params()
        errs.append(error_of(c, step_nodes(m.w, m.b, 987654, hy), STEP_OUTPUTS))
        for p, q in zip(before, m.params()):
            np.testing.assert_array_equal(p, q)
    assert errs[0] == errs[1]
    assert errs[0][0] == "unknown_handle"
    assert "node 2 (input)" in errs[0][1] and "987654" in errs[0][1]


def test_assign_to_another_sessions_handle_is_refused(daemon):
    owner, other = connect(daemon, "owner"), connect(daemon, "other")
    for _ in range(5):  # the owner's handles run past the other session's
        owner.put(np.zeros(1, np.float32))
    w = np.ones((2, 2), np.float32)
    hw = owner.put(w)
    hv = owner.put(w * 5)

    def nodes(src, dst):
        return [{"op": "input", "handle": src}, {"op": "neg", "in": [0]},
                {"op": "assign", "in": [1], "handle": dst}]

    owner.call("run", nodes=nodes(hv, hw), outputs=[])
    owner.call("run", nodes=nodes(hw, hv), outputs=[])          # a hit in the owner's session
    assert prepared(owner)["hits"] >= 1
    mine = other.put(np.full((2, 2), 3, np.float32))
    assert mine < hw
    with pytest.raises(PicogradError) as ei:
        other.call("run", nodes=nodes(mine, hw), outputs=[])
    assert ei.value.code == "unknown_handle"
    assert "node 2 (assign)" in str(ei.value) and str(hw) in str(ei.value)
    np.testing.assert_array_equal(owner.get(hw), -w * 5)
    np.testing.assert_array_equal(owner.get(hv), w * 5)
    owner.close()
    other.close()


# ---------------------------------------------------------------------------------------------
# (d) what else keys an entry, and what is not cached
# ---------------------------------------------------------------------------------------------

def test_new_learning_rate_is_a_new_entry(pair):
    cached, plain = pair
    mc, mp = Model(cached), Model(plain)
    data = batches(6)
    for i, (x, y) in enumerate(data):
        lr = 0.1 if i < 3 else 0.05
        m0 = prepared(cached)["misses"]
        for a, e in zip(mc.step(x, y, lr), mp.step(x, y, lr)):
            np.testing.assert_array_equal(a, e)
        if i in (0, 3):
            assert prepared(cached)["misses"] == m0 + 1
        for a, e in zip(mc.params(), mp.params()):
            np.testing.assert_array_equal(a, e)


def test_const_data_is_not_cached(daemon):
    c = connect(daemon, "const")
    base = c.stats()
    h = c.put(np.ones(3, np.float32))
    data = np.array([1, 2, 3], np.float32)
    nodes = [{"op": "input", "handle": h},
             {"op": "const", "dtype": "float32", "shape": [3], "data": data.tobytes()},
             {"op": "mul", "in": [0, 1]}]
    for _ in range(3):
        r = c.call("run", nodes=nodes, outputs=[out(2)])
        np.testing.assert_array_equal(decode(r["outputs"][0]), data)
    s = c.stats()
    assert s["prepared"]["hits"] == base["prepared"]["hits"]
    c.free(h)
    s = c.stats()
    assert s["tensors"] == base["tensors"]
    c.close()


def test_explain_is_not_cached(daemon):
    c = connect(daemon, "explain")
    h = c.put(np.ones(3, np.float32))
    nodes = [{"op": "input", "handle": h}, {"op": "exp", "in": [0]}]
    s0 = prepared(c)
    for _ in range(3):
        c.call("explain", nodes=nodes, outputs=[out(1)])
    assert prepared(c) == s0
    c.call("run", nodes=nodes, outputs=[out(1)])
    c.call("explain", nodes=nodes, outputs=[out(1)])
    s1 = prepared(c)
    assert (s1["hits"], s1["misses"]) == (s0["hits"], s0["misses"] + 1)
    c.close()


# ---------------------------------------------------------------------------------------------
# (e) sessions at once
# ---------------------------------------------------------------------------------------------

def test_two_sessions_share_an_entry(daemon_factory):
    cached = daemon_factory(extra_args=["--threads", "2"], name="cached")
    plain = daemon_factory(extra_args=["--prepared-cache", "0"], name="plain")
    data = batches(15)
    expect = {}
    p = connect(plain, "plain")
    for seed in (1, 2):
        m = Model(p, seed)
        expect[seed] = [m.step(x, y) for x, y in data] + [list(m.params())]
    p.close()
    got, errors = {}, []

    def worker(seed):
        try:
            c = connect(cached, f"w{seed}")
            m = Model(c, seed)
            got[seed] = [m.step(x, y) for x, y in data] + [list(m.params())]
            c.close()
        except Exception as e:  # reported below, in the main thread
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(s,)) for s in (1, 2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    for seed in (1, 2):
        for ra, re in zip(got[seed], expect[seed]):
            for a, e in zip(ra, re):
                np.testing.assert_array_equal(a, e)
    c = connect(cached, "stats")
    assert c.stats()["prepared"]["hits"] >= 2 * len(data) - 2
    c.close()
