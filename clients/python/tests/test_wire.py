"""Unit tests of the picograd Python client that need no daemon.

They check the pieces the integration tests cannot isolate: URL parsing and the default-URL order,
the hand-built msgpack headers (byte for byte against msgpack itself and PROTOCOL.md's example),
the in-place walker for large replies, and the Connection logic (ids, pipelining, zero-copy gets,
disconnect handling) against FakeDaemon, a small Python stand-in for picogradd that speaks the
same frames. Run: PYTHONPATH=clients/python python3 -m pytest clients/python/tests
"""

import os
import socket
import struct
import threading

import msgpack
import numpy as np
import pytest

import picograd
from picograd import wire
from picograd.wire import PicogradError

# ---------------------------------------------------------------------------------------------
# A fake daemon
# ---------------------------------------------------------------------------------------------


def _recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


class FakeDaemon:
    """Serves hello/ping/put/get/free/stats on a listening socket, one thread per connection.

    It frames replies the way PROTOCOL.md describes picogradd's (``get`` puts a ``pad`` bin before
    ``data`` so the data starts 64-byte aligned), and records every raw request body in
    ``requests`` so tests can check the client's bytes.
    """

    def __init__(self, listener, url):
        self.listener = listener
        self.url = url
        self.requests = []
        self.conns = []
        self.close_after = None  # when set: drop the connection after this many requests
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def stop(self):
        self.listener.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()

    def _serve(self, conn):
        try:
            self._serve_loop(conn)
        except OSError:
            pass  # stop() closed the socket under us, or the client reset it

    def _serve_loop(self, conn):
        tensors, next_handle, served = {}, 1, 0
        while True:
            head = _recv_exact(conn, 4)
            if head is None:
                return
            (n,) = struct.unpack(">I", head)
            body = _recv_exact(conn, n)
            if body is None:
                return
            with self.lock:
                self.requests.append(bytes(body))
            if self.close_after is not None and served >= self.close_after:
                conn.close()
                return
            served += 1
            req = msgpack.unpackb(body, raw=False)
            op, rid = req.get("op"), req.get("id")
            reply = {"id": rid, "ok": True}
            if op == "hello":
                reply.update(server="fake", protocol=1, ops=["hello", "ping", "put", "get"])
            elif op == "put":
                tensors[next_handle] = (req["dtype"], req["shape"], req["data"])
                reply["handle"] = next_handle
                next_handle += 1
            elif op == "get":
                if req["handle"] not in tensors:
                    reply = {"id": rid, "ok": False,
                             "error": {"code": "unknown_handle", "message": "no such handle"}}
                else:
                    conn.sendall(self._get_reply(rid, *tensors[req["handle"]]))
                    continue
            elif op == "free":
                tensors.pop(req["handle"])
            elif op == "stats":
                reply.update(tensors=len(tensors))
            elif op != "ping":
                reply = {"id": rid, "ok": False,
                         "error": {"code": "unknown_op", "message": f"op {op!r}"}}
            conn.sendall(wire.encode_frame(reply))

    @staticmethod
    def _get_reply(rid, dtype, shape, data):
        fields = msgpack.packb("id") + msgpack.packb(rid) + msgpack.packb("ok") + \
            msgpack.packb(True) + msgpack.packb("dtype") + msgpack.packb(dtype) + \
            msgpack.packb("shape") + msgpack.packb(shape)
        map_header = b"\x86"  # id, ok, dtype, shape, pad, data
        tail = msgpack.packb("data") + wire.bin_header(len(data))
        before = 4 + len(map_header) + len(fields) + len(msgpack.packb("pad")) + 2
        pad = (-(before + len(tail))) % 64
        body = map_header + fields + msgpack.packb("pad") + wire.bin_header(pad) + \
            bytes(pad) + tail
        assert (4 + len(body)) % 64 == 0
        body += data
        return struct.pack(">I", len(body)) + body


@pytest.fixture(params=["unix", "tcp"])
def fake(request, tmp_path):
    if request.param == "unix":
        path = str(tmp_path / "fake.sock")
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(path)
        url = "unix://" + path
    else:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{lst.getsockname()[1]}"
    lst.listen(64)
    daemon = FakeDaemon(lst, url)
    yield daemon
    daemon.stop()


# ---------------------------------------------------------------------------------------------
# URLs and errors
# ---------------------------------------------------------------------------------------------


