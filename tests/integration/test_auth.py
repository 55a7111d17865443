"""Integration tests of authentication and socket access (README "Security", PROTOCOL.md `hello`).

A daemon started with --token-file requires the token in `hello` on its TCP listeners: any request
before a successful hello, a hello without a token and a wrong token are answered `unauthorized`
and the connection is closed. Unix sockets need no token (their file mode, 0600 by default or
--socket-mode, protects them). A TCP listener without a token file needs --insecure to start.
Socket activation (LISTEN_FDS, as systemd passes them) is tested without systemd: a small
wrapper puts a listening socket on fd 3, sets LISTEN_PID to its own pid and execs the daemon.
"""

import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import picograd
from conftest import DAEMON_ARGS, DAEMON_BIN, EXIT_TIMEOUT, SANITIZER_MARKERS
from helpers import TIMEOUT, _connect, assert_closed, error_code, frame, open_raw, read_reply
from picograd import PicogradError

TOKEN = "3f9c2a7d1e5b48c6a0d2f4e6b8c1a3d5"


@pytest.fixture
def secured(daemon_factory):
    """A daemon whose TCP listener requires TOKEN."""
    return daemon_factory(token=TOKEN + "\n")


def refused(sock, obj, expect_id=True):
    """Sends obj, expects an unauthorized reply and the connection closed; returns the message."""
    sock.sendall(frame(obj))
    reply = read_reply(sock)
    assert reply is not None, "the daemon closed the connection without a reply"
    assert error_code(reply) == "unauthorized", reply
    if expect_id:
        assert reply["id"] == obj["id"], reply
    assert_closed(sock)
    return reply["error"]["message"]


def hello(token=None, **extra):
    req = {"id": 1, "op": "hello", "version": 1, "client": "auth-test"}
    if token is not None:
        req["token"] = token
    req.update(extra)
    return req


# ------------------------------------------------------------------------------------------------
# TCP with a token file
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["ping", "stats", "put", "run", "nonsense"])
def test_request_before_hello_is_refused(secured, op):
    with _connect(secured.tcp_url, TIMEOUT) as s:
        msg = refused(s, {"id": 7, "op": op})
        assert "hello" in msg and "token" in msg, msg


def test_requests_pipelined_after_a_refusal_are_not_served(secured):
    with _connect(secured.tcp_url, TIMEOUT) as s:
        # One write: the ping is refused, and the hello with the right token behind it must not
        # authenticate the connection (nor may the put behind that run).
        s.sendall(frame({"id": 1, "op": "ping"}) + frame(hello(TOKEN, id=2)) +
                  frame({"id": 3, "op": "put", "dtype": "float32", "shape": [1],
                         "data": b"\0\0\0\0"}))
        reply = read_reply(s)
        assert error_code(reply) == "unauthorized" and reply["id"] == 1, reply
        assert_closed(s)
    with picograd.Connection(secured.unix_url, timeout=TIMEOUT) as c:
        assert c.stats()["tensors"] == 0


def test_hello_without_token_is_refused(secured):
    with _connect(secured.tcp_url, TIMEOUT) as s:
        msg = refused(s, hello())
        assert "token" in msg, msg


@pytest.mark.parametrize("token", ["", "x", TOKEN[:-1], TOKEN + "0", TOKEN.upper(), " " + TOKEN,
                                   "y" * len(TOKEN), "z" * 5000, 12345, None],
                         ids=["empty", "short", "prefix", "longer", "upper", "space", "same-length",
                              "over-the-limit", "int", "nil"])
def test_wrong_token_is_refused(secured, token):
    with _connect(secured.tcp_url, TIMEOUT) as s:
        req = hello()
        req["token"] = token  # None packs nil: present but not a str
        msg = refused(s, req)
        assert TOKEN not in msg


def test_wrong_token_from_the_client(secured):
    with pytest.raises(PicogradError) as ei:
        picograd.Connection(secured.tcp_url, timeout=TIMEOUT, token="not-the-token")
    assert ei.value.code == "unauthorized"
    with pytest.raises(PicogradError) as ei:
        picograd.Connection(secured.tcp_url, timeout=TIMEOUT, token="")  # "": no token sent
    assert ei.value.code == "unauthorized"


def test_right_token_as_argument(secured, monkeypatch):
    monkeypatch.delenv("PICOGRAD_TOKEN", raising=False)
    x = np.arange(300_000, dtype=np.float32)  # a frame over the pre-hello limit, after hello
    with picograd.Connection(secured.tcp_url, timeout=TIMEOUT, token=TOKEN) as c:
        c.ping()
        h = c.put(x)
        np.testing.assert_array_equal(c.get(h), x)
        assert c.server_info["server"] == "picogradd"
    # White space around a token is not part of it, as in the token file.
    with picograd.Connection(secured.tcp_url, timeout=TIMEOUT, token=f"  {TOKEN}\n") as c:
        c.ping()
        c.reconnect()  # a new session, the same token
        c.ping()


