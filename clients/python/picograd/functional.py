"""picograd.functional: the torch-style module functions, re-exported as ``pg.*``.

Three kinds live here:

- creation: ``pg.zeros(2, 3)``, ``pg.full((2,), 7)``, ``pg.arange(10)``, ``pg.rand(4)``, ... They
  are pending leaf nodes (`full`, `arange`, `rand`, `randn`): nothing is sent until a result is
  needed, and they run on the connection of whatever they are combined with (else the default);
- joining: ``pg.cat``, ``pg.stack`` (graphs with more than 1,024 inputs per node are split);
- wrappers: ``pg.exp(x)`` is ``x.exp()``, ``pg.max(x, 1)`` is ``x.max(1)``, and so on, with
  torch's overloads (pg.max(x) / pg.max(x, dim) / pg.max(a, b)).

Random numbers come from one module-level generator, (seed, offset): every rand/randn node
takes the current offset and advances it by its element count, so the daemon's counter-based
Philox stream gives each call fresh numbers, and manual_seed(s) replays them exactly.

This module defines functions named like builtins (max, min, sum, abs, all, any, pow), so it
calls the builtins through ``builtins.`` only.
"""

import builtins
import math
import operator
import threading

from . import dtypes, shapes
from .devices import CPU, as_device, get_default_device
from .dtypes import as_dtype
from .tensor import (Tensor, _binary, _node, _operand, _scalar_value, as_tensor, flush,
                     from_numpy, matmul, realize, tensor, where)

__all__ = [
    "tensor", "as_tensor", "from_numpy", "realize", "flush", "is_tensor", "numel",
    "zeros", "ones", "full", "empty", "eye", "arange", "rand", "randn", "randint",
    "manual_seed", "initial_seed", "zeros_like", "ones_like", "full_like", "empty_like",
    "rand_like", "randn_like", "cat", "concat", "concatenate", "stack", "where", "matmul", "mm",
    "bmm", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "erf", "relu", "neg",
    "negative", "sign", "square", "reciprocal", "logical_not", "add", "sub", "mul", "div",
    "true_divide", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
    "logical_or", "mean", "prod", "var", "std", "logsumexp", "cumsum", "argmax", "argmin",
    "amax", "amin", "softmax", "log_softmax", "clamp", "clip", "masked_fill", "flip", "reshape",
    "permute", "transpose", "squeeze", "unsqueeze", "flatten", "gather", "index_select",
    # also: max, min, sum, abs, all, any, pow (left out of * imports: they hide builtins)
]

MAX_NODE_INPUTS = 1024  # PROTOCOL.md: inputs of one node


# ---------------------------------------------------------------------------------------------
# Creation
# ---------------------------------------------------------------------------------------------


