"""pg.nn modules, pg.optim optimizers and schedulers, clip_grad_norm_, save/load, against
PyTorch 1.13 from identical weights (loaded through load_state_dict from torch's state_dict as
numpy arrays), and the one-request step: one `run` per step, nothing compiled from step 2 on,
loss.item() after step() the pre-step loss with no round trip, pending tensors keeping old
values. Run: PYTHONPATH=clients/python python3 -m pytest tests/integration/test_nn_optim.py
"""

import collections

import numpy as np
import pytest

import picograd as pg

torch = pytest.importorskip("torch")
tnn = torch.nn


def _sd(tmodule):
    return {k: v.detach().numpy().copy() for k, v in tmodule.state_dict().items()}


def _twin(make_pg, make_torch, seed=0):
    torch.manual_seed(seed)
    tm = make_torch()
    pm = make_pg()
    pm.load_state_dict(_sd(tm))
    return pm, tm


def _close(p, t, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(p.numpy() if hasattr(p, "numpy") else p),
                               t.detach().numpy(), rtol=rtol, atol=atol)


def _runs(conn):
    return conn.stats()["ops"].get("run", 0)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------

MODULES = [
    ("linear", lambda m: m.Linear(7, 5), (4, 7)),
    ("linear_nobias", lambda m: m.Linear(7, 5, bias=False), (3, 2, 7)),
    ("conv", lambda m: m.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 9, 9)),
    ("conv_groups", lambda m: m.Conv2d(4, 6, (3, 2), groups=2, dilation=1, bias=False),
     (2, 4, 7, 6)),
    ("relu", lambda m: m.ReLU(), (3, 5)),
    ("gelu", lambda m: m.GELU(), (3, 5)),
    ("gelu_tanh", lambda m: m.GELU(approximate="tanh"), (3, 5)),
    ("silu", lambda m: m.SiLU(), (3, 5)),
    ("sigmoid", lambda m: m.Sigmoid(), (3, 5)),
    ("tanh", lambda m: m.Tanh(), (3, 5)),
    ("flatten", lambda m: m.Flatten(), (2, 3, 4, 5)),
    ("maxpool", lambda m: m.MaxPool2d(2), (2, 3, 8, 8)),
    ("maxpool_s1", lambda m: m.MaxPool2d(3, stride=1, padding=1), (2, 3, 6, 6)),
    ("layernorm", lambda m: m.LayerNorm(6), (4, 6)),
    ("layernorm2", lambda m: m.LayerNorm([3, 4], eps=1e-3), (2, 3, 4)),
    ("bn1d_eval", lambda m: m.BatchNorm1d(5).eval(), (8, 5)),
    ("seq", lambda m: m.Sequential(m.Linear(6, 8), m.GELU(), m.Linear(8, 3)), (5, 6)),
    ("dropout_eval", lambda m: m.Dropout(0.3).eval(), (4, 5)),
]


@pytest.mark.parametrize("name,make,shape", MODULES, ids=[m[0] for m in MODULES])
def test_module_forward_and_grads_match_torch(conn, name, make, shape):
    pm, tm = _twin(lambda: make(pg.nn), lambda: make(tnn))
    assert list(pm.state_dict()) == list(tm.state_dict())
    xa = np.random.default_rng(len(name)).standard_normal(shape).astype(np.float32)
    x, tx = pg.tensor(xa, requires_grad=True), torch.tensor(xa, requires_grad=True)
    y, ty = pm(x), tm(tx)
    assert y.shape == tuple(ty.shape)
    _close(y, ty, rtol=1e-4, atol=1e-5)
    ga = np.random.default_rng(1).standard_normal(tuple(ty.shape)).astype(np.float32)
    y.backward(pg.tensor(ga))
    ty.backward(torch.tensor(ga))
    _close(x.grad, tx.grad, rtol=1e-4, atol=1e-5)
    for (n, p), (_, tp) in zip(pm.named_parameters(), tm.named_parameters()):
        _close(p.grad, tp.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls,shape", [("BatchNorm1d", (8, 5)), ("BatchNorm1d", (6, 5, 3)),
                                       ("BatchNorm2d", (4, 5, 3, 3))])
