"""A pytest plugin that records the frames the Python client sends, per connection, as seeds for
pg_fuzz_graph (make_corpus.py --from-tests runs the integration suites with it).

For every `run` or `explain` a test sends whose session, up to that request, fits in
$PG_FUZZ_RECORD_MAX bytes (puts, runs and frees kept; reads, pings and stats left out), the
session prefix is written to $PG_FUZZ_RECORD_DIR behind 2 chunk-seed bytes, named by its hash.
"""

import hashlib
import os
from pathlib import Path

import msgpack

from picograd import client

OUT = Path(os.environ["PG_FUZZ_RECORD_DIR"])
MAX = int(os.environ.get("PG_FUZZ_RECORD_MAX", "16384"))
_sessions = {}  # id(connection) -> [kept frames, bytes]
_orig_send = client.Connection._send_frame
_orig_open = client.Connection._open


def _open(self):
    _sessions[id(self)] = [[], 0]
    return _orig_open(self)


def _send_frame(self, buffers):
    frame = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
    s = _sessions.setdefault(id(self), [[], 0])
    if s[1] + len(frame) <= MAX:
        op = msgpack.unpackb(frame[4:], raw=False).get("op")
        if op in ("put", "run", "free", "explain"):
            s[0].append(frame)
            s[1] += len(frame)
        if op in ("run", "explain"):
            data = hashlib.sha1(frame).digest()[:2] + b"".join(s[0])
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT / hashlib.sha1(data).hexdigest()).write_bytes(data)
    else:
        s[1] = MAX + 1  # a frame left out would shift the handles of later ones
    return _orig_send(self, buffers)


client.Connection._open = _open
client.Connection._send_frame = _send_frame