def _size(size):
    """zeros(2, 3), zeros((2, 3)) and zeros([2, 3]) all mean the shape (2, 3)."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = size[0]
    return shapes.check_shape("shape", size)


def _fill(value, dtype):
    """``value`` as the Python type of ``dtype`` (2.7 in an int64 tensor is 2, as in torch)."""
    value = _scalar_value(value)
    if dtype.is_floating_point:
        return builtins.float(value)
    if dtype is dtypes.bool_:
        return builtins.bool(value)
    return builtins.int(value)


def _device_ready(dev):
    """True when the default connection's daemon lists ``dev`` as a device it runs on (hello's
    ``ready``): then a tensor made there can stay pending like a CPU one."""
    from .client import default_connection
    from .cuda import _ready
    from .wire import PicogradError
    name = f"cuda:{dev.index or 0}" if dev.type == "cuda" else str(dev)
    try:
        return builtins.any(d.get("name") == name for d in _ready(default_connection()))
    except PicogradError:  # no daemon to ask: realizing says why
        return False


def _made(t, requires_grad, device):
    """The creation functions' common keywords: ``requires_grad`` makes the new tensor a leaf
    that backward() fills (floats only); ``device`` ("cpu", "cuda", "cuda:N", a pg.device)
    says where it is made. On the CPU (the default) the node stays pending, as ever; on any
    other device it runs at once, on that device, so that a device the daemon does not have
    raises the daemon's no_device error at the line that asked for it, as torch would (a device
    hello lists as ready stays pending, as on the CPU). No
    ``device``: pg.get_default_device()."""
    dev = as_device(device) if device is not None else get_default_device()
    if dev != CPU:
        t._dev = str(dev)
        if not _device_ready(dev):
            t.realize()
    return t.requires_grad_() if requires_grad else t


def full(size, fill_value, dtype=None, *, requires_grad=False, device=None):
    """A tensor of shape ``size`` filled with ``fill_value``; the dtype defaults to the value's
    (float -> float32, int -> int64, bool -> bool)."""
    shape = shapes.check_shape("full", size)
    dtype = as_dtype(dtype) if dtype is not None else shapes.scalar_type(
        _scalar_value(fill_value))
    attrs = {"shape": list(shape), "value": _fill(fill_value, dtype), "dtype": dtype.name}
    return _made(_node("full", [], attrs, shape, dtype), requires_grad, device)


def zeros(*size, dtype=None, requires_grad=False, device=None):
    return full(_size(size), 0, dtype=dtype if dtype is not None else dtypes.float32,
                requires_grad=requires_grad, device=device)


def ones(*size, dtype=None, requires_grad=False, device=None):
    return full(_size(size), 1, dtype=dtype if dtype is not None else dtypes.float32,
                requires_grad=requires_grad, device=device)


empty = zeros  # there is no uninitialized memory to hand out; zeros is as cheap


def zeros_like(input, dtype=None, requires_grad=False, device=None):
    """Zeros of input's shape, dtype and device (as torch's *_like)."""
    return zeros(input.shape, dtype=dtype if dtype is not None else input.dtype,
                 requires_grad=requires_grad, device=device if device is not None
                 else input.device)


def ones_like(input, dtype=None, requires_grad=False, device=None):
    return ones(input.shape, dtype=dtype if dtype is not None else input.dtype,
                requires_grad=requires_grad, device=device if device is not None
                else input.device)


empty_like = zeros_like


def full_like(input, fill_value, dtype=None, requires_grad=False, device=None):
    return full(input.shape, fill_value, dtype=dtype if dtype is not None else input.dtype,
                requires_grad=requires_grad, device=device if device is not None
                else input.device)


def eye(n, m=None, dtype=None, requires_grad=False, device=None):
    """The n x m identity matrix (built from two aranges and a comparison)."""
    m = n if m is None else m
    out = arange(n).unsqueeze(1) == arange(m).unsqueeze(0)
    return _made(out.to(dtype if dtype is not None else dtypes.float32), requires_grad, device)


def arange(start, end=None, step=1, dtype=None, requires_grad=False, device=None):
    """Values from ``start`` (default 0) up to but excluding ``end``, ``step`` apart; int64 when
    all three are ints, else float32 (torch.arange)."""
    if end is None:
        start, end = 0, start
    start, end, step = (_scalar_value(v) for v in (start, end, step))
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if (end - start) * step < 0:
        raise ValueError("arange: upper bound and lower bound are inconsistent with step sign")
    all_int = builtins.all(isinstance(v, int) for v in (start, end, step))
    if all_int:
        n = -((start - end) // step)  # exact ceil((end - start) / step) for ints
    else:
        n = math.ceil((end - start) / step)
    dtype = as_dtype(dtype) if dtype is not None else (
        dtypes.int64 if all_int else dtypes.float32)
    attrs = {"start": start, "end": end, "step": step, "dtype": dtype.name}
    return _made(_node("arange", [], attrs, (builtins.max(n, 0),), dtype), requires_grad, device)


# The module generator. torch starts from a fixed seed too, so a fresh process is repeatable.
DEFAULT_SEED = 67280421310721
_rng_lock = threading.Lock()
_rng = {"seed": DEFAULT_SEED, "offset": 0}


def manual_seed(seed):
    """Restarts the random stream of rand/randn at ``seed`` (an int; taken modulo 2**64)."""
    with _rng_lock:
        _rng["seed"] = operator.index(seed) % 2 ** 64
        _rng["offset"] = 0


def initial_seed():
    """The seed the random stream started from."""
    return _rng["seed"]


def _random(op, size, dtype):
    shape = shapes.check_shape(op, size)
    dtype = as_dtype(dtype) if dtype is not None else dtypes.float32
    if not dtype.is_floating_point:
        raise TypeError(f"{op}: needs a floating dtype, got {dtype}")
    with _rng_lock:
        seed, offset = _rng["seed"], _rng["offset"]
        _rng["offset"] = (offset + shapes.numel(shape)) % 2 ** 64
    attrs = {"shape": list(shape), "seed": seed, "offset": offset, "dtype": dtype.name}
    return _node(op, [], attrs, shape, dtype)


def rand(*size, dtype=None, requires_grad=False, device=None):
    """Uniform samples in [0, 1)."""
    return _made(_random("rand", _size(size), dtype), requires_grad, device)


def randn(*size, dtype=None, requires_grad=False, device=None):
    """Standard normal samples."""
    return _made(_random("randn", _size(size), dtype), requires_grad, device)


def rand_like(input, dtype=None, requires_grad=False, device=None):
    return _made(_random("rand", input.shape, dtype if dtype is not None else input.dtype),
                 requires_grad, device)


def randn_like(input, dtype=None, requires_grad=False, device=None):
    return _made(_random("randn", input.shape, dtype if dtype is not None else input.dtype),
                 requires_grad, device)


def randint(low, high=None, size=None, dtype=None):
    """Uniform integers in [low, high): randint(high, size) or randint(low, high, size).

    Made from a float64 rand (scaled, then cast, which truncates toward zero = floor here)."""
    if size is None:
        low, high, size = 0, low, high
    if high <= low:
        raise ValueError(f"randint: low {low} must be below high {high}")
    u = _random("rand", shapes.check_shape("randint", size), dtypes.float64)
    out = (u * (high - low)).to(dtypes.int64) + low
    return out.to(dtype) if dtype is not None else out


# ---------------------------------------------------------------------------------------------
# Joining
# ---------------------------------------------------------------------------------------------


def _tensors(op, tensors):
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{op}: expected a non-empty list of Tensors")
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: expected Tensors, got {type(t).__name__}")
    return tensors


def cat(tensors, dim=0):
    """Concatenates ``tensors`` along ``dim`` (dtypes promote, as in torch)."""
    tensors = _tensors("cat", tensors)
    axis, _ = shapes.cat("cat", [t.shape for t in tensors], dim)
    # A node takes at most 1,024 inputs: join groups first, then the groups.
    while len(tensors) > MAX_NODE_INPUTS:
        tensors = [cat(tensors[i:i + MAX_NODE_INPUTS], axis)
                   for i in range(0, len(tensors), MAX_NODE_INPUTS)]
    if len(tensors) == 1:
        return tensors[0]
    _, shape = shapes.cat("cat", [t.shape for t in tensors], axis)
    dtype = shapes.result_type(*[(t.dtype, shapes.DIMS) for t in tensors])
    return _node("cat", tensors, {"dim": axis}, shape, dtype)


concat = concatenate = cat


def stack(tensors, dim=0):
    """Joins equal-shape ``tensors`` along a new axis ``dim``."""
    tensors = _tensors("stack", tensors)
    axis, shape = shapes.stack("stack", [t.shape for t in tensors], dim)
    if len(tensors) > MAX_NODE_INPUTS:
        return cat([t.unsqueeze(axis) for t in tensors], axis)
    dtype = shapes.result_type(*[(t.dtype, shapes.DIMS) for t in tensors])
    return _node("stack", tensors, {"dim": axis}, shape, dtype)


# ---------------------------------------------------------------------------------------------
# Wrappers around the Tensor methods
# ---------------------------------------------------------------------------------------------


def _t(op, x):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    return x


def _pair(op, a, b):
    """Operands of a binary function where either side may be a number (but not both)."""
    like = a if isinstance(a, Tensor) else b
    if not isinstance(like, Tensor):
        raise TypeError(f"{op}: expected at least one Tensor")
    a2, b2 = _operand(a, like), _operand(b, like)
    if a2 is None or b2 is None:
        raise TypeError(f"{op}: expected Tensors or numbers")
    return _binary(op, a2, b2)


def is_tensor(obj):
    return isinstance(obj, Tensor)


def numel(input):
    return _t("numel", input).numel()


def mm(input, mat2):
    if input.ndim != 2 or mat2.ndim != 2:
        raise shapes.ShapeError("mm: expects two 2-D tensors")
    return matmul(input, mat2)


def bmm(input, mat2):
    if input.ndim != 3 or mat2.ndim != 3:
        raise shapes.ShapeError("bmm: expects two 3-D tensors")
    return matmul(input, mat2)


def exp(input):
    return _t("exp", input).exp()


def log(input):
    return _t("log", input).log()


def sqrt(input):
    return _t("sqrt", input).sqrt()


def rsqrt(input):
    return _t("rsqrt", input).rsqrt()


def sin(input):
    return _t("sin", input).sin()


def cos(input):
    return _t("cos", input).cos()


def tanh(input):
    return _t("tanh", input).tanh()


def sigmoid(input):
    return _t("sigmoid", input).sigmoid()


def erf(input):
    return _t("erf", input).erf()


def relu(input):
    return _t("relu", input).relu()


def abs(input):
    return _t("abs", input).abs()


def neg(input):
    return _t("neg", input).neg()


negative = neg


def sign(input):
    return _t("sign", input).sign()


def square(input):
    return _t("square", input).square()


def reciprocal(input):
    return _t("reciprocal", input).reciprocal()


def logical_not(input):
    return _t("logical_not", input).logical_not()


def add(input, other):
    return _pair("add", input, other)


def sub(input, other):
    return _pair("sub", input, other)


def mul(input, other):
    return _pair("mul", input, other)


def div(input, other):
    return _pair("div", input, other)


true_divide = div


def pow(input, exponent):
    return _pair("pow", input, exponent)


def maximum(input, other):
    return _pair("maximum", input, other)


def minimum(input, other):
    return _pair("minimum", input, other)


def eq(input, other):
    return _pair("eq", input, other)


def ne(input, other):
    return _pair("ne", input, other)


def lt(input, other):
    return _pair("lt", input, other)


def le(input, other):
    return _pair("le", input, other)


def gt(input, other):
    return _pair("gt", input, other)


def ge(input, other):
    return _pair("ge", input, other)


def logical_and(input, other):
    return _pair("logical_and", input, other)


def logical_or(input, other):
    return _pair("logical_or", input, other)


def sum(input, dim=None, keepdim=False, dtype=None):
    return _t("sum", input).sum(dim, keepdim, dtype=dtype)


def mean(input, dim=None, keepdim=False, dtype=None):
    return _t("mean", input).mean(dim, keepdim, dtype=dtype)


def prod(input, dim=None, keepdim=False, dtype=None):
    return _t("prod", input).prod(dim, keepdim, dtype=dtype)


def any(input, dim=None, keepdim=False):
    return _t("any", input).any(dim, keepdim)


def all(input, dim=None, keepdim=False):
    return _t("all", input).all(dim, keepdim)


def var(input, dim=None, unbiased=True, keepdim=False, *, correction=None):
    return _t("var", input).var(dim, unbiased, keepdim, correction=correction)


def std(input, dim=None, unbiased=True, keepdim=False, *, correction=None):
    return _t("std", input).std(dim, unbiased, keepdim, correction=correction)


def logsumexp(input, dim, keepdim=False):
    return _t("logsumexp", input).logsumexp(dim, keepdim)


def cumsum(input, dim, dtype=None):
    return _t("cumsum", input).cumsum(dim, dtype=dtype)


def max(input, dim=None, keepdim=False):
    """max(x): the largest element; max(x, dim) -> (values, indices); max(a, b): maximum."""
    return _t("max", input).max(dim, keepdim)


def min(input, dim=None, keepdim=False):
    return _t("min", input).min(dim, keepdim)


def amax(input, dim=None, keepdim=False):
    return _t("amax", input).amax(dim, keepdim)


def amin(input, dim=None, keepdim=False):
    return _t("amin", input).amin(dim, keepdim)


def argmax(input, dim=None, keepdim=False):
    return _t("argmax", input).argmax(dim, keepdim)


def argmin(input, dim=None, keepdim=False):
    return _t("argmin", input).argmin(dim, keepdim)


def softmax(input, dim=None, dtype=None):
    return _t("softmax", input).softmax(dim, dtype=dtype)


def log_softmax(input, dim=None, dtype=None):
    return _t("log_softmax", input).log_softmax(dim, dtype=dtype)


def clamp(input, min=None, max=None):
    return _t("clamp", input).clamp(min, max)


clip = clamp


def masked_fill(input, mask, value):
    return _t("masked_fill", input).masked_fill(mask, value)


def flip(input, dims):
    return _t("flip", input).flip(dims)


def reshape(input, shape):
    return _t("reshape", input).reshape(shape)


def permute(input, dims):
    return _t("permute", input).permute(dims)


def transpose(input, dim0, dim1):
    return _t("transpose", input).transpose(dim0, dim1)


def squeeze(input, dim=None):
    return _t("squeeze", input).squeeze(dim)


def unsqueeze(input, dim):
    return _t("unsqueeze", input).unsqueeze(dim)


def flatten(input, start_dim=0, end_dim=-1):
    return _t("flatten", input).flatten(start_dim, end_dim)


def gather(input, dim, index):
    return _t("gather", input).gather(dim, index)


def index_select(input, dim, index):
    return _t("index_select", input).index_select(dim, index)
