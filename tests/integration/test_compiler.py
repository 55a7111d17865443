"""The compiled path (fused C kernels) against the reference interpreter, the plan and kernel
caches, and `explain`.

(a) Differential testing: a seeded generator builds hundreds of random `run` graphs mixing
    elementwise unary and binary ops, where, casts, broadcasting, views and reductions over all
    dtypes, and every result of a `--jit on` daemon must equal the `--jit off` daemon's: exactly
    for ints and bools, within 1e-6 relative (float32) / 1e-12 (float64) for floats, NaN where
    NaN. A failure prints the seed and the graph, so it can be replayed.
(b) Caches: a repeated graph compiles nothing; a restarted daemon finds its kernels on disk; a
    truncated .so is rebuilt.
(c) `explain` lists the lowered ops and the kernel sources.
"""

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

import picograd

DTYPES = ["float32", "float64", "int32", "int64", "bool"]
NP = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
      "bool": np.bool_}
FLOAT_UNARY = ["exp", "sin", "cos", "tanh", "sigmoid", "gelu", "silu", "erf", "abs", "neg", "relu",
               "square", "sign"]
POS_UNARY = ["log", "sqrt", "rsqrt", "reciprocal"]  # given abs(x) + 0.5
INT_UNARY = ["neg", "abs", "relu", "square", "sign"]
ARITH = ["add", "sub", "mul", "maximum", "minimum"]
CMP = ["eq", "ne", "lt", "le", "gt", "ge"]
REDUCE = ["sum", "max", "min", "prod"]
SEEDS = int(os.environ.get("PG_COMPILER_SEEDS", "200"))


def jit_daemon(factory, tmp_path, name="jit", extra=()):
    return factory(extra_args=["--jit", "on", "--jit-min-work", "0",
                               "--cache-dir", str(tmp_path / "kcache"),
                               *extra], name=name)


# ---------------------------------------------------------------------------------------------
# The random graph generator
# ---------------------------------------------------------------------------------------------


