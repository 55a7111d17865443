"""Integration tests of the daemon's limits on what one client may take (server/limits.h):
the session memory quota, the node limit, the unsent-bytes bound on a client that does not read,
fairness between sessions on the compute workers, the idle timeout and the per-request time
limit, which cancels a run between its steps and inside a long step.

Time bounds here are about behaviour that is itself about time (a timeout fires, a long run is cut
short, one session waits for at most one of another's heavy runs); each is several times looser
than what it separates, so a loaded 2-core machine does not fail them.
"""

import re
import statistics
import threading
import time

import numpy as np
import pytest

import picograd
from helpers import TIMEOUT, assert_closed, open_raw, read_reply, frame, wait_for, wait_stats
from picograd import PicogradError

KIB, MIB = 1 << 10, 1 << 20


def rss_bytes(pid):
    """The resident set of process ``pid`` in bytes (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def run(pg, nodes, outputs, **fields):
    """Sends a raw `run` request and returns its reply's outputs (raises on an error reply)."""
    return pg.call("run", nodes=nodes, outputs=outputs, **fields)["outputs"]


def inp(h):
    return {"op": "input", "handle": h}


def full(shape, value=1.0):
    return {"op": "full", "shape": list(shape), "value": value, "dtype": "float32"}


def matmul_chain(n, steps, first=None):
    """Nodes computing ((x @ x) @ x) ... with `steps` products of [n, n] float32 matrices; x is
    node 0 (input ``first``, else a `full` leaf). The last node is the result."""
    nodes = [inp(first) if first is not None else full((n, n), 1.0 / n)]
    for _ in range(steps):
        nodes.append({"op": "matmul", "in": [len(nodes) - 1, 0]})
    return nodes


# --- the session quota ---------------------------------------------------------------------------

def test_session_quota_put(daemon_factory):
    d = daemon_factory(["--max-session-memory", "1M"])
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as pg, \
            picograd.Connection(d.unix_url, timeout=TIMEOUT) as other:
        assert pg.server_info["limits"]["max_session_memory"] == MIB
        h = pg.put(np.ones(128 * KIB, dtype=np.float32))  # 512 KiB
        with pytest.raises(PicogradError) as ei:
            pg.put(np.ones(150 * KIB, dtype=np.float32))  # 600 KiB more: over 1 MiB
        e = ei.value
        assert e.code == "out_of_memory", e
        assert "--max-session-memory" in e.message and str(MIB) in e.message, e.message
        assert re.search(r"of 6\d{5} bytes", e.message), e.message  # the request's size
        used = pg.stats()["session"]["bytes"]
        assert 512 * KIB <= used < 600 * KIB
        assert f"holds {used} of" in e.message, e.message  # the session's usage
        # The connection stays usable, and a put that fits still goes in.
        pg.ping()
        h2 = pg.put(np.ones(100 * KIB, dtype=np.float32))
        assert pg.get(h2).sum() == 100 * KIB
        # The quota is per session: another one has its own.
        h3 = other.put(np.ones(200 * KIB, dtype=np.float32))
        assert other.get(h3).shape == (200 * KIB,)
        # Freeing gives the bytes back.
        pg.free(h)
        pg.free(h2)
        assert pg.stats()["session"]["bytes"] == 0
        h = pg.put(np.ones(200 * KIB, dtype=np.float32))  # 800 KiB: fits now
        assert pg.stats()["session"]["bytes"] >= 800 * KIB
        assert pg.stats()["errors"]["out_of_memory"] == 1


