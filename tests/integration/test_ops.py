"""Integration tests of the ops themselves through the Python client: hello, ping, put/get/free.

Arrays are random with a fixed seed and never all zeros, so a daemon that returns fresh (zeroed)
memory instead of the uploaded bytes cannot pass by accident.
"""

import msgpack
import numpy as np
import pytest

import picograd
from helpers import TIMEOUT, frame, open_raw, read_body, request
from picograd import PicogradError

REQUIRED_OPS = {"hello", "ping", "put", "get", "free", "stats", "sleep"}
DTYPES = ["float32", "float64", "int32", "int64", "bool"]


def random_array(rng, dtype, shape):
    """A random array of ``dtype`` and ``shape`` whose values are mostly non-zero."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("float"):
        a = rng.standard_normal(shape).astype(dtype)
        return np.where(a == 0, 1, a).astype(dtype)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return np.where(a == 0, 1, a).astype(dtype)


def test_hello(url):
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        info = pg.server_info
        assert info["ok"] is True
        assert info["server"] == "picogradd"
        assert info["protocol"] == 1
        assert isinstance(info["version"], str) and info["version"]
        assert isinstance(info["session"], int)
        cpus = [d for d in info["devices"] if d.get("name") == "cpu"]
        assert cpus, info["devices"]
        assert cpus[0]["kind"] == "cpu"
        assert cpus[0]["threads"] >= 1 and cpus[0]["memory"] >= 0
        assert REQUIRED_OPS <= set(info["ops"]), info["ops"]
        assert set(DTYPES) <= set(info["dtypes"]), info["dtypes"]
        limits = info["limits"]
        for key in ("max_frame", "max_memory", "max_rank", "max_inflight", "max_objects"):
            assert isinstance(limits.get(key), int) and limits[key] > 0, (key, limits)
        assert limits["max_rank"] == 8
        assert limits["max_objects"] == 4194304


def test_hello_sessions_differ(url):
    with picograd.Connection(url) as a, picograd.Connection(url) as b:
        assert a.server_info["session"] != b.server_info["session"]


def test_version_mismatch_keeps_connection(url):
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        with pytest.raises(PicogradError) as ei:
            pg.call("hello", version=2)
        assert ei.value.code == "version_mismatch"
        assert ei.value.message
        pg.ping()
        h = pg.put(np.arange(3, dtype=np.int32) + 1)
        assert pg.get(h).tolist() == [1, 2, 3]


def test_ping(url):
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        for _ in range(100):
            pg.ping()
        reply = pg.call("ping")
        assert reply["ok"] is True and isinstance(reply["id"], int)


def test_connect_default(url):
    a = picograd.connect(url, timeout=TIMEOUT)
    assert picograd.default_connection() is a
    b = picograd.connect(url, timeout=TIMEOUT)
    assert picograd.default_connection() is b
    a.ping()
    b.ping()
    a.close()
    b.close()


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_all_ranks(url, dtype):
    rng = np.random.default_rng(1234 + DTYPES.index(dtype))
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        handles = []
        for rank in range(9):
            for _ in range(3):
                shape = tuple(int(d) for d in rng.integers(1, 6 if rank < 6 else 4, size=rank))
                a = random_array(rng, dtype, shape)
                h = pg.put(a)
                handles.append(h)
                b = pg.get(h)
                assert b.dtype == np.dtype(dtype) and b.shape == a.shape, (b.dtype, b.shape)
                assert np.array_equal(a, b), (dtype, shape)
        assert len(set(handles)) == len(handles)
        for h in handles:
            pg.free(h)
        assert pg.stats()["session"]["tensors"] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_zero_size(url, dtype):
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        for shape in [(0,), (3, 0, 2), (0, 0), (1, 1, 1, 1, 1, 1, 1, 0)]:
            a = np.zeros(shape, dtype=dtype)
            h = pg.put(a)
            b = pg.get(h)
            assert b.dtype == np.dtype(dtype) and b.shape == shape
            pg.free(h)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_medium(url, dtype):
    # Sizes around the client's 64 KiB small/large reply split and a few MiB.
    rng = np.random.default_rng(99)
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        for n in [16383, 16384, 16385, 65535, 65536, 65537, 3 << 20]:
            a = random_array(rng, dtype, (n,))
            h = pg.put(a)
            b = pg.get(h)
            assert np.array_equal(a, b)
            pg.free(h)


def test_get_data_is_aligned(url):
    # PROTOCOL.md: get data starts 64-byte aligned from the frame start; the client keeps that
    # alignment in memory for large replies.
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        a = np.arange(1 << 20, dtype=np.float64) + 1
        b = pg.get(pg.put(a))
        assert b.ctypes.data % 64 == 0
        assert np.array_equal(a, b)


def test_get_reply_layout_raw(daemon):
    # The daemon's promise, checked on the raw bytes: data is the last key and starts at a
    # multiple of 64 bytes from the frame start (length prefix included).
    s = open_raw(daemon.unix_url)
    for n in [0, 1, 7, 100, 1000, 70000]:
        data = bytes(i % 2 for i in range(n))
        put = request(s, {"id": 1, "op": "put", "dtype": "bool", "shape": [n], "data": data})
        assert put["ok"] is True, put
        s.sendall(frame({"id": 2, "op": "get", "handle": put["handle"]}))
        body = read_body(s)
        reply = msgpack.unpackb(body, raw=False)
        assert list(reply)[-1] == "data", list(reply)
        assert reply["data"] == data and reply["shape"] == [n] and reply["dtype"] == "bool"
        # The body ends with the n payload bytes; the frame starts 4 bytes before the body.
        assert (4 + len(body) - n) % 64 == 0, (n, len(body))
    s.close()


@pytest.mark.large_memory
def test_round_trip_512mib(daemon):
    rng = np.random.default_rng(512)
    a = rng.random(128 << 20, dtype=np.float32)
    a += 1.0
    with picograd.Connection(daemon.unix_url, timeout=TIMEOUT) as pg:
        h = pg.put(a)
        b = pg.get(h)
        try:
            assert b.shape == a.shape and b.dtype == a.dtype
            assert np.array_equal(a, b)
        finally:
            del a, b
        pg.free(h)
        assert pg.stats()["session"]["bytes"] == 0
