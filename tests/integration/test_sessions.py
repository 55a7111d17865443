"""Integration tests of connections and sessions: pipelining, many concurrent clients, handle
ownership and lifetime, and independence of slow requests across connections.
"""

import threading
import time

import numpy as np
import pytest

import picograd
from helpers import TIMEOUT, wait_stats
from picograd import PicogradError


def test_pipelined_requests_in_order(url):
    rng = np.random.default_rng(5)
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        known = [rng.standard_normal(int(rng.integers(1, 50))).astype(np.float32) + 3
                 for _ in range(10)]
        known_handles = [pg.put(a) for a in known]

        # What each pipelined request is, in order: ("put", array), ("ping",) or ("get", index).
        plan = []
        for i in range(1000):
            if i % 3 == 0:
                plan.append(("put", rng.integers(1, 1000, size=int(rng.integers(0, 20)),
                                                 dtype=np.int64)))
            elif i % 3 == 1:
                plan.append(("ping",))
            else:
                plan.append(("get", i % len(known)))

        # A second thread writes while this one reads: unread replies fill the socket buffers,
        # and the daemon stops reading a client that does not read (max_inflight), so a client
        # that sent all 1000 before reading any could deadlock against it.
        sent_ids = []
        send_errors = []

        def sender():
            try:
                for step in plan:
                    if step[0] == "put":
                        a = step[1]
                        sent_ids.append(pg.send("put", dtype="int64", shape=list(a.shape),
                                                data=a.tobytes()))
                    elif step[0] == "ping":
                        sent_ids.append(pg.send("ping"))
                    else:
                        sent_ids.append(pg.send("get", handle=known_handles[step[1]]))
            except Exception as exc:  # reported by the main thread
                send_errors.append(exc)

        t = threading.Thread(target=sender)
        t.start()
        replies = [pg.recv() for _ in plan]
        t.join()
        assert not send_errors, send_errors

        assert [r["id"] for r in replies] == sent_ids
        assert sent_ids == sorted(set(sent_ids))
        new_handles = []
        for step, reply in zip(plan, replies):
            assert reply["ok"] is True, reply
            if step[0] == "put":
                new_handles.append((reply["handle"], step[1]))
            elif step[0] == "get":
                got = np.frombuffer(reply["data"], dtype="<f4").reshape(reply["shape"])
                assert np.array_equal(got, known[step[1]])
        all_handles = known_handles + [h for h, _ in new_handles]
        assert len(set(all_handles)) == len(all_handles)
        for h, a in new_handles:
            assert np.array_equal(pg.get(h), a)