def test_batchnorm_training_and_running_stats(conn, cls, shape):
    pm, tm = _twin(lambda: getattr(pg.nn, cls)(5), lambda: getattr(tnn, cls)(5))
    rng = np.random.default_rng(0)
    for step in range(3):
        xa = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
        x, tx = pg.tensor(xa, requires_grad=True), torch.tensor(xa, requires_grad=True)
        y, ty = pm(x), tm(tx)
        _close(y, ty, rtol=1e-4, atol=1e-4)
        y.square().sum().backward()
        ty.square().sum().backward()
        _close(x.grad, tx.grad, rtol=1e-3, atol=1e-3)
    # the running stats read as updated right after forward, and after the run that sent them
    _close(pm.running_mean, tm.running_mean, rtol=1e-5)
    _close(pm.running_var, tm.running_var, rtol=1e-5)
    assert pm.num_batches_tracked.item() == 3
    sd = pm.state_dict()
    assert list(sd) == list(tm.state_dict())
    pm.eval(), tm.eval()
    xa = rng.standard_normal(shape).astype(np.float32)
    _close(pm(pg.tensor(xa)), tm(torch.tensor(xa)), rtol=1e-4, atol=1e-5)


def test_embedding_and_losses(conn):
    pm, tm = _twin(lambda: pg.nn.Embedding(10, 4), lambda: tnn.Embedding(10, 4))
    idx = np.array([[1, 2, 9], [0, 0, 3]])
    _close(pm(pg.tensor(idx)), tm(torch.tensor(idx)))
    rng = np.random.default_rng(7)
    la = rng.standard_normal((6, 4)).astype(np.float32)
    ya = rng.integers(0, 4, 6)
    for red in ("mean", "sum", "none"):
        _close(pg.nn.CrossEntropyLoss(reduction=red)(pg.tensor(la), pg.tensor(ya)),
               tnn.CrossEntropyLoss(reduction=red)(torch.tensor(la), torch.tensor(ya)))
        ta = rng.standard_normal((6, 4)).astype(np.float32)
        _close(pg.nn.MSELoss(reduction=red)(pg.tensor(la), pg.tensor(ta)),
               tnn.MSELoss(reduction=red)(torch.tensor(la), torch.tensor(ta)))


def test_dropout_training(conn):
    pg.manual_seed(3)
    x = pg.ones(200, 50)
    y = pg.nn.Dropout(0.25)(x).numpy()
    kept = y != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)


def test_state_dict_keys_and_load_errors(conn):
    def make(m):
        return m.Sequential(m.Conv2d(1, 2, 3), m.BatchNorm2d(2), m.ReLU(), m.Flatten(),
                            m.Linear(2 * 4 * 4, 3), m.LayerNorm(3))
    pm, tm = _twin(lambda: make(pg.nn), lambda: make(tnn))
    assert list(pm.state_dict()) == list(tm.state_dict())
    assert [n for n, _ in pm.named_parameters()] == [n for n, _ in tm.named_parameters()]
    before = pm.state_dict()["0.weight"].numpy()
    bad = _sd(tm)
    del bad["4.bias"]
    bad["extra"] = np.zeros(1)
    with pytest.raises(RuntimeError, match='Missing key.*"4.bias"'):
        pm.load_state_dict(bad)
    wrong = _sd(tm)
    wrong["0.weight"] = np.zeros((3, 1, 3, 3), np.float32)
    with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
        pm.load_state_dict(wrong)
    np.testing.assert_array_equal(pm.state_dict()["0.weight"].numpy(), before)
    # torch tensors and picograd tensors are accepted too
    pm.load_state_dict(tm.state_dict())
    pm.load_state_dict({k: pg.tensor(v) for k, v in _sd(tm).items()})
    _close(pm.state_dict()["4.weight"], tm.state_dict()["4.weight"])