def test_right_token_from_the_environment(secured, monkeypatch):
    monkeypatch.setenv("PICOGRAD_TOKEN", TOKEN)
    c = picograd.connect(secured.tcp_url, timeout=TIMEOUT)
    try:
        assert (picograd.tensor([1.0, 2.0]) * 3).tolist() == [3.0, 6.0]
    finally:
        c.close()
    monkeypatch.setenv("PICOGRAD_TOKEN", "wrong")
    with pytest.raises(PicogradError) as ei:
        picograd.connect(secured.tcp_url, timeout=TIMEOUT)
    assert ei.value.code == "unauthorized"
    # An explicit argument wins over the environment.
    picograd.connect(secured.tcp_url, timeout=TIMEOUT, token=TOKEN).close()


def test_token_as_bin_and_pipelined_after_hello(secured):
    with _connect(secured.tcp_url, TIMEOUT) as s:
        s.sendall(frame(hello(TOKEN.encode())) + frame({"id": 2, "op": "ping"}))
        assert read_reply(s)["ok"] is True
        assert read_reply(s) == {"id": 2, "ok": True}


def test_wrong_version_with_the_right_token_keeps_the_connection(secured):
    with _connect(secured.tcp_url, TIMEOUT) as s:
        s.sendall(frame(hello(TOKEN, version=99)))
        assert error_code(read_reply(s)) == "version_mismatch"
        # Not authenticated yet: a ping is still refused.
        refused(s, {"id": 5, "op": "ping"})
    with _connect(secured.tcp_url, TIMEOUT) as s:
        s.sendall(frame(hello(TOKEN, version=99)) + frame(hello(TOKEN, id=2)) +
                  frame({"id": 3, "op": "ping"}))
        assert error_code(read_reply(s)) == "version_mismatch"
        assert read_reply(s)["ok"] is True
        assert read_reply(s) == {"id": 3, "ok": True}


def test_large_frame_before_hello_is_refused_unread(secured):
    with _connect(secured.tcp_url, TIMEOUT) as s:
        # The length prefix of a 512 MiB frame: refused at once, nothing reserved or read.
        s.sendall(struct.pack(">I", 512 << 20) + b"\x82")
        reply = read_reply(s)
        assert error_code(reply) == "unauthorized" and reply["id"] is None, reply
        assert "65536" in reply["error"]["message"], reply
        assert_closed(s)
    with picograd.Connection(secured.unix_url, timeout=TIMEOUT) as c:
        assert c.stats()["bytes_in_use"] < 1 << 20  # only this stats request's own frame


def test_unix_socket_needs_no_token(secured):
    s = open_raw(secured.unix_url, hello=False)
    with s:
        s.sendall(frame({"id": 4, "op": "ping"}))  # no hello at all
        assert read_reply(s) == {"id": 4, "ok": True}
    with picograd.Connection(secured.unix_url, timeout=TIMEOUT, token="ignored") as c:
        c.ping()


def test_refusals_are_counted_and_logged(secured):
    for _ in range(3):
        with _connect(secured.tcp_url, TIMEOUT) as s:
            refused(s, hello("bad"))
    with picograd.Connection(secured.unix_url, timeout=TIMEOUT) as c:
        stats = c.stats()
    assert stats["errors"].get("unauthorized", 0) == 3, stats["errors"]
    assert "unauthorized: wrong token" in secured.log()
    assert TOKEN not in secured.log()


def test_many_refused_connections_leave_the_daemon_serving(secured):
    socks = [_connect(secured.tcp_url, TIMEOUT) for _ in range(20)]
    for i, s in enumerate(socks):
        s.sendall(frame({"id": i, "op": "ping"}))
    for s in socks:
        assert error_code(read_reply(s)) == "unauthorized"
        assert_closed(s)
        s.close()
    with picograd.Connection(secured.tcp_url, timeout=TIMEOUT, token=TOKEN) as c:
        c.ping()
        assert c.stats()["sessions"] == 1


# ------------------------------------------------------------------------------------------------
# Start-up: --insecure, --token-file
# ------------------------------------------------------------------------------------------------

def wait_exit(d, timeout=10):
    rc = d.proc.wait(timeout)
    return rc, d.log()


def test_tcp_without_token_file_refuses_to_start(daemon_factory):
    d = daemon_factory(insecure=False, wait=False)
    rc, log = wait_exit(d)
    assert rc == 1, log
    assert "--token-file" in log and "--insecure" in log, log
    assert not d.socket_path.exists()  # nothing was opened