def test_parse_url():
    a = wire.parse_url("unix:///run/pg.sock")
    assert (a.kind, a.path) == ("unix", "/run/pg.sock")
    a = wire.parse_url("tcp://127.0.0.1:7070")
    assert (a.kind, a.host, a.port) == ("tcp", "127.0.0.1", 7070)
    a = wire.parse_url("tcp://[::1]:80")
    assert (a.host, a.port) == ("::1", 80)
    a = wire.parse_url("tcp://localhost:1/")
    assert (a.host, a.port) == ("localhost", 1)
    for bad in ["unix://rel.sock", "tcp://host", "tcp://:80", "tcp://h:0", "tcp://h:70000",
                "tcp://::1:80", "tcp://[::1]80", "http://x:1", "", "tcp://h:8x"]:
        with pytest.raises(PicogradError) as ei:
            wire.parse_url(bad)
        assert ei.value.code == "bad_url"


def test_default_url_order():
    none = lambda path: False  # noqa: E731  (no socket exists)
    env = {"PICOGRAD_URL": "tcp://h:1", "XDG_RUNTIME_DIR": "/run/user/5"}
    assert wire.default_url(env, uid=5, is_socket=none) == "tcp://h:1"
    del env["PICOGRAD_URL"]
    # No socket anywhere: the first candidate, so the connect error names it.
    assert wire.default_url(env, uid=5, is_socket=none) == "unix:///run/user/5/picogradd.sock"
    assert wire.default_url({}, uid=5, is_socket=none) == "unix:///run/picogradd/picogradd.sock"
    assert (wire.default_url({"PICOGRAD_URL": ""}, uid=7, is_socket=none)
            == "unix:///run/picogradd/picogradd.sock")
    assert wire.default_url_candidates(env, uid=5) == [
        "unix:///run/user/5/picogradd.sock", "unix:///run/picogradd/picogradd.sock",
        "unix:///tmp/picogradd-5.sock"]
    # The first existing socket wins, in that order.
    for existing, want in [({"/run/picogradd/picogradd.sock", "/tmp/picogradd-5.sock"},
                            "unix:///run/picogradd/picogradd.sock"),
                           ({"/tmp/picogradd-5.sock"}, "unix:///tmp/picogradd-5.sock"),
                           ({"/run/user/5/picogradd.sock", "/tmp/picogradd-5.sock"},
                            "unix:///run/user/5/picogradd.sock")]:
        assert wire.default_url(env, uid=5, is_socket=existing.__contains__) == want


def test_default_url_sees_real_sockets(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    path = tmp_path / "picogradd.sock"
    path.write_text("")  # a regular file is not a socket
    assert wire._is_socket(str(path)) is False
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        assert wire.default_url(env) == f"unix://{path}"


def test_default_token():
    assert wire.default_token({}) is None
    assert wire.default_token({"PICOGRAD_TOKEN": "  "}) is None
    assert wire.default_token({"PICOGRAD_TOKEN": " abc\n"}) == "abc"


def test_error_str():
    err = PicogradError("unknown_handle", "handle 7 is not owned by this session")
    assert "unknown_handle" in str(err) and "handle 7" in str(err)
    assert (err.code, err.message) == ("unknown_handle", "handle 7 is not owned by this session")


def test_connect_failed(tmp_path):
    with pytest.raises(PicogradError) as ei:
        picograd.Connection("unix://" + str(tmp_path / "nobody.sock"))
    assert ei.value.code == "connect_failed"


# ---------------------------------------------------------------------------------------------
# msgpack pieces
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 255, 256, 65535, 65536, 1 << 20])
def test_bin_header_matches_msgpack(n):
    packed = msgpack.packb(bytes(n), use_bin_type=True)
    assert wire.bin_header(n) == packed[:len(packed) - n]


def _sample_objects(rng):
    objs = [None, True, False, 0, 127, 128, -1, -32, -33, 255, 256, 65535, 65536, 2**32, 2**64 - 1,
            -2**63, 1.5, "", "a" * 31, "b" * 32, "c" * 300, "d" * 70000, b"", b"x" * 300,
            b"y" * 70000, [], [1, [2, [3, {}]]], {"k": {"n": [None]}}, list(range(20)),
            {f"k{i}": i for i in range(20)}, msgpack.ExtType(5, b"abc"),
            msgpack.ExtType(1, b"12345678"), msgpack.ExtType(2, b"z" * 300)]
    objs.append(float(rng.random()))
    objs.append([list(range(17))] * 3)
    return objs


