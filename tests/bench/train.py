#!/usr/bin/python3
"""Training-step benchmark: the same model and optimizer in picograd and in PyTorch (CPU, eager),
step for step, in one run.

    /usr/bin/python3 tests/bench/train.py            # about a minute
    /usr/bin/python3 tests/bench/train.py --quick    # a smoke run

Models: an MLP 64 -> 128 -> 10 (ReLU) at batch 64 and 512, and a small CNN on 1x8x8 images
(Conv2d 1->16 3x3 pad 1, ReLU, MaxPool 2, Conv2d 16->32 3x3 pad 1, ReLU, MaxPool 2, Linear 128->10)
at batch 64; cross-entropy loss, Adam (lr 1e-3). Both sides start from the same weights (picograd's
initial state_dict loaded into the torch model) and read the same batches, which are uploaded
before timing (eight batches in turn), so a step moves no training data.

One timed step is what a user's loop does:

    opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); opt.step(); loss.item()

For picograd that is one `run` request: forward, backward, the Adam update (assigned to the
parameters and moments held by the daemon) and the loss, fetched inline. PyTorch runs with
torch.set_num_threads(2), the daemon with its default compute threads (one per core). The
`@pg.jit` rows (when picograd has pg.jit) wrap the same step in the capture-and-replay decorator.

Printed per row: the median step time of each side over rotating rounds, picograd's speed
relative to PyTorch (above 1: picograd is faster), the `ping` round trip (the floor of any
request), and counters read from the daemon's `stats` over the timed steps: `run` requests per
step (the target is one), other requests per step (`free`s of dead handles, pipelined in front of
the next run), plan-cache misses and kernels compiled (both should be 0 after the first step). The losses
of the two sides are compared after the warm-up steps (they start from the same weights).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see fused.py: spinning OpenMP threads

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "clients", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import Server  # noqa: E402

THREADS = 2
NBATCH = 8  # distinct batches uploaded before timing, used in turn


def build(lib, kind):
    nn = lib.nn
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10))


def batches(kind, batch, rng):
    shape = (batch, 64) if kind == "mlp" else (batch, 1, 8, 8)
    return [(rng.standard_normal(shape, dtype=np.float32),
             rng.integers(0, 10, size=batch, dtype=np.int64)) for _ in range(NBATCH)]


class Side:
    """One framework's model, optimizer, resident batches and step function."""

    def __init__(self, lib, kind, data, state, jit=False):
        self.lib = lib
        self.model = build(lib, kind)
        self.model.load_state_dict({k: lib.tensor(v) for k, v in state.items()})
        self.opt = lib.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = lib.nn.CrossEntropyLoss()
        self.data = [(lib.tensor(x), lib.tensor(y)) for x, y in data]
        self.i = 0
        self.step_fn = self._step
        if jit:
            self.step_fn = lib.jit(self._step)

    def _step(self, x, y):
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def step(self):
        x, y = self.data[self.i % NBATCH]
        self.i += 1
        return self.step_fn(x, y).item()


def median_ms(ts):
    return 1e3 * statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps: a smoke run")
    ap.add_argument("--daemon", default=os.path.join(REPO, "build", "bin", "picogradd"))
    ap.add_argument("--daemon-arg", action="append", default=[])
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args()
    rounds, per_round, warmup = (5, 10, 3) if args.quick else (15, 20, 5)

    import torch
    import picograd as pg
    torch.set_num_threads(THREADS)

    tmp = tempfile.mkdtemp(prefix="pg-bench-train-")
    os.mkdir(os.path.join(tmp, "cache"))
    daemon = Server("picogradd", [args.daemon, "--listen", "unix://%s/pg.sock" % tmp,
                                  "--cache-dir", os.path.join(tmp, "cache")] + args.daemon_arg,
                    tmp)
    rows = []
    try:
        url = daemon.wait_urls(1)[0]
        conn = pg.connect(url)
        pings = []
        for _ in range(200):
            t0 = time.perf_counter()
            conn.ping()
            pings.append(time.perf_counter() - t0)
        ping_ms = median_ms(pings)
        configs = [("MLP 64-128-10", "mlp", 64), ("MLP 64-128-10", "mlp", 512),
                   ("CNN (2 conv, 2 pool, linear)", "cnn", 64)]
        for label, kind, batch in configs:
            rng = np.random.default_rng(batch)
            data = batches(kind, batch, rng)
            pg.manual_seed(0)
            init = {k: v.numpy() for k, v in build(pg, kind).state_dict().items()}
            variants = [("plain", False)] + ([("@pg.jit", True)] if hasattr(pg, "jit") else [])
            for vname, jit in variants:
                sides = {"picograd": Side(pg, kind, data, init, jit=jit),
                         "torch": Side(torch, kind, data, init)}
                losses = {n: [s.step() for _ in range(warmup)] for n, s in sides.items()}
                rel = max(abs(a - b) / max(abs(b), 1e-12)
                          for a, b in zip(losses["picograd"], losses["torch"]))
                times = {n: [] for n in sides}
                c0 = conn.stats()
                names = list(sides)
                for r in range(rounds):
                    for n in names[r % 2:] + names[:r % 2]:
                        for _ in range(per_round):
                            t0 = time.perf_counter()
                            sides[n].step()
                            times[n].append(time.perf_counter() - t0)
                c1 = conn.stats()
                steps = rounds * per_round
                ops0, ops1 = c0.get("ops", {}), c1.get("ops", {})
                reqs = (ops1.get("run", 0) - ops0.get("run", 0)) / steps
                others = (c1["requests"] - c0["requests"] - 1) / steps - reqs  # minus stats
                misses = c1["plans"]["misses"] - c0["plans"]["misses"]
                compiled = c1["kernels"]["compiled"] - c0["kernels"]["compiled"]
                pm, tm = median_ms(times["picograd"]), median_ms(times["torch"])
                rows.append((label, batch, vname, pm, tm, tm / pm, ping_ms, reqs, others,
                             misses, compiled, rel))
                print("  %s, batch %d, %s: picograd %.3f ms, torch %.3f ms (%.2fx); %.2f "
                      "runs/step (+%.2f other requests), %d plan misses, %d compiles; loss rel diff %.1e"
                      % (label, batch, vname, pm, tm, tm / pm, reqs, others, misses, compiled, rel))
                sys.stdout.flush()
    finally:
        daemon.stop()

    lines = [
        "| model | batch | loop | picograd ms | torch ms | vs torch | ping ms | runs/step "
        "| other requests/step | plan misses | compiles | loss rel. diff |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (label, batch, vname, pm, tm, ratio, ping_ms, reqs, others, misses, compiled,
         rel) in rows:
        lines.append("| %s | %d | %s | %.3f | %.3f | %.2f | %.3f | %.2f | %.2f | %d | %d | %.1e |"
                     % (label, batch, vname, pm, tm, ratio, ping_ms, reqs, others, misses,
                        compiled, rel))
    lines.append("")
    lines.append("Median step time over %d rounds of %d steps per side (rotating order), after "
                 "%d warm-up steps. vs torch = torch ms / picograd ms (above 1: picograd is "
                 "faster). Counters from the daemon's stats over the timed steps; the loss "
                 "difference compares the warm-up steps from identical weights."
                 % (rounds, per_round, warmup))
    text = "\n".join(lines)
    print()
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