def test_session_quota_run(daemon_factory):
    d = daemon_factory(["--max-session-memory", "1M"])
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as pg:
        x = np.arange(64 * KIB, dtype=np.float32)  # 256 KiB
        h = pg.put(x)
        # A kept output counts: 256 KiB more fits.
        out = run(pg, [inp(h), {"op": "mul", "in": [0, 0]}], [{"node": 1, "keep": True}])
        h2 = out[0]["handle"]
        before = pg.stats()["session"]
        assert before["tensors"] == 2 and before["bytes"] >= 512 * KIB
        # A kept output of 1 MiB does not: refused (before it runs), nothing is kept.
        big = [inp(h), {"op": "cat", "in": [0, 0, 0, 0], "dim": 0}]
        with pytest.raises(PicogradError) as ei:
            run(pg, big, [{"node": 1, "keep": True}])
        assert ei.value.code == "out_of_memory", ei.value
        assert "--max-session-memory" in ei.value.message, ei.value.message
        assert str(MIB) in ei.value.message, ei.value.message
        after = pg.stats()["session"]
        assert (after["tensors"], after["bytes"]) == (before["tensors"], before["bytes"])
        # The same result returned inline counts against --max-memory only: it is not held.
        out = run(pg, big, [{"node": 1, "keep": False}])
        assert len(out[0]["data"]) == MIB
        # An assign replaces what it assigns: a same-sized update of a session near its quota
        # fits, and a run's temporaries (the 1 MiB cat) are not charged to the session.
        nodes = big + [{"op": "sum", "in": [1]}, {"op": "add", "in": [0, 2]},
                       {"op": "assign", "in": [3], "handle": h}]
        run(pg, nodes, [])
        # (the put's tensor held its frame buffer, a few bytes larger than its data)
        assert before["bytes"] - 4 * KIB <= pg.stats()["session"]["bytes"] <= before["bytes"]
        want = x + 4 * x.sum(dtype=np.float32)
        np.testing.assert_allclose(pg.get(h), want, rtol=1e-5)
        # An assign that grows the session (a bigger value under a handle of the same shape is
        # impossible, so grow it with a kept output next to it) is refused whole: the assign is
        # not committed either.
        nodes = [inp(h2), {"op": "neg", "in": [0]}, {"op": "assign", "in": [1], "handle": h2},
                 {"op": "cat", "in": [0, 0, 0], "dim": 0}]
        with pytest.raises(PicogradError) as ei:
            run(pg, nodes, [{"node": 3, "keep": True}])
        assert ei.value.code == "out_of_memory", ei.value
        np.testing.assert_array_equal(pg.get(h2), x * x)
        pg.ping()


# --- the node limit ------------------------------------------------------------------------------

def test_max_nodes(daemon_factory):
    d = daemon_factory(["--max-nodes", "10"])
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as pg:
        assert pg.server_info["limits"]["max_nodes"] == 10
        nodes = [{"op": "full", "shape": [2], "value": 1.0}]
        nodes += [{"op": "add", "in": [i, 0]} for i in range(9)]
        out = run(pg, nodes, [{"node": 9, "keep": False}])  # 10 nodes: the limit itself
        assert out[0]["shape"] == [2]
        nodes.append({"op": "add", "in": [9, 0]})
        for op in ("run", "explain"):
            with pytest.raises(PicogradError) as ei:
                pg.call(op, nodes=nodes, outputs=[{"node": 10, "keep": False}])
            e = ei.value
            assert e.code == "too_large", e
            assert "11 nodes" in e.message and "limit is 10" in e.message, e.message
            assert "--max-nodes" in e.message, e.message
        pg.ping()


def test_max_nodes_flag_ceiling(daemon_factory):
    d = daemon_factory(["--max-nodes", "65537"], wait=False)
    assert d.proc.wait(10) == 1
    assert "--max-nodes must be 1 to 65536" in d.log(), d.log()


def test_default_limits_in_hello(daemon):
    with picograd.Connection(daemon.unix_url, timeout=TIMEOUT) as pg:
        limits = pg.server_info["limits"]
        assert limits["max_nodes"] == 65536
        assert limits["max_session_memory"] == limits["max_memory"]
        assert limits["request_timeout"] == 0 and limits["idle_timeout"] == 0


# --- a client that does not read its replies ------------------------------------------------------

