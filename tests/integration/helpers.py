"""Helpers shared by the integration tests: raw sockets for hand-made bytes, and polling.

The raw helpers deliberately do not use the picograd client, so malformed frames reach the daemon
exactly as written and its replies are read back without the client's interpretation.
"""

import socket
import struct
import time

import msgpack

TIMEOUT = 60.0  # seconds per socket operation: a hung daemon fails a test instead of the run


def open_raw(url, timeout=10.0, hello=True):
    """Returns a plain socket connected to ``url`` for writing hand-made bytes.

    With ``hello`` it first performs the hello handshake (id 0), as a real client does, so that
    what the test sends next is judged on its own and not as a request before hello.
    """
    s = _connect(url, timeout)
    if hello:
        s.sendall(frame({"id": 0, "op": "hello", "version": 1, "client": "raw-test"}))
        reply = read_reply(s)
        assert reply and reply.get("ok") is True, f"hello failed: {reply!r}"
    return s


def _connect(url, timeout):
    kind, _, rest = url.partition("://")
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(rest)
    else:
        host, _, port = rest.rpartition(":")
        s = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def frame(obj):
    """One frame (length prefix + msgpack) holding ``obj``, which need not be a map."""
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def read_body(sock):
    """Reads one frame from a raw socket; returns its body bytes, or None on EOF."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    body = _recv_exact(sock, n)
    assert body is not None, f"the connection closed inside a {n}-byte reply"
    return body


def read_reply(sock):
    """Reads one reply frame from a raw socket; returns the decoded object, or None on EOF."""
    body = read_body(sock)
    if body is None:
        return None
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def _recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:])
        except ConnectionResetError:
            k = 0
        if k == 0:
            if got == 0:
                return None
            raise AssertionError(f"the connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def assert_closed(sock, timeout=5.0):
    """Asserts that the peer closed ``sock`` (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        return
    except socket.timeout:
        raise AssertionError(f"the daemon kept the connection open for {timeout} s") from None
    assert data == b"", f"expected the connection closed, got {len(data)} more bytes: {data[:64]!r}"


def wait_for(predicate, timeout=5.0, interval=0.02):
    """Polls ``predicate()`` until it is truthy; returns its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def request(sock, obj):
    """Sends ``obj`` as one frame on a raw socket and returns the decoded reply (None on EOF)."""
    sock.sendall(frame(obj))
    return read_reply(sock)


def error_code(reply):
    """The error code of a reply dict, or None for a success reply."""
    assert isinstance(reply, dict), f"expected a reply map, got {reply!r}"
    if reply.get("ok") is True:
        return None
    assert reply.get("ok") is False, f"reply without a bool ok: {reply!r}"
    return reply["error"]["code"]


def wait_stats(conn, timeout=5.0, **want):
    """Polls ``conn.stats()`` until every ``key=value`` in ``want`` holds; returns the last stats.

    Closing a connection frees its session asynchronously in the daemon, so counters settle a
    moment after the client's close() returns.
    """
    last = {}

    def settled():
        last.update(conn.stats())
        return all(last.get(k) == v for k, v in want.items())

    wait_for(settled, timeout)
    return last
