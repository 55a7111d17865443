"""The issue's acceptance: the same training script with PyTorch and with picograd, from
identical initial weights (loaded through load_state_dict), gives losses equal within 1e-4
relative for 50 steps, with SGD+momentum, Adam and AdamW, for an MLP and a small CNN (Conv2d,
ReLU, MaxPool2d, Flatten, Linear). Each picograd step is one `run` and, from the second step
on, plans and compiles nothing.
Run: PYTHONPATH=clients/python python3 -m pytest tests/integration/test_train_equivalence.py
"""

import zlib

import numpy as np
import pytest

import picograd as pg

torch = pytest.importorskip("torch")

STEPS = 50


def mlp(nn):
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn(nn):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 2 * 2, 10))


OPTS = {
    "sgd_momentum": lambda optim, params: optim.SGD(params, lr=0.05, momentum=0.9),
    "adam": lambda optim, params: optim.Adam(params, lr=2e-3),
    "adamw": lambda optim, params: optim.AdamW(params, lr=2e-3, weight_decay=0.05),
}


def train(lib, model, opt, batches):
    crit = lib.nn.CrossEntropyLoss()
    losses = []
    for xa, ya in batches:
        x, y = lib.tensor(xa), lib.tensor(ya)
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("opt_name", sorted(OPTS))
def test_same_losses_as_torch(conn, arch, opt_name):
    make = mlp if arch == "mlp" else cnn
    shape = (64, 64) if arch == "mlp" else (32, 1, 8, 8)
    # A seed that is the same in every process (hash() of a str is salted per process).
    rng = np.random.default_rng(zlib.crc32(f"{arch}/{opt_name}".encode()))
    # a learnable task: labels from a fixed random linear map of the inputs
    proj = rng.standard_normal((int(np.prod(shape[1:])), 10))
    batches = []
    for _ in range(STEPS):
        xa = rng.standard_normal(shape).astype(np.float32)
        batches.append((xa, (xa.reshape(len(xa), -1) @ proj).argmax(1)))

    torch.manual_seed(0)
    tm = make(torch.nn)
    pm = make(pg.nn)
    pm.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    topt = OPTS[opt_name](torch.optim, tm.parameters())
    popt = OPTS[opt_name](pg.optim, pm.parameters())

    want = train(torch, tm, topt, batches)
    got = train(pg, pm, popt, batches[:1])
    s0 = conn.stats()
    got = np.concatenate([got, train(pg, pm, popt, batches[1:])])
    s1 = conn.stats()

    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert want[-10:].mean() < want[:10].mean()     # it did learn something
    steps = STEPS - 1
    assert s1["ops"]["run"] - s0["ops"]["run"] == steps          # one run per step
    assert s1["ops"]["put"] - s0["ops"]["put"] == 2 * steps      # the batch: x and y
    assert s1["plans"]["misses"] == s0["plans"]["misses"]
    assert s1["kernels"]["compiled"] == s0["kernels"]["compiled"]
