#!/usr/bin/python3
"""Regenerates the seed corpora under tests/fuzz/corpus/ from what the Python client really sends.

A real picogradd (build/bin/picogradd, or $PICOGRAD_DAEMON) runs on a temporary socket; a few
sessions drive it through the Python client (hello, ping, stats, put/get/free of every dtype,
sleep, lazy graphs with views, reductions, nn ops, autograd, an optimizer step and a @pg.jit
step, explain), and every frame the client writes is recorded by wrapping wire.send_buffers.
Tensors stay tiny: the harnesses run under a 1 MiB budget and a 64 KiB frame limit. The
recording is written as:

  corpus/frame/    each session's byte stream, behind the harness's 4 setting bytes (max_len,
                   chunk seed), once with a max_len that admits every frame and once with one
                   that some frame exceeds
  corpus/request/  each session's byte stream behind the 2 chunk-seed bytes, and each frame alone
  corpus/graph/    for every run or explain request: the frames of its session up to it (the
                   puts and runs that made its handles; reads, pings and stats left out)

and msgpack.dict, the libFuzzer dictionary: every string the recorded frames contain (field
names, ops, node ops, dtypes) and every node op hello lists, msgpack-encoded.

File names are content hashes, so rerunning adds only new inputs. Run from the repository root:
  PYTHONPATH=clients/python /usr/bin/python3 tests/fuzz/make_corpus.py [--from-tests]

--from-tests also runs the integration suites that send graphs (conformance, autodiff, assign,
passes, prepcache, nn_optim, jit, ops; ~2 minutes) with record_plugin.py, which records every
run/explain session prefix up to 16 KiB (~20000 of them), and merges those into corpus/graph
with `build-fuzz/bin/pg_fuzz_graph -merge=1 -use_counters=0`: only inputs that reach new edges
are kept (~400). Build the harnesses first (tests/fuzz/run.sh 0).
"""

import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))
import picograd as pg  # noqa: E402
from picograd import wire  # noqa: E402

CORPUS = ROOT / "tests" / "fuzz" / "corpus"
MAX_FRAME = 1 << 16  # the harnesses' --max-frame

frames = []  # the frames of the current session, in order, length prefix included
_send = wire.send_buffers


def _record(sock, buffers):
    frames.append(b"".join(bytes(memoryview(b).cast("B")) for b in buffers))
    _send(sock, buffers)


wire.send_buffers = _record


def op_of(frame):
    import msgpack
    return msgpack.unpackb(frame[4:], raw=False).get("op")


# ---- the sessions ------------------------------------------------------------------------------

def s_basic(url):
    c = pg.connect(url)
    c.ping()
    for dt in (np.float32, np.float64, np.int32, np.int64, np.bool_):
        h = c.put(np.arange(6).reshape(2, 3).astype(dt))
        c.get(h)
        c.free(h)
    c.put(np.zeros((0, 4), np.float32))
    for dev in ("cpu", "cpu:0", "cuda", "cuda:1", "tpu"):  # no GPU here: no_device or bad_request
        try:
            c.put(np.ones(3, np.float32), device=dev)
        except pg.PicogradError:
            pass
    c.put(np.float64(3.5))
    c.call("sleep", seconds=0)
    c.stats()
    c.close()


def s_elementwise(url):
    pg.connect(url)
    a = pg.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.5]])
    b = pg.tensor([[2.0], [3.0]])
    (a * b + 1).exp().log().numpy()
    ((a - b) / 2).abs().sqrt().tanh().sigmoid().numpy()
    pg.where(a > 0, a, b).clamp(-1, 1).numpy()
    (a.int() + 2).float().pow(2).numpy()
    (a @ a.t()).relu().numpy()
    pg.cat([a, a], dim=0).numpy()
    (pg.ones(2, 2, device="cpu") * 3).numpy()  # a run with a `device` field
    pg.stack([a, a]).sum(dim=0).numpy()


def s_movement(url):
    pg.connect(url)
    x = pg.arange(24).reshape(2, 3, 4).float()
    x.permute(2, 0, 1).contiguous().numpy()
    x[:, 1:, ::2].numpy()
    x.flip(0).transpose(1, 2).reshape(8, 3).numpy()
    x.unsqueeze(0).expand(2, 2, 3, 4).sum().numpy()
    x.gather(2, pg.tensor([[[0], [1], [3]], [[2], [2], [0]]])).numpy()
    x.index_select(1, pg.tensor([2, 0])).numpy()
    pg.nn.functional.pad(x, (1, 2)).numpy()


def s_reduce(url):
    pg.connect(url)
    x = pg.randn(4, 5)
    x.sum(dim=1).numpy()
    x.mean(dim=0, keepdim=True).numpy()
    x.max(dim=1)[0].numpy()
    x.argmax(dim=1).numpy()
    x.cumsum(dim=1).numpy()
    x.softmax(dim=1).numpy()
    x.log_softmax(dim=0).numpy()
    x.var(dim=1).numpy()
    (x > 0).any().numpy()
    x.prod().numpy()


def s_nn(url):
    pg.connect(url)
    F = pg.nn.functional
    img = pg.rand(1, 2, 5, 5)
    w = pg.rand(3, 2, 3, 3)
    F.conv2d(img, w, padding=1).numpy()
    F.max_pool2d(img, 2).numpy()
    F.avg_pool2d(img, 2).numpy()
    logits = pg.randn(3, 4)
    F.cross_entropy(logits, pg.tensor([0, 3, 1])).numpy()
    F.mse_loss(logits, pg.zeros(3, 4)).numpy()
    F.layer_norm(logits, (4,)).numpy()
    F.gelu(logits).numpy()
    F.dropout(logits, 0.5, training=True).numpy()
    pg.explain(F.softmax(logits, dim=1), file=open(os.devnull, "w"))