class Gen:
    """Builds one random graph as wire nodes. Values are (index, dtype, shape)."""

    def __init__(self, rng, inputs):
        self.rng = rng
        self.nodes = []
        self.vals = []
        for h, dt, shape in inputs:
            self.vals.append(self.add({"op": "input", "handle": h}, dt, shape))

    def add(self, node, dtype, shape):
        self.nodes.append(node)
        return (len(self.nodes) - 1, dtype, tuple(shape))

    def pick(self, pred=lambda v: True):
        cands = [v for v in self.vals if pred(v)]
        return self.rng.choice(cands) if cands else None

    def cast(self, v, dt):
        return v if v[1] == dt else self.add({"op": "cast", "in": [v[0]], "dtype": dt}, dt, v[2])

    def floatish(self, v):
        return v if v[1] in ("float32", "float64") else self.cast(v, "float32")

    def view(self, v):
        r = self.rng
        i, dt, shape = v
        kind = r.choice(["permute", "slice", "flip", "reshape", "expand"])
        if kind == "permute" and len(shape) >= 2:
            dims = list(range(len(shape)))
            r.shuffle(dims)
            return self.add({"op": "permute", "in": [i], "dims": dims}, dt,
                            [shape[d] for d in dims])
        if kind == "slice" and shape and shape[0] >= 2:
            start, step = r.randint(0, 1), r.randint(1, 2)
            n = len(range(start, shape[0], step))
            return self.add({"op": "slice", "in": [i], "slices": [[start, None, step]]}, dt,
                            (n,) + shape[1:])
        if kind == "flip" and shape:
            d = r.randrange(len(shape))
            return self.add({"op": "flip", "in": [i], "dims": [d]}, dt, shape)
        if kind == "reshape" and shape:
            n = int(np.prod(shape))
            new = [n] if len(shape) > 1 else ([n // 2, 2] if n % 2 == 0 else [1, n])
            return self.add({"op": "reshape", "in": [i], "shape": new}, dt, new)
        if kind == "expand" and len(shape) <= 2:
            new = [r.randint(1, 3)] + list(shape)
            return self.add({"op": "expand", "in": [i], "shape": new}, dt, new)
        return v

    def same_shape_or_broadcast(self, a):
        """A second operand broadcastable with a: same shape, a trailing slice, or a scalar."""
        r = self.rng
        c = r.random()
        if c < 0.5:
            b = self.pick(lambda v: v[2] == a[2] and v[0] != a[0])
            if b:
                return b
        if c < 0.8 and a[2]:
            b = self.pick(lambda v: len(v[2]) == 1 and v[2][0] == a[2][-1])
            if b:
                return b
        val = r.choice([2, -1, 0.5, 3, 1.5, 7])
        node = {"op": "const", "value": val}
        dt = "int64" if isinstance(val, int) else "float32"
        return self.add(node, dt, ())

    def step(self):
        r = self.rng
        a = self.pick()
        i, dt, shape = a
        k = r.random()
        if k < 0.25:  # unary
            if dt == "bool":
                out = self.add({"op": "logical_not", "in": [i]}, "bool", shape)
            elif dt in ("int32", "int64") and r.random() < 0.6:
                op = r.choice(INT_UNARY)
                out = self.add({"op": op, "in": [i]}, dt, shape)
            else:
                x = self.floatish(a)
                if r.random() < 0.3:
                    absx = self.add({"op": "abs", "in": [x[0]]}, x[1], x[2])
                    half = self.add({"op": "const", "value": 0.5}, "float32", ())
                    pos = self.add({"op": "add", "in": [absx[0], half[0]]}, x[1], x[2])
                    out = self.add({"op": r.choice(POS_UNARY), "in": [pos[0]]}, x[1], x[2])
                else:
                    out = self.add({"op": r.choice(FLOAT_UNARY), "in": [x[0]]}, x[1], x[2])
        elif k < 0.55:  # binary
            b = self.same_shape_or_broadcast(a)
            outshape = np.broadcast_shapes(shape, b[2])
            if dt == "bool" and b[1] == "bool":
                op = r.choice(["logical_and", "logical_or", "eq", "ne"])
                out = self.add({"op": op, "in": [i, b[0]]}, "bool", outshape)
            else:
                op = r.choice(ARITH + CMP + ["div"])
                out_dt = promote(a, b)
                if op in CMP:
                    out_dt = "bool"
                elif op == "div" and out_dt in ("int32", "int64", "bool"):
                    out_dt = "float32"
                elif out_dt == "bool":
                    out_dt = "int64" if b[1] == "bool" else out_dt
                    return  # arithmetic on two bools is not allowed; skip
                out = self.add({"op": op, "in": [i, b[0]]}, out_dt, outshape)
        elif k < 0.65:  # where
            cond = self.pick(lambda v: v[1] == "bool" and v[2] == shape)
            b = self.pick(lambda v: v[2] == shape and v[1] == dt)
            if cond is None or b is None:
                c2 = self.add({"op": "gt", "in": [i, self.add({"op": "const", "value": 0}, "int64",
                                                              ())[0]]}, "bool", shape)
                cond, b = c2, a
            out = self.add({"op": "where", "in": [cond[0], i, b[0]]}, dt, shape)
        elif k < 0.75:  # cast
            out = self.cast(a, r.choice(DTYPES))
        elif k < 0.90:  # view
            out = self.view(a)
        else:  # reduction, sometimes of a view (of an input or an earlier result)
            if r.random() < 0.3:
                a = self.view(a)
                i, dt, shape = a
            if not shape:
                return
            d = r.randrange(len(shape))
            keep = r.random() < 0.5
            if dt == "bool":
                op, odt = r.choice(["any", "all"]), "bool"
            else:
                op = r.choice(REDUCE)
                odt = "int64" if op in ("sum", "prod") and dt in ("int32",) else dt
                if op == "prod" and dt in ("float32", "float64"):
                    x = self.add({"op": "tanh", "in": [i]}, dt, shape)  # keep products tame
                    i = x[0]
            oshape = list(shape)
            if keep:
                oshape[d] = 1
            else:
                del oshape[d]
            out = self.add({"op": op, "in": [i], "dims": [d], "keepdim": keep}, odt, oshape)
        self.vals.append(out)


def promote(a, b):
    order = ["bool", "int32", "int64", "float32", "float64"]
    if a[2] == () and b[2] != ():
        a, b = b, a
    if b[2] == () and b[0] is not None:
        # a scalar (const value) is weak: ints keep the tensor's dtype, floats make int float32
        if b[1] == "float32" and a[1] in ("bool", "int32", "int64"):
            return "float32"
        if b[1] == "int64" and a[1] == "bool":
            return "int64"
        return a[1]
    return order[max(order.index(a[1]), order.index(b[1]))]


def make_inputs(conn, rng):
    """A few session tensors of assorted dtypes and shapes, values in tame domains."""
    shapes = [(4, 3), (3,), (2, 4, 3), (4, 3), (1, 3)]
    out = []
    for k, shape in enumerate(shapes):
        dt = DTYPES[k % len(DTYPES)] if k < 5 else "float32"
        if dt == "bool":
            arr = rng.random(shape) < 0.5
        elif dt in ("int32", "int64"):
            arr = rng.integers(-5, 6, size=shape).astype(NP[dt])
        else:
            arr = (rng.standard_normal(shape) * 2).astype(NP[dt])
        out.append((conn.put(arr), dt, shape))
    # and one float32 of each input shape, so float paths get fed
    for shape in [(4, 3), (3,)]:
        out.append((conn.put(rng.standard_normal(shape).astype(np.float32)), "float32", shape))
    return out


def decode(o):
    return np.frombuffer(o["data"], dtype=NP[o["dtype"]]).reshape(o["shape"])


def assert_same(got, want, what):
    """Compiled kernels compute exactly what the interpreter computes (render_c.c): equal
    values, NaN where it has NaN (the payload and the sign of zero aside)."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    np.testing.assert_array_equal(got, want, err_msg=what)


def test_differential_random_graphs(daemon_factory, tmp_path):
    jit = jit_daemon(daemon_factory, tmp_path)
    ref = daemon_factory(extra_args=["--jit", "off"], name="ref")
    cj = picograd.connect(jit.unix_url)
    cr = picograd.connect(ref.unix_url)
    assert cj.server_info["devices"][0]["jit"] is True
    assert cr.server_info["devices"][0]["jit"] is False
    start = time.monotonic()
    ran = skipped = 0
    for seed in range(SEEDS):
        rng = random.Random(seed)
        nrng = np.random.default_rng(seed)
        ij = make_inputs(cj, nrng)
        nrng = np.random.default_rng(seed)
        ir = make_inputs(cr, nrng)
        g = Gen(rng, [(h, dt, s) for h, dt, s in ij])
        for _ in range(rng.randint(3, 14)):
            g.step()
        nin = len(ij)
        outs = sorted({v[0] for v in rng.sample(g.vals[nin:], min(3, len(g.vals) - nin))}
                      | {g.vals[-1][0]}) if len(g.vals) > nin else [0]
        outputs = [{"node": o, "keep": False} for o in outs]
        nodes_r = [dict(n) for n in g.nodes]
        for k in range(nin):
            nodes_r[k]["handle"] = ir[k][0]
        try:
            want = cr.call("run", nodes=nodes_r, outputs=outputs)
        except picograd.PicogradError as exc:
            # The generator's dtype bookkeeping is approximate; a graph the daemon refuses is
            # refused by both daemons alike.
            with pytest.raises(picograd.PicogradError) as e2:
                cj.call("run", nodes=g.nodes, outputs=outputs)
            assert e2.value.code == exc.code
            skipped += 1
            continue
        got = cj.call("run", nodes=g.nodes, outputs=outputs)
        for k, (a, b) in enumerate(zip(got["outputs"], want["outputs"])):
            assert_same(decode(a), decode(b), f"seed {seed}, output {k} (node {outs[k]}), "
                                              f"graph {g.nodes}")
        ran += 1
        for h, _, _ in ij:
            cj.free(h)
        for h, _, _ in ir:
            cr.free(h)
    assert ran >= SEEDS * 0.7, f"only {ran} of {SEEDS} graphs ran ({skipped} refused)"
    st = cj.stats()
    assert st["kernels"]["compiled"] > 0 and st["plans"]["misses"] > 0
    assert time.monotonic() - start < 120
    assert_all_compiled(jit)


def test_fused_float_ops_bitwise(daemon_factory, tmp_path):
    """Common fused patterns agree bit for bit with the interpreter."""
    jit = jit_daemon(daemon_factory, tmp_path)
    ref = daemon_factory(extra_args=["--jit", "off"], name="ref")
    x = np.random.default_rng(1).standard_normal((64, 33)).astype(np.float32)
    results = []
    for d in (jit, ref):
        c = picograd.connect(d.unix_url)
        h = c.put(x)
        nodes = [{"op": "input", "handle": h}, {"op": "softmax", "in": [0], "dim": 1},
                 {"op": "gelu", "in": [0]}, {"op": "layer_norm", "in": [0],
                                             "normalized_shape": [33]},
                 {"op": "mean", "in": [2], "dims": [0]}]
        r = c.call("run", nodes=nodes, outputs=[{"node": k, "keep": False} for k in (1, 2, 3, 4)])
        results.append([decode(o) for o in r["outputs"]])
    for a, b in zip(*results):
        assert_same(a, b, "softmax/gelu/layer_norm/mean")


def assert_all_compiled(daemon):
    """Every plan of the daemon ran as compiled kernels: a kernel that fails to render or
    compile makes the daemon interpret the graph instead, which would pass any comparison."""
    log = daemon.log_path.read_text(errors="replace")
    assert "interpreting this graph" not in log, log[-2000:]


def row_patterns(x, w, b, dims):
    """Wire nodes of row-wise patterns on input node 0 (shape of x), reducing over `dims`
    (trailing or not); w and b are input nodes 1 and 2 with the trailing shape. Returns
    (nodes, outputs, names)."""
    last = dims[-1]
    nodes = [{"op": "input"}, {"op": "input"}, {"op": "input"}]
    outs, names = [], []

    def add(node, name=None):
        nodes.append(node)
        if name:
            outs.append(len(nodes) - 1)
            names.append(name)
        return len(nodes) - 1

    add({"op": "softmax", "in": [0], "dim": last}, "softmax")
    add({"op": "log_softmax", "in": [0], "dim": last}, "log_softmax")
    add({"op": "logsumexp", "in": [0], "dims": dims}, "logsumexp")
    add({"op": "var", "in": [0], "dims": dims, "keepdim": True}, "var")
    mu = add({"op": "mean", "in": [0], "dims": dims, "keepdim": True})
    xc = add({"op": "sub", "in": [0, mu]}, "x - mean")
    ms = add({"op": "mean", "in": [add({"op": "mul", "in": [0, 0]})], "dims": dims,
              "keepdim": True})
    r = add({"op": "rsqrt", "in": [add({"op": "add", "in": [ms, ms]})]})
    add({"op": "mul", "in": [0, r]}, "rms norm")
    mx = add({"op": "max", "in": [0], "dims": dims, "keepdim": True})
    add({"op": "sum", "in": [add({"op": "exp", "in": [add({"op": "sub", "in": [0, mx]})]})],
         "dims": dims}, "sum exp(x - max)")
    add({"op": "mul", "in": [xc, add({"op": "sum", "in": [xc], "dims": dims,
                                      "keepdim": True})]}, "xc * sum(xc)")
    if dims == list(range(len(x.shape) - len(w.shape), len(x.shape))):
        add({"op": "layer_norm", "in": [0, 1, 2], "normalized_shape": list(w.shape)},
            "layer_norm")
    return nodes, outs, names


def run_row_patterns(c, arrays, nodes, outs):
    """Runs row_patterns' graph on connection c over arrays (x, w, b); returns its outputs."""
    hs = [c.put(a) for a in arrays]
    nn = [dict(n) for n in nodes]
    for i, h in enumerate(hs):
        nn[i]["handle"] = h
    r = c.call("run", nodes=nn, outputs=[{"node": o, "keep": False} for o in outs])
    for h in hs:
        c.free(h)
    return [decode(o) for o in r["outputs"]]


def test_row_kernels_bitwise(daemon_factory, tmp_path):
    """Reductions broadcast back into their consumers (softmax, layer_norm, variance, ...) run
    as staged kernels (passes/stitch.c) and agree bit for bit with the interpreter, on random
    shapes, over trailing and non-trailing axes, in float32 and float64, NaN rows included."""
    jit = jit_daemon(daemon_factory, tmp_path)
    ref = daemon_factory(extra_args=["--jit", "off"], name="ref")
    cj, cr = picograd.connect(jit.unix_url), picograd.connect(ref.unix_url)
    rng = np.random.default_rng(11)
    cases = 0
    for trial in range(24):
        rank = int(rng.integers(2, 5))
        shape = [int(rng.integers(1, 9)) for _ in range(rank)]
        # 16, 64, 128 (a multiple of the 16 fold lanes, over the last axis): software-pipelined
        shape[-1] = int(rng.choice([1, 3, 8, 13, 16, 64, 100, 128]))
        k = int(rng.integers(1, rank))
        dims = list(range(rank - k, rank)) if trial % 4 else sorted(
            int(d) for d in rng.choice(rank, size=k, replace=False))
        dt = np.float32 if trial % 3 else np.float64
        x = (rng.standard_normal(shape) * 4).astype(dt)
        if trial % 5 == 0:
            x.flat[int(rng.integers(0, x.size))] = np.nan
        tshape = shape[rank - k:]
        w = rng.standard_normal(tshape).astype(dt)
        b = rng.standard_normal(tshape).astype(dt)
        nodes, outs, names = row_patterns(x, w, b, dims)
        results = [run_row_patterns(c, (x, w, b), nodes, outs) for c in (cj, cr)]
        for name, a, bb in zip(names, *results):
            assert_same(a, bb, f"{name}, shape {shape}, dims {dims}, {np.dtype(dt).name}")
            cases += 1
    assert cases > 200
    assert_all_compiled(jit)
    def same_rows(shape, nan_at, what):
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        x[nan_at] = np.nan
        w = rng.standard_normal(shape[-1:]).astype(np.float32)
        b = rng.standard_normal(shape[-1:]).astype(np.float32)
        nodes, outs, names = row_patterns(x, w, b, [1])
        results = [run_row_patterns(c, (x, w, b), nodes, outs) for c in (cj, cr)]
        for name, a, bb in zip(names, *results):
            assert_same(a, bb, f"{name}, shape {shape} ({what})")

    # Outputs of 4 MiB and more are written with streaming stores (render_c.c): the same bits,
    # a NaN row included; and a row length that is not a multiple of 8 keeps the plain store.
    for shape in ((1024, 1536), (1025, 1032), (2048, 517)):
        same_rows(shape, (5, 7), "streaming stores")
    # Software-pipelined row kernels (render_c_pipe.c) on fewer rows than stages (only the
    # first and last iterations of the pipeline run), a few more, and many split over threads.
    for shape in ((1, 16), (2, 32), (3, 16), (5, 48), (4099, 64)):
        same_rows(shape, (-1, 3), "pipelined rows")

    def layer_norm_source(rows, n):
        h = cj.put(np.zeros((rows, n), np.float32))
        return str(cj.call("explain", nodes=[{"op": "input", "handle": h},
                                             {"op": "layer_norm", "in": [0],
                                              "normalized_shape": [n]}],
                           outputs=[{"node": 1, "keep": False}]))

    assert "movntps" not in layer_norm_source(2048, 517)  # 517: not a multiple of 8
    src = layer_norm_source(1024, 1536)
    assert "vmovntps" in src and "Software-pipelined" in src  # render_c_pipe.c
    assert "__builtin_ia32_movntps256" in layer_norm_source(1024, 1032)  # row by row
    # Row kernels ask for the next row ahead (render_c.c, "Prefetch"): per step of the pipelined
    # loop, in one burst after the first stage row by row; not for rows over 64 KiB.
    assert "__builtin_prefetch(&in0[pf0 + g + 0])" in src
    assert "__builtin_prefetch(&in0[pf0 + q])" in layer_norm_source(64, 1032)
    assert "__builtin_prefetch" in layer_norm_source(2, 16384)  # 64 KiB rows
    assert "__builtin_prefetch" not in layer_norm_source(2, 16400)
    # The weight and bias are the same row every time: only x's next row is asked for.
    hx, hw = cj.put(np.zeros((64, 1024), np.float32)), cj.put(np.ones(1024, np.float32))
    affine = str(cj.call("explain", nodes=[{"op": "input", "handle": hx},
                                           {"op": "input", "handle": hw},
                                           {"op": "layer_norm", "in": [0, 1, 1],
                                            "normalized_shape": [1024]}],
                         outputs=[{"node": 2, "keep": False}]))
    assert "__builtin_prefetch(&in0[pf0" in affine and "pf1" not in affine
    # softmax over the last axis is one kernel: max, sum of exp, write.
    h = cj.put(rng.standard_normal((64, 100)).astype(np.float32))
    text = cj.call("explain", nodes=[{"op": "input", "handle": h},
                                     {"op": "softmax", "in": [0], "dim": 1}],
                   outputs=[{"node": 1, "keep": False}])
    assert "1 fused kernel," in str(text), text


def test_long_reductions_in_blocks_bitwise(daemon_factory, tmp_path):
    """Reductions along an axis longer than a fold block (32768) run as (output, block) units
    on several threads and combine the blocks in order: the same bits as the interpreter, for
    full sums of elementwise chains (a loss), axis reductions, strided axes and staged rows."""
    jit = jit_daemon(daemon_factory, tmp_path)
    ref = daemon_factory(extra_args=["--jit", "off"], name="ref")
    rng = np.random.default_rng(3)
    a = rng.standard_normal(100003).astype(np.float32)
    b = rng.standard_normal(100003).astype(np.float32)
    m = rng.standard_normal((3, 70001)).astype(np.float32)
    m[2, 5] = np.nan
    d = rng.standard_normal(70001)
    nodes = [{"op": "input"}, {"op": "input"}, {"op": "input"}, {"op": "input"},
             {"op": "mul", "in": [0, 1]},                       # 4
             {"op": "sum", "in": [4]},                          # 5: full sum of a chain
             {"op": "max", "in": [0]},                          # 6
             {"op": "sum", "in": [2], "dims": [1]},             # 7: rows, one with NaN
             {"op": "max", "in": [2], "dims": [1]},             # 8
             {"op": "min", "in": [2], "dims": [1]},             # 9
             {"op": "permute", "in": [2], "dims": [1, 0]},      # 10
             {"op": "sum", "in": [10], "dims": [0]},            # 11: strided axis
             {"op": "sum", "in": [3]},                          # 12: float64
             {"op": "softmax", "in": [2], "dim": 1},            # 13: staged rows in blocks
             {"op": "mean", "in": [0]}]                         # 14
    outs = [5, 6, 7, 8, 9, 11, 12, 13, 14]
    results = []
    for dmn in (jit, ref):
        c = picograd.connect(dmn.unix_url)
        nn = [dict(n) for n in nodes]
        for i, arr in enumerate((a, b, m, d)):
            nn[i]["handle"] = c.put(arr)
        r = c.call("run", nodes=nn, outputs=[{"node": o, "keep": False} for o in outs])
        results.append([decode(o) for o in r["outputs"]])
    for k, (got, want) in enumerate(zip(*results)):
        assert_same(got, want, f"output {outs[k]}")
    np.testing.assert_allclose(results[0][0], (a.astype(np.float64) * b).sum(), rtol=1e-5)
    np.testing.assert_allclose(results[0][1], a.max())
    np.testing.assert_allclose(results[0][5], m.astype(np.float64).sum(axis=1), rtol=1e-5)
    assert_all_compiled(jit)


def test_matmul_epilogue_in_place(daemon_factory, tmp_path):
    """bias + activation after a matmul run as one kernel written over the product (in place),
    bit for bit like the interpreter; a product that is also an output, or is read again
    later, is never overwritten."""
    jit = jit_daemon(daemon_factory, tmp_path)
    ref = daemon_factory(extra_args=["--jit", "off"], name="ref")
    rng = np.random.default_rng(5)
    a = rng.standard_normal((96, 40)).astype(np.float32)
    w = rng.standard_normal((72, 40)).astype(np.float32)
    b = rng.standard_normal(72).astype(np.float32)
    base = [{"op": "input"}, {"op": "input"}, {"op": "input"},
            {"op": "linear", "in": [0, 1, 2]}, {"op": "relu", "in": [3]}]
    graphs = {
        "epilogue": (base, [4]),
        "product is an output too": (base, [3, 4]),
        "product read again": (base + [{"op": "mul", "in": [3, 4]}], [5]),
    }
    for what, (nodes, outs) in graphs.items():
        results, texts = [], []
        for d in (jit, ref):
            c = picograd.connect(d.unix_url)
            nn = [dict(n) for n in nodes]
            for i, arr in enumerate((a, w, b)):
                nn[i]["handle"] = c.put(arr)
            outputs = [{"node": o, "keep": False} for o in outs]
            r = c.call("run", nodes=nn, outputs=outputs)
            results.append([decode(o) for o in r["outputs"]])
            texts.append(c.call("explain", nodes=nn, outputs=outputs)["text"])
        for got, want in zip(*results):
            assert_same(got, want, what)
        lin = a @ w.T + b
        want = {"epilogue": [np.maximum(lin, 0)],
                "product is an output too": [lin, np.maximum(lin, 0)],
                "product read again": [lin * np.maximum(lin, 0)]}[what]
        for got, wv in zip(results[0], want):
            np.testing.assert_allclose(got, wv, rtol=1e-4, atol=1e-4, err_msg=what)
        if what == "epilogue":
            assert "matmul's epilogue" in texts[0], texts[0]
    assert_all_compiled(jit)


def test_reductions_of_buffers_and_views_bitwise(daemon_factory, tmp_path):
    """A reduction whose input is no elementwise node (an input buffer, or one reached through
    permute / slice / flip / expand / reshape) runs as a kernel of one load and a fold, and agrees
    byte for byte with the interpreter, NaN propagation through max and min included."""
    jit = jit_daemon(daemon_factory, tmp_path)
    ref = daemon_factory(extra_args=["--jit", "off"], name="ref")
    rng = np.random.default_rng(7)
    f32 = (rng.standard_normal((6, 5, 4)) * 3).astype(np.float32)
    f32[1, 2, 3] = np.nan
    arrays = {
        "float32": f32,
        "float64": rng.standard_normal((6, 5, 4)),
        "int32": rng.integers(-9, 10, size=(6, 5, 4)).astype(np.int32),
        "int64": rng.integers(-(2 ** 40), 2 ** 40, size=(6, 5, 4)).astype(np.int64),
        "bool": rng.random((6, 5, 4)) < 0.7,
    }
    # (wire node builder from the input's index, resulting shape)
    views = [
        (None, (6, 5, 4)),
        (lambda i: {"op": "permute", "in": [i], "dims": [2, 0, 1]}, (4, 6, 5)),
        (lambda i: {"op": "slice", "in": [i], "slices": [[1, None, 2]]}, (3, 5, 4)),
        (lambda i: {"op": "flip", "in": [i], "dims": [1, 2]}, (6, 5, 4)),
        (lambda i: {"op": "reshape", "in": [i], "shape": [30, 4]}, (30, 4)),
        (lambda i: {"op": "expand", "in": [i], "shape": [2, 6, 5, 4]}, (2, 6, 5, 4)),
    ]
    for dt, arr in arrays.items():
        ops = ["any", "all"] if dt == "bool" else ["sum", "max", "min", "prod"]
        nodes = [{"op": "input", "handle": None}]
        outs = []
        for mk, shape in views:
            src = 0
            if mk is not None:
                nodes.append(mk(0))
                src = len(nodes) - 1
                if dt == "float32" and shape == (4, 6, 5):  # a view of a view
                    nodes.append({"op": "flip", "in": [src], "dims": [0]})
                    src = len(nodes) - 1
            rank = len(shape)
            for op in ops:
                for dims in sorted({(rank - 1,), (0,), tuple(range(rank)), (0, rank - 1)}):
                    dims = list(dims)
                    if op == "prod" and dt.startswith("float") and len(dims) > 1:
                        continue  # products of many normals under/overflow: fine, but dull
                    for keep in (False, True):
                        nodes.append({"op": op, "in": [src], "dims": dims, "keepdim": keep})
                        outs.append(len(nodes) - 1)
        results = []
        for d in (jit, ref):
            c = picograd.connect(d.unix_url)
            h = c.put(arr)
            ns = [dict(n) for n in nodes]
            ns[0]["handle"] = h
            outputs = [{"node": o, "keep": False} for o in outs]
            r = c.call("run", nodes=ns, outputs=outputs)
            results.append([decode(o) for o in r["outputs"]])
            if d is jit:
                ex = c.call("explain", nodes=ns, outputs=outputs)
                nk = sum(1 for g in ex["groups"] if g["kind"] == "kernel")
                # (int sums lower to a cast and a sum: some graphs hold more kernels)
                assert nk >= len(outs), f"{dt}: {nk} kernels for {len(outs)} reductions"
            c.close()
        for k, (a, b) in enumerate(zip(*results)):
            what = f"{dt}, output {k} (node {nodes[outs[k]]}, of {nodes[nodes[outs[k]]['in'][0]]})"
            assert a.dtype == b.dtype and a.shape == b.shape, what
            assert a.tobytes() == b.tobytes(), what



def test_shared_views_fold_into_every_kernel(daemon_factory, tmp_path):
    """A view that two kernels read (a row vector expanded over a matrix, a transpose) is
    composed into each kernel's loads: no step materializes it, the kernels read the buffer
    under it (stride 0 along the expanded axis), and the results are the interpreter's, bit for
    bit. A view that an interpreted step also reads (a matmul operand) keeps its step."""
    jit = jit_daemon(daemon_factory, tmp_path)
    ref = daemon_factory(extra_args=["--jit", "off"], name="ref")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((48, 40)).astype(np.float32)
    v = rng.standard_normal(40).astype(np.float32)
    nodes = [{"op": "input"}, {"op": "input"},                               # 0 x, 1 v
             {"op": "reshape", "in": [1], "shape": [1, 40]},                 # 2
             {"op": "expand", "in": [2], "shape": [48, 40]},                 # 3: read twice
             {"op": "mul", "in": [0, 3]}, {"op": "sum", "in": [4], "dims": [1]},       # 4, 5
             {"op": "add", "in": [0, 3]}, {"op": "exp", "in": [6]},                    # 6, 7
             {"op": "max", "in": [7], "dims": [0]},                                    # 8
             {"op": "permute", "in": [0], "dims": [1, 0]},                   # 9: read twice
             {"op": "relu", "in": [9]}, {"op": "neg", "in": [9]},                      # 10, 11
             {"op": "sum", "in": [11], "dims": [0]},                                   # 12
             {"op": "matmul", "in": [9, 0]}]                                 # 13: 9 as a buffer
    outs = [5, 8, 10, 12]
    results = []
    for d in (jit, ref):
        c = picograd.connect(d.unix_url)
        ns = [dict(n) for n in nodes]
        ns[0]["handle"], ns[1]["handle"] = c.put(x), c.put(v)
        outputs = [{"node": o, "keep": False} for o in outs]
        results.append([decode(o) for o in c.call("run", nodes=ns, outputs=outputs)["outputs"]])
        if d is jit:
            ex = c.call("explain", nodes=ns, outputs=outputs)
            steps = {g["output"]: g for g in ex["groups"]}
            assert 2 not in steps and 3 not in steps, ex["text"]  # folded, no step
            readers = [g for g in ex["groups"] if g["kind"] == "kernel" and 1 in g["inputs"]]
            assert len(readers) == 2, ex["text"]  # both kernels read v itself
            assert "strides [0, 1]" in ex["text"], ex["text"]
            with_mm = [{"node": o, "keep": False} for o in outs + [13]]
            ex = c.call("explain", nodes=ns, outputs=with_mm)
            assert 9 in {g["output"] for g in ex["groups"]}, ex["text"]
            assert not any(9 in g["inputs"] for g in ex["groups"] if g["kind"] == "kernel")
        c.close()
    for k, (a, b) in enumerate(zip(*results)):
        assert a.dtype == b.dtype and a.shape == b.shape, outs[k]
        assert a.tobytes() == b.tobytes(), outs[k]
    np.testing.assert_allclose(results[0][0], (x * v).sum(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[0][3], -x.T.sum(0), rtol=1e-5, atol=1e-5)
    assert_all_compiled(jit)


def test_windows_fold_into_kernels(daemon_factory, tmp_path):
    """A pooling window (max_pool2d, avg_pool2d; strided, overlapping, dilated, padded) is a view
    the kernels compose into their loads: no step copies the windows out, the forward and the
    backward (the gradient's first-maximum mask) read the pooled tensor itself, and every value
    is the interpreter's, bit for bit."""
    jit = jit_daemon(daemon_factory, tmp_path)
    ref = daemon_factory(extra_args=["--jit", "off"], name="ref")
    rng = np.random.default_rng(13)
    x = rng.integers(-3, 4, (2, 3, 9, 10)).astype(np.float32)  # ties in many windows
    pools = [("max_pool2d", {"kernel_size": [2, 2]}),
             ("max_pool2d", {"kernel_size": [3, 3], "stride": [2, 1], "padding": [1, 1]}),
             ("max_pool2d", {"kernel_size": [2, 3], "stride": [1, 2], "dilation": [2, 1]}),
             ("avg_pool2d", {"kernel_size": [3, 2], "stride": [2, 2]})]
    for op, attrs in pools:
        nodes = [{"op": "input"}, {"op": op, "in": [0], **attrs},
                 {"op": "input"}, {"op": "mul", "in": [1, 2]},
                 {"op": "sum", "in": [3], "dims": [0, 1, 2, 3]},
                 {"op": "grad", "in": [4, 0]}]
        results = []
        for d in (jit, ref):
            c = picograd.connect(d.unix_url)
            shape = c.call("run", nodes=[{"op": "input", "handle": c.put(x)},
                                         {"op": op, "in": [0], **attrs}],
                           outputs=[{"node": 1, "keep": False}])["outputs"][0]["shape"]
            gy = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
            ns = [dict(n) for n in nodes]
            ns[0]["handle"], ns[2]["handle"] = c.put(x), c.put(gy)
            outputs = [{"node": 1, "keep": False}, {"node": 5, "keep": False}]
            results.append([decode(o) for o in c.call("run", nodes=ns,
                                                      outputs=outputs)["outputs"]])
            if d is jit:
                ex = c.call("explain", nodes=ns, outputs=outputs)
                windows = [n["index"] for n in ex["graph"] if n["op"] == "window"]
                assert windows, ex["text"]
                steps = {g["output"] for g in ex["groups"]}
                assert not steps & set(windows), f"{op} {attrs}: a window has a step\n" + ex["text"]
            c.close()
        for k, (a, b) in enumerate(zip(*results)):
            assert a.dtype == b.dtype and a.shape == b.shape, (op, attrs, k)
            assert a.tobytes() == b.tobytes(), (op, attrs, k)
    assert_all_compiled(jit)


def test_strided_reshapes_copy_in_kernels(daemon_factory, tmp_path):
    """A reshape of a strided view copies. conv2d's im2col (the windows of the padded image,
    permuted, flattened) and the reshapes of its gradient run as copy kernels (fuse.c,
    compose_copy), one load with the view's strides baked in, and give the interpreter's bytes;
    a reshape of a contiguous view stays a view (no step copies it)."""
    jit = jit_daemon(daemon_factory, tmp_path)
    ref = daemon_factory(extra_args=["--jit", "off"], name="ref")
    rng = np.random.default_rng(17)
    x = rng.standard_normal((4, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    nodes = [{"op": "input"}, {"op": "input"},
             {"op": "conv2d", "in": [0, 1], "stride": [2, 1], "padding": [1, 1]},   # 2
             {"op": "input"}, {"op": "mul", "in": [2, 3]},
             {"op": "sum", "in": [4], "dims": [0, 1, 2, 3]},                          # 5
             {"op": "grad", "in": [5, 0]}, {"op": "grad", "in": [5, 1]},              # 6, 7
             {"op": "reshape", "in": [0], "shape": [12, 72]}]                         # 8
    outs = [2, 6, 7, 8]
    results = []
    for d in (jit, ref):
        c = picograd.connect(d.unix_url)
        ns = [dict(n) for n in nodes]
        shape = c.call("run", nodes=[{"op": "input", "handle": c.put(x)},
                                     {"op": "input", "handle": c.put(w)},
                                     {"op": "conv2d", "in": [0, 1], "stride": [2, 1],
                                      "padding": [1, 1]}],
                       outputs=[{"node": 2, "keep": False}])["outputs"][0]["shape"]
        gy = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        ns[0]["handle"], ns[1]["handle"], ns[3]["handle"] = c.put(x), c.put(w), c.put(gy)
        outputs = [{"node": o, "keep": False} for o in outs]
        results.append([decode(o) for o in c.call("run", nodes=ns, outputs=outputs)["outputs"]])
        if d is jit:
            ex = c.call("explain", nodes=ns, outputs=outputs)
            ops = {n["index"]: n["op"] for n in ex["graph"]}
            copies = [g for g in ex["groups"] if g["kind"] == "kernel" and
                      [ops[m] for m in g["nodes"]] == ["reshape"]]
            assert copies, ex["text"]  # at least the im2col
            views = {"permute", "window", "slice", "expand", "flip", "reshape"}
            interp = [g for g in ex["groups"] if g["kind"] == "interp"]
            assert not [g for g in interp if ops[g["output"]] == "reshape"  # of a strided view
                        and any(ops[i] in views for i in g["inputs"])], ex["text"]
        c.close()
    for k, (a, b) in enumerate(zip(*results)):
        assert a.dtype == b.dtype and a.shape == b.shape, outs[k]
        assert a.tobytes() == b.tobytes(), outs[k]
    np.testing.assert_array_equal(results[0][3], x.reshape(12, 72))
    assert_all_compiled(jit)

def simple_graph(h):
    return [{"op": "input", "handle": h}, {"op": "exp", "in": [0]},
            {"op": "const", "value": 2}, {"op": "mul", "in": [1, 2]},
            {"op": "sum", "in": [3], "dims": [1], "keepdim": True}]


def test_cache_repeat_restart_and_corrupt(daemon_factory, tmp_path):
    d = jit_daemon(daemon_factory, tmp_path)
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    want = (np.exp(x) * 2).sum(1, keepdims=True)
    c = picograd.connect(d.unix_url)
    h = c.put(x)
    out = [{"node": 4, "keep": False}]
    r = decode(c.call("run", nodes=simple_graph(h), outputs=out)["outputs"][0])
    np.testing.assert_allclose(r, want, rtol=1e-6)
    s1 = c.stats()
    assert s1["kernels"]["compiled"] >= 1 and s1["plans"]["misses"] == 1
    c.call("run", nodes=simple_graph(h), outputs=out)
    s2 = c.stats()
    assert s2["kernels"]["compiled"] == s1["kernels"]["compiled"]
    assert s2["plans"]["hits"] == s1["plans"]["hits"] + 1
    c.close()

    # A restarted daemon with the same cache directory loads the kernel from disk.
    d.start()
    c = picograd.connect(d.unix_url)
    h = c.put(x)
    r = decode(c.call("run", nodes=simple_graph(h), outputs=out)["outputs"][0])
    np.testing.assert_allclose(r, want, rtol=1e-6)
    s3 = c.stats()
    assert s3["kernels"]["compiled"] == 0 and s3["kernels"]["disk_hits"] >= 1

    # A truncated .so is detected, rebuilt, and the result stays right.
    names = [k["name"] for k in c.call("explain", nodes=simple_graph(h), outputs=out)["kernels"]]
    sos = [so for so in Path(tmp_path / "kcache").rglob("*.so")
           if any(so.name.startswith(n) for n in names)]
    assert sos, "no kernel in the cache directory"
    for so in sos:
        data = so.read_bytes()
        so.write_bytes(data[: len(data) // 3])
    c.close()
    d.start()
    c = picograd.connect(d.unix_url)
    h = c.put(x)
    r = decode(c.call("run", nodes=simple_graph(h), outputs=out)["outputs"][0])
    np.testing.assert_allclose(r, want, rtol=1e-6)
    s4 = c.stats()
    assert s4["kernels"]["compiled"] >= 1
    c.close()


RUN_PHASES = ("prepare_seconds", "plan_seconds", "execute_seconds")


@pytest.mark.parametrize("jit", ["on", "off"])
def test_stats_run_times(daemon_factory, tmp_path, jit):
    """`stats` keeps the count and time of runs: 0 on a fresh daemon, +1 and more time per run
    (failed ones too), and the prepare/plan/execute phases never add up to more than the total."""
    if jit == "on":
        d = jit_daemon(daemon_factory, tmp_path)
    else:
        d = daemon_factory(extra_args=["--jit", "off"])
    c = picograd.connect(d.unix_url)
    runs = c.stats()["runs"]
    assert set(runs) == {"count", "seconds", *RUN_PHASES}, runs
    assert runs["count"] == 0 and runs["seconds"] == 0, runs
    assert all(runs[k] == 0 for k in RUN_PHASES), runs

    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    h = c.put(x)
    out = [{"node": 4, "keep": False}]
    prev = c.stats()
    assert prev["runs"] == runs, "put or stats counted as a run"
    for i in range(4):
        if i < 3:
            c.call("run", nodes=simple_graph(h), outputs=out)
        else:  # a failed run counts too
            with pytest.raises(picograd.PicogradError) as e:
                c.call("run", nodes=simple_graph(h + 1000), outputs=out)
            assert e.value.code == "unknown_handle"
        st = c.stats()
        a, b = prev["runs"], st["runs"]
        delta = {k: b[k] - a[k] for k in b}
        assert delta["count"] == 1, (i, a, b)
        assert delta["seconds"] > 0, (i, a, b)
        assert all(delta[k] >= 0 for k in RUN_PHASES), (i, a, b)
        assert sum(delta[k] for k in RUN_PHASES) <= delta["seconds"] + 1e-9, (i, a, b)
        assert delta["prepare_seconds"] > 0, (i, a, b)
        if i < 3:  # a successful run goes through every phase
            assert delta["plan_seconds"] > 0 and delta["execute_seconds"] > 0, (i, a, b)
        else:  # lowering failed: the run never got to plan or execute
            assert delta["plan_seconds"] == 0 and delta["execute_seconds"] == 0, (a, b)
        if i == 0 and jit == "on":  # the first run compiles its kernel while planning
            compiled = st["compile_seconds"] - prev["compile_seconds"]
            assert compiled > 0 and delta["plan_seconds"] >= compiled - 1e-6, (a, b)
        prev = st
    b = prev["runs"]
    assert b["count"] == 4
    assert sum(b[k] for k in RUN_PHASES) <= b["seconds"] + 1e-9, b
    c.close()


def test_explain(daemon_factory, tmp_path):
    d = jit_daemon(daemon_factory, tmp_path)
    c = picograd.connect(d.unix_url)
    h = c.put(np.ones((3, 4), np.float32))
    before = c.stats()
    r = c.call("explain", nodes=simple_graph(h), outputs=[{"node": 4, "keep": False}])
    text = r["text"]
    for word in ("input", "exp", "mul", "sum", "pg_k_", "kernel"):
        assert word in text, word
    assert [n["op"] for n in r["graph"]][:2] == ["input", "exp"]
    assert any(g["kind"] == "kernel" for g in r["groups"])
    assert r["kernels"] and r["kernels"][0]["name"].startswith("pg_k_")
    assert r["kernels"][0]["name"] in r["kernels"][0]["source"]
    # explain compiles nothing and runs nothing
    st = c.stats()
    assert st["kernels"] == before["kernels"] and st["plans"]["misses"] == 0
    # errors are the run's errors
    with pytest.raises(picograd.PicogradError) as e:
        c.call("explain", nodes=[{"op": "exp", "in": [0]}], outputs=[{"node": 0}])
    assert e.value.code == "bad_request"


def test_explain_says_why_small_loops_stay_interpreted(daemon_factory, tmp_path):
    """Below --jit-min-work a loop runs in the interpreter; explain names the threshold, so a
    student who sees no kernel knows why (and how to get one)."""
    out = [{"node": 4, "keep": False}]
    small = daemon_factory(extra_args=["--jit", "on", "--jit-min-work", "64",
                                       "--cache-dir", str(tmp_path / "k1")], name="small")
    c = picograd.connect(small.unix_url)
    text = c.call("explain", nodes=simple_graph(c.put(np.ones((3, 4), np.float32))),
                  outputs=out)["text"]
    assert "0 fused kernels" in text and "fewer than 64 elements stay interpreted" in text, text
    # a loop at the threshold compiles, and nothing is left to explain
    text = c.call("explain", nodes=simple_graph(c.put(np.ones((8, 8), np.float32))),
                  outputs=out)["text"]
    assert "1 fused kernel," in text and "stay interpreted" not in text, text
    # a lone reduction counts its input's elements: 48 of them is under the threshold
    h = c.put(np.ones((3, 16), np.float32))
    text = c.call("explain", nodes=[{"op": "input", "handle": h},
                                    {"op": "sum", "in": [0], "dims": [1]}],
                  outputs=[{"node": 1, "keep": False}])["text"]
    assert "fewer than 64 elements stay interpreted" in text, text
    c.close()
    every = jit_daemon(daemon_factory, tmp_path, name="every")
    c = picograd.connect(every.unix_url)
    text = c.call("explain", nodes=simple_graph(c.put(np.ones((3, 4), np.float32))),
                  outputs=out)["text"]
    assert "stay interpreted" not in text, text
    c.close()


def test_explain_says_when_runs_do_not_use_the_kernels(daemon_factory, tmp_path):
    """Without the JIT a run interprets every primitive: explain still shows the plan the
    compiler would make, says that runs do not use it, and its reply's `jit` is false."""
    nodes = lambda c: simple_graph(c.put(np.ones((64, 64), np.float32)))  # noqa: E731
    out = [{"node": 4, "keep": False}]
    on = jit_daemon(daemon_factory, tmp_path, name="on")
    c = picograd.connect(on.unix_url)
    r = c.call("explain", nodes=nodes(c), outputs=out)
    assert r["jit"] is True and "interpret every primitive" not in r["text"], r["text"]
    c.close()
    for name, args, says in (("off", ["--jit", "off"], "(The compiler is off (--jit off)"),
                             ("nocc", ["--cc", str(tmp_path / "no-such-cc")],
                              "(No working C compiler (--cc)")):
        d = daemon_factory(extra_args=args + ["--cache-dir", str(tmp_path / name)], name=name)
        c = picograd.connect(d.unix_url)
        r = c.call("explain", nodes=nodes(c), outputs=out)
        assert r["jit"] is False and r["text"].startswith(says), (name, r["text"][:300])
        assert r["kernels"] and "pg_k_" in r["text"]  # what the compiler would make of it
        # and the run really is interpreted: it compiles nothing, and its values are right
        got = decode(c.call("run", nodes=nodes(c), outputs=out)["outputs"][0])
        np.testing.assert_allclose(got, np.full((64, 1), 128 * np.e, np.float32), rtol=1e-6)
        assert c.stats()["kernels"]["compiled"] == 0, name
        c.close()


def test_pg_explain(daemon_factory, tmp_path, capsys):
    d = jit_daemon(daemon_factory, tmp_path)
    conn = picograd.connect(d.unix_url)
    arr = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
    x = picograd.tensor(arr, conn=conn)
    y = (x.relu() * 3).sum(dim=1)
    text = picograd.explain(y)
    assert "relu" in text and "pg_k_" in text
    assert "relu" in capsys.readouterr().out
    np.testing.assert_allclose(y.numpy(), (np.maximum(arr, 0) * 3).sum(1))


def test_debug_log_prints_plan(daemon_factory, tmp_path):
    d = jit_daemon(daemon_factory, tmp_path, extra=["--log-level", "debug"])
    c = picograd.connect(d.unix_url)
    h = c.put(np.ones((3, 4), np.float32))
    c.call("run", nodes=simple_graph(h), outputs=[{"node": 4, "keep": False}])
    c.close()
    deadline = time.monotonic() + 5
    while "pg_k_" not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "plan:" in d.log() and "pg_k_" in d.log()
