"""picograd.wire: the client half of picograd's wire protocol (protocol/PROTOCOL.md), in Python.

This module knows bytes and sockets, not tensors: it parses daemon URLs and finds the default one,
builds frames (a 4-byte big-endian length, then one msgpack map), and reads reply frames back. It
is an independent second implementation of the framing next to the C codec in protocol/, so it is
written from PROTOCOL.md alone.

Tensor payloads can be hundreds of MiB, so both directions avoid copying them:

* A request that carries a tensor is sent as two buffers with one ``sendmsg``: a small header (the
  length prefix and every msgpack byte up to and including the ``bin`` header) and the caller's own
  array memory.
* A reply over ``SMALL_FRAME`` bytes is received straight into one buffer of its exact size, and
  ``walk_map`` finds the top-level values in place: small values are decoded with ``msgpack``, a
  ``bin`` is handed out as a ``memoryview`` slice of the buffer, so ``numpy.frombuffer`` can wrap
  it without a copy. ``msgpack.unpackb`` would copy every ``bin`` into a new ``bytes`` object.

Errors are ``PicogradError(code, message)``. Codes from the daemon are the tokens of PROTOCOL.md
section 4; the client adds its own for failures the daemon never sees (see ``CLIENT_CODES``).
"""

import os
import socket
import stat
import struct
import threading

import msgpack
import numpy as np

__all__ = [
    "PicogradError",
    "CLIENT_CODES",
    "DAEMON_CODES",
    "Address",
    "parse_url",
    "default_url",
    "default_url_candidates",
    "default_token",
    "SYSTEM_SOCKET",
    "open_socket",
    "encode_frame",
    "bin_header",
    "walk_map",
    "send_buffers",
    "FrameReader",
]

# The system service's socket (deploy/picogradd.socket), served to the members of group picograd.
SYSTEM_SOCKET = "/run/picogradd/picogradd.sock"

# The daemon's error codes (PROTOCOL.md section 4), each with what it means. A reply may carry a
# code added after this client was written: PicogradError keeps any code unchanged.
DAEMON_CODES = {
    "bad_frame": "framing error; the daemon closes the connection after the reply",
    "bad_request": "a well-formed map whose content is wrong (a field's type or value)",
    "unknown_op": "an op the daemon does not serve",
    "unknown_handle": "a handle this session does not own",
    "bad_shape": "a shape the daemon cannot hold, or shapes that do not fit together",
    "bad_dtype": "a dtype name or combination that is not supported",
    "too_large": "a size over a fixed limit",
    "out_of_memory": "the daemon's memory budget cannot hold the request now",
    "version_mismatch": "hello asked for a protocol version the daemon does not speak",
    "no_device": "a device the daemon does not have or cannot run on (cuda without a GPU)",
    "unauthorized": "no valid token: hello with the daemon's token first (TCP listeners); "
    "the daemon closes the connection after the reply",
    "timeout": "the request ran past the daemon's per-request time limit and was cancelled",
    "internal": "a bug or unexpected failure in the daemon; the request had no effect",
}

# Error codes the client raises itself. They never travel on the wire, so they may be added freely.
CLIENT_CODES = {
    "disconnected": "the connection is gone (daemon exited, connection reset, or closed locally)",
    "connect_failed": "no daemon accepted the connection at the URL",
    "timeout": "a send or receive took longer than the connection's timeout",
    "bad_url": "a URL that is not unix:///abs/path or tcp://host:port",
    "bad_reply": "the daemon sent bytes that are not a valid reply frame",
    "bad_dtype": "(also a daemon code) an array dtype with no picograd equivalent",
    "busy": "call() while pipelined requests from send() still await recv()",
}

# Replies up to this size are buffered and decoded by msgpack in one go; larger ones (tensor
# payloads) are received in place and walked by walk_map. 64 KiB keeps the copies of the small
# path cheap while the large path's Python-level walking stays rare.
SMALL_FRAME = 64 * 1024

# The daemon aligns `get` data to this many bytes from the frame start (length prefix included);
# large reply buffers are placed so that this alignment carries over to memory addresses.
DATA_ALIGN = 64

_LEN = struct.Struct(">I")
_MAX_U32 = 0xFFFFFFFF

# MSG_NOSIGNAL stops a write to a dead peer from raising SIGPIPE; Python ignores SIGPIPE already,
# but an embedding application might not. Linux has it; elsewhere 0 keeps the call valid.
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


