"""picograd: the Python client of picogradd, a daemon that holds tensors for its clients.

Connect, upload numpy arrays, get them back by handle:

    import numpy as np, picograd
    pg = picograd.connect()              # PICOGRAD_URL, else the default Unix socket
    h = pg.put(np.ones((2, 3), np.float32))
    assert (pg.get(h) == 1).all()
    pg.free(h)

The wire protocol is protocol/PROTOCOL.md; ``picograd.wire`` implements it and ``picograd.client``
wraps it in ``Connection``.
"""

from .client import DTYPES, Connection, connect, default_connection
from .wire import PicogradError, default_url, parse_url

__version__ = "0.1.0"

__all__ = [
    "Connection",
    "PicogradError",
    "connect",
    "default_connection",
    "default_url",
    "parse_url",
    "DTYPES",
    "__version__",
]
