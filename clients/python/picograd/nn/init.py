"""picograd.nn.init: torch.nn.init's initializers, drawing from picograd's generator.

Each ``name_(tensor, ...)`` gives ``tensor`` a new value and returns it, as torch's in-place
initializers do. The value is a graph over pg.rand / pg.randn (the daemon's counter-based
Philox stream, so pg.manual_seed repeats it; the numbers differ from torch's generator, the
distributions and bounds are torch's). A pending tensor (a fresh nn.Parameter) just becomes
that graph, so building a model sends nothing; a realized one is assigned in one run now.
"""

import math

from .. import functional as _f
from ..autograd_api import no_grad
from ..tensor import Tensor, _execute, _node

__all__ = ["calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_",
           "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_"]


def _set(tensor, value):
    """tensor := value (same shape; cast to tensor's dtype)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"expected a Tensor, got {type(tensor).__name__}")
    with no_grad():
        value = value.to(tensor.dtype)
        if value.shape != tensor.shape:
            value = value.expand(tensor.shape)
        if tensor._buf is None:
            if value._buf is not None or value._weak:
                value = _node("reshape", [value], {"shape": list(tensor.shape)}, tensor.shape,
                              tensor.dtype)
            tensor._op, tensor._inputs, tensor._attrs = value._op, value._inputs, value._attrs
            tensor._site = value._site
        else:
            _execute(assigns=[(tensor, value)])
    return tensor


def calculate_gain(nonlinearity, param=None):
    linear_fns = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                  "conv_transpose2d", "conv_transpose3d"]
    if nonlinearity in linear_fns or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, (int, float)):
            negative_slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _fans(tensor):
    dims = tensor.dim()
    if dims < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 "
                         "dimensions")
    receptive = 1
    for s in tensor.shape[2:]:
        receptive *= s
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fan(tensor, mode):
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _fans(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a=0.0, b=1.0):
    """U(a, b)."""
    u = _f.rand(tensor.shape, dtype=tensor.dtype if tensor.is_floating_point() else None)
    return _set(tensor, u * (b - a) + a)


def normal_(tensor, mean=0.0, std=1.0):
    """N(mean, std^2)."""
    n = _f.randn(tensor.shape, dtype=tensor.dtype if tensor.is_floating_point() else None)
    return _set(tensor, n * std + mean)


def constant_(tensor, val):
    return _set(tensor, _f.full(tensor.shape, val, dtype=tensor.dtype))


def zeros_(tensor):
    return constant_(tensor, 0)


def ones_(tensor):
    return constant_(tensor, 1)


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    if 0 in tensor.shape:
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    if 0 in tensor.shape:
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return normal_(tensor, 0, std)


def xavier_uniform_(tensor, gain=1.0):
    fan_in, fan_out = _fans(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    a = math.sqrt(3.0) * std
    return uniform_(tensor, -a, a)


def xavier_normal_(tensor, gain=1.0):
    fan_in, fan_out = _fans(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std)


# torch's private name, used by nn.Linear's reset_parameters in user code copied from torch.
_calculate_fan_in_and_fan_out = _fans