class PicogradError(Exception):
    """An error with a stable token ``code`` and a human ``message``.

    ``str(err)`` is ``"code: message"`` so a traceback shows both. Daemon errors carry the daemon's
    code unchanged; see CLIENT_CODES for the codes raised by the client alone.
    """

    def __init__(self, code, message=""):
        super().__init__(code, message)
        self.code = str(code)
        self.message = str(message)

    def __str__(self):
        return f"{self.code}: {self.message}" if self.message else self.code

    def __repr__(self):
        return f"PicogradError({self.code!r}, {self.message!r})"


# --------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------


class Address:
    """A parsed daemon URL: ``kind`` is "unix" (``path`` set) or "tcp" (``host``, ``port`` set)."""

    __slots__ = ("kind", "path", "host", "port", "url")

    def __init__(self, kind, url, path=None, host=None, port=None):
        self.kind = kind
        self.url = url
        self.path = path
        self.host = host
        self.port = port

    def __repr__(self):
        return f"Address({self.url!r})"


def parse_url(url):
    """Parses ``unix:///abs/path``, ``tcp://host:port`` or ``tcp://[v6addr]:port`` into an Address.

    Raises PicogradError("bad_url") for anything else, naming what is wrong, because a typo in a
    URL otherwise surfaces later as a confusing connect error.
    """
    if not isinstance(url, str):
        raise PicogradError("bad_url", f"a URL must be a str, got {type(url).__name__}")
    if url.startswith("unix://"):
        path = url[len("unix://"):]
        if not path.startswith("/"):
            raise PicogradError("bad_url", f"{url!r}: a unix URL needs an absolute path "
                                           "(unix:///abs/path.sock)")
        if "\0" in path:
            raise PicogradError("bad_url", f"{url!r}: the path contains a NUL byte")
        return Address("unix", url, path=path)
    if url.startswith("tcp://"):
        rest = url[len("tcp://"):].rstrip("/")
        if rest.startswith("["):
            close = rest.find("]")
            if close < 0 or not rest[close + 1:].startswith(":"):
                raise PicogradError("bad_url", f"{url!r}: expected tcp://[ipv6]:port")
            host, port_text = rest[1:close], rest[close + 2:]
        else:
            host, sep, port_text = rest.rpartition(":")
            if not sep or ":" in host:
                raise PicogradError("bad_url", f"{url!r}: expected tcp://host:port "
                                               "(IPv6 hosts go in brackets)")
        if not host:
            raise PicogradError("bad_url", f"{url!r}: the host is empty")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise PicogradError("bad_url", f"{url!r}: the port must be 1 to 65535")
        return Address("tcp", url, host=host, port=int(port_text))
    raise PicogradError("bad_url", f"{url!r}: expected unix:///abs/path or tcp://host:port")


def default_url_candidates(environ=None, uid=None):
    """Returns the Unix socket URLs a client tries when given no URL, in PROTOCOL.md's order.

    ``$XDG_RUNTIME_DIR/picogradd.sock`` (the user's own daemon; only when the variable is set),
    ``/run/picogradd/picogradd.sock`` (the system service, deploy/picogradd.socket), then
    ``/tmp/picogradd-$UID.sock`` (a user's daemon without a runtime directory).
    """
    env = os.environ if environ is None else environ
    urls = []
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        urls.append("unix://" + runtime_dir.rstrip("/") + "/picogradd.sock")
    urls.append("unix://" + SYSTEM_SOCKET)
    if uid is None:
        uid = os.getuid()
    urls.append(f"unix:///tmp/picogradd-{uid}.sock")
    return urls


def _is_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def default_url(environ=None, uid=None, is_socket=None):
    """Returns the URL a client uses when given none, in PROTOCOL.md's order.

    ``PICOGRAD_URL`` wins; else the first of ``default_url_candidates()`` whose socket exists;
    else the first candidate, so that the connect error names the most likely place. The
    arguments exist for tests; by default the real environment, user id and file system are read.
    """
    env = os.environ if environ is None else environ
    url = env.get("PICOGRAD_URL")
    if url:
        return url
    is_socket = _is_socket if is_socket is None else is_socket
    candidates = default_url_candidates(env, uid)
    for candidate in candidates:
        if is_socket(candidate[len("unix://"):]):
            return candidate
    return candidates[0]


