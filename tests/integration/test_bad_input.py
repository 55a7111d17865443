"""Integration tests that feed picogradd malformed or refused input, mostly as raw bytes.

Every case checks three things: the reply carries the documented error code (PROTOCOL.md section
4) and id, the connection is closed after a framing error and stays usable after any other error,
and the daemon is unharmed: another connection is served and ``bytes_in_use`` returns to where it
was (nothing leaked from the refused request). Run the daemon under ASan to catch the rest; the
fixture's teardown fails on any sanitizer report in the log.
"""

import struct

import msgpack
import numpy as np
import pytest

import picograd
from helpers import (TIMEOUT, assert_closed, error_code, frame, open_raw, read_reply, request,
                     wait_stats)
from picograd import PicogradError

ANY_ID = object()  # the reply's id is not checked (the protocol leaves it open)


def put_req(rid, **override):
    """A valid put of float32 [1.0, 2.0] with ``override`` applied (None values are removed)."""
    req = {"id": rid, "op": "put", "dtype": "float32", "shape": [2],
           "data": struct.pack("<2f", 1.0, 2.0)}
    req.update(override)
    return {k: v for k, v in req.items() if v is not None}


# (case name, request map, expected code, expected reply id)
CONTENT_ERRORS = [
    ("missing_op", {"id": 5}, "bad_request", 5),
    ("missing_id", {"op": "ping"}, "bad_request", None),
    ("negative_id", {"id": -1, "op": "ping"}, "bad_request", ANY_ID),
    ("op_not_str", {"id": 7, "op": 3}, "bad_request", 7),
    ("unknown_op", {"id": 8, "op": "frobnicate"}, "unknown_op", 8),
    ("shape_str", put_req(9, shape="abc"), "bad_request", 9),
    ("shape_float", put_req(10, shape=[2.0]), "bad_request", 10),
    ("shape_missing", put_req(11, shape=None), "bad_request", 11),
    ("dtype_int", put_req(12, dtype=5), "bad_request", 12),
    ("data_str", put_req(13, data="abcdefgh"), "bad_request", 13),
    ("data_missing", put_req(14, data=None), "bad_request", 14),
    ("get_handle_str", {"id": 15, "op": "get", "handle": "1"}, "bad_request", 15),
    ("free_handle_str", {"id": 16, "op": "free", "handle": "x"}, "bad_request", 16),
    ("get_handle_missing", {"id": 17, "op": "get"}, "bad_request", 17),
    ("data_too_short", put_req(18, shape=[3]), "bad_request", 18),
    ("data_too_long", put_req(19, shape=[1]), "bad_request", 19),
    ("negative_dim", put_req(20, shape=[2, -1], data=b""), "bad_shape", 20),
    ("size_overflow", put_req(21, shape=[2**40, 2**40], data=b""), "bad_shape", 21),
    ("rank_9", put_req(22, shape=[1] * 8 + [2]), "bad_shape", 22),
    ("dtype_float16", put_req(23, dtype="float16", shape=[4]), "bad_dtype", 23),
    ("get_unknown_handle", {"id": 24, "op": "get", "handle": 12345}, "unknown_handle", 24),
    ("free_unknown_handle", {"id": 25, "op": "free", "handle": 12345}, "unknown_handle", 25),
    ("bool_byte_2", put_req(26, dtype="bool", shape=[8], data=b"\x01\x00\x02\x01\x00\x01\x01\x00"),
     "bad_request", 26),
    ("sleep_too_long", {"id": 27, "op": "sleep", "seconds": 61}, "bad_request", 27),
    ("sleep_negative", {"id": 28, "op": "sleep", "seconds": -1}, "bad_request", 28),
    ("sleep_str", {"id": 29, "op": "sleep", "seconds": "1"}, "bad_request", 29),
    ("hello_version_2", {"id": 30, "op": "hello", "version": 2}, "version_mismatch", 30),
]


@pytest.fixture
def observer(url):
    """A client connection that watches stats while another connection misbehaves."""
    with picograd.Connection(url, timeout=TIMEOUT) as conn:
        yield conn


def assert_daemon_unharmed(url, observer, base):
    """Another connection is served and bytes_in_use is back to ``base``."""
    with picograd.Connection(url, timeout=TIMEOUT) as other:
        other.ping()
        h = other.put(np.arange(4, dtype=np.int32) + 1)
        assert other.get(h).tolist() == [1, 2, 3, 4]
    stats = wait_stats(observer, bytes_in_use=base["bytes_in_use"], tensors=base["tensors"])
    assert stats["bytes_in_use"] == base["bytes_in_use"], (stats["bytes_in_use"], base)
    assert stats["tensors"] == base["tensors"]


