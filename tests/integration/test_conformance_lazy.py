"""Laziness and realization of picograd tensors, checked through the daemon's counters.

Building expressions sends no `run`; realizing one sends exactly one, whatever the chain's
length; shared subexpressions, tensors used after being realized, and inputs whose Python object
is gone before the graph runs all give numpy's values; and deleting tensors frees them in the
daemon (stats()['tensors'] drops back).
"""

import gc
import time

import numpy as np
import pytest

import picograd as pg
from conftest import TEST_DEVICE
from conformance_util import gen
from conformance_util import conn, rng, shared_daemon  # noqa: F401 (fixtures)


def _runs(conn):
    return conn.stats()["ops"].get("run", 0)


# 10 steps, cycled five times: a chain of 50 ops (elementwise, broadcasting, reductions, views).
STEPS = [
    (lambda t: t * 0.9, lambda a: a * 0.9),
    (lambda t: t + 0.25, lambda a: a + 0.25),
    (lambda t: t.tanh(), np.tanh),
    (lambda t: t.T, lambda a: a.T),
    (lambda t: t - t.mean(dim=0), lambda a: a - a.mean(axis=0)),
    (lambda t: t.abs().sqrt(), lambda a: np.sqrt(np.abs(a))),
    (lambda t: t.exp() / t.exp().sum(dim=1, keepdim=True), lambda a: np.exp(a) / np.exp(a).sum(
        axis=1, keepdims=True)),
    (lambda t: t.flip(0) * 3, lambda a: np.flip(a, 0) * 3),
    (lambda t: pg.maximum(t, t.T.T * 0.5), lambda a: np.maximum(a, a * 0.5)),
    (lambda t: t.sigmoid() - 0.5, lambda a: 1 / (1 + np.exp(-a)) - 0.5),
]


def test_chain_of_50_ops_is_one_run(conn, rng):
    a = gen(rng, (6, 6), "float64")
    x = pg.from_numpy(a)
    want = a
    r0 = _runs(conn)
    y = x
    for i in range(50):
        f, g = STEPS[i % len(STEPS)]
        y = f(y)
        want = g(want)
    r1 = _runs(conn)
    assert r1 == r0, f"building 50 lazy ops sent {r1 - r0} run requests"
    got = y.numpy()
    r2 = _runs(conn)
    assert r2 - r1 == 1, f"realizing a chain of 50 ops took {r2 - r1} run requests, expected 1"
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert got.dtype == np.float64


