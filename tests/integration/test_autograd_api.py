"""The autograd front-end (requires_grad, backward, .grad, detach, no_grad) against PyTorch.

Random data; every check compares with torch 1.13 doing the same thing, or with a value that a
broken implementation would not produce. Run:
PYTHONPATH=clients/python python3 -m pytest tests/integration/test_autograd_api.py
"""

import numpy as np
import pytest

import picograd as pg

torch = pytest.importorskip("torch")


def _pair(rng, *shape):
    a = rng.standard_normal(shape).astype(np.float32)
    return pg.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


def _close(p, t, rtol=1e-5, atol=1e-6):
    want = t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)
    np.testing.assert_allclose(p.numpy(), want, rtol=rtol, atol=atol)


def test_backward_matches_torch(conn):
    rng = np.random.default_rng(1)
    (w, tw), (b, tb) = _pair(rng, 5, 3), _pair(rng, 3)
    xa = rng.standard_normal((7, 5)).astype(np.float32)
    x, tx = pg.tensor(xa), torch.tensor(xa)
    loss = ((x @ w + b).tanh() * 1.5).square().mean()
    tloss = ((tx @ tw + tb).tanh() * 1.5).square().mean()
    assert loss.requires_grad and not loss.is_leaf and w.is_leaf and not x.requires_grad
    loss.backward()
    tloss.backward()
    assert not w.grad.is_realized  # lazy until needed
    _close(w.grad, tw.grad)
    _close(b.grad, tb.grad)
    assert x.grad is None
    assert not w.grad.requires_grad


def test_grad_accumulates_across_backward_calls(conn):
    rng = np.random.default_rng(2)
    w, tw = _pair(rng, 4, 4)
    for k in range(3):
        (w.exp() * (k + 1)).sum().backward()
        (tw.exp() * (k + 1)).sum().backward()
        _close(w.grad, tw.grad)  # realized between the calls: old + new from a handle
    w.grad = None
    (w * 2).sum().backward()
    _close(w.grad, np.full((4, 4), 2, np.float32))


def test_detach_stops_the_gradient(conn):
    rng = np.random.default_rng(3)
    w, tw = _pair(rng, 6)
    y = (w * w).detach()
    assert not y.requires_grad
    (y * w).sum().backward()
    ty = (tw * tw).detach()
    (ty * tw).sum().backward()
    _close(w.grad, tw.grad)   # d/dw sum(y * w) = y, no 2w*w term


def test_no_grad_enable_grad_and_decorator(conn):
    w = pg.tensor([1.0, 2.0], requires_grad=True)
    assert pg.is_grad_enabled()
    with pg.no_grad():
        assert not pg.is_grad_enabled()
        y = w * 2
        with pg.enable_grad():
            z = w * 3
    assert not y.requires_grad and z.requires_grad and pg.is_grad_enabled()

    @pg.no_grad()
    def f(t):
        return t + 1

    assert not f(w).requires_grad and pg.is_grad_enabled()
    pg.set_grad_enabled(False)
    assert not (w * 1).requires_grad
    pg.set_grad_enabled(True)
    assert (w * 1).requires_grad
    # ints and bools never require grad
    assert not (w > 1).requires_grad and not w.argmax().requires_grad


def test_backward_after_the_output_was_realized(conn):
    rng = np.random.default_rng(4)
    w, tw = _pair(rng, 3, 3)
    loss = (w.sigmoid() * w).sum()
    tloss = (tw.sigmoid() * tw).sum()
    assert loss.item() == pytest.approx(tloss.item(), rel=1e-5)   # realized first
    loss.backward()
    tloss.backward()
    _close(w.grad, tw.grad)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_backward_with_gradient_and_retain_graph(conn):
    rng = np.random.default_rng(5)
    w, tw = _pair(rng, 4)
    ga = rng.standard_normal(4).astype(np.float32)
    y = w * w * 3
    y.backward(pg.tensor(ga), retain_graph=True)
    ty = tw * tw * 3
    ty.backward(torch.tensor(ga))
    _close(w.grad, tw.grad)


def test_non_scalar_backward_without_gradient_is_refused(conn):
    w = pg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    before = conn.stats()["session"]["tensors"]
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        (w * 2).backward()
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        (w * 2).backward(pg.tensor([1.0, 2.0]))
    assert w.grad is None
    assert conn.stats()["session"]["tensors"] == before + 1   # only the gradient tensor put
    np.testing.assert_array_equal(w.numpy(), [1, 2, 3])


def test_requires_grad_on_int_tensors_is_refused(conn):
    before = conn.stats()["session"]["tensors"]
    with pytest.raises(RuntimeError, match="only Tensors of floating point dtype"):
        pg.tensor([1, 2, 3], requires_grad=True)
    t = pg.tensor([1, 2, 3])
    with pytest.raises(RuntimeError, match="only Tensors of floating point dtype"):
        t.requires_grad_()
    assert not t.requires_grad
    assert conn.stats()["session"]["tensors"] == before + 1
    with pytest.raises(RuntimeError, match="does not require grad"):
        pg.tensor([1.0]).sum().backward()
    with pytest.raises(RuntimeError, match="leaf"):
        (pg.tensor([1.0], requires_grad=True) * 2).requires_grad_(False)


def test_autograd_grad_and_backward_agree(conn):
    rng = np.random.default_rng(6)
    w, _ = _pair(rng, 3, 2)
    loss = (w.exp() * w).mean()
    (g,) = pg.autograd.grad(loss, w)
    loss.backward()
    np.testing.assert_allclose(w.grad.numpy(), g.numpy(), rtol=1e-6)


def test_creation_functions_take_requires_grad(conn):
    torch = pytest.importorskip("torch")
    w = pg.randn(3, 4, requires_grad=True)
    b = pg.zeros(4, requires_grad=True)
    s = pg.full((1,), 0.5, requires_grad=True)
    assert w.requires_grad and w.is_leaf and b.requires_grad and s.requires_grad
    x = np.random.default_rng(7).standard_normal((5, 3)).astype(np.float32)
    ((pg.tensor(x) @ w + b).relu() * s).square().mean().backward()
    tw = torch.tensor(w.detach().numpy(), requires_grad=True)
    tb = torch.zeros(4, requires_grad=True)
    ts = torch.full((1,), 0.5, requires_grad=True)
    ((torch.tensor(x) @ tw + tb).relu() * ts).square().mean().backward()
    for got, want in ((w, tw), (b, tb), (s, ts)):
        np.testing.assert_allclose(got.grad.numpy(), want.grad.numpy(), rtol=1e-5, atol=1e-6)
    a = pg.arange(5.0, requires_grad=True)
    (a * a).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), 2 * np.arange(5.0, dtype=np.float32))
    with pytest.raises(RuntimeError, match="floating point"):
        pg.zeros(3, dtype=pg.int64, requires_grad=True)
    assert not pg.ones(2, device="cpu").requires_grad
    with pytest.raises(pg.PicogradError) as e:
        pg.zeros(2, device="cuda:9")  # no daemon here has ten GPUs
    assert e.value.code == "no_device"