def test_initializers_follow_torch_bounds(conn):
    pg.manual_seed(0)
    lin = pg.nn.Linear(400, 300)
    w, b = lin.weight.numpy(), lin.bias.numpy()
    bound = 1 / np.sqrt(400)   # kaiming_uniform(a=sqrt(5)) gives the same bound as the bias
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert np.abs(b).max() <= bound and abs(w.std() - bound / np.sqrt(3)) < 0.02 * bound
    emb = pg.nn.Embedding(1000, 20).weight.numpy()
    assert abs(emb.mean()) < 0.02 and abs(emb.std() - 1) < 0.02
    ln = pg.nn.LayerNorm(5)
    assert ln.weight.tolist() == [1.0] * 5 and ln.bias.tolist() == [0.0] * 5
    t = pg.nn.Parameter(pg.zeros(30, 40))
    pg.nn.init.xavier_uniform_(t)
    a = np.sqrt(6 / 70)
    assert 0.9 * a < np.abs(t.numpy()).max() <= a


# ---------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------

OPTIMIZERS = [
    ("sgd", lambda o, p: o.SGD(p, lr=0.1)),
    ("sgd_momentum", lambda o, p: o.SGD(p, lr=0.05, momentum=0.9)),
    ("sgd_dampening_wd", lambda o, p: o.SGD(p, lr=0.05, momentum=0.8, dampening=0.3,
                                            weight_decay=1e-2)),
    ("sgd_nesterov", lambda o, p: o.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                        weight_decay=1e-3)),
    ("sgd_maximize", lambda o, p: o.SGD(p, lr=0.01, momentum=0.5, maximize=True)),
    ("adam", lambda o, p: o.Adam(p, lr=1e-2)),
    ("adam_amsgrad_wd", lambda o, p: o.Adam(p, lr=1e-2, betas=(0.8, 0.99), amsgrad=True,
                                            weight_decay=1e-2)),
    ("adamw", lambda o, p: o.AdamW(p, lr=1e-2)),
    ("adamw_amsgrad", lambda o, p: o.AdamW(p, lr=5e-3, weight_decay=0.1, amsgrad=True)),
]


def _mlp(m):
    return m.Sequential(m.Linear(10, 16), m.Tanh(), m.Linear(16, 4))


def _train(lib, model, opt, x, y, steps, sched=None, clip=None):
    crit = lib.nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        if clip is not None:
            lib.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return np.array(losses)


