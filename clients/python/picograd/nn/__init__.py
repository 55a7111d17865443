"""picograd.nn: neural-network building blocks. For now only the functional API:

    import picograd.nn.functional as F
    y = F.relu(F.linear(x, w, b))

There are no Module classes (Linear, Conv2d, ...) and no autograd yet.
"""

from . import functional

__all__ = ["functional"]
