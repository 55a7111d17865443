"""picograd.client: ``Connection``, one session with picogradd, and the module's default connection.

A Connection owns one socket. Everything the daemon holds for it (tensor handles) belongs to that
session and is freed by the daemon when the socket closes, so a handle is only meaningful on the
Connection that created it. The framing and the zero-copy paths live in ``picograd.wire``; this
module adds request ids, the op helpers (put/get/free/stats/ping), error mapping and locking.

    import numpy as np, picograd
    with picograd.Connection("unix:///tmp/picogradd-1000.sock") as pg:
        h = pg.put(np.arange(6, dtype=np.float32).reshape(2, 3))
        print(pg.get(h))
        pg.free(h)
"""

import itertools
import operator
import socket
import threading

import numpy as np

from . import wire
from .wire import PicogradError

__all__ = ["Connection", "connect", "default_connection", "DTYPES"]

# numpy (kind, itemsize) -> wire dtype name, and back. Keyed by kind and size rather than by dtype
# object so that every spelling numpy has for the same type ('i8', 'l', 'q', int) maps the same.
_WIRE_DTYPE = {
    ("f", 4): "float32",
    ("f", 8): "float64",
    ("i", 4): "int32",
    ("i", 8): "int64",
    ("b", 1): "bool",
}
# Wire data is little-endian (PROTOCOL.md section 5); '<' makes that explicit on any host.
DTYPES = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("?"),
}

CLIENT_NAME = "picograd-python"
PROTOCOL_VERSION = 1