@pytest.mark.parametrize("op", ["get", "run"])
def test_slow_reader_pinned_at_max_unsent(daemon_factory, op):
    """A client pipelines requests whose replies carry 4 MiB each (a `get` sends the tensor's own
    storage; a `run` with an inline output copies its result into the reply) and does not read:
    the daemon stops answering it at --max-unsent, its RSS stays bounded, other clients are
    served, and once the client reads it gets every reply intact."""
    d = daemon_factory(["--max-unsent", "8M"])
    n_req, size = 100, 4 * MIB  # 400 MiB of replies if nothing held them back
    x = np.random.default_rng(1).standard_normal(size // 4).astype(np.float32)
    slow = open_raw(d.unix_url, timeout=TIMEOUT)
    # The slow reader's session holds its own copy (handles belong to their session).
    slow.sendall(frame({"id": 1, "op": "put", "dtype": "float32", "shape": [size // 4],
                        "data": x.tobytes()}))
    hs = read_reply(slow)["handle"]
    if op == "get":
        req = {"op": "get", "handle": hs}
    else:
        req = {"op": "run", "nodes": [inp(hs), {"op": "neg", "in": [0]}],
               "outputs": [{"node": 1, "keep": False}]}
    # Warm up once (the plan, the allocator's reuse of 4 MiB blocks), then measure.
    slow.sendall(frame({"id": 2, **req}))
    assert read_reply(slow)["ok"] is True
    time.sleep(0.2)
    base = rss_bytes(d.proc.pid)
    slow.sendall(b"".join(frame({"id": 100 + i, **req}) for i in range(n_req)))
    peak = base
    for _ in range(15):  # 1.5 s for the daemon to fill what it may
        time.sleep(0.1)
        peak = max(peak, rss_bytes(d.proc.pid))
    # Pinned: 8 MiB of unsent replies plus one reply and the socket buffers, not 400 MiB.
    assert peak - base < 48 * MIB, (base, peak)
    # Meanwhile another client is served normally.
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as other:
        t0 = time.monotonic()
        other.ping()
        ho = other.put(x)
        np.testing.assert_array_equal(other.get(ho), x)
        out = run(other, [inp(ho), {"op": "sum", "in": [0]}], [{"node": 1, "keep": False}])
        assert out[0]["shape"] == []
        assert time.monotonic() - t0 < 10
        # The slow reader's queue is held: few of its 100 requests were answered.
        assert other.stats()["ops"][op] < 20
    # Now it reads: every reply, in order, intact.
    want = x.tobytes() if op == "get" else (-x).tobytes()
    for i in range(n_req):
        r = read_reply(slow)
        assert r["ok"] is True and r["id"] == 100 + i, r
        data = r["data"] if op == "get" else r["outputs"][0]["data"]
        assert data == want, f"reply {i} differs"
    slow.sendall(frame({"id": 3, "op": "ping"}))
    assert read_reply(slow) == {"id": 3, "ok": True}
    slow.close()


# --- fairness between sessions -------------------------------------------------------------------

def test_heavy_queue_does_not_starve_other_sessions(daemon_factory):
    """One worker; one session pipelines 50 heavy runs, another runs small ones one at a time.
    The pool takes one request per session at a time, so a small run waits for at most about one
    heavy run, never for the 50 queued before it."""
    d = daemon_factory(["--threads", "1"])
    n = 1024
    heavy_nodes = matmul_chain(n, 3) + [{"op": "sum", "in": [3]}]
    heavy_out = [{"node": 4, "keep": False}]
    small_nodes = [full((4,), 2.0), {"op": "mul", "in": [0, 0]}]
    small_out = [{"node": 1, "keep": False}]
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as heavy, \
            picograd.Connection(d.unix_url, timeout=TIMEOUT) as small:
        # One heavy run alone, a few times: what a small run may have to wait for.
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            run(heavy, heavy_nodes, heavy_out)
            times.append(time.monotonic() - t0)
        t_heavy = statistics.median(times)
        run(small, small_nodes, small_out)  # planned once
        for _ in range(50):
            heavy.send("run", nodes=heavy_nodes, outputs=heavy_out)
        time.sleep(t_heavy)  # the first heavy runs are under way
        lat = []
        for _ in range(10):
            t0 = time.monotonic()
            run(small, small_nodes, small_out)
            lat.append(time.monotonic() - t0)
        t_small_done = time.monotonic()
        done = 0
        for _ in range(50):
            r = heavy.recv()
            assert r["ok"] is True, r
            done += 1
        t_heavy_done = time.monotonic()
    # The small session finished long before the heavy queue drained, with each of its runs
    # waiting for at most a couple of heavy runs (10 is generous: 50 would mean starvation).
    assert max(lat) < 10 * t_heavy, (lat, t_heavy)
    assert t_heavy_done - t_small_done > 10 * t_heavy, (t_heavy_done - t_small_done, t_heavy)


# --- the idle timeout ----------------------------------------------------------------------------

def test_idle_timeout_closes_quiet_connections(daemon_factory):
    d = daemon_factory(["--idle-timeout", "0.5"])
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as busy:
        quiet = open_raw(d.unix_url)
        t0 = time.monotonic()
        # A connection that keeps talking stays open, and so does one whose request runs longer
        # than the idle limit.
        for _ in range(8):
            busy.ping()
            time.sleep(0.2)
        busy.call("sleep", seconds=1.2)
        assert_closed(quiet, timeout=10)
        assert time.monotonic() - t0 >= 0.5
        quiet.close()
        busy.ping()
        assert "idle for 0.5 s (--idle-timeout); closing it" in d.log(), d.log()
        wait_stats(busy, sessions=1)


def test_idle_timeout_off_by_default(daemon):
    s = open_raw(daemon.unix_url)
    time.sleep(1.5)
    s.sendall(frame({"id": 1, "op": "ping"}))
    assert read_reply(s) == {"id": 1, "ok": True}
    s.close()


# --- the request time limit ----------------------------------------------------------------------

def test_request_timeout_cancels_a_long_run(daemon_factory):
    """A chain of 2048 x 2048 products, over a second of work, with --request-timeout 0.2: cut
    between steps, `timeout`, nothing assigned or kept, memory back, the connection usable."""
    d = daemon_factory(["--request-timeout", "0.2"])
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as pg:
        assert pg.server_info["limits"]["request_timeout"] == pytest.approx(0.2)
        x = np.full((2048, 2048), 1.0 / 2048, dtype=np.float32)
        h = pg.put(x)
        base = pg.stats()
        nodes = matmul_chain(2048, 40, first=h)
        nodes.append({"op": "assign", "in": [len(nodes) - 1], "handle": h})
        t0 = time.monotonic()
        with pytest.raises(PicogradError) as ei:
            run(pg, nodes, [{"node": 5, "keep": True}])
        elapsed = time.monotonic() - t0
        e = ei.value
        assert e.code == "timeout", e
        assert "time limit of 0.2 s" in e.message and "--request-timeout" in e.message, e.message
        assert elapsed < 10, elapsed
        # Nothing committed: no new handle, the assigned handle unchanged.
        st = pg.stats()
        assert st["session"]["tensors"] == 1
        np.testing.assert_array_equal(pg.get(h), x)
        # Everything the run held is released.
        wait_stats(pg, bytes_in_use=base["bytes_in_use"])
        assert st["errors"]["timeout"] == base["errors"]["timeout"] + 1
        # The connection works, and a short run still completes under the limit.
        pg.ping()
        out = run(pg, [inp(h), {"op": "sum", "in": [0]}], [{"node": 1, "keep": False}])
        assert np.frombuffer(out[0]["data"], np.float32)[0] == pytest.approx(2048.0)
    assert "ran past its time limit of 0.2 s" in d.log(), d.log()


@pytest.mark.large_memory
def test_request_timeout_interrupts_one_long_step(daemon_factory):
    """One 8192 x 8192 x 8192 product (over 5 s on two cores at full speed): the time limit stops
    it between blocks, well before it could finish."""
    d = daemon_factory(["--request-timeout", "0.5"])
    n = 8192
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as pg:
        a = np.full((n, n), 0.5, dtype=np.float32)
        ha, hb = pg.put(a), pg.put(a)  # resident: the run is the product alone
        del a
        base = pg.stats()["bytes_in_use"]
        nodes = [inp(ha), inp(hb), {"op": "matmul", "in": [0, 1]}, {"op": "sum", "in": [2]}]
        t0 = time.monotonic()
        with pytest.raises(PicogradError) as ei:
            run(pg, nodes, [{"node": 3, "keep": False}])
        elapsed = time.monotonic() - t0
        assert ei.value.code == "timeout", ei.value
        assert elapsed < 3.0, elapsed
        wait_stats(pg, bytes_in_use=base)
        pg.ping()


def test_request_timeout_field(daemon_factory):
    """A request's own `timeout` (seconds) shortens the daemon's limit, never lengthens it."""
    d = daemon_factory(["--request-timeout", "30"])
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as pg:
        t0 = time.monotonic()
        with pytest.raises(PicogradError) as ei:
            pg.call("sleep", seconds=5, timeout=0.5)
        assert ei.value.code == "timeout", ei.value
        assert "0.5 s" in ei.value.message and "'timeout'" in ei.value.message, ei.value.message
        assert 0.45 <= time.monotonic() - t0 < 4
        pg.call("sleep", seconds=0.1, timeout=5)  # finishes within its limit
        for bad in (0, -1, "1", 1e9):
            with pytest.raises(PicogradError) as ei:
                pg.call("sleep", seconds=0, timeout=bad)
            assert ei.value.code == "bad_request" and "'timeout'" in ei.value.message, ei.value
        pg.ping()


def test_request_timeout_field_without_daemon_limit(daemon):
    with picograd.Connection(daemon.unix_url, timeout=TIMEOUT) as pg:
        with pytest.raises(PicogradError) as ei:
            pg.call("sleep", seconds=5, timeout=0.3)
        assert ei.value.code == "timeout", ei.value
        nodes = matmul_chain(1024, 200)
        with pytest.raises(PicogradError) as ei:
            run(pg, nodes, [{"node": 200, "keep": False}], timeout=0.3)
        assert ei.value.code == "timeout", ei.value
        assert pg.stats()["errors"]["timeout"] == 2
        pg.ping()


def test_sleep_with_request_timeout(daemon_factory):
    d = daemon_factory(["--request-timeout", "0.5"])
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as pg, \
            picograd.Connection(d.unix_url, timeout=TIMEOUT) as other:
        pg.send("sleep", seconds=5)
        pg.send("ping")  # queued behind it, answered after the timeout
        t0 = time.monotonic()
        other.call("sleep", seconds=0.2)  # others are not affected
        r = pg.recv()
        assert r["ok"] is False and r["error"]["code"] == "timeout", r
        assert 0.45 <= time.monotonic() - t0 < 4
        assert pg.recv()["ok"] is True


def test_timeout_then_disconnect_mid_run(daemon_factory):
    """Clients that vanish while their run is being cancelled, or just before: nothing leaks
    (teardown checks the daemon's exit status and sanitizer output)."""
    d = daemon_factory(["--request-timeout", "0.3"])
    nodes = matmul_chain(1024, 100)
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as pg:
        base = pg.stats()["bytes_in_use"]  # the stats request's own frame
        for wait in (0.0, 0.1, 0.35):
            s = open_raw(d.unix_url)
            s.sendall(frame({"id": 1, "op": "run", "nodes": nodes,
                             "outputs": [{"node": 100, "keep": True}]}))
            time.sleep(wait)
            s.close()
        st = wait_stats(pg, sessions=1, bytes_in_use=base, tensors=0, timeout=10)
        assert (st["sessions"], st["bytes_in_use"], st["tensors"]) == (1, base, 0), st