def test_encode_frame_reuses_a_packer_safely():
    """encode_frame keeps one Packer per thread: a failed encode leaves nothing behind for the
    next frame, a huge frame's grown buffer is not kept, and threads do not share a Packer."""
    def body(frame):
        (n,) = struct.unpack(">I", frame[:4])
        assert n == len(frame) - 4
        return msgpack.unpackb(frame[4:], raw=False)

    small = {"id": 1, "op": "ping"}
    assert body(wire.encode_frame(small)) == small
    with pytest.raises(TypeError):
        wire.encode_frame({"id": 2, "op": "run", "bad": object()})
    assert body(wire.encode_frame(small)) == small  # no half-packed bytes in front
    first = wire.packer()
    huge = {"id": 3, "blob": b"x" * (wire._PACKER_KEEP + 1)}
    assert body(wire.encode_frame(huge)) == huge
    assert wire.packer() is not first  # the buffer grown for it was dropped

    errors, packers = [], []  # the packers stay referenced, so their ids stay distinct

    def encode_many(k):
        try:
            packers.append(wire.packer())
            for i in range(500):
                req = {"id": i, "op": "run", "who": k, "nodes": [k] * (i % 7)}
                if body(wire.encode_frame(req)) != req:
                    errors.append((k, i))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=encode_many, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({id(p) for p in packers}) == 4


def test_walk_map_matches_unpackb():
    rng = np.random.default_rng(1)
    objs = _sample_objects(rng)
    doc = {f"key{i}": o for i, o in enumerate(objs)}
    body = msgpack.packb(doc, use_bin_type=True)
    walked = wire.walk_map(memoryview(body))
    plain = msgpack.unpackb(body, raw=False, strict_map_key=False)
    assert walked.keys() == plain.keys()
    for k, v in plain.items():
        w = walked[k]
        if isinstance(v, bytes):
            assert isinstance(w, memoryview) and bytes(w) == v
        else:
            assert w == v


def test_walk_map_rejects_bad_input():
    good = msgpack.packb({"id": 1, "data": b"abcdef"})
    for bad in [good[:-1], good + b"\x00", msgpack.packb([1, 2]), b"", b"\xc1",
                b"\x81\xa1k\xdd\xff\xff\xff\xff", b"\x81\xa1k\xc6\xff\xff\xff\xff"]:
        with pytest.raises(PicogradError) as ei:
            wire.walk_map(memoryview(bad))
        assert ei.value.code == "bad_reply"


def test_skip_is_not_recursive():
    depth = 200000
    body = b"\x91" * depth + b"\xc0"
    assert wire._skip(memoryview(body), 0, len(body)) == len(body)


# ---------------------------------------------------------------------------------------------
# Connection against the fake daemon
# ---------------------------------------------------------------------------------------------


def test_put_bytes_match_protocol_example(fake):
    with picograd.Connection(fake.url) as pg:
        assert pg.server_info["server"] == "fake"
        pg.put(np.array([1.0, 2.0], dtype=np.float32))
    # PROTOCOL.md section 8, with the id the client used (2: hello was 1).
    example = bytes.fromhex(
        "85 a2 69 64 01 a2 6f 70 a3 70 75 74 a5 64 74 79 70 65 a7 66 6c 6f 61 74 33 32"
        " a5 73 68 61 70 65 91 02 a4 64 61 74 61 c4 08 00 00 80 3f 00 00 00 40")
    assert fake.requests[1] == example.replace(b"\xa2id\x01", b"\xa2id\x02")


def test_hello_is_first(fake):
    with picograd.Connection(fake.url):
        pass
    req = msgpack.unpackb(fake.requests[0], raw=False)
    assert req == {"id": 1, "op": "hello", "version": 1, "client": "picograd-python"}