def s_autograd(url):
    pg.connect(url)
    x = pg.randn(3, 4, requires_grad=True)
    w = pg.randn(4, 2, requires_grad=True)
    loss = ((x @ w).relu() ** 2).mean()
    loss.backward()
    x.grad.numpy()
    w.grad.numpy()
    y = pg.randn(2, 3, requires_grad=True)
    (y.softmax(dim=1) * pg.tensor([1.0, 2.0, 3.0])).sum().backward()
    y.grad.numpy()
    z = pg.rand(1, 1, 4, 4, requires_grad=True)
    k = pg.rand(2, 1, 3, 3, requires_grad=True)
    pg.nn.functional.conv2d(z, k).sum().backward()
    k.grad.numpy()


def s_train(url):
    pg.connect(url)
    nn = pg.nn
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = pg.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    x = pg.randn(5, 4)
    y = pg.tensor([0, 1, 2, 1, 0])
    for _ in range(2):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    sgd = pg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    @pg.jit
    def step(xb, yb):
        sgd.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        sgd.step()
        return loss

    for _ in range(3):
        step(pg.randn(5, 4), pg.tensor([2, 1, 0, 0, 1])).item()


SESSIONS = [s_basic, s_elementwise, s_movement, s_reduce, s_nn, s_autograd, s_train]


# ---- writing -------------------------------------------------------------------------------------

def put(kind, data):
    d = CORPUS / kind
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


strings = set()  # every str in the recorded frames, for the dictionary


def collect_strings(obj):
    if isinstance(obj, str):
        strings.add(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            collect_strings(k)
            collect_strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            collect_strings(v)


def write_dict():
    import msgpack
    lines = ["# libFuzzer dictionary for the picograd harnesses: generated by make_corpus.py"]
    for s in sorted(strings):
        enc = msgpack.packb(s)
        lines.append('"' + "".join(f"\\x{b:02x}" for b in enc) + '"')
    (CORPUS.parent / "msgpack.dict").write_text("\n".join(lines) + "\n")


def write_session(name, fr):
    import msgpack
    for f in fr:
        collect_strings(msgpack.unpackb(f[4:], raw=False))
    big = [f for f in fr if len(f) - 4 > MAX_FRAME]
    if big:
        sys.exit(f"make_corpus: session {name} sent a frame of {len(big[0]) - 4} bytes; "
                 f"keep tensors small (the harnesses accept {MAX_FRAME})")
    stream = b"".join(fr)
    seed = hashlib.sha1(name.encode()).digest()[:2]
    put("frame", struct.pack(">H", MAX_FRAME - 1) + seed + stream)
    longest = max(len(f) - 4 for f in fr)
    put("frame", struct.pack(">H", max(longest // 2, 1) - 1) + seed + stream)
    put("request", seed + stream)
    for f in fr:
        put("request", seed + f)
    kept = []
    for f in fr:
        op = op_of(f)
        if op in ("put", "run", "free", "explain"):
            kept.append(f)
        if op in ("run", "explain"):
            put("graph", seed + b"".join(kept))


def from_tests():
    suites = [f"tests/integration/test_conformance_{s}.py" for s in
              ("creation", "elementwise", "lazy", "linalg_index", "movement", "reduce", "errors",
               "nn")]
    suites += [f"tests/integration/test_{s}.py" for s in
               ("autodiff", "assign", "passes", "prepcache", "nn_optim", "jit", "ops")]
    harness = ROOT / "build-fuzz" / "bin" / "pg_fuzz_graph"
    if not harness.exists():
        sys.exit("make_corpus: build the harnesses first (tests/fuzz/run.sh 0)")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PG_FUZZ_RECORD_DIR=tmp,
                   PYTHONPATH=f"{ROOT / 'clients' / 'python'}:{ROOT / 'tests' / 'fuzz'}")
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                        "record_plugin", *suites], cwd=ROOT, env=env, check=True)
        subprocess.run([str(harness), "-merge=1", "-use_counters=0", "-timeout=25",
                        str(CORPUS / "graph"), tmp], check=True)


def main():
    daemon = os.environ.get("PICOGRAD_DAEMON", str(ROOT / "build" / "bin" / "picogradd"))
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "pg.sock"
        proc = subprocess.Popen([daemon, "--listen", f"unix://{sock}", "--log-level", "error",
                                 "--jit", "off", "--threads", "1"])
        try:
            for _ in range(200):
                if sock.exists():
                    break
                time.sleep(0.05)
            url = f"unix://{sock}"
            info = pg.connect(url).server_info
            collect_strings([info["node_ops"], info["ops"], info["dtypes"]])
            pg.default_connection().close()
            for s in SESSIONS:
                frames.clear()
                s(url)
                c = pg.default_connection() if s is not s_basic else None
                if c is not None:
                    c.close()
                write_session(s.__name__, list(frames))
                print(f"{s.__name__}: {len(frames)} frames")
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    write_dict()
    if "--from-tests" in sys.argv[1:]:
        from_tests()
    for kind in ("frame", "request", "graph"):
        print(kind, len(list((CORPUS / kind).iterdir())), "inputs")


if __name__ == "__main__":
    main()
