"""The GPU runtime's host side on the stand-in driver (build/fake-cuda/libcuda.so.1).

The stand-in emulates two GPUs' memory on the host (device pointers that crash if the daemon
ever dereferences one on the host), copies, streams and events, but cannot run kernels. With
PICOGRAD_CUDA_HOST_KERNELS=1 the daemon runs CUDA runs' kernel steps and matmuls on the host from
copies of device buffers (server/cudarun.h), so everything else of a GPU run is tested here:
device tensors, copies both ways and between devices, views of device buffers, outputs kept on
the device, assigns, the caching allocator and out_of_memory. What only a real GPU tests (the
kernels, cuBLAS) is tests/bench/gpu.sh's job.
"""

import os

import numpy as np
import pytest

import picograd as pg
from picograd import PicogradError
from conftest import DAEMON_BIN

FAKE_DRIVER_DIR = DAEMON_BIN.parent.parent / "fake-cuda"


def _daemon(daemon_factory, monkeypatch, host_kernels=True, memory=None):
    if not (FAKE_DRIVER_DIR / "libcuda.so.1").exists():
        pytest.skip("built without CUDA (no fake-cuda/libcuda.so.1 beside the daemon)")
    old = os.environ.get("LD_LIBRARY_PATH")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(FAKE_DRIVER_DIR) + (":" + old if old else ""))
    if host_kernels:
        monkeypatch.setenv("PICOGRAD_CUDA_HOST_KERNELS", "1")
    else:
        monkeypatch.delenv("PICOGRAD_CUDA_HOST_KERNELS", raising=False)
    if memory is not None:
        monkeypatch.setenv("FAKE_CUDA_MEMORY", str(memory))
    d = daemon_factory()
    if "cuda: 2 device(s); NVRTC" not in d.log():
        pytest.skip("NVRTC or cuBLAS not loadable here: the stand-in GPUs are not ready")
    return d


@pytest.fixture
def gpu_conn(daemon_factory, monkeypatch):
    d = _daemon(daemon_factory, monkeypatch)
    c = pg.connect(d.unix_url, timeout=120)
    yield c
    c.close()


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
def test_device_tensors_round_trip(gpu_conn, dtype):
    rng = np.random.default_rng(7)
    a = (rng.standard_normal((3, 5, 7)) * 50).astype(dtype)
    for dev in ("cuda", "cuda:0", "cuda:1"):
        t = pg.tensor(a, device=dev)
        assert t.device == pg.device(dev)
        np.testing.assert_array_equal(t.numpy(), a)
        c = t.cpu()
        assert c.device == pg.device("cpu")
        np.testing.assert_array_equal(c.numpy(), a)
    moved = pg.tensor(a, device="cuda:0").to("cuda:1").to("cuda:0").cpu()
    np.testing.assert_array_equal(moved.numpy(), a)


def test_runs_on_the_device_match_numpy(gpu_conn):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal((5, 8)).astype(
        np.float32)
    gx, gw = pg.tensor(x, device="cuda:1"), pg.tensor(w, device="cuda:1")
    y = pg.nn.functional.relu(gx @ gw.T + 1.0)   # matmul of a transposed view, epilogue
    s = y.softmax(1).sum(0)                       # a staged row kernel, then a reduction
    t = gx.permute(1, 0)[2:7:2].contiguous()      # views of a device buffer
    assert y.device == pg.device("cuda:1")
    ref = np.maximum(x @ w.T + 1.0, 0)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5)
    e = np.exp(ref - ref.max(1, keepdims=True))
    np.testing.assert_allclose(s.numpy(), (e / e.sum(1, keepdims=True)).sum(0), rtol=1e-5)
    np.testing.assert_array_equal(t.numpy(), x.T[2:7:2])