def test_insecure_tcp_needs_no_token(daemon_factory):
    d = daemon_factory()  # the fixture's default: --insecure
    assert "needs no token (--insecure)" in d.log()
    with _connect(d.tcp_url, TIMEOUT) as s:
        s.sendall(frame({"id": 1, "op": "ping"}))
        assert read_reply(s) == {"id": 1, "ok": True}


def test_unix_only_needs_neither(daemon_factory, tmp_path):
    # A Unix listener alone starts without --token-file or --insecure.
    d = daemon_factory(insecure=False, listen=[f"unix://{tmp_path}/only.sock"], name="only")
    with picograd.Connection(d.unix_url, timeout=TIMEOUT) as c:
        c.ping()


@pytest.mark.parametrize("content", ["  \t" + TOKEN + "\n\n", TOKEN, "\n" + TOKEN + " \r\n"],
                         ids=["spaces-newlines", "bare", "crlf"])
def test_token_file_white_space_is_stripped(daemon_factory, content):
    d = daemon_factory(token=content)
    with picograd.Connection(d.tcp_url, timeout=TIMEOUT, token=TOKEN) as c:
        c.ping()
    with _connect(d.tcp_url, TIMEOUT) as s:  # the raw token with the file's white space: wrong
        refused(s, hello(content if content != TOKEN else TOKEN + "\n"))


@pytest.mark.parametrize("content,why", [("", "empty"), (" \n\t\n", "empty"),
                                         ("t" * 1025, "at most 1024")])
def test_bad_token_file_refuses_to_start(daemon_factory, content, why):
    d = daemon_factory(token=content, wait=False)
    rc, log = wait_exit(d)
    assert rc == 1, log
    assert why in log, log


def test_missing_token_file_refuses_to_start(daemon_factory, tmp_path):
    d = daemon_factory(insecure=False, extra_args=["--token-file", str(tmp_path / "nope")],
                       wait=False)
    rc, log = wait_exit(d)
    assert rc == 1 and "cannot open" in log, log


def test_readable_token_file_warns(daemon_factory):
    d = daemon_factory(token=TOKEN, wait=False)
    d.stop()
    d.token_path.chmod(0o644)
    d.start()
    assert "can be read by its group or others" in d.log()
    with picograd.Connection(d.tcp_url, timeout=TIMEOUT, token=TOKEN) as c:
        c.ping()


# ------------------------------------------------------------------------------------------------
# Unix socket permissions
# ------------------------------------------------------------------------------------------------

def socket_mode(d):
    return stat.S_IMODE(os.stat(d.socket_path).st_mode)


def test_unix_socket_is_0600_by_default(daemon_factory):
    old = os.umask(0)  # a permissive umask must not widen the socket
    try:
        d = daemon_factory()
    finally:
        os.umask(old)
    assert socket_mode(d) == 0o600


@pytest.mark.parametrize("mode", [0o660, 0o666, 0o700, 0o400])
def test_socket_mode_is_honoured(daemon_factory, mode):
    d = daemon_factory(extra_args=["--socket-mode", oct(mode)[2:].rjust(4, "0")])
    assert socket_mode(d) == mode
    if mode & 0o200:
        with picograd.Connection(d.unix_url, timeout=TIMEOUT) as c:
            c.ping()


@pytest.mark.parametrize("bad", ["999", "0x1ff", "-1", "01000", "", "rw"])
def test_bad_socket_mode_refuses_to_start(daemon_factory, bad):
    d = daemon_factory(extra_args=["--socket-mode", bad], wait=False)
    rc, log = wait_exit(d)
    assert rc == 1 and "--socket-mode" in log, log


# ------------------------------------------------------------------------------------------------
# Socket activation (LISTEN_FDS)
# ------------------------------------------------------------------------------------------------

# Moves the inherited sockets to fds 3.., sets LISTEN_PID to its own pid (which exec keeps) and
# LISTEN_FDS, then becomes the daemon: what systemd does between fork and exec.
WRAPPER = r"""
import os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
pid = os.getpid() if sys.argv[2] == "self" else int(sys.argv[2])
high = [os.dup(fd) for fd in fds]          # out of the way of 3.. first
high = [os.dup2(fd, 100 + i) or 100 + i for i, fd in enumerate(high)]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_PID"] = str(pid)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_FDNAMES"] = ":".join("pg" for _ in fds)
os.execv(sys.argv[3], sys.argv[3:])
"""


