"""@pg.jit (clients/python/picograd/capture.py): capture a function's run on its second call and
replay it with new argument handles afterwards.

The step under test updates a daemon-held parameter through the low-level _commit (an assign)
and returns its loss, so it exercises everything a training step does without needing the
autograd layer: arguments substituted, state updated in place by assigns, the returned tensor
new on every call. Each replayed step must give exactly the values of the same step run as
plain Python, send one run and compile or plan nothing new.
"""

import numpy as np
import pytest

import picograd as pg
from picograd.tensor import _commit


def make_step(w):
    def step(x, y):
        pred = (x * w).sum(dim=1)
        err = pred - y
        loss = (err * err).mean()
        grad = (2.0 * err.unsqueeze(1) * x).mean(dim=0)
        out, = _commit([(w, w - 0.05 * grad)], [loss])
        return out
    return step


def data(rng, n=8):
    return [(rng.standard_normal((16, 4)).astype(np.float32),
             rng.standard_normal(16).astype(np.float32)) for _ in range(n)]


def test_replay_matches_plain_python(conn):
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal(4).astype(np.float32)
    batches = data(rng)
    w_plain, w_jit = pg.tensor(w0), pg.tensor(w0)
    plain, jitted = make_step(w_plain), pg.jit(make_step(w_jit))
    losses_plain, losses_jit, seen = [], [], []
    for i, (x, y) in enumerate(batches):
        losses_plain.append(plain(pg.tensor(x), pg.tensor(y)).item())
        if i == 3:
            before = conn.stats()
        out = jitted(pg.tensor(x), pg.tensor(y))
        seen.append(out)  # kept alive: the id of a dead tensor can come back
        losses_jit.append(out.item())
    after = conn.stats()
    assert jitted.captured
    np.testing.assert_array_equal(losses_jit, losses_plain)
    np.testing.assert_array_equal(w_jit.numpy(), w_plain.numpy())
    assert len({id(t) for t in seen}) == len(batches)  # a new result tensor per call
    # The 4 plain steps and 4 replays after the first stats: nothing planned or compiled anew.
    assert after["plans"]["misses"] == before["plans"]["misses"]
    assert after["kernels"]["compiled"] == before["kernels"]["compiled"]


def test_one_run_per_replayed_call(conn):
    rng = np.random.default_rng(2)
    w = pg.tensor(rng.standard_normal(4).astype(np.float32))
    step = pg.jit(make_step(w))
    args = [(pg.tensor(x), pg.tensor(y)) for x, y in data(rng, 4)]
    for x, y in args[:2]:
        step(x, y)
    before = conn.stats()["ops"].get("run", 0)
    for x, y in args:
        step(x, y)
    assert conn.stats()["ops"].get("run", 0) - before == len(args)


def test_pure_function_is_realized_and_replayed(conn):
    rng = np.random.default_rng(3)

    @pg.jit
    def f(a, b):
        return (a * b + 1.0).relu(), (a - b).sum()

    for _ in range(4):
        a = rng.standard_normal((3, 5)).astype(np.float32)
        b = rng.standard_normal((3, 5)).astype(np.float32)
        r, s = f(pg.tensor(a), pg.tensor(b))
        np.testing.assert_allclose(r.numpy(), np.maximum(a * b + 1, 0), rtol=1e-6)
        np.testing.assert_allclose(s.item(), (a - b).sum(), rtol=1e-5, atol=1e-5)
    assert f.captured


def test_changed_signature_is_refused(conn):
    rng = np.random.default_rng(4)
    w = pg.tensor(rng.standard_normal(4).astype(np.float32))
    step = pg.jit(make_step(w))
    for x, y in data(rng, 3):
        step(pg.tensor(x), pg.tensor(y))
    w_before = w.numpy()
    with pytest.raises(pg.JitError, match=r"captured for arguments"):
        step(pg.tensor(np.ones((8, 4), np.float32)), pg.tensor(np.ones(8, np.float32)))
    with pytest.raises(pg.JitError, match=r"must be a Tensor"):
        step(np.ones((16, 4), np.float32), pg.tensor(np.ones(16, np.float32)))
    np.testing.assert_array_equal(w.numpy(), w_before)  # nothing ran
    step.reset()
    step(pg.tensor(np.ones((8, 4), np.float32)), pg.tensor(np.ones(8, np.float32)))


def test_reading_data_inside_is_refused(conn):
    @pg.jit
    def f(a):
        b = a * 2.0
        b.item()  # a second request inside the function: cannot be replayed
        return b + 1.0

    x = pg.tensor(np.float32(1.5))
    f(x)
    with pytest.raises(pg.JitError, match=r"exactly one run|fetch data|did not compute"):
        f(x)
    assert not f.captured