def test_pipelined_runs_with_large_replies_in_order(daemon, transport):
    """Compute replies that a worker sends itself ("early replies", server/conn.c) share the
    socket with replies the loop thread writes. Replies of several MiB fill the socket, so an
    early send is cut short and the loop sends the rest; a reader that pauses makes that happen
    at random points. Every reply must still arrive whole, in request order."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(1_500_000).astype(np.float32)  # 6 MiB: more than a socket buffer
    small = np.arange(7, dtype=np.float32)
    with picograd.Connection(daemon.url(transport), timeout=TIMEOUT) as pg:
        hx, hs = pg.put(x), pg.put(small)
        plan = []  # ("run", k): x * k inline; ("ping",); ("get",)
        for i in range(30):
            plan.append(("run", i % 5 + 1) if i % 3 != 2 else (("ping",), ("get",))[i % 2])
        sent_ids, send_errors = [], []

        def sender():
            try:
                for step in plan:
                    if step[0] == "run":
                        nodes = [{"op": "input", "handle": hx},
                                 {"op": "const", "value": step[1], "dtype": "float32"},
                                 {"op": "mul", "in": [0, 1]}]
                        sent_ids.append(pg.send("run", nodes=nodes,
                                                outputs=[{"node": 2, "keep": False}]))
                    elif step[0] == "ping":
                        sent_ids.append(pg.send("ping"))
                    else:
                        sent_ids.append(pg.send("get", handle=hs))
            except Exception as exc:  # reported by the main thread
                send_errors.append(exc)

        t = threading.Thread(target=sender)
        t.start()
        replies = []
        for i in range(len(plan)):
            if rng.random() < 0.3:
                time.sleep(0.02)  # let the daemon's sends find the socket full
            replies.append(pg.recv())
        t.join()
        assert not send_errors, send_errors
        assert [r["id"] for r in replies] == sent_ids
        for step, reply in zip(plan, replies):
            assert reply["ok"] is True, reply
            if step[0] == "run":
                out = reply["outputs"][0]
                got = np.frombuffer(bytes(out["data"]), np.float32)
                np.testing.assert_array_equal(got, x * np.float32(step[1]))
            elif step[0] == "get":
                np.testing.assert_array_equal(
                    np.frombuffer(reply["data"], dtype="<f4"), small)


def test_concurrent_connections(daemon, transport):
    url = daemon.url(transport)
    observer = picograd.Connection(url, timeout=TIMEOUT)
    base = observer.stats()
    errors = []
    start = threading.Barrier(32)

    def client(seed):
        rng = np.random.default_rng(seed)
        try:
            with picograd.Connection(url, timeout=TIMEOUT) as pg:
                start.wait()
                kept = []
                for i in range(40):
                    shape = tuple(int(d) for d in rng.integers(1, 9, size=int(rng.integers(0, 4))))
                    dtype = ["float32", "float64", "int32", "int64", "bool"][i % 5]
                    a = (rng.random(shape) * 100 + 1).astype(dtype)
                    h = pg.put(a)
                    b = pg.get(h)
                    if b.dtype != a.dtype or b.shape != a.shape or not np.array_equal(a, b):
                        raise AssertionError(f"client {seed}: {a!r} came back as {b!r}")
                    if i % 2:
                        pg.free(h)
                    else:
                        kept.append((h, a))
                for h, a in kept:
                    if not np.array_equal(pg.get(h), a):
                        raise AssertionError(f"client {seed}: handle {h} changed")
                    pg.free(h)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    stats = wait_stats(observer, tensors=base["tensors"], bytes_in_use=base["bytes_in_use"],
                       sessions=base["sessions"])
    assert stats["tensors"] == base["tensors"]
    assert stats["bytes_in_use"] == base["bytes_in_use"]
    assert stats["sessions"] == base["sessions"]
    observer.close()


def test_handles_belong_to_their_session(url):
    with picograd.Connection(url, timeout=TIMEOUT) as a, \
            picograd.Connection(url, timeout=TIMEOUT) as b:
        x = np.arange(10, dtype=np.float64) + 0.5
        h = a.put(x)
        for op in (b.get, b.free):
            with pytest.raises(PicogradError) as ei:
                op(h)
            assert ei.value.code == "unknown_handle"
            assert ei.value.message
        # b's failed attempts did not touch a's tensor.
        assert np.array_equal(a.get(h), x)
        a.free(h)


def test_handles_not_reused(url):
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        seen, live = [], []
        for i in range(50):
            h = pg.put(np.array([i + 1], dtype=np.int32))
            assert h >= 1 and h not in seen, (h, seen)
            seen.append(h)
            if i % 3 == 2:
                live.append(h)
            else:
                pg.free(h)
        for h in live:
            pg.free(h)
        for h in seen:
            with pytest.raises(PicogradError) as ei:
                pg.get(h)
            assert ei.value.code == "unknown_handle"


def test_close_frees_session(url):
    observer = picograd.Connection(url, timeout=TIMEOUT)
    base = observer.stats()
    pg = picograd.Connection(url, timeout=TIMEOUT)
    for n in (1000, 20000, 300000):
        pg.put(np.ones(n, dtype=np.float32))
    during = observer.stats()
    assert during["tensors"] == base["tensors"] + 3
    assert during["bytes_in_use"] >= base["bytes_in_use"] + 4 * 321000
    assert during["sessions"] == base["sessions"] + 1
    pg.close()
    stats = wait_stats(observer, tensors=base["tensors"], bytes_in_use=base["bytes_in_use"],
                       sessions=base["sessions"])
    assert (stats["tensors"], stats["bytes_in_use"], stats["sessions"]) == \
        (base["tensors"], base["bytes_in_use"], base["sessions"])
    observer.close()


def test_session_stats(url):
    with picograd.Connection(url, timeout=TIMEOUT) as pg:
        pg.put(np.ones(100, dtype=np.int64))
        s = pg.stats()
        assert s["session"]["id"] == pg.server_info["session"]
        assert s["session"]["tensors"] == 1
        assert s["session"]["bytes"] >= 800
        assert s["ops"].get("put", 0) >= 1
        assert s["bytes_peak"] >= s["bytes_in_use"]
        assert isinstance(s["uptime_seconds"], float)


def test_sleep_does_not_block_other_connections(url):
    with picograd.Connection(url, timeout=TIMEOUT) as slow, \
            picograd.Connection(url, timeout=TIMEOUT) as fast:
        t0 = time.monotonic()
        slow.send("sleep", seconds=2)
        time.sleep(0.1)  # let the daemon start the sleep
        t1 = time.monotonic()
        fast.ping()
        h = fast.put(np.ones(1000, dtype=np.float32))
        assert fast.get(h).sum() == 1000
        assert time.monotonic() - t1 < 0.5
        reply = slow.recv()
        assert reply["ok"] is True, reply
        assert time.monotonic() - t0 >= 1.9