@pytest.mark.parametrize("name,make", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizer_steps_match_torch(conn, name, make):
    pm, tm = _twin(lambda: _mlp(pg.nn), lambda: _mlp(tnn), seed=1)
    rng = np.random.default_rng(2)
    xa = rng.standard_normal((32, 10)).astype(np.float32)
    ya = rng.integers(0, 4, 32)
    popt, topt = make(pg.optim, pm.parameters()), make(torch.optim, tm.parameters())
    lp = _train(pg, pm, popt, pg.tensor(xa), pg.tensor(ya), 20)
    lt = _train(torch, tm, topt, torch.tensor(xa), torch.tensor(ya), 20)
    np.testing.assert_allclose(lp, lt, rtol=1e-4)
    assert (lt[-1] > lt[0]) if "maximize" in name else (lt[-1] < lt[0])
    for p, tp in zip(pm.parameters(), tm.parameters()):
        _close(p, tp, rtol=1e-4, atol=1e-5)
    # state_dict in torch's layout, same values
    ps, ts = popt.state_dict(), topt.state_dict()
    assert sorted(ps["state"]) == sorted(ts["state"])
    assert [g["params"] for g in ps["param_groups"]] == [g["params"] for g in ts["param_groups"]]
    for k in ts["state"]:
        assert sorted(ps["state"][k]) == sorted(ts["state"][k])
        for n, v in ts["state"][k].items():
            if v is not None:
                np.testing.assert_allclose(ps["state"][k][n].numpy(), v.numpy(), rtol=1e-4,
                                           atol=1e-6)
    assert {k: v for k, v in ps["param_groups"][0].items()} == ts["param_groups"][0]


def test_optimizer_state_dict_round_trip_through_save_load(conn, tmp_path):
    pm, tm = _twin(lambda: _mlp(pg.nn), lambda: _mlp(tnn), seed=4)
    rng = np.random.default_rng(5)
    x, y = pg.tensor(rng.standard_normal((16, 10)).astype(np.float32)), pg.tensor(
        rng.integers(0, 4, 16))
    opt = pg.optim.Adam(pm.parameters(), lr=1e-2, amsgrad=True)
    _train(pg, pm, opt, x, y, 3)
    path = tmp_path / "ckpt.pg"
    pg.save({"model": pm.state_dict(), "opt": opt.state_dict(), "epoch": 3, "t": (1.5, None)},
            path)
    ck = pg.load(path)
    assert ck["epoch"] == 3 and ck["t"] == (1.5, None) and list(ck["opt"]["state"]) == [0, 1, 2, 3]
    pm2 = _mlp(pg.nn)
    pm2.load_state_dict(ck["model"])
    opt2 = pg.optim.Adam(pm2.parameters(), lr=0.5, amsgrad=True)
    opt2.load_state_dict(ck["opt"])
    assert opt2.param_groups[0]["lr"] == 1e-2
    a = _train(pg, pm, opt, x, y, 3)
    b = _train(pg, pm2, opt2, x, y, 3)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_schedulers_match_torch(conn):
    p = pg.nn.Parameter(pg.zeros(2))
    tp = torch.nn.Parameter(torch.zeros(2))
    for make in (lambda lr, o, p: lr.StepLR(o, step_size=3, gamma=0.5),
                 lambda lr, o, p: lr.CosineAnnealingLR(o, T_max=7, eta_min=0.01)):
        po, to = pg.optim.SGD([p], lr=0.1), torch.optim.SGD([tp], lr=0.1)
        ps, ts = make(pg.optim.lr_scheduler, po, p), make(torch.optim.lr_scheduler, to, tp)
        got, want = [], []
        for _ in range(20):
            po.step(), to.step()
            ps.step(), ts.step()
            got.append(ps.get_last_lr()[0])
            want.append(ts.get_last_lr()[0])
        assert got == want


def test_clip_grad_norm_matches_torch(conn):
    pm, tm = _twin(lambda: _mlp(pg.nn), lambda: _mlp(tnn), seed=6)
    rng = np.random.default_rng(6)
    xa = rng.standard_normal((8, 10)).astype(np.float32) * 5
    for norm_type, max_norm in ((2.0, 0.1), (1.0, 0.5), (float("inf"), 0.05), (2.0, 1e6)):
        pm.zero_grad(), tm.zero_grad()
        pm(pg.tensor(xa)).square().sum().backward()
        tm(torch.tensor(xa)).square().sum().backward()
        total = pg.nn.utils.clip_grad_norm_(pm.parameters(), max_norm, norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(tm.parameters(), max_norm, norm_type)
        assert total.item() == pytest.approx(ttotal.item(), rel=1e-5)
        for p, tp in zip(pm.parameters(), tm.parameters()):
            _close(p.grad, tp.grad, rtol=1e-4, atol=1e-7)


def test_one_request_per_step_and_nothing_compiled_after_the_first(conn):
    pm, tm = _twin(lambda: _mlp(pg.nn), lambda: _mlp(tnn), seed=8)
    rng = np.random.default_rng(8)
    x = pg.tensor(rng.standard_normal((32, 10)).astype(np.float32))
    y = pg.tensor(rng.integers(0, 4, 32))
    opt = pg.optim.Adam(pm.parameters(), lr=1e-3)
    sched = pg.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-4)  # lr changes
    crit = pg.nn.CrossEntropyLoss()
    for step in range(6):
        if step == 1:
            s0 = conn.stats()
        runs = _runs(conn)
        opt.zero_grad()
        loss = crit(pm(x), y)
        loss.backward()
        opt.step()
        sched.step()
        if step >= 1:
            assert _runs(conn) == runs + 1
    s1 = conn.stats()
    assert s1["plans"]["misses"] == s0["plans"]["misses"]
    assert s1["kernels"]["compiled"] == s0["kernels"]["compiled"]


def test_loss_item_after_step_is_the_pre_step_loss_without_a_round_trip(conn):
    pm, tm = _twin(lambda: _mlp(pg.nn), lambda: _mlp(tnn), seed=9)
    rng = np.random.default_rng(9)
    xa, ya = rng.standard_normal((16, 10)).astype(np.float32), rng.integers(0, 4, 16)
    x, y = pg.tensor(xa), pg.tensor(ya)
    opt = pg.optim.SGD(pm.parameters(), lr=0.5, momentum=0.9)
    topt = torch.optim.SGD(tm.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad(), topt.zero_grad()
        loss = pg.nn.functional.cross_entropy(pm(x), y)
        tloss = torch.nn.functional.cross_entropy(tm(torch.tensor(xa)), torch.tensor(ya))
        loss.backward(), tloss.backward()
        opt.step(), topt.step()
        requests = conn.stats()["session"]["requests"]
        value = loss.item()
        assert conn.stats()["session"]["requests"] == requests + 1   # only this stats call
        assert value == pytest.approx(tloss.item(), rel=1e-5)
        # p.grad holds this step's gradient
        _close(pm[0].weight.grad, tm[0].weight.grad, rtol=1e-4, atol=1e-6)


def test_pending_tensors_keep_values_from_before_the_step(conn):
    pm, tm = _twin(lambda: _mlp(pg.nn), lambda: _mlp(tnn), seed=10)
    rng = np.random.default_rng(10)
    xa = rng.standard_normal((8, 10)).astype(np.float32)
    x = pg.tensor(xa)
    opt = pg.optim.SGD(pm.parameters(), lr=1.0)
    out = pm(x)                    # pending, reads the weights
    w_copy = pm[0].weight.clone()  # pending copy
    w_sum = pm[0].weight.sum()     # pending reader outside the step's graph
    want_out = tm(torch.tensor(xa)).detach().numpy()
    want_w = tm[0].weight.detach().numpy().copy()
    out.sum().backward()
    opt.step()
    assert not np.allclose(pm[0].weight.numpy(), want_w)     # the step changed the weights
    np.testing.assert_allclose(out.numpy(), want_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w_copy.numpy(), want_w, rtol=1e-6)
    assert w_sum.item() == pytest.approx(float(want_w.sum()), rel=1e-5)
    # in the usual loop nothing is kept aside: only the step's own handles exist afterwards
    opt.zero_grad()
    before = conn.stats()["session"]["tensors"]
    loss = pm(x).square().mean()
    loss.backward()
    opt.step()
    assert conn.stats()["session"]["tensors"] == before + 1   # + the loss, nothing more


def test_bad_optimizer_input(conn):
    before = conn.stats()["session"]["tensors"]
    t = pg.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="does not require grad"):
        pg.optim.SGD([t], lr=0.1)
    w = pg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        pg.optim.Adam([w * 2])
    with pytest.raises(ValueError, match="empty parameter list"):
        pg.optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="optimizer can only optimize Tensors"):
        pg.optim.SGD([np.zeros(2)], lr=0.1)
    assert conn.stats()["session"]["tensors"] == before + 2
    np.testing.assert_array_equal(t.numpy(), [1, 2])
    np.testing.assert_array_equal(w.numpy(), [1, 2])


