"""picograd.devices: ``pg.device``, where a tensor lives, named as in PyTorch.

A device is ``"cpu"``, ``"cuda"`` (the daemon's first GPU) or ``"cuda:N"``. The daemon decides
which devices exist (``hello`` lists them; ``pg.cuda.is_available()`` reads that list): the client
only checks the spelling, and sends every other device to the daemon, whose ``no_device`` error
(naming the device and saying why) is what a request for a GPU it does not have raises.

    pg.device("cuda:1")          # device(type='cuda', index=1)
    str(pg.device("cpu"))        # 'cpu'
    pg.zeros(3).device           # device(type='cpu')
"""

import operator
import re

from .wire import PicogradError

__all__ = ["device", "as_device", "CPU", "set_default_device", "get_default_device"]

_SPEC = re.compile(r"(cpu|cuda)(?::(0|[1-9][0-9]{0,8}))?")


class device:
    """A device: ``.type`` ("cpu" or "cuda") and ``.index`` (an int, or None for "cuda" and
    "cpu"). Made from a string ("cuda:0"), a type and an index (device("cuda", 0)), an int (a
    CUDA index, as torch), another device or a torch.device. A malformed spelling raises
    PicogradError("bad_request"), the daemon's code for one."""

    __slots__ = ("type", "index")

    def __init__(self, type, index=None):
        if isinstance(type, device):
            type, index = type.type, type.index if index is None else index
        elif not isinstance(type, (str, int)) and hasattr(type, "type"):  # a torch.device
            type, index = type.type, type.index if index is None else index
        elif isinstance(type, int) and not isinstance(type, bool) and index is None:
            type, index = "cuda", type
        if not isinstance(type, str):
            raise PicogradError("bad_request", f"a device is a string like 'cpu' or 'cuda:0', "
                                               f"got {type!r}")
        m = _SPEC.fullmatch(type)
        if m is None:
            raise PicogradError("bad_request", "a device must be \"cpu\", \"cuda\" or \"cuda:N\" "
                                               f"(N a device number), got {type!r}")
        kind, idx = m.group(1), m.group(2)
        if idx is not None:
            if index is not None:
                raise PicogradError("bad_request", f"device {type!r} already has an index; "
                                                   f"got another one, {index!r}")
            index = int(idx)
        if index is not None:
            index = operator.index(index)
            if index < 0:
                raise PicogradError("bad_request", f"device index must be >= 0, got {index}")
            if kind == "cpu":
                if index != 0:
                    raise PicogradError("bad_request", f"the CPU has one device (index 0), "
                                                       f"got cpu:{index}")
                index = None  # "cpu:0" is the CPU, shown as "cpu"
        object.__setattr__(self, "type", kind)
        object.__setattr__(self, "index", index)

    def __setattr__(self, name, value):
        raise AttributeError("a device is immutable")

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self):
        if self.index is None:
            return f"device(type={self.type!r})"
        return f"device(type={self.type!r}, index={self.index})"

    def __eq__(self, other):
        if isinstance(other, str):
            try:
                other = device(other)
            except PicogradError:
                return False
        if isinstance(other, device):
            return (self.type, self.index) == (other.type, other.index)
        return NotImplemented

    def __hash__(self):
        return hash((self.type, self.index))

    def __reduce__(self):
        return (device, (str(self),))


CPU = device("cpu")


_default = None  # set_default_device's device; None: the CPU


def set_default_device(d):
    """Where creation functions (pg.tensor, pg.zeros, pg.randn, ..., and so nn layers' parameters)
    make tensors when no ``device=`` is given, as torch.set_default_device. None: the CPU."""
    global _default
    _default = None if d is None else as_device(d)


def get_default_device():
    """The device creation functions use by default (pg.device("cpu") unless set)."""
    return CPU if _default is None else _default


def as_device(d):
    """``d`` as a device (None: the CPU)."""
    if d is None:
        return CPU
    return d if isinstance(d, device) else device(d)
