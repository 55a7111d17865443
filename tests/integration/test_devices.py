"""Devices (PROTOCOL.md section 5): hello's list, the `device` field of put/run/explain, and the
Python client's device= / .to() / .cuda() / module.to() / pg.cuda.

These machines (and CI) have no GPU: the daemon lists only the CPU, and every request for a CUDA
device gets `no_device` with a message naming the device, while the connection keeps working.
A daemon that does find a GPU lists it (tests marked there check the fields) but still refuses
it until the CUDA runtime exists, so the refusals hold everywhere.
"""

import re

import msgpack
import numpy as np
import pytest

import picograd as pg
from helpers import frame, open_raw, read_body, request
from picograd import PicogradError

CUDA_DEVICES = ["cuda", "cuda:0", "cuda:7"]
MALFORMED = ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:01", "cuda:1x", "cpu:1", "", "cuda:0 ",
             "cuda:12345678901"]
FULL = [{"op": "full", "shape": [2], "value": 1.5}]
OUT = [{"node": 0, "keep": False}]


def f32(values):
    return np.asarray(values, np.float32).tobytes()


def assert_no_device(exc, dev):
    assert exc.code == "no_device", exc
    assert f"device '{dev}'" in exc.message, exc.message
    assert "/" not in exc.message.replace("no GPU driver", "")  # no paths leak out


def assert_serving(c):
    """The daemon still answers, and a normal run still computes."""
    assert c.call("ping")["ok"] is True
    reply = c.call("run", nodes=FULL, outputs=OUT)
    assert np.frombuffer(reply["outputs"][0]["data"], np.float32).tolist() == [1.5, 1.5]


# ---------------------------------------------------------------------------------------------
# hello
# ---------------------------------------------------------------------------------------------


def test_hello_lists_the_cpu_first_and_well_formed_gpus(conn):
    devs = conn.server_info["devices"]
    assert devs[0]["name"] == "cpu" and devs[0]["kind"] == "cpu"
    cudas = devs[1:]
    for i, d in enumerate(cudas):
        assert d["name"] == f"cuda:{i}" and d["kind"] == "cuda", d
        assert isinstance(d["model"], str) and d["model"]
        assert isinstance(d["memory"], int) and d["memory"] > 0
        cc = d["compute_capability"]
        assert isinstance(cc, list) and len(cc) == 2 and all(isinstance(v, int) for v in cc)
        assert cc[0] >= 3
        assert d["ready"] is False  # the CUDA runtime is not implemented yet
    assert pg.cuda.devices() == cudas
    assert pg.cuda.is_available() is False and pg.cuda.device_count() == 0


def test_no_gpu_here_lists_only_the_cpu(conn, daemon):
    """This machine has no GPU driver: only the CPU, and the start-up log says why."""
    if not re.search(r"cuda: (unavailable|not built)", daemon.log()):
        pytest.skip("this daemon found a CUDA driver")
    assert [d["name"] for d in conn.server_info["devices"]] == ["cpu"]
    assert pg.cuda.devices() == []


# ---------------------------------------------------------------------------------------------
# The wire: put, run, explain
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dev", CUDA_DEVICES)
def test_wire_cuda_requests_get_no_device(conn, dev):
    with pytest.raises(PicogradError) as ei:
        conn.call("put", dtype="float32", shape=[2], data=f32([1, 2]), device=dev)
    assert_no_device(ei.value, dev)
    with pytest.raises(PicogradError) as ei:
        conn.call("run", nodes=FULL, outputs=OUT, device=dev)
    assert_no_device(ei.value, dev)
    with pytest.raises(PicogradError) as ei:
        conn.call("explain", nodes=FULL, outputs=OUT, device=dev)
    assert_no_device(ei.value, dev)
    assert_serving(conn)
    errors = conn.stats()["errors"]
    assert errors.get("no_device", 0) >= 3