class Activated:
    """A daemon started with listening sockets passed as by systemd."""

    def __init__(self, tmp_path, socks, args=(), pid="self"):
        self.log_path = tmp_path / f"activated{len(list(tmp_path.glob('activated*')))}.log"
        self._log = open(self.log_path, "wb")
        argv = [sys.executable, "-c", WRAPPER, ",".join(str(s.fileno()) for s in socks), pid,
                str(DAEMON_BIN), "--log-level", "info"] + DAEMON_ARGS + list(args)
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     pass_fds=[s.fileno() for s in socks])

    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, n):
        deadline = time.monotonic() + 10
        while self.log().count("listening on") < n:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.01)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(EXIT_TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        found = [m for m in SANITIZER_MARKERS if m in self.log()]
        assert not found, self.log()
        return rc


def unix_listener(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    os.chmod(path, 0o660)  # what systemd's SocketMode=0660 does
    s.listen(16)
    return s


def test_socket_activation_unix(tmp_path):
    path = tmp_path / "activated.sock"
    lst = unix_listener(path)
    d = Activated(tmp_path, [lst])
    lst.close()  # the daemon holds its own copy
    try:
        d.wait_listening(1)
        time.sleep(0.2)
        log = d.log()
        assert f"listening on unix://{path} (socket activation)" in log, log
        assert log.count("listening on") == 1, log  # no default socket besides
        with picograd.Connection(f"unix://{path}", timeout=TIMEOUT) as c:
            x = np.arange(6, dtype=np.float32)
            np.testing.assert_array_equal(c.get(c.put(x)), x)
        with picograd.Connection(f"unix://{path}", timeout=TIMEOUT) as c:
            c.ping()  # a second connection: the inherited socket keeps accepting
    finally:
        rc = d.stop()
    assert rc == 0, d.log()
    # The socket file belongs to whoever passed it (systemd removes it): left in place.
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660  # --socket-mode is not applied to it


def test_socket_activation_tcp_needs_the_token(tmp_path):
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    port = lst.getsockname()[1]
    tok = tmp_path / "tok"
    tok.write_text(TOKEN)
    tok.chmod(0o600)
    upath = tmp_path / "also.sock"
    d = Activated(tmp_path, [lst], ["--token-file", str(tok), "--listen", f"unix://{upath}"])
    lst.close()
    try:
        d.wait_listening(2)  # the inherited socket and --listen
        assert f"listening on tcp://127.0.0.1:{port} (socket activation) (token required)" in \
            d.log(), d.log()
        url = f"tcp://127.0.0.1:{port}"
        with _connect(url, TIMEOUT) as s:
            refused(s, {"id": 1, "op": "ping"})
        with picograd.Connection(url, timeout=TIMEOUT, token=TOKEN) as c:
            c.ping()
        with picograd.Connection(f"unix://{upath}", timeout=TIMEOUT) as c:
            c.ping()
    finally:
        rc = d.stop()
    assert rc == 0, d.log()
    assert not upath.exists()  # its own --listen socket is removed as usual


def test_socket_activation_tcp_without_token_refuses_to_start(tmp_path):
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    d = Activated(tmp_path, [lst])
    lst.close()
    rc = d.proc.wait(10)
    d.stop()
    assert rc == 1, d.log()
    assert "--token-file" in d.log() and "--insecure" in d.log(), d.log()


def test_socket_activation_for_another_pid_is_ignored(tmp_path):
    path = tmp_path / "notmine.sock"
    lst = unix_listener(path)
    own = tmp_path / "own.sock"
    d = Activated(tmp_path, [lst], ["--listen", f"unix://{own}"], pid="1")
    try:
        d.wait_listening(1)
        time.sleep(0.2)
        assert d.log().count("listening on") == 1 and str(own) in d.log(), d.log()
        with picograd.Connection(f"unix://{own}", timeout=TIMEOUT) as c:
            c.ping()
    finally:
        rc = d.stop()
        lst.close()
    assert rc == 0, d.log()


# ------------------------------------------------------------------------------------------------
# The C client
# ------------------------------------------------------------------------------------------------

def test_c_client_token_from_the_environment(secured):
    example = DAEMON_BIN.parent / "pg_example_put_get"
    if not example.exists():
        pytest.skip(f"{example} is not built")
    env = dict(os.environ)
    env.pop("PICOGRAD_TOKEN", None)
    p = subprocess.run([str(example), secured.tcp_url], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 1 and "unauthorized" in p.stderr, (p.stdout, p.stderr)
    env["PICOGRAD_TOKEN"] = "wrong"
    p = subprocess.run([str(example), secured.tcp_url], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 1 and "wrong token" in p.stderr, (p.stdout, p.stderr)
    env["PICOGRAD_TOKEN"] = f" {TOKEN}\n"
    p = subprocess.run([str(example), secured.tcp_url], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "handle 1: float32 [2, 3] = 1 2 3 4 5 6" in p.stdout, p.stdout