def default_token(environ=None):
    """Returns the token to send in hello when none is given: ``PICOGRAD_TOKEN`` without
    surrounding white space, or None when it is unset or empty."""
    env = os.environ if environ is None else environ
    return (env.get("PICOGRAD_TOKEN") or "").strip() or None


def open_socket(address, timeout=None):
    """Returns a new stream socket connected to ``address``; the caller owns and closes it.

    TCP sockets get TCP_NODELAY: requests are written whole, so Nagle's algorithm would only hold
    back the last segment of each and add a delayed-ACK round trip to every small request.
    Raises PicogradError("connect_failed") when nobody accepts.
    """
    try:
        if address.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((address.host, address.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        return sock
    except OSError as exc:
        raise PicogradError("connect_failed", f"cannot connect to {address.url}: "
                                              f"{exc.strerror or exc}") from None


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


# One reusable Packer per thread. msgpack.packb makes a Packer, hence a fresh 1 MiB buffer, per
# call; when the process has just freed large arrays (numpy's temporaries), glibc has returned the
# top of its heap to the kernel and that buffer comes back as new pages: packing a small request
# then took 270 us instead of 14 (measured after a numpy layer_norm on 4096x1024). A kept Packer
# keeps its buffer.
_packers = threading.local()
_PACKER_KEEP = 4 << 20  # a buffer grown past this by one big request is not kept


def packer():
    """Returns this thread's msgpack Packer (``use_bin_type``; each ``pack`` returns its bytes and
    resets it, also when it raises)."""
    p = getattr(_packers, "packer", None)
    if p is None:
        p = _packers.packer = msgpack.Packer(use_bin_type=True)
    return p


def encode_frame(obj):
    """Returns one whole frame (length prefix and msgpack body) for the map ``obj``."""
    body = packer().pack(obj)
    if len(body) > _PACKER_KEEP:
        _packers.packer = None
    if len(body) > _MAX_U32:
        raise PicogradError("too_large", f"a frame of {len(body)} bytes does not fit the 4-byte "
                                         "length prefix")
    return _LEN.pack(len(body)) + body


def bin_header(nbytes):
    """Returns the msgpack header of a ``bin`` of ``nbytes`` bytes (bin 8, 16 or 32).

    msgpack-python has no public call for a bare bin header, and the whole point is to send the
    payload from the caller's memory instead of through the packer.
    """
    if nbytes < 0x100:
        return b"\xc4" + bytes((nbytes,))
    if nbytes < 0x10000:
        return b"\xc5" + struct.pack(">H", nbytes)
    if nbytes <= _MAX_U32:
        return b"\xc6" + struct.pack(">I", nbytes)
    raise PicogradError("too_large", f"{nbytes} bytes do not fit one msgpack bin (max 4 GiB - 1)")


def send_buffers(sock, buffers):
    """Writes every buffer in ``buffers`` (bytes-like) to ``sock``, in order, completely.

    One ``sendmsg`` hands the kernel a header and a payload together without joining them in
    Python. It may write only part (a timeout socket, a signal), so the loop trims what was sent.
    OSErrors propagate; the caller turns them into PicogradError.
    """
    if len(buffers) == 1:  # a small request: sendall loops in C
        sock.sendall(buffers[0], _SEND_FLAGS)
        return
    views = [memoryview(b).cast("B") for b in buffers]
    views = [v for v in views if len(v)]
    while views:
        sent = sock.sendmsg(views, (), _SEND_FLAGS)
        while sent:
            head = len(views[0])
            if sent >= head:
                sent -= head
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


# --------------------------------------------------------------------------------------------
# Decoding large replies in place
# --------------------------------------------------------------------------------------------

# For each first byte of a msgpack object that is not a fix-format: (size of the length field,
# fixed extra bytes, kind). Kinds: "fixed" (length field 0: the object is 1 + extra bytes),
# "bytes" (str/bin: length field gives the payload size), "ext" (like bytes plus a type byte),
# "array"/"map" (length field gives the element count).
_FORMATS = {
    0xC0: (0, 0, "fixed"),   # nil
    0xC2: (0, 0, "fixed"),   # false
    0xC3: (0, 0, "fixed"),   # true
    0xC4: (1, 0, "bytes"),   # bin 8
    0xC5: (2, 0, "bytes"),   # bin 16
    0xC6: (4, 0, "bytes"),   # bin 32
    0xC7: (1, 1, "bytes"),   # ext 8 (type byte counted as extra)
    0xC8: (2, 1, "bytes"),   # ext 16
    0xC9: (4, 1, "bytes"),   # ext 32
    0xCA: (0, 4, "fixed"),   # float 32
    0xCB: (0, 8, "fixed"),   # float 64
    0xCC: (0, 1, "fixed"),   # uint 8
    0xCD: (0, 2, "fixed"),   # uint 16
    0xCE: (0, 4, "fixed"),   # uint 32
    0xCF: (0, 8, "fixed"),   # uint 64
    0xD0: (0, 1, "fixed"),   # int 8
    0xD1: (0, 2, "fixed"),   # int 16
    0xD2: (0, 4, "fixed"),   # int 32
    0xD3: (0, 8, "fixed"),   # int 64
    0xD4: (0, 2, "fixed"),   # fixext 1
    0xD5: (0, 3, "fixed"),   # fixext 2
    0xD6: (0, 5, "fixed"),   # fixext 4
    0xD7: (0, 9, "fixed"),   # fixext 8
    0xD8: (0, 17, "fixed"),  # fixext 16
    0xD9: (1, 0, "bytes"),   # str 8
    0xDA: (2, 0, "bytes"),   # str 16
    0xDB: (4, 0, "bytes"),   # str 32
    0xDC: (2, 0, "array"),   # array 16
    0xDD: (4, 0, "array"),   # array 32
    0xDE: (2, 0, "map"),     # map 16
    0xDF: (4, 0, "map"),     # map 32
}

_BIN_TYPES = (0xC4, 0xC5, 0xC6)


def _bad(message):
    return PicogradError("bad_reply", message)


def _header(buf, pos, end):
    """Reads the header of the object at ``pos``.

    Returns (kind, children, payload_start, object_end): ``children`` is how many objects follow
    inside it (array elements, or 2 per map entry) and ``object_end`` is where its own bytes end
    (for containers, where their first child starts). Raises bad_reply on a truncated header or a
    length running past ``end``.
    """
    if pos >= end:
        raise _bad(f"msgpack object expected at offset {pos}, frame ends at {end}")
    b = buf[pos]
    if b <= 0x7F or b >= 0xE0:
        return "fixed", 0, pos + 1, pos + 1
    if b <= 0x8F:
        return "map", 2 * (b & 0x0F), pos + 1, pos + 1
    if b <= 0x9F:
        return "array", b & 0x0F, pos + 1, pos + 1
    if b <= 0xBF:
        n = b & 0x1F
        if pos + 1 + n > end:
            raise _bad(f"str of {n} bytes at offset {pos} runs past the frame end {end}")
        return "bytes", 0, pos + 1, pos + 1 + n
    fmt = _FORMATS.get(b)
    if fmt is None:
        raise _bad(f"byte 0x{b:02x} at offset {pos} is not a msgpack type")
    width, extra, kind = fmt
    start = pos + 1 + width
    if start > end:
        raise _bad(f"msgpack header at offset {pos} is truncated")
    n = int.from_bytes(buf[pos + 1:start], "big") if width else 0
    if kind == "fixed":
        obj_end = start + extra
    elif kind == "bytes":
        start += extra
        obj_end = start + n
    else:
        # Each element takes at least one byte, so a count beyond the bytes left is a lie that
        # would otherwise make the walk loop for a very long time before failing.
        if n > end - start:
            raise _bad(f"{kind} of {n} elements at offset {pos} cannot fit in the frame")
        return kind, n * 2 if kind == "map" else n, start, start
    if obj_end > end:
        raise _bad(f"msgpack object at offset {pos} runs past the frame end {end}")
    return kind, 0, start, obj_end


def _skip(buf, pos, end):
    """Returns the offset just past the object at ``pos``, children included.

    Not recursive: it counts the objects still owed by the containers opened so far, so hostile
    nesting cannot exhaust Python's stack.
    """
    owed = 1
    while owed:
        _, children, _, pos = _header(buf, pos, end)
        owed += children - 1
    return pos


def walk_map(buf):
    """Decodes the msgpack map filling ``buf`` (a memoryview of exactly one frame body).

    Returns a dict whose ``bin`` values are memoryview slices of ``buf`` (no copy) and whose other
    values are decoded by ``msgpack.unpackb``. Only the top level is walked: a bin nested in an
    array or map comes back as bytes, which is fine because the daemon only puts tensor data at
    the top level. Raises PicogradError("bad_reply") on anything that is not exactly one map.
    """
    end = len(buf)
    kind, children, _, pos = _header(buf, 0, end)
    if kind != "map":
        raise _bad("the reply is not a msgpack map")
    out = {}
    for _ in range(children // 2):
        key_end = _skip(buf, pos, end)
        try:
            key = msgpack.unpackb(buf[pos:key_end], raw=False)
        except Exception as exc:  # msgpack raises several types; all mean the same here.
            raise _bad(f"cannot decode a reply key: {exc}") from None
        pos = key_end
        if pos < end and buf[pos] in _BIN_TYPES:
            _, _, start, value_end = _header(buf, pos, end)
            out[key] = buf[start:value_end]
        else:
            value_end = _skip(buf, pos, end)
            try:
                out[key] = msgpack.unpackb(buf[pos:value_end], raw=False, strict_map_key=False)
            except Exception as exc:
                raise _bad(f"cannot decode the reply value of {key!r}: {exc}") from None
        pos = value_end
    if pos != end:
        raise _bad(f"{end - pos} trailing bytes after the reply map")
    return out


# --------------------------------------------------------------------------------------------
# Reading frames
# --------------------------------------------------------------------------------------------


class _Disconnected(Exception):
    """Raised by FrameReader on end of stream; the caller turns it into PicogradError."""


class FrameReader:
    """Reads reply frames from one socket.

    Small frames go through a reusable buffer that is refilled with large ``recv_into`` calls, so
    a burst of pipelined replies costs a few system calls rather than two per reply. A large frame
    gets its own buffer of exactly its size, already-buffered bytes are moved into it, and the rest
    is received straight into it. The reader borrows the socket; whoever created it closes it.
    """

    def __init__(self, sock, small_frame=SMALL_FRAME):
        self.sock = sock
        self.small_frame = small_frame
        self._buf = bytearray(max(4 * small_frame, 256 * 1024))
        self._view = memoryview(self._buf)
        self._start = 0  # first unread byte in _buf
        self._end = 0    # one past the last received byte in _buf

    def _recv_into(self, view):
        n = self.sock.recv_into(view)
        if n == 0:
            raise _Disconnected("the daemon closed the connection")
        return n

    def _fill(self, need):
        """Makes at least ``need`` unread bytes available in _buf (need <= len(_buf))."""
        if self._end - self._start >= need:
            return
        if len(self._buf) - self._start < need:
            # Move the unread tail to the front so that `need` bytes fit behind it.
            have = self._end - self._start
            self._view[:have] = self._view[self._start:self._end]
            self._start, self._end = 0, have
        while self._end - self._start < need:
            self._end += self._recv_into(self._view[self._end:])

    def read(self):
        """Returns the next reply as a dict. Raises _Disconnected on EOF, PicogradError
        ("bad_reply") on a malformed frame, OSError on socket errors."""
        self._fill(4)
        (n,) = _LEN.unpack_from(self._buf, self._start)
        self._start += 4
        if n == 0:
            raise _bad("a reply frame with length 0")
        if n <= self.small_frame:
            self._fill(n)
            body = self._view[self._start:self._start + n]
            self._start += n
            try:
                reply = msgpack.unpackb(body, raw=False, strict_map_key=False)
            except Exception as exc:
                raise _bad(f"cannot decode a reply of {n} bytes: {exc}") from None
            finally:
                body.release()
            if not isinstance(reply, dict):
                raise _bad("the reply is not a msgpack map")
            return reply
        return walk_map(self._read_large(n))

    def _read_large(self, n):
        # np.empty rather than bytearray: bytearray(n) zero-fills, which for a 512 MiB reply is a
        # pointless pass over memory that recv_into is about to overwrite anyway.
        raw = np.empty(n + DATA_ALIGN, dtype=np.uint8)
        # Place the body so that frame offset 0 (the length prefix, 4 bytes before the body) would
        # sit on a DATA_ALIGN boundary; the daemon's aligned `data` then is aligned in memory too.
        offset = (4 - raw.ctypes.data) % DATA_ALIGN
        body = memoryview(raw)[offset:offset + n]
        have = min(self._end - self._start, n)
        body[:have] = self._view[self._start:self._start + have]
        self._start += have
        if self._start == self._end:
            self._start = self._end = 0
        while have < n:
            have += self._recv_into(body[have:])
        return body
