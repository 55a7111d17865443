#!/usr/bin/env python3
"""GPU benchmark: picogradd on cuda:0 beside PyTorch's CUDA (cuBLAS, its own copies) in one run.

Run by tests/bench/gpu.sh on a machine with a GPU (any Python 3 with numpy, msgpack and torch;
the script adds clients/python to the path). What it measures, each side in the same rounds:

1. the card: name, memory, compute capability (from the daemon's hello and from torch);
2. the device-to-device copy bandwidth (torch: ``dst.copy_(src)`` of 1 GiB, read + write bytes
   per second): the yardstick of memory-bound kernels;
3. matmul 4096x4096 float32 (TF32 off on both sides): picograd's run (cuBLAS through the daemon,
   result kept on the device) against ``torch.matmul`` (cuBLAS directly), in TFLOP/s; target
   >= 90 % of cuBLAS;
4. the fused chains of tests/bench/fused.py on the GPU: ``(relu(a*b+c)*d).sum()`` on 64M float32,
   softmax and layer_norm on 16384x4096, GELU(tanh) on 64M, in GB/s of the bytes each must move,
   as a share of the copy bandwidth (target >= 70 %), beside torch eager;
5. a training step (MLP 784-512-512-10 and a small CNN, batch 256, SGD with momentum) with
   @pg.jit on cuda:0 beside torch on cuda, in ms per step.

Timings of picograd are the client's round trip (a run is one request; its result stays on the
GPU) and, from ``stats``, the daemon's own time per run. Medians of rounds; the table goes to
stdout and, with ``--out FILE``, to FILE.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import picograd as pg  # noqa: E402
import picograd.nn.functional as F  # noqa: E402


def median_time(fn, rounds, sync=None):
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def tsync():
    torch.cuda.synchronize()


def start_daemon(daemon, tmp):
    sock = f"unix://{tmp}/pg.sock"
    log = open(Path(tmp) / "daemon.log", "w")
    proc = subprocess.Popen([daemon, "--listen", sock, "--cache-dir", f"{tmp}/cache"],
                            stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        if "ready" in (Path(tmp) / "daemon.log").read_text():
            return proc, sock
        time.sleep(0.05)
    raise SystemExit("picogradd did not start:\n" + (Path(tmp) / "daemon.log").read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--daemon", default=os.environ.get("PICOGRAD_DAEMON",
                                                       str(ROOT / "build" / "bin" / "picogradd")))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench: torch sees no GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda:0")
    lines = []

    with tempfile.TemporaryDirectory() as tmp:
        proc, sock = start_daemon(args.daemon, tmp)
        try:
            conn = pg.connect(sock, timeout=600)
            info = [d for d in conn.server_info["devices"] if d.get("name") == "cuda:0"]
            if not info or not info[0].get("ready"):
                raise SystemExit(f"gpu_bench: the daemon cannot run on cuda:0: {info}")
            card = info[0]
            lines.append(f"Card: {card['model']}, {card['memory'] >> 20} MiB, compute capability "
                         f"{card['compute_capability'][0]}.{card['compute_capability'][1]}; "
                         f"torch {torch.__version__} sees {torch.cuda.get_device_name(0)}")
            R = args.rounds

            # -- copy bandwidth -------------------------------------------------------------
            src = torch.empty(1 << 28, device=dev)  # 1 GiB of float32
            dst = torch.empty_like(src)
            t = median_time(lambda: dst.copy_(src), R, tsync)
            copy_gbs = 2 * src.numel() * 4 / t / 1e9
            del src, dst
            lines.append(f"Device-to-device copy (torch, 1 GiB): {copy_gbs:.0f} GB/s "
                         "(read + write)")

            rows = ["| benchmark | picograd ms | in daemon ms | torch ms | vs torch | "
                    "picograd rate | target |", "|---|---:|---:|---:|---:|---:|---|"]

            def pg_time(build):
                """Round trip of pg.realize(build()) (graph built untimed) and in-daemon time."""
                y = build()
                pg.realize(y)  # warm-up: compiles
                s0 = conn.stats()["runs"]
                ts = []
                for _ in range(R):
                    y = build()
                    t0 = time.perf_counter()
                    pg.realize(y)
                    ts.append(time.perf_counter() - t0)
                s1 = conn.stats()["runs"]
                inside = (s1["seconds"] - s0["seconds"]) / max(1, s1["count"] - s0["count"])
                return statistics.median(ts), inside

            # -- matmul ---------------------------------------------------------------------
            n = 4096
            rng = np.random.default_rng(0)
            a = rng.standard_normal((n, n)).astype(np.float32)
            b = rng.standard_normal((n, n)).astype(np.float32)
            ga, gb = pg.tensor(a, device="cuda:0"), pg.tensor(b, device="cuda:0")
            ta, tb = torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)
            got = (ga @ gb)[:64, :64].numpy()
            np.testing.assert_allclose(got, (ta @ tb)[:64, :64].cpu().numpy(), rtol=1e-3,
                                       atol=1e-3)
            tp, tin = pg_time(lambda: ga @ gb)
            tt = median_time(lambda: ta @ tb, R, tsync)
            fl = 2 * n ** 3
            rows.append(f"| matmul {n}x{n} float32 | {tp * 1e3:.3f} | {tin * 1e3:.3f} | "
                        f"{tt * 1e3:.3f} | {tt / tp:.2f} | {fl / tin / 1e12:.1f} TFLOP/s | "
                        f">= 0.90 of cuBLAS: {'met' if tt / tin >= 0.9 else 'missed'} "
                        f"({tt / tin:.2f}, in daemon) |")
            del ga, gb, ta, tb

            # -- fused chains ---------------------------------------------------------------
            m = 1 << 26
            vs = [rng.standard_normal(m).astype(np.float32) for _ in range(4)]
            g = [pg.tensor(v, device="cuda:0") for v in vs]
            t_ = [torch.from_numpy(v).to(dev) for v in vs]
            x2 = rng.standard_normal((16384, 4096)).astype(np.float32)
            gx, tx = pg.tensor(x2, device="cuda:0"), torch.from_numpy(x2).to(dev)
            benches = [
                ("(relu(a*b+c)*d).sum(), 64M", 4 * m * 4,
                 lambda: (F.relu(g[0] * g[1] + g[2]) * g[3]).sum(),
                 lambda: (torch.relu(t_[0] * t_[1] + t_[2]) * t_[3]).sum()),
                ("softmax, 16384x4096", 2 * x2.nbytes, lambda: F.softmax(gx, dim=1),
                 lambda: torch.softmax(tx, dim=1)),
                ("layer_norm, 16384x4096", 2 * x2.nbytes, lambda: F.layer_norm(gx, [4096]),
                 lambda: torch.nn.functional.layer_norm(tx, [4096])),
                ("gelu(a*1.5+0.5, tanh)*2, 64M", 2 * m * 4,
                 lambda: F.gelu(g[0] * 1.5 + 0.5, approximate="tanh") * 2,
                 lambda: torch.nn.functional.gelu(t_[0] * 1.5 + 0.5, approximate="tanh") * 2),
            ]
            for name, nbytes, pgf, tf in benches:
                np.testing.assert_allclose(pgf().numpy().ravel()[:1000],
                                           tf().cpu().numpy().ravel()[:1000], rtol=1e-3,
                                           atol=1e-3)
                tp, tin = pg_time(pgf)
                tt = median_time(tf, R, tsync)
                gbs = nbytes / tin / 1e9
                rows.append(f"| {name} | {tp * 1e3:.3f} | {tin * 1e3:.3f} | {tt * 1e3:.3f} | "
                            f"{tt / tp:.2f} | {gbs:.0f} GB/s ({gbs / copy_gbs:.0%} of copy) | "
                            f">= 70 % of copy: {'met' if gbs >= 0.7 * copy_gbs else 'missed'} |")
            del g, t_, gx, tx

            # -- training steps -------------------------------------------------------------
            def mlp(nn):
                return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                                     nn.ReLU(), nn.Linear(512, 10))

            def cnn(nn):
                return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                     nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))

            for name, make, shape in (("MLP step, batch 256", mlp, (256, 784)),
                                      ("CNN step, batch 256", cnn, (256, 1, 28, 28))):
                xb = rng.standard_normal(shape).astype(np.float32)
                yb = rng.integers(0, 10, shape[0])
                pm = make(pg.nn).to("cuda:0")
                popt = pg.optim.SGD(pm.parameters(), lr=0.01, momentum=0.9)
                px, py = pg.tensor(xb, device="cuda:0"), pg.tensor(yb, device="cuda:0")

                @pg.jit
                def pstep(x, y):
                    popt.zero_grad()
                    loss = F.cross_entropy(pm(x), y)
                    loss.backward()
                    popt.step()
                    return loss

                for _ in range(3):
                    pstep(px, py)
                tp = median_time(lambda: pstep(px, py).item(), R)
                tm = make(torch.nn).to(dev)
                topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
                tx_, ty_ = torch.from_numpy(xb).to(dev), torch.from_numpy(yb).to(dev)

                def tstep():
                    topt.zero_grad()
                    loss = torch.nn.functional.cross_entropy(tm(tx_), ty_)
                    loss.backward()
                    topt.step()
                    return loss.item()

                for _ in range(3):
                    tstep()
                tt = median_time(tstep, R)
                rows.append(f"| {name} | {tp * 1e3:.3f} | - | {tt * 1e3:.3f} | {tt / tp:.2f} | "
                            f"- | - |")
            conn.close()
        finally:
            proc.terminate()
            proc.wait()
    text = "\n".join(lines + [""] + rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