def test_training_on_the_device_matches_the_cpu(gpu_conn):
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((4, 16, 10)).astype(np.float32)
    ys = rng.integers(0, 3, (4, 16))

    def losses(dev):
        pg.manual_seed(0) if hasattr(pg, "manual_seed") else None
        m = pg.nn.Sequential(pg.nn.Linear(10, 12), pg.nn.ReLU(), pg.nn.Linear(12, 3))
        state = {k: v.detach().numpy() for k, v in ref_model.state_dict().items()}
        m.load_state_dict(state)
        m.to(dev)
        opt = pg.optim.Adam(m.parameters(), lr=1e-2)
        out = []
        for x, y in zip(xs, ys):
            opt.zero_grad()
            loss = pg.nn.functional.cross_entropy(m(pg.tensor(x, device=dev)),
                                                  pg.tensor(y, device=dev))
            loss.backward()
            opt.step()
            out.append(loss.item())
        assert all(p.device == pg.device(dev) for p in m.parameters())
        return np.array(out)

    ref_model = pg.nn.Sequential(pg.nn.Linear(10, 12), pg.nn.ReLU(), pg.nn.Linear(12, 3))
    s0 = gpu_conn.stats()["prepared"]
    on_gpu = losses("cuda:0")
    s1 = gpu_conn.stats()["prepared"]
    np.testing.assert_allclose(on_gpu, losses("cpu"), rtol=1e-5)
    assert s1["hits"] - s0["hits"] >= 2  # steps 2.. skip lowering on the GPU too


def test_inputs_cross_devices_in_raw_runs(gpu_conn):
    """A run reads its inputs wherever they are (PROTOCOL.md: copied to the run's device)."""
    a = np.arange(6, dtype=np.float32)
    h_gpu = gpu_conn.call("put", dtype="float32", shape=[6], data=a.tobytes(),
                          device="cuda:1")["handle"]
    h_cpu = gpu_conn.call("put", dtype="float32", shape=[6], data=a.tobytes())["handle"]
    nodes = [{"op": "input", "handle": h_gpu}, {"op": "input", "handle": h_cpu},
             {"op": "add", "in": [0, 1]}]
    for dev in (None, "cuda:0", "cuda:1"):
        extra = {"device": dev} if dev else {}
        r = gpu_conn.call("run", nodes=nodes, outputs=[{"node": 2, "keep": False}], **extra)
        assert np.frombuffer(r["outputs"][0]["data"], np.float32).tolist() == (2 * a).tolist()


def test_device_out_of_memory_is_an_error_reply(daemon_factory, monkeypatch):
    d = _daemon(daemon_factory, monkeypatch, memory=1 << 20)  # 1 MiB per stand-in GPU
    c = pg.connect(d.unix_url, timeout=60)
    try:
        big = np.zeros(300_000, np.float32)  # 1.2 MB: more than the device holds
        with pytest.raises(PicogradError) as ei:
            c.call("put", dtype="float32", shape=[big.size], data=big.tobytes(), device="cuda:0")
        assert ei.value.code == "out_of_memory"
        assert "cuda:0" in ei.value.message and "1200000 bytes" in ei.value.message
        # 600 kB, freed: the allocator keeps the block; 700 kB then only fits once the kept
        # block is given back to the driver, which the allocator does by itself.
        small = np.ones(150_000, np.float32)
        h = c.call("put", dtype="float32", shape=[small.size], data=small.tobytes(),
                   device="cuda:0")["handle"]
        c.call("free", handle=h)
        mid = np.full(175_000, 2, np.float32)
        h = c.call("put", dtype="float32", shape=[mid.size], data=mid.tobytes(),
                   device="cuda:0")["handle"]
        got = c.call("get", handle=h)
        assert np.frombuffer(got["data"], np.float32).tolist() == mid.tolist()
        assert "releasing" in d.log() and "cached bytes" in d.log()
        gpu0 = c.call("stats")["cuda"]["devices"][0]
        assert gpu0["name"] == "cuda:0" and gpu0["bytes_in_use"] >= mid.nbytes
        c.call("free", handle=h)
        assert c.call("stats")["cuda"]["devices"][0]["bytes_in_use"] == 0
        assert c.call("ping")["ok"] is True
    finally:
        c.close()


