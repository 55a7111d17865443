"""Integration tests of the daemon's process lifecycle as clients see it: graceful shutdown with
requests in flight, Unix socket files left behind or still in use, and a daemon that dies under a
connected client.
"""

import os
import re
import signal
import socket
import struct
import time

import numpy as np
import pytest

import picograd
from helpers import TIMEOUT, assert_closed, open_raw
from picograd import PicogradError


def test_sigterm_finishes_received_requests(daemon_factory):
    d = daemon_factory()
    sock_path = d.unix_url[len("unix://"):]
    a = picograd.Connection(d.unix_url, timeout=TIMEOUT)
    a.send("sleep", seconds=1)  # fully received: must be answered
    b = open_raw(d.unix_url)
    b.sendall(struct.pack(">I", 10 << 20) + b"\x84" + bytes((1 << 20) - 1))  # 1 MB of 10 MB
    time.sleep(0.3)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    reply = a.recv()
    assert reply["ok"] is True, reply
    rc = d.proc.wait(10)
    assert rc == 0, d.log()
    assert time.monotonic() - t0 < 10
    assert not os.path.exists(sock_path), "the Unix socket file was not removed"
    assert_closed(b)  # the partial frame was dropped with its connection
    b.close()
    with pytest.raises(PicogradError) as ei:
        a.ping()
    assert ei.value.code == "disconnected"
    a.close()


def test_sigint_exits_cleanly(daemon_factory):
    d = daemon_factory()
    with picograd.Connection(d.tcp_url, timeout=TIMEOUT) as pg:
        pg.put(np.ones(10, dtype=np.float32))
        assert d.stop(signal.SIGINT) == 0, d.log()
    assert not os.path.exists(d.unix_url[len("unix://"):])


def test_stale_socket_file_is_replaced(daemon_factory, tmp_path):
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays behind with nobody listening, as after a crash
    assert path.exists()
    d = daemon_factory(listen=[f"unix://{path}"], name="stale")
    with picograd.Connection(f"unix://{path}", timeout=TIMEOUT) as pg:
        pg.ping()
    assert d.stop() == 0, d.log()
    assert not path.exists()


def test_live_socket_is_not_stolen(daemon_factory, tmp_path):
    path = tmp_path / "live.sock"
    first = daemon_factory(listen=[f"unix://{path}"], name="first")
    second = daemon_factory(listen=[f"unix://{path}"], name="second", wait=False)
    try:
        rc = second.proc.wait(10)
    except Exception:
        pytest.fail(f"a second daemon on a live socket kept running:\n{second.log()}")
    log = second.log()
    assert rc != 0, log
    assert str(path) in log, log
    assert re.search(r"in use|already|another", log, re.IGNORECASE), log
    # The first daemon still owns its socket.
    assert path.exists()
    with picograd.Connection(f"unix://{path}", timeout=TIMEOUT) as pg:
        pg.ping()
    assert first.stop() == 0, first.log()


def test_socket_path_not_a_socket_is_refused(daemon_factory, tmp_path):
    # A regular file at the socket path is somebody's data, not a stale socket: never unlink it.
    path = tmp_path / "file.sock"
    path.write_text("precious")
    d = daemon_factory(listen=[f"unix://{path}"], name="notsock", wait=False)
    try:
        rc = d.proc.wait(10)
    except Exception:
        pytest.fail(f"the daemon replaced a regular file at its socket path:\n{d.log()}")
    assert rc != 0
    assert path.read_text() == "precious"
    assert str(path) in d.log(), d.log()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_killed_daemon_then_reconnect(daemon_factory, transport):
    d = daemon_factory()
    url = d.url(transport)
    pg = picograd.Connection(url, timeout=TIMEOUT)
    h = pg.put(np.arange(5, dtype=np.int64) + 1)
    d.kill()
    for call in (pg.ping, lambda: pg.get(h), lambda: pg.put(np.ones(1 << 20))):
        with pytest.raises(PicogradError) as ei:
            call()
        assert ei.value.code == "disconnected", ei.value
    with pytest.raises(PicogradError) as ei:
        pg.reconnect()  # nobody listens now
    assert ei.value.code == "connect_failed"

    # Restart at the same URL: the same socket path (stale after SIGKILL) and the same port.
    d.start(listen=[f"unix://{d.socket_path}", d.tcp_url])
    assert d.url(transport) == url
    pg.reconnect()
    pg.ping()
    assert pg.server_info["server"] == "picogradd"
    with pytest.raises(PicogradError) as ei:
        pg.get(h)  # the old session's tensors died with the old daemon
    assert ei.value.code == "unknown_handle"
    h2 = pg.put(np.arange(3, dtype=np.float32))
    assert pg.get(h2).tolist() == [0.0, 1.0, 2.0]
    pg.close()
