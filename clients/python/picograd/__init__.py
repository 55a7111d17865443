"""picograd: the Python client of picogradd, a daemon that holds tensors for its clients.

Two levels. The tensor API looks like PyTorch and is lazy: ops build a graph that runs in the
daemon, in one `run` request, when a result is needed:

    import picograd as pg
    x = pg.tensor([[1.0, 2.0], [3.0, 4.0]])     # uploaded to the default connection
    y = (x @ x.T).softmax(dim=1)                # nothing sent yet; y.shape is known
    print(y)                                    # one round trip

The wire level sends requests by hand:

    import numpy as np, picograd
    conn = picograd.connect()            # PICOGRAD_URL, else the default Unix socket
    h = conn.put(np.ones((2, 3), np.float32))
    assert (conn.get(h) == 1).all()
    conn.free(h)

Training looks like PyTorch, and each optimizer step is one request:

    model = pg.nn.Sequential(pg.nn.Linear(4, 8), pg.nn.ReLU(), pg.nn.Linear(8, 1))
    opt = pg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.zero_grad(); loss = pg.nn.MSELoss()(model(x), y); loss.backward(); opt.step()

The wire protocol is protocol/PROTOCOL.md; ``picograd.wire`` implements it and ``picograd.client``
wraps it in ``Connection``. ``picograd.tensor`` holds the Tensor and graph execution,
``picograd.shapes`` the shape and dtype rules, ``picograd.functional`` the pg.* functions and
``picograd.nn.functional`` the layers and losses; ``picograd.autograd_api`` requires_grad,
backward and no_grad, ``picograd.nn`` the modules, ``picograd.optim`` the optimizers and
``picograd.serialization`` pg.save / pg.load.
"""

from .client import DTYPES, Connection, connect, default_connection
from .wire import PicogradError, default_url, parse_url

from . import dtypes
from .dtypes import DType, as_dtype, float32, float64, int32, int64
from .dtypes import bool_ as bool  # pg.bool, as torch.bool (hides the builtin in here only)
from .shapes import DimError, ShapeError, Size
from .devices import device, get_default_device, set_default_device
from .tensor import Tensor, explain
from .functional import *  # noqa: F401,F403  (pg.zeros, pg.cat, pg.exp, ...)
from .functional import abs, all, any, max, min, pow, sum  # noqa: F401  (not in * on purpose)
from . import autograd, functional
from .autograd_api import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .serialization import load, save
from . import cuda, nn, optim
from .capture import JitError, TinyJit, jit

# torch's other names for the dtypes.
float = float32
double = float64
long = int64
int = int32

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
    "Tensor",
    "explain",
    "device",
    "cuda",
    "Size",
    "DType",
    "as_dtype",
    "ShapeError",
    "DimError",
    "float32",
    "float64",
    "int32",
    "int64",
    "double",
    "long",
    "nn",
    "optim",
    "jit",
    "JitError",
    "TinyJit",
    "autograd",
    "no_grad",
    "enable_grad",
    "set_grad_enabled",
    "is_grad_enabled",
    "inference_mode",
    "save",
    "load",
] + functional.__all__