@pytest.mark.parametrize("name,req,code,rid", CONTENT_ERRORS, ids=[c[0] for c in CONTENT_ERRORS])
def test_content_error_keeps_connection(url, observer, name, req, code, rid):
    base = observer.stats()
    s = open_raw(url)
    reply = request(s, req)
    assert reply is not None, f"{name}: the daemon closed the connection instead of replying"
    assert error_code(reply) == code, reply
    if rid is not ANY_ID:
        assert reply["id"] == rid, reply
    assert isinstance(reply["error"].get("message"), str) and reply["error"]["message"], reply
    # The connection stays usable after a content error.
    ping = request(s, {"id": 1000, "op": "ping"})
    assert ping is not None, f"{name}: the connection was closed after a content error"
    assert ping.get("ok") is True and ping.get("id") == 1000, ping
    s.close()
    assert observer.stats()["errors"].get(code, 0) >= 1
    assert_daemon_unharmed(url, observer, base)


def test_freed_handle_is_unknown(url):
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        h = pg.put(np.ones(3, dtype=np.float64))
        pg.free(h)
        for op in (pg.get, pg.free):
            with pytest.raises(PicogradError) as ei:
                op(h)
            assert ei.value.code == "unknown_handle"
            assert ei.value.message
        pg.ping()


def nested(depth):
    obj = None
    for _ in range(depth):
        obj = [obj]
    return obj


def raw_frame(body):
    return struct.pack(">I", len(body)) + body


PING = msgpack.packb({"id": 1, "op": "ping"})

# (case name, bytes sent after hello): each must get one bad_frame reply with id nil, then EOF.
FRAME_ERRORS = [
    ("zero_length", b"\x00\x00\x00\x00"),
    ("not_msgpack", raw_frame(b"\xc1\xc1\xc1")),
    ("array_not_map", frame([1, "ping"])),
    ("int_not_map", frame(5)),
    ("trailing_bytes", raw_frame(PING + b"\xc0")),
    ("two_maps", raw_frame(PING + PING)),
    ("truncated_map", raw_frame(PING[:-1])),
    ("map_count_lies", raw_frame(b"\xdf\x00\x01\x00\x00" + PING[1:])),
    ("str_length_lies", raw_frame(b"\x81\xa2id\xdb\xff\xff\xff\xf0abc")),
    ("bin_length_lies", raw_frame(b"\x83\xa2id\x01\xa2op\xa4ping\xa1x\xc6\x7f\xff\xff\xffab")),
    ("too_deep", frame({"id": 1, "op": "ping", "x": nested(40)})),
    ("too_many_objects", frame({"id": 1, "op": "ping", "x": [None] * 4194304})),
]


@pytest.mark.parametrize("name,data", FRAME_ERRORS, ids=[c[0] for c in FRAME_ERRORS])
def test_frame_error_closes_connection(url, observer, name, data):
    base = observer.stats()
    s = open_raw(url)
    s.sendall(data)
    reply = read_reply(s)
    assert reply is not None, f"{name}: closed without the bad_frame reply"
    assert error_code(reply) == "bad_frame", reply
    assert reply["id"] is None, reply
    assert reply["error"]["message"], reply
    assert_closed(s)
    s.close()
    assert observer.stats()["errors"].get("bad_frame", 0) >= 1
    assert_daemon_unharmed(url, observer, base)


def test_nesting_within_limit_and_unknown_keys_are_fine(url):
    s = open_raw(url)
    reply = request(s, {"id": 3, "op": "ping", "x": nested(20), "extra": {"a": [1, 2.5, b"z"]}})
    assert reply == {"id": 3, "ok": True}, reply
    s.close()


@pytest.mark.parametrize("claimed,sent", [(100, 10), (10 << 20, 1 << 20)])
def test_truncated_frame_then_close(url, observer, claimed, sent):
    base = observer.stats()
    s = open_raw(url)
    s.sendall(struct.pack(">I", claimed) + PING[:1] + bytes(sent - 1))
    s.close()
    assert_daemon_unharmed(url, observer, base)