class Connection:
    """One connection, hence one session, to picogradd.

    ``url`` is ``unix:///abs/path`` or ``tcp://host:port`` (default: ``wire.default_url()``);
    ``timeout`` (seconds, None for none) bounds each connect, send and receive. ``token`` is the
    daemon's shared token (default: ``$PICOGRAD_TOKEN``), sent in ``hello``: a TCP listener of a
    daemon started with ``--token-file`` requires it and answers ``unauthorized`` (closing the
    connection) without it; Unix sockets ignore it. It crosses TCP in clear (README, "Security").
    Opening sends ``hello`` and keeps its reply in ``server_info``.

    Thread safety: ``call`` and the op helpers hold a lock from sending a request to reading its
    reply, so threads may share a Connection (their requests simply take turns). ``send``/``recv``
    pipelining is for one thread at a time: replies come back in request order, and a ``call``
    made while pipelined replies are unread raises ``busy`` rather than read someone else's reply.
    One connection per thread is faster when threads do heavy transfers.
    """

    def __init__(self, url=None, timeout=None, token=None):
        self.url = url if url is not None else wire.default_url()
        self._address = wire.parse_url(self.url)
        self.timeout = timeout
        self._token = token.strip() if token is not None else wire.default_token()
        self.server_info = None
        self._sock = None
        self._reader = None
        self._ids = itertools.count(1)  # next() on a count is atomic under the GIL
        self._call_lock = threading.RLock()  # one call() round trip at a time
        self._send_lock = threading.RLock()  # one frame being written at a time
        self._recv_lock = threading.RLock()  # one frame being read at a time
        self._pending_lock = threading.Lock()
        self._pending = 0  # requests sent by send() whose replies recv() has not returned yet
        self._open()

    # ---------------------------------------------------------------------------------------
    # Lifecycle
    # ---------------------------------------------------------------------------------------

    def _open(self):
        self._sock = wire.open_socket(self._address, self.timeout)
        self._reader = wire.FrameReader(self._sock)
        self._pending = 0
        try:
            fields = {"version": PROTOCOL_VERSION, "client": CLIENT_NAME}
            if self._token:
                fields["token"] = self._token
            self.server_info = self.call("hello", **fields)
        except BaseException:
            self.close()
            raise

    def reconnect(self):
        """Closes the current socket (if any) and opens a new session at the same URL.

        Handles of the old session are gone: the daemon freed them when the old socket closed.
        """
        with self._call_lock, self._send_lock, self._recv_lock:
            self._drop()
            self._open()

    def close(self):
        """Closes the connection; the daemon frees this session's tensors. Idempotent."""
        self._drop()

    def _drop(self):
        sock, self._sock = self._sock, None
        with self._pending_lock:
            self._pending = 0  # replies of a closed socket will never come: nothing is pending
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    @property
    def closed(self):
        return self._sock is None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        state = "closed" if self._sock is None else "open"
        return f"<picograd.Connection {self.url} {state}>"

    # ---------------------------------------------------------------------------------------
    # Frames in and out
    # ---------------------------------------------------------------------------------------

    def _live_socket(self):
        sock = self._sock
        if sock is None:
            raise PicogradError("disconnected", f"the connection to {self.url} is closed; "
                                                "call reconnect() to open a new session")
        return sock

    def _transport_error(self, exc):
        """Closes the socket after a failed send/receive and returns the PicogradError to raise.

        Any failure mid-frame leaves the byte stream at an unknown position, so the connection is
        unusable afterwards; closing it makes every later call fail fast as "disconnected".
        """
        self._drop()
        if isinstance(exc, PicogradError):
            return exc
        if isinstance(exc, socket.timeout):
            return PicogradError("timeout", f"no progress on {self.url} within {self.timeout} s; "
                                            "the connection was closed")
        if isinstance(exc, wire._Disconnected):
            return PicogradError("disconnected", f"{self.url}: the daemon closed the connection")
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return PicogradError("disconnected", f"{self.url}: {reason}")

    def _send_frame(self, buffers):
        with self._send_lock:
            sock = self._live_socket()
            try:
                wire.send_buffers(sock, buffers)
            except (OSError, PicogradError) as exc:
                raise self._transport_error(exc) from None
            except BaseException:
                self._drop()  # e.g. KeyboardInterrupt mid-frame: the stream is out of step
                raise

    def _recv_frame(self):
        with self._recv_lock:
            self._live_socket()
            try:
                return self._reader.read()
            except (OSError, PicogradError, wire._Disconnected) as exc:
                raise self._transport_error(exc) from None
            except BaseException:
                self._drop()  # e.g. KeyboardInterrupt mid-frame: the stream is out of step
                raise

    def _request_frame(self, op, fields):
        rid = next(self._ids)
        request = {"id": rid, "op": op}
        request.update(fields)
        return rid, wire.encode_frame(request)

    def _roundtrip(self, rid, buffers):
        with self._call_lock:
            if self._pending:
                raise PicogradError("busy", f"{self._pending} pipelined replies are still unread; "
                                            "recv() them before call()")
            self._send_frame(buffers)
            reply = self._recv_frame()
        if reply.get("ok") is True:
            if reply.get("id") != rid:
                self._drop()
                raise PicogradError("bad_reply", f"expected the reply to request {rid}, got "
                                                 f"{reply.get('id')!r}")
            return reply
        raise _reply_error(reply)

    # ---------------------------------------------------------------------------------------
    # Generic requests
    # ---------------------------------------------------------------------------------------

    def call(self, op, **fields):
        """Sends request ``op`` with ``fields`` and returns the whole reply dict.

        Raises PicogradError with the daemon's code when the reply has ``ok`` false.
        """
        rid, frame = self._request_frame(op, fields)
        return self._roundtrip(rid, [frame])

    def send(self, op, **fields):
        """Sends request ``op`` without waiting; returns its id. Read replies with recv()."""
        rid, frame = self._request_frame(op, fields)
        with self._pending_lock:
            self._pending += 1
        try:
            self._send_frame([frame])
        except BaseException:
            with self._pending_lock:
                self._pending -= 1
            raise
        return rid

    def exchange(self, op, fields):
        """Sends request ``op`` with the dict ``fields`` and returns (its id, the next reply),
        whatever the reply's ``ok``: the tensor layer's round trip (see tensor._exchange).

        It is send() then recv() without their bookkeeping of pipelined replies, which a caller
        holding ``_call_lock`` with nothing pipelined does not need. A training step's round
        trip usually starts with the client's caches cold (a step's data went through them
        since the last one), and then every Python call on the way costs microseconds.
        """
        rid, frame = self._request_frame(op, fields)
        self._send_frame((frame,))
        return rid, self._recv_frame()

    def recv(self):
        """Returns the next reply dict as received (``ok`` false does not raise).

        Replies come in request order. Large ``bin`` values (tensor data) are memoryviews.
        Raises PicogradError only for transport failures ("disconnected", "timeout", ...).
        """
        reply = self._recv_frame()
        with self._pending_lock:
            if self._pending:
                self._pending -= 1
        return reply

    # ---------------------------------------------------------------------------------------
    # Ops
    # ---------------------------------------------------------------------------------------

    def ping(self):
        """Round trip with no work; raises if the daemon does not answer."""
        self.call("ping")

    def stats(self):
        """Returns the daemon's counters (PROTOCOL.md `stats`), without ``id`` and ``ok``."""
        reply = self.call("stats")
        return {k: v for k, v in reply.items() if k not in ("id", "ok")}

    def put(self, array, device=None):
        """Uploads ``array`` (anything numpy.asarray accepts) and returns its handle (int).
        ``device`` ("cpu", "cuda", "cuda:N"; None: the daemon's default, the CPU) is sent as
        the request's `device`; a device the daemon does not have raises its no_device error.

        Supported dtypes are float32, float64, int32, int64 and bool; others raise
        PicogradError("bad_dtype") before anything is sent. The array's own memory is sent
        when it is C-contiguous and little-endian; otherwise one converted copy is made.
        """
        arr = np.asarray(array)
        name = _WIRE_DTYPE.get((arr.dtype.kind, arr.dtype.itemsize))
        if name is None:
            raise PicogradError("bad_dtype", f"numpy dtype {arr.dtype} has no picograd dtype "
                                             "(float32, float64, int32, int64, bool)")
        wire_dtype = DTYPES[name]
        if arr.dtype != wire_dtype:  # byte order only: kind and size already match
            arr = arr.astype(wire_dtype)
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        payload = arr.reshape(-1).view(np.uint8)
        nbytes = payload.nbytes

        rid = next(self._ids)
        packer = wire.packer()
        extra = (packer.pack("device"), packer.pack(str(device))) if device is not None else ()
        header = b"".join((
            packer.pack_map_header(5 + (device is not None)),
            *extra,
            packer.pack("id"), packer.pack(rid),
            packer.pack("op"), packer.pack("put"),
            packer.pack("dtype"), packer.pack(name),
            packer.pack("shape"), packer.pack([int(d) for d in arr.shape]),
            packer.pack("data"), wire.bin_header(nbytes),
        ))
        length = len(header) + nbytes
        if length > 0xFFFFFFFF:
            raise PicogradError("too_large", f"a put of {nbytes} bytes does not fit one frame")
        prefix = length.to_bytes(4, "big")
        return self._roundtrip(rid, [prefix + header, payload])["handle"]

    def get(self, handle):
        """Returns the tensor ``handle`` as a new numpy array (writable, C-contiguous).

        A large tensor's array wraps the buffer it was received into, with no further copy.
        """
        reply = self.call("get", handle=operator.index(handle))
        dtype = DTYPES.get(reply.get("dtype"))
        shape = reply.get("shape")
        data = reply.get("data")
        if dtype is None or not isinstance(shape, list) or data is None:
            raise PicogradError("bad_reply", "a get reply needs dtype, shape and data; got "
                                             f"dtype={reply.get('dtype')!r}")
        try:
            arr = np.frombuffer(data, dtype=dtype).reshape(shape)
        except (ValueError, TypeError) as exc:
            raise PicogradError("bad_reply", f"get data does not match dtype {reply['dtype']} "
                                             f"and shape {shape}: {exc}") from None
        if not arr.flags.writeable:  # small replies decode to bytes, which numpy cannot write
            arr = arr.copy()
        return arr

    def free(self, handle):
        """Frees tensor ``handle``; freeing it again raises unknown_handle."""
        self.call("free", handle=operator.index(handle))


def _reply_error(reply):
    """Returns the PicogradError described by an ``ok`` false (or malformed) reply."""
    err = reply.get("error")
    if isinstance(err, dict):
        return PicogradError(err.get("code", "internal"), err.get("message", ""))
    return PicogradError("bad_reply", f"a reply without ok=true or an error map: {reply!r:.200}")


# ---------------------------------------------------------------------------------------------
# The module default connection
# ---------------------------------------------------------------------------------------------

_default = None
_default_lock = threading.Lock()


def connect(url=None, timeout=None, token=None):
    """Opens a Connection (``token``: see Connection), makes it the module default and returns it.

    Calling it again replaces the default; earlier Connection objects stay open and usable.
    """
    global _default
    conn = Connection(url, timeout, token)
    with _default_lock:
        _default = conn
    return conn


def default_connection():
    """Returns the module default Connection, opening one to the default URL on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Connection()
        return _default
