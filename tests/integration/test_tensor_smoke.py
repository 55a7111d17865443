"""Smoke tests of the lazy Tensor API (``import picograd as pg``) against a real picogradd.

A few ops end to end, each checked against numpy: that a graph built in Python runs in the
daemon as one `run`, that results come back with the shapes and dtypes the client inferred,
that handles are freed when tensors die, and that a daemon error names the line that built the
failing node. The op-by-op coverage is the conformance suite (test_conformance_*.py).
Run: PYTHONPATH=clients/python python3 -m pytest tests/integration/test_tensor_smoke.py
"""

import gc

import numpy as np
import pytest

import picograd as pg
import picograd.nn.functional as F


def test_arithmetic_round_trip(conn):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    x = pg.tensor(a)
    y = (x * 2 + 1) / 4 - x.exp().log()
    assert y.shape == (2, 3) and y.dtype is pg.float32 and not y.is_realized
    np.testing.assert_allclose(y.numpy(), (a * 2 + 1) / 4 - a, rtol=1e-5, atol=1e-5)
    assert y.is_realized and y.connection is conn


def test_python_lists_and_dtypes(conn):
    x = pg.tensor([[1, 2, 3], [4, 5, 6]])
    assert x.dtype is pg.int64
    s = x.sum(dim=1)
    assert s.tolist() == [6, 15] and s.dtype is pg.int64
    m = x.mean()
    assert m.dtype is pg.float32 and m.item() == pytest.approx(3.5)
    assert (x > 2).tolist() == [[False, False, True], [True, True, True]]
    assert (x / 2).dtype is pg.float32
    assert pg.tensor(np.ones(3)).double().dtype is pg.float64


def test_matmul_softmax_and_reductions(conn):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 5)).astype(np.float32)
    b = rng.standard_normal((5, 3)).astype(np.float32)
    x, w = pg.tensor(a), pg.tensor(b)
    logits = x @ w
    p = logits.softmax(dim=1)
    want = np.exp(a @ b)
    want /= want.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p.numpy(), want, rtol=1e-5, atol=1e-6)
    values, indices = logits.max(dim=1)
    np.testing.assert_allclose(values.numpy(), (a @ b).max(axis=1), rtol=1e-5)
    assert indices.tolist() == (a @ b).argmax(axis=1).tolist()


def test_indexing_and_movement(conn):
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    x = pg.tensor(a)
    for key in [1, (slice(None), 1), (Ellipsis, slice(1, None, 2)), (None, 0, -1),
                (slice(None), slice(None), 3)]:
        np.testing.assert_array_equal(x[key].numpy(), a[key])
    np.testing.assert_array_equal(x.permute(2, 0, 1).reshape(4, -1).numpy(),
                                  a.transpose(2, 0, 1).reshape(4, -1))
    np.testing.assert_array_equal(x.T.numpy(), a.T)
    np.testing.assert_array_equal(pg.cat([x, x], dim=2).numpy(), np.concatenate([a, a], 2))
    np.testing.assert_array_equal(x.flip(1).numpy(), a[:, ::-1])


def test_realize_shares_work_and_frees_dead_tensors(conn):
    base = conn.stats()["session"]["tensors"]
    x = pg.arange(10).float()
    y = x * 3
    a, b = y + 1, y.sum()
    pg.realize(a, b)
    assert a.is_realized and b.is_realized and not y.is_realized
    assert conn.stats()["session"]["tensors"] == base + 2
    assert b.item() == 135.0
    del a, b, x, y
    gc.collect()
    pg.flush()
    assert conn.stats()["session"]["tensors"] == base


def test_random_numbers_repeat_with_manual_seed(conn):
    pg.manual_seed(123)
    u1 = pg.rand(1000).numpy()
    n1 = pg.randn(1000).numpy()
    pg.manual_seed(123)
    u2 = pg.rand(1000).numpy()
    assert np.array_equal(u1, u2) and not np.array_equal(u1, n1[:1000])
    assert 0.0 <= u1.min() and u1.max() < 1.0 and abs(u1.mean() - 0.5) < 0.05
    assert abs(n1.mean()) < 0.15 and abs(n1.std() - 1.0) < 0.1


def test_nn_functional(conn):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    y = F.relu(F.linear(pg.tensor(a), pg.tensor(w), pg.tensor(b)))
    np.testing.assert_allclose(y.numpy(), np.maximum(a @ w.T + b, 0), rtol=1e-5, atol=1e-6)
    img = pg.tensor(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    assert F.max_pool2d(img, 2).numpy().reshape(-1).tolist() == [5.0, 7.0, 13.0, 15.0]
    k = pg.ones(1, 1, 2, 2)
    np.testing.assert_allclose(F.conv2d(img, k, stride=2).numpy().reshape(-1),
                               [10.0, 18.0, 42.0, 50.0])


def test_daemon_error_names_the_creation_site(conn):
    x = pg.tensor([1.0, 2.0, 3.0])
    idx = pg.tensor([0, 7])
    bad = x.index_select(0, idx)  # index 7 is out of range: only the daemon can tell
    with pytest.raises(pg.PicogradError) as info:
        (bad + 1).numpy()
    assert "node" in info.value.message
    assert f"created at {__file__}:" in info.value.message