def test_frame_over_max_frame(daemon_factory, transport):
    d = daemon_factory(["--max-frame", "1048576"])
    url = d.url(transport)
    with picograd.Connection(url, timeout=TIMEOUT) as observer:
        assert observer.server_info["limits"]["max_frame"] == 1048576
        base = observer.stats()
        s = open_raw(url)
        s.sendall(struct.pack(">I", 2 << 20))  # only the length prefix
        reply = read_reply(s)
        assert reply is not None, "closed without the bad_frame reply"
        assert error_code(reply) == "bad_frame", reply
        assert reply["id"] is None, reply
        assert_closed(s)
        s.close()

        # A put just under the limit is served; one byte over closes the connection.
        overhead = len(frame(put_req(1, dtype="bool", shape=[1 << 20], data=bytes(1 << 20)))) \
            - 4 - (1 << 20)
        fit = 1048576 - overhead
        with picograd.Connection(url, timeout=TIMEOUT) as pg:
            h = pg.put(np.ones(fit, dtype=bool))
            assert pg.get(h).all()
            pg.free(h)
            with pytest.raises(PicogradError) as ei:
                pg.put(np.ones(fit + 1, dtype=bool))
            assert ei.value.code in ("bad_frame", "disconnected"), ei.value
        assert_daemon_unharmed(url, observer, base)


def test_put_over_max_memory(daemon_factory, transport):
    d = daemon_factory(["--max-memory", "67108864"])
    url = d.url(transport)
    with picograd.Connection(url, timeout=TIMEOUT) as observer:
        assert observer.server_info["limits"]["max_memory"] == 67108864
        base = observer.stats()
        assert base["max_memory"] == 67108864
        with picograd.Connection(url, timeout=TIMEOUT) as pg:
            big = np.ones(25_000_000, dtype=np.float32)  # 100 MB: the frame alone is over budget
            with pytest.raises(PicogradError) as ei:
                pg.put(big)
            assert ei.value.code == "out_of_memory", ei.value
            del big
            pg.ping()  # the connection stays usable
            h = pg.put(np.full(1000, 7, dtype=np.int64))
            assert (pg.get(h) == 7).all()
            pg.free(h)
        assert observer.stats()["errors"].get("out_of_memory", 0) >= 1
        assert_daemon_unharmed(url, observer, base)


def test_max_memory_accounting(daemon_factory):
    d = daemon_factory(["--max-memory", "67108864"])
    url = d.unix_url
    with picograd.Connection(url, timeout=TIMEOUT) as observer, \
            picograd.Connection(url, timeout=TIMEOUT) as pg:
        base = observer.stats()
        chunk = np.full(5_000_000, 3, dtype=np.float32)  # 20 MB
        handles = []
        with pytest.raises(PicogradError) as ei:
            for _ in range(5):  # 100 MB in all: the budget runs out on the way
                handles.append(pg.put(chunk))
        assert ei.value.code == "out_of_memory", ei.value
        assert 1 <= len(handles) <= 3, len(handles)
        assert observer.stats()["bytes_in_use"] <= 67108864
        assert observer.stats()["bytes_peak"] <= 67108864
        for h in handles:
            pg.free(h)
        wait_stats(observer, bytes_in_use=base["bytes_in_use"])
        assert observer.stats()["bytes_in_use"] == base["bytes_in_use"]
        # Freed memory is usable again.
        h = pg.put(chunk)
        assert (pg.get(h) == 3).all()
        pg.free(h)


@pytest.mark.parametrize("fmt,pack", [(0xd0, ">b"), (0xd1, ">h"), (0xd2, ">i"), (0xd3, ">q")])
def test_refused_frame_keeps_signed_format_id(daemon_factory, fmt, pack):
    """An id >= 0 written in a signed int format (as some encoders write int64) is an unsigned
    int to the decoder, so a refused frame's error reply must carry it too (found by
    tests/fuzz: the head scan that answers refused frames used to miss it)."""
    d = daemon_factory(["--max-memory", "1048576"])
    s = open_raw(d.url("unix"))
    try:
        data = bytes(2 << 20)  # 2 MiB: the frame alone is over the 1 MiB budget
        body = (b"\x85" + msgpack.packb("id") + bytes([fmt]) + struct.pack(pack, 42)
                + msgpack.packb("op") + msgpack.packb("put")
                + msgpack.packb("dtype") + msgpack.packb("float32")
                + msgpack.packb("shape") + msgpack.packb([len(data) // 4])
                + msgpack.packb("data") + b"\xc6" + struct.pack(">I", len(data)) + data)
        s.sendall(struct.pack(">I", len(body)) + body)
        reply = read_reply(s)
        assert error_code(reply) == "out_of_memory", reply
        assert reply["id"] == 42, reply
        assert request(s, {"id": 43, "op": "ping"})["ok"] is True  # still usable
    finally:
        s.close()