def test_kernels_without_a_gpu_fail_cleanly(daemon_factory, monkeypatch):
    """No emulation: the stand-in cannot load a kernel, and the reply says so."""
    d = _daemon(daemon_factory, monkeypatch, host_kernels=False)
    c = pg.connect(d.unix_url, timeout=60)
    try:
        x = pg.tensor(np.ones(4, np.float32), device="cuda:0", conn=c)
        with pytest.raises(PicogradError) as ei:
            (x * 2 + 1).numpy()
        assert ei.value.code == "internal"
        assert "cuda:0" in ei.value.message and "CUDA_ERROR_NOT_SUPPORTED" in ei.value.message
        np.testing.assert_array_equal(x.numpy(), np.ones(4, np.float32))  # still there
        assert c.call("ping")["ok"] is True
    finally:
        c.close()


def test_layers_take_device(gpu_conn):
    """nn layers' device= (as torch's factory keyword): parameters and buffers made there."""
    lin = pg.nn.Linear(3, 4, device="cuda:1")
    bn = pg.nn.BatchNorm1d(4, device="cuda:1")
    assert {str(p.device) for p in list(lin.parameters()) + list(bn.parameters())} == {"cuda:1"}
    assert {str(b.device) for b in bn.buffers()} == {"cuda:1"}
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = bn(lin(pg.tensor(x, device="cuda:1")))
    assert y.device == pg.device("cuda:1")
    w, b = lin.weight.numpy(), lin.bias.numpy()
    h = x @ w.T + b
    ref = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4)
    # An optimizer step (and its state) stays on the parameters' device: a wide layer's
    # parameters would show in the host's memory if a step ran on the CPU.
    wide = pg.nn.Linear(3, 1000, device="cuda:1")
    opt = pg.optim.SGD(wide.parameters(), lr=0.1, momentum=0.9)
    host0 = gpu_conn.stats()["bytes_in_use"]
    for _ in range(2):
        opt.zero_grad()
        wide(pg.tensor(x, device="cuda:1")).sum().backward()
        pg.realize(wide.weight.grad, wide.bias.grad)  # the step's run then keeps nothing
        opt.step()
    assert gpu_conn.stats()["bytes_in_use"] - host0 < 4000  # weight alone: 12000 bytes
    assert all(str(t.device) == "cuda:1" for st in opt.state.values() for t in st.values()
               if isinstance(t, pg.Tensor))
    pg.set_default_device("cuda:0")
    try:
        assert pg.nn.Linear(2, 2).weight.device == pg.device("cuda:0")
        assert pg.zeros(3).device == pg.device("cuda:0")
        assert pg.zeros(3, device="cpu").device == pg.device("cpu")
    finally:
        pg.set_default_device(None)


def test_jit_replays_on_the_device(gpu_conn):
    """@pg.jit's replays run where the captured run ran, and say so on their results."""
    rng = np.random.default_rng(5)
    m = pg.nn.Linear(6, 2, device="cuda:0")
    opt = pg.optim.SGD(m.parameters(), lr=0.05)

    @pg.jit
    def step(x, y):
        opt.zero_grad()
        loss = ((m(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    xs = rng.standard_normal((5, 8, 6)).astype(np.float32)
    ys = rng.standard_normal((5, 8, 2)).astype(np.float32)
    losses = []
    for x, y in zip(xs, ys):
        loss = step(pg.tensor(x, device="cuda:0"), pg.tensor(y, device="cuda:0"))
        assert loss.device == pg.device("cuda:0")
        losses.append(loss.item())
    assert all(str(p.device) == "cuda:0" for p in m.parameters())
    assert np.isfinite(losses).all()
    with pytest.raises(pg.JitError, match="on cuda:0"):
        step(pg.tensor(xs[0]), pg.tensor(ys[0]))  # the same shapes on the CPU: not this capture


def test_explain_shows_the_cuda_kernels(gpu_conn):
    x = pg.tensor(np.ones((4, 8), np.float32), device="cuda:0")
    text = pg.explain(x.softmax(1) * 2, file=open(os.devnull, "w"))
    assert "extern \"C\" __global__" in text and "pg_cu_" in text
    assert "void pg_k_" not in text
    cpu_text = pg.explain(pg.tensor(np.ones((4, 8), np.float32)).softmax(1),
                          file=open(os.devnull, "w"))
    assert "void pg_k_" in cpu_text or "interp" in cpu_text