def test_zero_grad_set_to_none_and_param_groups(conn):
    pm, tm = _twin(lambda: _mlp(pg.nn), lambda: _mlp(tnn), seed=11)
    groups = [{"params": pm[0].parameters(), "lr": 0.01}, {"params": pm[2].parameters()}]
    tgroups = [{"params": tm[0].parameters(), "lr": 0.01}, {"params": tm[2].parameters()}]
    opt = pg.optim.SGD(groups, lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tgroups, lr=0.1, momentum=0.9)
    xa = np.random.default_rng(11).standard_normal((4, 10)).astype(np.float32)
    for set_to_none in (False, True, False):
        opt.zero_grad(set_to_none=set_to_none), topt.zero_grad(set_to_none=set_to_none)
        if not set_to_none and pm[0].weight.grad is not None:
            assert pm[0].weight.grad.numpy().sum() == 0
        pm(pg.tensor(xa)).sum().backward()
        tm(torch.tensor(xa)).sum().backward()
        opt.step(), topt.step()
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in pm.parameters())
    for p, tp in zip(pm.parameters(), tm.parameters()):
        _close(p, tp, rtol=1e-5, atol=1e-6)
    assert opt.state_dict()["param_groups"][0]["params"] == [0, 1]
    assert opt.state_dict()["param_groups"][1]["params"] == [2, 3]