def test_shared_subexpression(conn, rng):
    a = gen(rng, (5, 7), "float32")
    x = pg.from_numpy(a)
    s = (x @ x.T).relu() + 1
    p = s * 2
    q = s.log()
    r = (p + q).sum(dim=1)
    s_np = np.maximum(a.astype(np.float64) @ a.T, 0) + 1
    np.testing.assert_allclose(q.numpy(), np.log(s_np), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.numpy(), s_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.numpy(), (s_np * 2 + np.log(s_np)).sum(axis=1), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(p.numpy(), s_np * 2, rtol=1e-5, atol=1e-5)


def test_tensor_used_after_realization(conn, rng):
    a = gen(rng, (4, 9), "float64")
    x = pg.from_numpy(a)
    y = (x * 2).exp()
    y1 = y.numpy()
    np.testing.assert_allclose(y1, np.exp(a * 2), rtol=1e-10)
    z = y[:, ::2].sum(dim=0) + y.mean()
    np.testing.assert_allclose(z.numpy(), np.exp(a * 2)[:, ::2].sum(axis=0) + np.exp(a * 2).mean(),
                               rtol=1e-10)
    np.testing.assert_array_equal(y.numpy(), y1)  # realizing again gives the same values
    w = y * x  # a realized tensor next to an input in a new graph
    np.testing.assert_allclose(w.numpy(), np.exp(a * 2) * a, rtol=1e-10)
    assert y.tolist() == y1.tolist()


def test_inputs_dropped_before_realization(conn, rng):
    """A pending graph keeps its inputs alive after the Python objects that named them go."""
    a = gen(rng, (300, 40), "float32")
    b = gen(rng, (40,), "float32")
    x = pg.from_numpy(a.copy())
    w = pg.from_numpy(b.copy())
    y = (x * w).sum(dim=1)
    del x, w
    gc.collect()
    for _ in range(3):  # give deferred frees every chance to reach the daemon
        conn.stats()
        pg.tensor([1.0]).numpy()
    np.testing.assert_allclose(y.numpy(), (a.astype(np.float64) * b).sum(axis=1), rtol=1e-5,
                               atol=1e-4)


def test_realized_tensor_outlives_its_inputs(conn, rng):
    a = gen(rng, (8, 8), "int64")
    x = pg.from_numpy(a.copy())
    y = x * 3 + 1
    y.numpy()
    del x
    gc.collect()
    z = y.sum(dim=0)
    np.testing.assert_array_equal(z.numpy(), (a * 3 + 1).sum(axis=0))


def test_values_are_immutable(conn, rng):
    """An uploaded array changed later in numpy does not change a realized picograd tensor."""
    a = gen(rng, (10,), "float64")
    x = pg.tensor(a)
    y = (x + 1).numpy()
    a[:] = 0
    np.testing.assert_array_equal((x + 1).numpy(), y)


@pytest.mark.skipif(TEST_DEVICE is not None, reason="bytes_in_use counts host memory only")
def test_freeing_deleted_tensors(daemon, rng):
    """After deleting many tensors, the daemon's tensor count falls back (polled briefly)."""
    c = pg.connect(daemon.unix_url)
    try:
        base = c.stats()["tensors"]
        a = gen(rng, (256, 256), "float32")  # 256 KiB each: too big to resend in every graph
        ts = []
        for i in range(100):
            t = pg.from_numpy(a) * float(i + 1)
            t.numpy()
            ts.append(t)
        ts += [pg.from_numpy(gen(rng, (1000,), "int64")) for _ in range(100)]
        for t in ts[100:]:
            (t + 1).numpy()
        mid = c.stats()
        assert mid["tensors"] >= base + 100, (
            f"200 realized/uploaded tensors left only {mid['tensors'] - base} tensors in the "
            f"daemon; expected the client to keep them there")
        np.testing.assert_allclose(ts[7].numpy(), a * 8)
        del ts, t
        gc.collect()
        deadline = time.monotonic() + 5.0
        while True:
            gc.collect()
            now = c.stats()
            if now["tensors"] <= base + 4 or time.monotonic() > deadline:
                break
            (pg.tensor([1]) + 1).numpy()  # a request for deferred frees to ride on
            time.sleep(0.05)
        assert now["tensors"] <= base + 4, (
            f"tensors: {base} before, {mid['tensors']} with 200 live, {now['tensors']} 5 s "
            "after deleting them")
        assert now["bytes_in_use"] < mid["bytes_in_use"] - 100 * 256 * 256 * 4 // 2
    finally:
        c.close()


def test_many_small_graphs(conn, rng):
    """Hundreds of independent realizations in a row all come back right."""
    a = gen(rng, (3, 4), "float64")
    x = pg.from_numpy(a)
    for i in range(300):
        v = ((x + i) * 2).sum().item()
        assert abs(v - float(((a + i) * 2).sum())) < 1e-9, (i, v)


def test_metadata_needs_no_run(conn, rng):
    """shape, dtype, ndim, size(), numel(), len() of a pending tensor need no round trip."""
    x = pg.from_numpy(gen(rng, (4, 6, 5), "float32"))
    r0 = _runs(conn)
    y = (x.permute(2, 0, 1)[1:, ::2] @ pg.ones(6, 7)).sum(dim=1, keepdim=True).unsqueeze(0)
    assert tuple(y.shape) == (1, 4, 1, 7)
    assert y.dtype == pg.float32
    assert y.ndim == 4 and y.dim() == 4 and y.numel() == 28 and len(y) == 1
    assert tuple(y.size()) == (1, 4, 1, 7) and y.size(1) == 4 and y.size(-1) == 7
    b = (x > 0).sum()
    assert b.dtype == pg.int64 and tuple(b.shape) == ()
    c = x.long() / 2
    assert c.dtype == pg.float32 and tuple(c.shape) == (4, 6, 5)
    assert _runs(conn) == r0, "reading metadata sent run requests"
