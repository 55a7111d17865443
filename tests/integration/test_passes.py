"""The graph passes that run between lowering and fusion: view folding (server/passes/views.c)
and constant folding with dead-node removal (server/passes/fold.c).

(a) Views below elementwise ops: layer_norm, `x - x.mean(1, keepdim=True)` and views of
    elementwise results (permute, slice, flip, reshape, expand) give numpy's values, and `explain`
    shows that the small per-row value is no step of its own and that a pushed view costs no
    extra kernel.
(b) Constants: arithmetic on inlined constants becomes one `full` whose value is exactly what
    the interpreter computes unfolded (checked byte for byte against a run where the same value
    arrives as an input tensor); x*1, 1*x, x/1 and x-0 disappear (bit for bit, -0.0 and NaN
    included) while x+0 and x*0 stay; a learning rate that changes between runs is not baked in.
(c) Random shapes and graphs mixing all of it, float32 and int32, against numpy and between a
    `--jit on` and a `--jit off` daemon.
"""

import io
import random

import numpy as np
import pytest

import picograd
import picograd as pg

NP = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
      "bool": np.bool_}
ELEMENTWISE = {"neg", "abs", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid",
               "relu", "gelu", "gelu_tanh", "silu", "reciprocal", "square", "sign",
               "logical_not", "cast", "add", "sub", "mul", "div", "pow", "maximum", "minimum",
               "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "where"}


def jit_daemon(factory, tmp_path, name="jit"):
    return factory(extra_args=["--jit", "on", "--jit-min-work", "0",
                               "--cache-dir", str(tmp_path / f"kcache-{name}")], name=name)


def decode(o):
    return np.frombuffer(o["data"], dtype=NP[o["dtype"]]).reshape(o["shape"])


def run(c, nodes, outs):
    r = c.call("run", nodes=nodes, outputs=[{"node": o, "keep": False} for o in outs])
    return [decode(o) for o in r["outputs"]]


def explain(c, nodes, outs):
    return c.call("explain", nodes=nodes, outputs=[{"node": o, "keep": False} for o in outs])


def steps(ex):
    """(kind, op of the step's result, its shape, ops of its members) per step."""
    g = ex["graph"]
    return [(s["kind"], g[s["output"]]["op"], tuple(g[s["output"]]["shape"]),
             [g[m]["op"] for m in s["nodes"]]) for s in ex["groups"]]


def needed_ops(ex):
    """Ops of the primitives that some step computes (dead and constant nodes left out)."""
    g = ex["graph"]
    return [g[m]["op"] for s in ex["groups"] for m in s["nodes"]]


def assert_no_tiny_elementwise_step(ex, shape):
    """No step produces an elementwise result of the small per-row `shape`."""
    for kind, op, sh, members in steps(ex):
        assert not (sh == shape and op in ELEMENTWISE), (kind, op, sh, members, ex["text"])
        assert kind == "kernel" or op in ("input", "const"), (kind, op, sh, ex["text"])


@pytest.fixture
def jit(daemon_factory, tmp_path):
    d = jit_daemon(daemon_factory, tmp_path)
    c = picograd.connect(d.unix_url, timeout=60)
    yield c
    c.close()


# ---------------------------------------------------------------------------------------------
# (a) Views below elementwise ops
# ---------------------------------------------------------------------------------------------


def test_layer_norm_runs_without_tiny_steps(jit):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256)).astype(np.float32) * 3 + 1
    w = rng.standard_normal(256).astype(np.float32)
    b = rng.standard_normal(256).astype(np.float32)
    hx, hw, hb = jit.put(x), jit.put(w), jit.put(b)
    nodes = [{"op": "input", "handle": hx}, {"op": "input", "handle": hw},
             {"op": "input", "handle": hb},
             {"op": "layer_norm", "in": [0], "normalized_shape": [256]},
             {"op": "layer_norm", "in": [0, 1, 2], "normalized_shape": [256], "eps": 1e-3}]
    plain, affine = run(jit, nodes, [3, 4])
    xd = x.astype(np.float64)
    m = xd.mean(1, keepdims=True)
    v = ((xd - m) ** 2).mean(1, keepdims=True)
    np.testing.assert_allclose(plain, (xd - m) / np.sqrt(v + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(affine, (xd - m) / np.sqrt(v + 1e-3) * w + b, rtol=1e-4,
                               atol=1e-4)
    for out in (3, 4):
        ex = explain(jit, nodes, [out])
        assert_no_tiny_elementwise_step(ex, (64, 1))
        kernels = [s for s in steps(ex) if s[0] == "kernel"]
        # Without the pass: sum, mean, x - mean, sum of squares, rsqrt(var + eps), the product,
        # and two interpreter steps for the expanded 1/N: at most four kernels now.
        assert len(kernels) <= 4, ex["text"]
        # The constants are inlined, never materialized.
        assert all(op not in ("full", "expand") for _, op, _, _ in steps(ex)), ex["text"]


def test_mean_subtraction_python_api(jit):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((48, 40)).astype(np.float32)
    x = pg.tensor(a, conn=jit)
    y = x - x.mean(dim=1, keepdim=True)
    z = (x * 2).exp().sum(dim=0, keepdim=True).rsqrt() * x  # an expand of rsqrt(sum) [1, 40]
    assert "kernel" in pg.explain(y, z, file=io.StringIO())
    np.testing.assert_allclose(y.numpy(), a - a.mean(1, keepdims=True), rtol=1e-5, atol=1e-5)
    want = 1 / np.sqrt(np.exp(a.astype(np.float64) * 2).sum(0, keepdims=True)) * a
    np.testing.assert_allclose(z.numpy(), want, rtol=1e-5, atol=1e-7)

    h = jit.put(a)
    nodes = [{"op": "input", "handle": h}, {"op": "mean", "in": [0], "dims": [1],
                                             "keepdim": True},
             {"op": "sub", "in": [0, 1]}]
    ex = explain(jit, nodes, [2])
    assert_no_tiny_elementwise_step(ex, (48, 1))
    kinds = [s[0] for s in steps(ex)]
    assert kinds.count("kernel") <= 2, ex["text"]  # the row sums, then the subtraction
    (got,) = run(jit, nodes, [2])
    np.testing.assert_allclose(got, a - a.mean(1, keepdims=True), rtol=1e-5, atol=1e-5)


VIEW_CASES = [
    # (name, view node of node 3 = a * b, [2nd operand], numpy of (a * b, the inputs))
    ("permute", {"op": "permute", "dims": [1, 0]}, "c", lambda e, I: e.T + I["c"]),
    ("slice", {"op": "slice", "slices": [[1, None, 2]]}, "d", lambda e, I: e[1::2] + I["d"]),
    ("flip", {"op": "flip", "dims": [0, 1]}, "a", lambda e, I: e[::-1, ::-1] + I["a"]),
    ("reshape", {"op": "reshape", "shape": [16, 8]}, "c",
     lambda e, I: e.reshape(16, 8) + I["c"]),
    ("expand", {"op": "expand", "shape": [3, 8, 16]}, "a",
     lambda e, I: np.broadcast_to(e, (3, 8, 16)) + I["a"]),
]


@pytest.mark.parametrize("case", VIEW_CASES, ids=[c[0] for c in VIEW_CASES])
def test_view_of_elementwise_is_one_kernel(jit, case):
    name, view, other, ref = case
    rng = np.random.default_rng(2)
    I = {"a": rng.standard_normal((8, 16)).astype(np.float32),
         "b": rng.standard_normal((8, 16)).astype(np.float32),
         "c": rng.standard_normal((16, 8)).astype(np.float32),
         "d": rng.standard_normal((4, 16)).astype(np.float32)}
    order = ["a", "b", "c", "d"]
    nodes = [{"op": "input", "handle": jit.put(I[k])} for k in order]
    nodes.append({"op": "mul", "in": [0, 1]})                       # 4: a * b
    nodes.append(dict(view, **{"in": [4]}))                         # 5: its view
    nodes.append({"op": "add", "in": [5, order.index(other)]})      # 6
    (got,) = run(jit, nodes, [6])
    want = ref(I["a"] * I["b"], I)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    ex = explain(jit, nodes, [6])
    st = steps(ex)
    assert [s[0] for s in st].count("kernel") == 1, ex["text"]
    assert all(s[0] == "kernel" or s[1] == "input" for s in st), ex["text"]
    # The product is computed inside the add's loop, on views of a and b.
    (kern,) = [s for s in st if s[0] == "kernel"]
    assert "mul" in kern[3] and "add" in kern[3], ex["text"]

    # Used twice, the product is a step of its own, and the view stays a view of it.
    nodes.append({"op": "neg", "in": [4]})                          # 7
    got6, got7 = run(jit, nodes, [6, 7])
    np.testing.assert_array_equal(got6, want.astype(np.float32))
    np.testing.assert_array_equal(got7, -(I["a"] * I["b"]))


def test_view_chains_and_reshape_of_strided_operands(jit):
    """expand(reshape(E)), permute(permute(E)), and a reshape above an elementwise node whose
    operand is a strided view (not pushed there: it would be copied) all give numpy's values."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal((4, 6)).astype(np.float32)
    c = rng.standard_normal(4).astype(np.float32)
    nodes = [{"op": "input", "handle": jit.put(a)}, {"op": "input", "handle": jit.put(b)},
             {"op": "input", "handle": jit.put(c)},
             {"op": "sum", "in": [0], "dims": [0]},                          # 3: [4]
             {"op": "mul", "in": [3, 2]},                                    # 4: [4]
             {"op": "reshape", "in": [4], "shape": [1, 4]},                  # 5
             {"op": "expand", "in": [5], "shape": [6, 4]},                   # 6
             {"op": "sub", "in": [0, 6]},                                    # 7
             {"op": "permute", "in": [1], "dims": [1, 0]},                   # 8: b.T [6, 4]
             {"op": "add", "in": [8, 0]},                                    # 9: b.T + a
             {"op": "reshape", "in": [9], "shape": [24]},                    # 10
             {"op": "exp", "in": [10]},                                      # 11
             {"op": "permute", "in": [7], "dims": [1, 0]},                   # 12
             {"op": "tanh", "in": [12]},                                     # 13
             {"op": "permute", "in": [13], "dims": [1, 0]},                  # 14
             {"op": "mul", "in": [14, 0]}]                                   # 15
    o7, o11, o15 = run(jit, nodes, [7, 11, 15])
    ad = a.astype(np.float64)
    r7 = ad - (ad.sum(0) * c)[None, :]
    np.testing.assert_allclose(o7, r7, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o11, np.exp((b.T + a).reshape(24)), rtol=1e-5)
    np.testing.assert_allclose(o15, np.tanh(r7) * a, rtol=1e-5, atol=1e-6)
    ex = explain(jit, nodes, [11])
    # exp(reshape(b.T + a)): the reshape of a transposed input is not pushed, so nothing is
    # copied by the interpreter (a reshape step would be a copy).
    assert "reshape" not in [s[1] for s in steps(ex) if s[0] == "interp"], ex["text"]


# ---------------------------------------------------------------------------------------------
# (b) Constants and identities
# ---------------------------------------------------------------------------------------------


def full(value, dtype, shape=()):
    return {"op": "full", "shape": list(shape), "value": value, "dtype": dtype}


def test_constant_arithmetic_folds(jit):
    x = np.arange(20, dtype=np.float32).reshape(4, 5) - 7.5
    h = jit.put(x)
    nodes = [{"op": "input", "handle": h}, full(2.0, "float32"), full(3.0, "float32"),
             {"op": "mul", "in": [1, 2]},                        # 3: 2 * 3
             {"op": "mul", "in": [0, 3]},                        # 4: x * 6
             full(2.0, "float32", (4, 5)), full(3.0, "float32", (4, 5)),
             {"op": "add", "in": [5, 6]},                        # 7: full [4, 5] 5
             {"op": "const", "value": 4}, {"op": "mul", "in": [7, 8]},   # 9: 20
             {"op": "const", "value": 1}, {"op": "sub", "in": [9, 10]},  # 11: 19
             {"op": "div", "in": [11, 2]},                       # 12: 19 / 3
             {"op": "add", "in": [0, 12]}]                       # 13: x + 19/3
    o4, o13, o12 = run(jit, nodes, [4, 13, 12])
    np.testing.assert_array_equal(o4, x * np.float32(6))
    c = np.float32(19) / np.float32(3)
    np.testing.assert_array_equal(o12, np.full((4, 5), c, np.float32))
    np.testing.assert_array_equal(o13, x + c)
    ex = explain(jit, nodes, [4, 13])
    g = ex["graph"]
    assert [n["op"] for n in g].count("mul") == 1, ex["text"]      # only x * 6
    assert [n["op"] for n in g].count("add") == 1, ex["text"]      # only x + 19/3
    assert not any(n["op"] in ("sub", "div") for n in g), ex["text"]
    fulls = {n["attrs"] for n in g if n["op"] == "full"}
    assert "value=6" in fulls, ex["text"]
    assert not any(op in ("full", "expand") for _, op, _, _ in steps(ex)), ex["text"]

    # The Python API: pg.full(...) ops fold too.
    t = pg.tensor(x, conn=jit)
    y = pg.full((4, 5), 2.0) * pg.full((4, 5), 3.0) + t
    np.testing.assert_array_equal(y.numpy(), x + 6)


# (op nodes over constant inputs 1.., numpy-free: the unfolded run is the oracle)
FOLD_CASES = [
    ("float32", [0.7], "exp"), ("float32", [0.7], "tanh"), ("float32", [0.7], "sigmoid"),
    ("float32", [0.7], "gelu"), ("float32", [2.0], "log"), ("float32", [2.0], "sqrt"),
    ("float32", [2.0], "rsqrt"), ("float32", [3.0], "sin"), ("float64", [3.0], "cos"),
    ("float32", [1.1, 2.3], "pow"), ("float32", [1.0, 3.0], "div"), ("float64", [1.0, 3.0], "div"),
    ("float32", [-0.0, 0.0], "maximum"), ("float32", [float("nan"), 1.0], "minimum"),
    ("int32", [2147483647, 1], "add"), ("int32", [-7, 3], "mul"), ("int64", [3, 20], "pow"),
    ("int64", [2 ** 40 + 1, 2 ** 20 + 1], "mul"),  # 2^60 + ...: no double holds it
    ("int32", [-5], "abs"), ("int32", [5, 3], "gt"), ("float32", [2.5], "square"),
]


@pytest.mark.parametrize("dtype,values,op", FOLD_CASES,
                         ids=[f"{op}-{dt}-{i}" for i, (dt, _, op) in enumerate(FOLD_CASES)])
def test_folded_value_is_the_interpreters(daemon_factory, tmp_path, dtype, values, op):
    """A folded constant has exactly the bytes the unfolded op computes (operands arriving as
    input tensors instead), in the jit and the interpreter daemon alike."""
    jd = jit_daemon(daemon_factory, tmp_path)
    rd = daemon_factory(extra_args=["--jit", "off"], name="ref")
    shape = (3, 2)
    results = []
    for d in (jd, rd):
        c = picograd.connect(d.unix_url)
        n = len(values)
        folded = [full(v, dtype) for v in values]
        folded.append({"op": op, "in": list(range(n))})
        folded.append({"op": "expand", "in": [n], "shape": list(shape)})
        handles = [c.put(np.full(shape, v, NP[dtype])) for v in values]
        unfolded = [{"op": "input", "handle": hh} for hh in handles]
        unfolded.append({"op": op, "in": list(range(n))})
        (a,) = run(c, folded, [n + 1])
        (b,) = run(c, unfolded, [n])
        assert a.dtype == b.dtype and a.shape == b.shape
        if d is rd:  # the interpreter, folded or not: the same bytes
            assert a.tobytes() == b.tobytes(), (op, dtype, values, a, b)
        else:  # a compiled kernel may spell a NaN differently
            np.testing.assert_array_equal(a, b, err_msg=f"{op} {dtype} {values}")
            assert (np.signbit(a) == np.signbit(b)).all() or np.isnan(a).any()
        results.append(a)
        ex = explain(c, folded, [n + 1])
        ops = [nd["op"] for nd in ex["graph"]]
        if not (dtype == "int64" and op == "mul"):
            assert op not in ops, ex["text"]
        else:
            assert op in ops, ex["text"]  # not exactly a double: computed at run time
        c.close()
    np.testing.assert_array_equal(results[0], results[1])


def test_identities(jit):
    x = np.array([[-0.0, 0.0, 1.5, -2.25], [np.nan, np.inf, -np.inf, 3.0]], np.float32)
    xi = np.array([[-7, 0, 5, 2 ** 31 - 1], [-(2 ** 31), 1, -1, 9]], np.int32)
    nodes = [{"op": "input", "handle": jit.put(x)}, {"op": "input", "handle": jit.put(xi)},
             {"op": "const", "value": 1}, {"op": "const", "value": 0},
             {"op": "const", "value": -0.0}, {"op": "const", "value": 1.0},
             {"op": "mul", "in": [0, 2]},    # 6: x * 1
             {"op": "mul", "in": [2, 0]},    # 7: 1 * x
             {"op": "div", "in": [0, 5]},    # 8: x / 1.0
             {"op": "sub", "in": [0, 3]},    # 9: x - 0
             {"op": "add", "in": [0, 3]},    # 10: x + 0 (-0.0 -> +0.0: kept)
             {"op": "mul", "in": [0, 3]},    # 11: x * 0 (NaN, inf: kept)
             {"op": "sub", "in": [0, 4]},    # 12: x - (-0.0) (kept)
             {"op": "mul", "in": [1, 2]},    # 13: xi * 1
             {"op": "sub", "in": [1, 3]},    # 14: xi - 0
             {"op": "mul", "in": [6, 2]},    # 15: (x * 1) * 1
             {"op": "exp", "in": [15]}]      # 16
    outs = list(range(6, 17))
    got = dict(zip(outs, run(jit, nodes, outs)))
    for k in (6, 7, 8, 9, 15):
        assert got[k].tobytes() == x.tobytes(), (k, got[k])
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(got[10], x + np.float32(0))
        assert np.signbit(got[10][0, 0]) == False  # noqa: E712 (-0.0 + 0 is +0.0)
        np.testing.assert_array_equal(got[11], x * np.float32(0))
        np.testing.assert_array_equal(got[12], x - np.float32(-0.0))
        assert np.signbit(got[12][0, 0]) == False  # noqa: E712
        np.testing.assert_array_equal(got[16], np.exp(x))
    assert got[13].tobytes() == xi.tobytes() and got[14].tobytes() == xi.tobytes()

    for k in (6, 7, 8, 9, 13, 14, 15):
        ex = explain(jit, nodes, [k])
        assert needed_ops(ex) == ["input"], (k, ex["text"])
    for k, op in ((10, "add"), (11, "mul"), (12, "sub")):
        ex = explain(jit, nodes, [k])
        assert op in needed_ops(ex), (k, ex["text"])
    # An output that is just an input (kept as a new handle) is still a tensor of its own.
    r = jit.call("run", nodes=nodes, outputs=[{"node": 6, "keep": True}])
    h = r["outputs"][0]["handle"]
    assert jit.get(h).tobytes() == x.tobytes()
    jit.free(h)
    assert jit.get(nodes[0]["handle"]).tobytes() == x.tobytes()


def sgd_step(c, hw, hg, lr):
    nodes = [{"op": "input", "handle": hw}, {"op": "input", "handle": hg},
             {"op": "const", "value": lr}, {"op": "mul", "in": [1, 2]},
             {"op": "sub", "in": [0, 3]}, {"op": "const", "value": 1},
             {"op": "mul", "in": [4, 5]}]
    (out,) = run(c, nodes, [6])
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_changing_learning_rate_does_not_recompile(jit, dtype):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((32, 32)).astype(NP[dtype])
    g = rng.standard_normal((32, 32)).astype(NP[dtype])
    hw, hg = jit.put(w), jit.put(g)
    out = sgd_step(jit, hw, hg, 0.013)
    np.testing.assert_allclose(out, w - g * NP[dtype](0.013), rtol=1e-6)
    compiled = jit.stats()["kernels"]["compiled"]
    assert compiled >= 1
    for lr in (0.021, 0.0005, 0.1 / 3):
        out = sgd_step(jit, hw, hg, lr)
        np.testing.assert_allclose(out, w - g * NP[dtype](lr), rtol=1e-6)
    assert jit.stats()["kernels"]["compiled"] == compiled
    # ... while an inlined constant (a small integer) is a new kernel per value, as before.
    sgd_step(jit, hw, hg, 2)
    assert jit.stats()["kernels"]["compiled"] > compiled


def test_weak_scalar_arithmetic_is_not_folded(jit):
    """0.3 * 2 where 0.3 is a Python float: the product changes with 0.3, so it stays a node
    reading the scalar from its buffer, and the result is right."""
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    nodes = [{"op": "input", "handle": jit.put(x)}, {"op": "const", "value": 0.3},
             {"op": "const", "value": 2}, {"op": "mul", "in": [1, 2]},
             {"op": "mul", "in": [0, 3]}]
    (got,) = run(jit, nodes, [4])
    np.testing.assert_allclose(got, x * 0.6, rtol=1e-15)
    ex = explain(jit, nodes, [4])
    assert any(n["op"] == "full" and "python number" in n["attrs"] for n in ex["graph"])
    assert [n["op"] for n in ex["graph"]].count("mul") == 2, ex["text"]


# ---------------------------------------------------------------------------------------------
# (c) Random shapes and graphs, float32 and int32
# ---------------------------------------------------------------------------------------------


def _stages(dt):
    """Stages (picograd fn, numpy fn) mapping e [m, n] (with inputs I) to [m, n]."""
    isf = dt == "float32"
    npdt = NP[dt]

    def k(v):
        return npdt(v)

    def red(t, dim):  # a per-row/column statistic of t in t's dtype
        return t.mean(dim, keepdim=True) if isf else t.amax(dim, keepdim=True)

    def nred(t, dim):
        return t.mean(dim, keepdims=True, dtype=np.float64).astype(npdt) if isf \
            else t.max(dim, keepdims=True)

    return [
        (lambda e, I: (e * I["b"]).permute(1, 0).permute(1, 0) + I["a"],
         lambda e, I: (e * I["b"]) + I["a"]),
        (lambda e, I: ((e + I["b"]).permute(1, 0) + I["c"]).permute(1, 0),
         lambda e, I: ((e + I["b"]).T + I["c"]).T),
        (lambda e, I: (e - I["a"]).flip(0) * I["b"],
         lambda e, I: (e - I["a"])[::-1] * I["b"]),
        (lambda e, I: e + red((e * I["a"])[::2], 0),
         lambda e, I: e + nred((e * I["a"])[::2], 0)),
        (lambda e, I: (e * 2).reshape(-1).reshape(e.shape[0], e.shape[1]) + I["a"],
         lambda e, I: (e * k(2)) + I["a"]),
        (lambda e, I: e - red(e, 1), lambda e, I: e - nred(e, 1)),
        (lambda e, I: e * (pg.full((), 2, dtype=pg.float32 if isf else pg.int32)
                           * pg.full((), 3, dtype=pg.float32 if isf else pg.int32))
         + pg.full(tuple(e.shape), 1, dtype=pg.float32 if isf else pg.int32) * 1,
         lambda e, I: e * k(6) + k(1)),
        (lambda e, I: ((e * 1) - 0) * I["b"] + 0, lambda e, I: e * I["b"] + k(0)),
        (lambda e, I: e + (red(e, 1) * 2 - 1).abs(),
         lambda e, I: e + np.abs(nred(e, 1) * k(2) - k(1))),
        (lambda e, I: (pg.where(e > 0, e, -e) * I["b"]).permute(1, 0).permute(1, 0),
         lambda e, I: np.where(e > 0, e, -e) * I["b"]),
        (lambda e, I: (I["v"] * 3).unsqueeze(0).expand(e.shape[0], e.shape[1]) + e,
         lambda e, I: (I["v"] * k(3))[None, :] + e),
        (lambda e, I: e.relu().square() - I["a"].neg(),
         lambda e, I: np.maximum(e, 0) ** 2 + I["a"]),
    ]


def _inputs(rng, dt, m, n):
    def arr(shape):
        if dt == "float32":
            return rng.standard_normal(shape).astype(np.float32)
        return rng.integers(-4, 5, size=shape).astype(np.int32)
    return {"a": arr((m, n)), "b": arr((m, n)), "c": arr((n, m)), "v": arr((n,)),
            "x": arr((m, n))}


@pytest.mark.parametrize("dt", ["float32", "int32"])
def test_random_graphs_vs_numpy(daemon_factory, tmp_path, dt):
    jd = jit_daemon(daemon_factory, tmp_path)
    rd = daemon_factory(extra_args=["--jit", "off"], name="ref")
    cj = picograd.connect(jd.unix_url, timeout=60)
    cr = picograd.Connection(rd.unix_url, timeout=60)
    stages = _stages(dt)
    for seed in range(40):
        rng = np.random.default_rng(seed)
        r = random.Random(seed)
        m, n = r.randint(1, 9), r.randint(1, 9)
        arrays = _inputs(rng, dt, m, n)
        picks = [r.randrange(len(stages)) for _ in range(r.randint(1, 4))]
        want = arrays["x"]
        with np.errstate(all="ignore"):
            for p in picks:
                want = stages[p][1](want, arrays).astype(NP[dt])
        outs = []
        for c in (cj, cr):
            I = {k: pg.tensor(v, conn=c) for k, v in arrays.items()}
            e = I["x"]
            for p in picks:
                e = stages[p][0](e, I)
            assert tuple(e.shape) == want.shape and e.dtype.name == dt, (seed, picks)
            outs.append(e.numpy())
        what = f"seed {seed}, shape {(m, n)}, stages {picks}"
        if dt == "float32":
            fin = np.abs(want[np.isfinite(want)])
            scale = max(1.0, float(fin.max())) if fin.size else 1.0
            np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-5 * scale, err_msg=what)
            np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6, err_msg=what)
        else:
            np.testing.assert_array_equal(outs[0], want, err_msg=what)
            np.testing.assert_array_equal(outs[1], want, err_msg=what)
    cr.close()
    cj.close()