def test_wire_message_says_why(conn, daemon):
    if "no GPU driver" not in daemon.log():
        pytest.skip("this daemon found a CUDA driver, or was built without CUDA")
    with pytest.raises(PicogradError) as ei:
        conn.call("run", nodes=FULL, outputs=OUT, device="cuda:0")
    assert ei.value.message == ("device 'cuda:0' is not available: no GPU driver "
                                "(libcuda.so.1 not found)")


@pytest.mark.parametrize("dev", MALFORMED)
def test_wire_malformed_device_is_bad_request(conn, dev):
    for op, fields in (("put", dict(dtype="float32", shape=[1], data=f32([1]))),
                       ("run", dict(nodes=FULL, outputs=OUT))):
        with pytest.raises(PicogradError) as ei:
            conn.call(op, device=dev, **fields)
        assert ei.value.code == "bad_request", ei.value
        assert "field 'device' must be" in ei.value.message
    assert_serving(conn)


@pytest.mark.parametrize("dev", [0, 1.5, True, ["cuda"], {"type": "cuda"}, b"cuda"])
def test_wire_device_of_the_wrong_type_is_bad_request(conn, dev):
    with pytest.raises(PicogradError) as ei:
        conn.call("run", nodes=FULL, outputs=OUT, device=dev)
    assert ei.value.code == "bad_request"
    assert "field 'device' must be a string" in ei.value.message
    assert_serving(conn)


def test_wire_cpu_spellings_and_nil_run_on_the_cpu(conn):
    for dev in ("cpu", "cpu:0", None):
        h = conn.call("put", dtype="float32", shape=[2], data=f32([3, 4]), device=dev)["handle"]
        assert conn.get(h).tolist() == [3, 4]
        reply = conn.call("run", nodes=FULL, outputs=OUT, device=dev)
        assert len(reply["outputs"]) == 1


def test_wire_refused_run_still_applies_its_free_list(conn):
    h = conn.put(np.ones(3, np.float32))
    with pytest.raises(PicogradError) as ei:
        conn.call("run", nodes=FULL, outputs=OUT, device="cuda", free=[h])
    assert ei.value.code == "no_device"
    with pytest.raises(PicogradError) as ei:
        conn.get(h)
    assert ei.value.code == "unknown_handle"


def test_wire_raw_bytes_in_device_are_never_echoed(daemon):
    sock = open_raw(daemon.unix_url)
    try:
        reply = request(sock, {"id": 5, "op": "run", "nodes": FULL, "outputs": OUT,
                               "device": "cuda:\x01\x7f"})
        assert reply["id"] == 5 and reply["ok"] is False
        assert reply["error"]["code"] == "bad_request"
        assert "\x01" not in reply["error"]["message"]
        # Pipelined: a bad device, then a good run; both answered in order.
        sock.sendall(frame({"id": 6, "op": "put", "dtype": "float32", "shape": [1],
                            "data": f32([1]), "device": "cuda:3"})
                     + frame({"id": 7, "op": "ping"}))
        r6 = msgpack.unpackb(read_body(sock), raw=False)
        r7 = msgpack.unpackb(read_body(sock), raw=False)
        assert r6["id"] == 6 and r6["error"]["code"] == "no_device"
        assert "device 'cuda:3'" in r6["error"]["message"]
        assert r7 == {"id": 7, "ok": True}
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# The Python client
# ---------------------------------------------------------------------------------------------


def test_device_objects():
    assert str(pg.device("cpu")) == "cpu" and pg.device("cpu").type == "cpu"
    assert pg.device("cpu").index is None and pg.device("cpu:0") == pg.device("cpu")
    d = pg.device("cuda:1")
    assert (d.type, d.index, str(d)) == ("cuda", 1, "cuda:1")
    assert repr(d) == "device(type='cuda', index=1)"
    assert pg.device("cuda", 2) == "cuda:2" and pg.device(3) == pg.device("cuda:3")
    assert str(pg.device("cuda")) == "cuda" and pg.device("cuda").index is None
    assert pg.device(pg.device("cuda:4")) == "cuda:4"
    assert hash(pg.device("cuda:1")) == hash(pg.device("cuda", 1))
    for bad in MALFORMED:
        with pytest.raises(PicogradError) as ei:
            pg.device(bad)
        assert ei.value.code == "bad_request"