DTYPES = [np.float32, np.float64, np.int32, np.int64, np.bool_]


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(fake, dtype):
    rng = np.random.default_rng(7)
    with picograd.Connection(fake.url, timeout=10) as pg:
        for shape in [(), (0,), (3, 0, 2), (5,), (2, 3, 4), (1,) * 8, (70000,), (3, 100001)]:
            if dtype is np.bool_:
                a = rng.random(shape) < 0.5
            else:
                a = (rng.random(shape) * 1000 + 1).astype(dtype)
            h = pg.put(a)
            b = pg.get(h)
            assert b.dtype == a.dtype and b.shape == a.shape
            assert np.array_equal(a, b)
            assert b.flags.writeable and b.flags.c_contiguous
            if a.nbytes > wire.SMALL_FRAME:
                # Large replies are wrapped in place, aligned as the daemon aligned them.
                assert b.ctypes.data % 64 == 0
                assert not b.flags.owndata
            pg.free(h)


def test_put_converts_layout_and_byte_order(fake):
    with picograd.Connection(fake.url) as pg:
        a = np.arange(24, dtype=np.float64).reshape(4, 6)
        for x in [a.T, a[:, ::2], a.astype(">f8"), np.float32(3.5), [[1, 2], [3, 4]], True]:
            back = pg.get(pg.put(x))
            assert np.array_equal(back, np.asarray(x))
            assert back.dtype.byteorder in "=<|"


@pytest.mark.parametrize("bad", [np.float16, np.uint8, np.complex64, np.int8, object, "U3"])
def test_bad_dtype_client_side(fake, bad):
    with picograd.Connection(fake.url) as pg:
        sent = len(fake.requests)
        with pytest.raises(PicogradError) as ei:
            pg.put(np.zeros(3, dtype=bad))
        assert ei.value.code == "bad_dtype"
        pg.ping()
        assert len(fake.requests) == sent + 1  # only the ping reached the daemon


def test_errors_and_pipelining(fake):
    with picograd.Connection(fake.url) as pg:
        with pytest.raises(PicogradError) as ei:
            pg.get(99)
        assert ei.value.code == "unknown_handle"
        # Send from a thread while this one reads: 1000 unread small replies can fill the socket
        # buffers (Unix sockets count each small write's whole allocation), and a peer that
        # stops reading while its replies are unread would then deadlock with a sender that does.
        ids = []

        def sender():
            for i in range(1000):
                ids.append(pg.send("ping") if i % 3 else pg.send("nope"))

        t = threading.Thread(target=sender)
        t.start()
        replies = [pg.recv() for _ in range(1000)]
        t.join()
        pg.send("ping")
        with pytest.raises(PicogradError) as ei:
            pg.ping()
        assert ei.value.code == "busy"
        assert pg.recv()["ok"]
        assert [r["id"] for r in replies] == ids
        assert [r["ok"] for r in replies] == [bool(i % 3) for i in range(1000)]
        pg.ping()
        assert ids == sorted(ids)


def test_disconnect_and_reconnect(fake):
    pg = picograd.Connection(fake.url)
    fake.close_after = 2  # hello and one ping succeed, the next request finds the socket closed
    pg.ping()
    with pytest.raises(PicogradError) as ei:
        pg.ping()
    assert ei.value.code == "disconnected"
    with pytest.raises(PicogradError) as ei:
        pg.ping()  # stays disconnected, fast
    assert ei.value.code == "disconnected"
    fake.close_after = None
    pg.reconnect()
    pg.ping()
    pg.close()
    with pytest.raises(PicogradError) as ei:
        pg.ping()
    assert ei.value.code == "disconnected"


def test_disconnect_during_large_put(fake):
    pg = picograd.Connection(fake.url, timeout=10)
    fake.stop()
    with pytest.raises(PicogradError) as ei:
        pg.put(np.ones(8 << 20, dtype=np.float32))
    assert ei.value.code == "disconnected"


def test_connect_sets_default(fake):
    a = picograd.connect(fake.url)
    assert picograd.default_connection() is a
    b = picograd.connect(fake.url)
    assert picograd.default_connection() is b
    a.ping()
    b.ping()
    a.close()
    b.close()


def test_threads_share_a_connection(fake):
    pg = picograd.Connection(fake.url, timeout=10)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(50):
                a = rng.random(rng.integers(1, 5000))
                assert np.array_equal(pg.get(pg.put(a)), a)
        except Exception as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pg.close()
    assert not errors, errors


def test_env_url(fake, monkeypatch):
    monkeypatch.setenv("PICOGRAD_URL", fake.url)
    with picograd.Connection() as pg:
        assert pg.url == fake.url
        pg.ping()
    assert os.environ["PICOGRAD_URL"] == fake.url
