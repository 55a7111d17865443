"""picograd.cuda: what the daemon says about its GPUs (``pg.cuda.is_available()``).

Everything here reads the ``devices`` list of the default connection's ``hello`` reply: the GPUs
are the daemon's, not this process's. A CUDA device is listed with its ``model``, ``memory`` and
``compute_capability``, and ``ready`` tells whether the daemon can run on it (no daemon can yet:
its CUDA runtime is not implemented; see the README).
"""

from .client import default_connection

__all__ = ["is_available", "device_count", "devices", "get_device_name",
           "get_device_capability", "get_device_properties"]


def devices(conn=None):
    """The CUDA devices the daemon lists (ready or not), as hello's maps, in index order."""
    conn = conn if conn is not None else default_connection()
    info = conn.server_info or {}
    return [d for d in info.get("devices", []) if isinstance(d, dict) and d.get("kind") == "cuda"]


def _ready(conn=None):
    return [d for d in devices(conn) if d.get("ready") is True]


def is_available(conn=None):
    """True when the daemon can run on at least one GPU."""
    return bool(_ready(conn))


def device_count(conn=None):
    """The number of GPUs the daemon can run on (listed GPUs it cannot use are not counted)."""
    return len(_ready(conn))


def _device(i, conn=None):
    listed = devices(conn)
    if isinstance(i, str) or hasattr(i, "index"):
        from .devices import as_device
        i = as_device(i).index or 0
    i = 0 if i is None else i
    if not 0 <= i < len(listed):
        raise AssertionError(f"invalid device ordinal {i}: the daemon lists {len(listed)} CUDA "
                             "device(s)")
    return listed[i]


def get_device_name(device=None, conn=None):
    """The model of a listed GPU ("NVIDIA H100 80GB HBM3")."""
    return _device(device, conn).get("model")


def get_device_capability(device=None, conn=None):
    """(major, minor) of a listed GPU, as torch.cuda.get_device_capability."""
    cc = _device(device, conn).get("compute_capability") or [0, 0]
    return (int(cc[0]), int(cc[1]))


def get_device_properties(device=None, conn=None):
    """hello's map of a listed GPU: name, model, memory, compute_capability, ready."""
    return dict(_device(device, conn))