def test_tensors_are_on_the_cpu(conn):
    x = pg.tensor([1.0, 2.0])
    assert x.device == pg.device("cpu") and str(x.device) == "cpu" and x.device.type == "cpu"
    assert x.is_cuda is False
    y = (x * 2).sum()
    assert str(y.device) == "cpu"
    assert pg.zeros(3, device="cpu").device == "cpu"
    assert pg.tensor([1], device=pg.device("cpu")).device == "cpu"
    assert x.to("cpu") is x and x.cpu() is x and x.to(pg.device("cpu:0")) is x
    assert x.to("cpu", pg.float64).dtype is pg.float64
    assert x.to(pg.float64).dtype is pg.float64 and x.to("float64").dtype is pg.float64
    assert x.to(device="cpu", dtype=pg.int64).tolist() == [1, 2]


@pytest.mark.parametrize("dev", CUDA_DEVICES)
def test_client_cuda_gets_the_daemons_no_device(conn, dev):
    x = pg.tensor([1.0, 2.0])
    attempts = [
        lambda: pg.tensor([1.0, 2.0], device=dev),
        lambda: pg.tensor(x, device=dev),
        lambda: pg.zeros(2, 3, device=dev),
        lambda: pg.ones(4, device=dev),
        lambda: pg.full((2,), 7.0, device=dev),
        lambda: pg.arange(5, device=dev),
        lambda: pg.rand(3, device=dev),
        lambda: pg.randn(3, device=pg.device(dev)),
        lambda: pg.zeros_like(x, device=dev),
        lambda: pg.eye(3, device=dev),
        lambda: x.to(dev),
        lambda: x.to(pg.device(dev)),
        lambda: x.to(dev, pg.float64),
        lambda: x.to(device=dev),
        lambda: (x * 2).to(dev),                 # a pending tensor: runs on the CPU, then moves
        lambda: x.cuda() if dev == "cuda" else x.cuda(pg.device(dev).index),
    ]
    for make in attempts:
        with pytest.raises(PicogradError) as ei:
            make()
        assert_no_device(ei.value, dev)
    # Nothing was left half made, and the session still works.
    assert (x * 3).tolist() == [3.0, 6.0]
    assert_serving(conn)


def test_client_malformed_devices_are_bad_request(conn):
    x = pg.tensor([1.0])
    for make in (lambda: pg.tensor([1.0], device="gpu"), lambda: pg.zeros(2, device="cuda:x"),
                 lambda: x.to("tpu"), lambda: x.cuda(-1)):
        with pytest.raises(PicogradError) as ei:
            make()
        assert ei.value.code == "bad_request"


def test_module_to(conn):
    model = pg.nn.Sequential(pg.nn.Linear(3, 4), pg.nn.ReLU(), pg.nn.Linear(4, 1))
    assert model.to("cpu") is model and model.cpu() is model
    assert model.to(pg.device("cpu")) is model and model.to(pg.float32) is model
    before = [p.numpy() for p in model.parameters()]
    for call in (lambda: model.to("cuda"), lambda: model.to("cuda:0"), lambda: model.cuda(),
                 lambda: model.to(device="cuda:7"), lambda: pg.nn.ReLU().to("cuda")):
        with pytest.raises(PicogradError) as ei:
            call()
        assert ei.value.code == "no_device"
        assert "device 'cuda" in ei.value.message
    # The parameters are where they were, with their values; the model still runs.
    for p, b in zip(model.parameters(), before):
        assert p.device == "cpu"
        np.testing.assert_array_equal(p.numpy(), b)
    assert model(pg.ones(2, 3)).shape == (2, 1)


def test_error_codes_are_documented():
    """Every code the C table defines is in PROTOCOL.md and in the Python client's list."""
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    header = (root / "protocol" / "picograd_codes.h").read_text()
    codes = set(re.findall(r'XX\(\w+, "(\w+)", "', header)) - {"ok", "disconnected"}
    doc = (root / "protocol" / "PROTOCOL.md").read_text()
    table = set(re.findall(r"^\| `(\w+)` \|", doc.split("## 4. Error codes")[1].split("## 5.")[0],
                           re.M))
    assert "no_device" in codes
    assert codes == table
    assert codes == set(pg.wire.DAEMON_CODES)


# ---------------------------------------------------------------------------------------------
# A machine "with GPUs": the stand-in driver build/fake-cuda/libcuda.so.1 lists two devices
# ---------------------------------------------------------------------------------------------

FAKE_DRIVER_DIR = (__import__("conftest").DAEMON_BIN.parent.parent / "fake-cuda")


@pytest.fixture
def fake_gpu_daemon(daemon_factory, monkeypatch):
    if not (FAKE_DRIVER_DIR / "libcuda.so.1").exists():
        pytest.skip("built without CUDA (no fake-cuda/libcuda.so.1 beside the daemon)")
    old = __import__("os").environ.get("LD_LIBRARY_PATH")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(FAKE_DRIVER_DIR) + (":" + old if old else ""))
    return daemon_factory()


def test_fake_driver_lists_gpus(fake_gpu_daemon):
    c = pg.connect(fake_gpu_daemon.unix_url, timeout=60)
    try:
        log = fake_gpu_daemon.log()
        assert "cuda:0: Fake GPU 0" in log and "compute capability 9.0" in log
        devs = c.server_info["devices"]
        assert [d["name"] for d in devs] == ["cpu", "cuda:0", "cuda:1"]
        d0, d1 = devs[1], devs[2]
        assert d0["model"].startswith("Fake GPU 0") and d1["model"].startswith("Fake GPU 1")
        assert (d0["memory"], d1["memory"]) == (40 << 30, 80 << 30)
        assert (d0["compute_capability"], d1["compute_capability"]) == ([8, 0], [9, 0])
        assert [d["name"] for d in pg.cuda.devices()] == ["cuda:0", "cuda:1"]
        assert pg.cuda.get_device_name(1).startswith("Fake GPU 1")
        assert pg.cuda.get_device_capability("cuda:0") == (8, 0)
        if "cuda: 2 device(s); NVRTC" in log:  # NVRTC and cuBLAS loaded: ready to run
            assert d0["ready"] is True and d1["ready"] is True
            assert pg.cuda.is_available() is True and pg.cuda.device_count() == 2
            # A run without kernels (a creation node): device memory works on the stand-in.
            reply = c.call("run", nodes=FULL, outputs=OUT, device="cuda:1")
            assert np.frombuffer(reply["outputs"][0]["data"], np.float32).tolist() == [1.5, 1.5]
        else:  # NVRTC or cuBLAS missing: listed, refused, and the message says which
            assert d0["ready"] is False and d1["ready"] is False
            for dev in ("cuda", "cuda:0", "cuda:1"):
                with pytest.raises(PicogradError) as ei:
                    c.call("run", nodes=FULL, outputs=OUT, device=dev)
                assert_no_device(ei.value, dev)
                assert "is not available: " in ei.value.message
        # Devices past the last: do not exist.
        with pytest.raises(PicogradError) as ei:
            c.call("put", dtype="float32", shape=[1], data=f32([1]), device="cuda:7")
        assert ei.value.message == "device 'cuda:7' does not exist: this daemon has 2 CUDA devices"
        with pytest.raises(PicogradError) as ei:
            pg.zeros(2, device="cuda:7")
        assert ei.value.code == "no_device"
        assert_serving(c)
    finally:
        c.close()
