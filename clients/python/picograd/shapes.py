"""picograd.shapes: the client's copy of the daemon's shape and dtype rules (PROTOCOL.md `run`).

A pending Tensor is a node of a graph nobody has evaluated yet, but ``x.shape``, ``x.dtype``,
``len(x)`` and the bounds checks of ``x[i]`` must still answer at once, without a round trip. So
every node's result shape and dtype is inferred here, when the node is built, with the same rules
the daemon applies when it checks the run:

    broadcast("add", (2, 1), (3,))          -> (2, 3)
    result_type((float32, DIMS), (int64, WEAK))   -> float32   (x + 2 stays float32)
    matmul("matmul", (5, 2, 3), (3, 4))     -> (5, 2, 4)

The functions take plain tuples and DType objects and know nothing of tensors or sockets. A rule
that fails raises ShapeError (or DimError for an axis out of range) with a message in the
daemon's words, "add: shapes [2, 3] and [4] do not broadcast"; the daemon re-checks everything,
so a rule missing here only delays the error to the run.
"""

import math
import operator

from . import dtypes
from .wire import PicogradError

__all__ = ["Size", "ShapeError", "DimError", "MAX_RANK"]

MAX_RANK = 8  # PROTOCOL.md section 5: a shape has 0 to 8 dims


class ShapeError(PicogradError, RuntimeError):
    """A node that the daemon would refuse, found while building it.

    It is a PicogradError with the code the daemon would have used, and a RuntimeError like the
    errors torch raises for the same mistakes, so code written against either keeps working.
    """

    def __init__(self, message, code="bad_shape"):
        super().__init__(code, message)


class DimError(ShapeError, IndexError):
    """An axis or index out of range; also an IndexError, as in torch."""

    def __init__(self, message):
        super().__init__(message, code="bad_request")


class Size(tuple):
    """A tensor's shape: a tuple of ints, like torch.Size (compares equal to plain tuples)."""

    def __new__(cls, dims=()):
        return super().__new__(cls, (operator.index(d) for d in dims))

    def __repr__(self):
        return f"picograd.Size({list(self)})"

    def __getitem__(self, key):
        item = super().__getitem__(key)
        return Size(item) if isinstance(key, slice) else item

    def numel(self):
        """The number of elements a tensor of this shape has (1 for a scalar)."""
        return math.prod(self)


def fmt(shape):
    """Formats a shape as the daemon does in messages: "[2, 3]"."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def numel(shape):
    return math.prod(shape)


def check_shape(op, shape):
    """Returns ``shape`` as a tuple of ints after checking what PROTOCOL.md allows of a shape."""
    try:
        shape = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(f"{op}: a shape holds ints, got {shape!r}") from None
    if len(shape) > MAX_RANK:
        raise ShapeError(f"{op}: rank {len(shape)} is over the limit of {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise ShapeError(f"{op}: shape {fmt(shape)} has a negative dim")
    return shape


# ---------------------------------------------------------------------------------------------
# Axes
# ---------------------------------------------------------------------------------------------


def norm_dim(op, dim, ndim):
    """Returns axis ``dim`` of a rank-``ndim`` tensor counted from 0; negatives count from the end.

    A scalar accepts dim 0 and -1 like torch does (it behaves as if it had one axis of size 1).
    """
    try:
        d = operator.index(dim)
    except TypeError:
        raise TypeError(f"{op}: a dim is an int, got {type(dim).__name__}") from None
    n = max(ndim, 1)
    if not -n <= d < n:
        raise DimError(f"{op}: dim {d} is out of range for a tensor of rank {ndim} "
                       f"(expected {-n} to {n - 1})")
    return d % n


def norm_dims(op, dims, ndim):
    """Returns a sorted tuple of the distinct axes in ``dims`` (an int or a sequence of ints)."""
    if isinstance(dims, (list, tuple)):
        out = [norm_dim(op, d, ndim) for d in dims]
    else:
        out = [norm_dim(op, dims, ndim)]
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: dim {dims!r} names an axis twice", code="bad_request")
    return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------
# Dtypes
# ---------------------------------------------------------------------------------------------


# Operand tiers for result_type, as torch ranks them: a Python number (weak), a 0-d tensor,
# a tensor with dims.
WEAK, ZERO_DIM, DIMS = 0, 1, 2


def result_type(*operands):
    """Returns the dtype an elementwise op computes in, from ``operands``: pairs (dtype, tier).

    torch's rule. Within a tier, dtypes promote by rank: bool < int32 < int64 < float32 <
    float64. A lower tier only matters when it brings a higher category (bool < integer <
    float) than the tiers above it: float64[] + float32[3] is float32, but int32[3] + float64[]
    is float64. A Python number (WEAK) counts as its category's default dtype, so int32[3] + 2
    stays int32, int32[3] + 2.5 is float32, and bool[3] + 1 is int64. PROTOCOL.md's daemon only
    knows the WEAK tier (a 0-d tensor is an ordinary tensor there), so the Tensor layer casts 0-d
    operands to this result before sending.
    """
    best = [None, None, None]
    for dtype, tier in operands:
        if best[tier] is None or dtype.rank > best[tier].rank:
            best[tier] = dtype
    if best[WEAK] is not None:
        best[WEAK] = dtypes.DEFAULT_FOR_CATEGORY[best[WEAK].category]
    return _combine(best[DIMS], _combine(best[ZERO_DIM], best[WEAK]))


def _combine(higher, lower):
    """torch's combine_categories: the higher tier wins unless the lower one brings a higher
    category (or the higher tier is bool)."""
    if higher is None:
        return lower
    if lower is None or higher.is_floating_point:
        return higher
    if higher is dtypes.bool_ or lower.is_floating_point:
        return higher if higher.rank >= lower.rank else lower
    return higher


def float_type(dtype):
    """The dtype of a float-valued op (exp, div, mean, ...) of ``dtype``: ints and bool give
    float32, floats keep their precision."""
    return dtype if dtype.is_floating_point else dtypes.float32


def sum_type(dtype):
    """The dtype of sum, prod and cumsum: bool and int32 widen to int64 (torch does the same)."""
    return dtypes.int64 if dtype in (dtypes.bool_, dtypes.int32) else dtype


def scalar_type(value):
    """The dtype a Python number stands for on its own: bool, int64 or float32."""
    if isinstance(value, bool):
        return dtypes.bool_
    if isinstance(value, int):
        return dtypes.int64
    return dtypes.float32


# ---------------------------------------------------------------------------------------------
# Elementwise and reductions
# ---------------------------------------------------------------------------------------------


def broadcast(op, *shapes):
    """Returns the numpy broadcast of ``shapes``; raises ShapeError naming the first two that
    disagree."""
    out = ()
    first = None
    for shape in shapes:
        n = max(len(out), len(shape))
        a = (1,) * (n - len(out)) + tuple(out)
        b = (1,) * (n - len(shape)) + tuple(shape)
        merged = []
        for x, y in zip(a, b):
            if x != y and x != 1 and y != 1:
                raise ShapeError(f"{op}: shapes {fmt(first)} and {fmt(shape)} do not broadcast")
            merged.append(y if x == 1 else x)
        out = tuple(merged)
        first = out if first is None else first
    return out


def reduce_shape(shape, dims, keepdim):
    """The shape left after reducing axes ``dims`` (normalized; None: all)."""
    if dims is None:
        dims = range(len(shape))
    if keepdim:
        return tuple(1 if i in dims else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in dims)


def grad(op, y_shape, y_dtype, x_shape, x_dtype, gy_shape=None):
    """The (shape, dtype) of a `grad` node, d(sum(y * gy))/dx: x's. y and x must be float; gy,
    when given, must have y's shape exactly, else y must hold one element (PROTOCOL.md)."""
    if not y_dtype.is_floating_point:
        raise ShapeError(f"{op}: y is {y_dtype}; only float32 and float64 outputs can be "
                         "differentiated", code="bad_dtype")
    if not x_dtype.is_floating_point:
        raise ShapeError(f"{op}: x is {x_dtype}; only float32 and float64 tensors have "
                         "gradients", code="bad_dtype")
    if gy_shape is None:
        if numel(y_shape) != 1:
            raise ShapeError(f"{op}: y has shape {fmt(y_shape)}; a non-scalar output needs an "
                             "output gradient", code="bad_request")
    elif tuple(gy_shape) != tuple(y_shape):
        raise ShapeError(f"{op}: the output gradient has shape {fmt(gy_shape)}; y has shape "
                         f"{fmt(y_shape)}")
    return tuple(x_shape), x_dtype


# ---------------------------------------------------------------------------------------------
# Movement
# ---------------------------------------------------------------------------------------------


def reshape(op, shape, new):
    """Returns ``new`` with its one allowed -1 filled in, after checking the element count."""
    new = [operator.index(d) for d in new]
    total = numel(shape)
    holes = [i for i, d in enumerate(new) if d == -1]
    if len(holes) > 1:
        raise ShapeError(f"{op}: only one dim may be -1, got {fmt(new)}", code="bad_request")
    if any(d < -1 for d in new):
        raise ShapeError(f"{op}: shape {fmt(new)} has a negative dim")
    if holes:
        known = math.prod(d for d in new if d != -1)
        if known == 0 or total % known:
            raise ShapeError(f"{op}: shape {fmt(new)} is invalid for input of size {total}")
        new[holes[0]] = total // known
    if numel(new) != total:
        raise ShapeError(f"{op}: shape {fmt(new)} is invalid for input of size {total}")
    return check_shape(op, new)


def permute(op, shape, dims):
    """Checks that ``dims`` is a permutation of the axes; returns (dims normalized, new shape)."""
    order = tuple(norm_dim(op, d, len(shape)) for d in dims)
    if len(order) != len(shape) or sorted(order) != list(range(len(shape))):
        raise ShapeError(f"{op}: dims {list(dims)} are not a permutation of {len(shape)} axes",
                         code="bad_request")
    return order, tuple(shape[d] for d in order)


def expand(op, shape, new):
    """Returns the shape ``shape`` expands to: -1 keeps a dim, size-1 dims repeat, and new
    leading dims may be added (but not as -1)."""
    new = [operator.index(d) for d in new]
    if len(new) < len(shape):
        raise ShapeError(f"{op}: cannot expand {fmt(shape)} to fewer dims {fmt(new)}")
    lead = len(new) - len(shape)
    out = []
    for i, d in enumerate(new):
        if i < lead:
            if d < 0:
                raise ShapeError(f"{op}: the new leading dim {i} of {fmt(new)} cannot be -1")
            out.append(d)
            continue
        old = shape[i - lead]
        if d == -1:
            d = old
        elif old != d and old != 1:
            raise ShapeError(f"{op}: cannot expand {fmt(shape)} to {fmt(new)} "
                             f"(dim {i}: {old} is not 1)")
        out.append(d)
    return check_shape(op, out)


def cat(op, shapes, dim):
    """Returns (axis, shape) of concatenating ``shapes`` along ``dim``."""
    first = shapes[0]
    axis = norm_dim(op, dim, len(first))
    if len(first) == 0:
        raise ShapeError(f"{op}: zero-dimensional tensors cannot be concatenated")
    total = 0
    for s in shapes:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first))
                                       if i != axis):
            raise ShapeError(f"{op}: shapes {fmt(first)} and {fmt(s)} differ outside dim {axis}")
        total += s[axis]
    return axis, first[:axis] + (total,) + first[axis + 1:]


def stack(op, shapes, dim):
    """Returns (axis, shape) of stacking equal ``shapes`` along a new axis ``dim``."""
    first = shapes[0]
    axis = norm_dim(op, dim, len(first) + 1)
    for s in shapes:
        if tuple(s) != tuple(first):
            raise ShapeError(f"{op}: shapes {fmt(first)} and {fmt(s)} differ")
    return axis, check_shape(op, first[:axis] + (len(shapes),) + first[axis:])


def pad(op, shape, pads):
    """The shape after a constant pad (torch order: last dim first; each entry >= 0)."""
    if len(pads) % 2 or len(pads) // 2 > len(shape):
        raise ShapeError(f"{op}: pad needs an even number of entries, at most 2 per dim; got "
                         f"{len(pads)} for {fmt(shape)}", code="bad_request")
    out = list(shape)
    for i in range(len(pads) // 2):
        axis = len(shape) - 1 - i
        out[axis] += pads[2 * i] + pads[2 * i + 1]
    return check_shape(op, out)


# ---------------------------------------------------------------------------------------------
# Linear algebra and NN
# ---------------------------------------------------------------------------------------------


def matmul(op, a, b):
    """torch.matmul's shape: 1-D operands get a dim added then removed, batch dims broadcast."""
    if len(a) == 0 or len(b) == 0:
        raise ShapeError(f"{op}: both arguments need at least 1 dimension, got shapes "
                         f"{fmt(a)} and {fmt(b)}")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise ShapeError(f"{op}: shapes {fmt(a)} and {fmt(b)} cannot be multiplied "
                         f"({a2[-1]} != {b2[-2]})")
    batch = broadcast(op, a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def pair(op, name, value):
    """An int or a pair of ints as the [h, w] list the wire carries (stride, padding, ...)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ShapeError(f"{op}: {name} needs 1 or 2 ints, got {list(value)}",
                             code="bad_request")
        return [operator.index(value[0]), operator.index(value[1])]
    v = operator.index(value)
    return [v, v]


def window_out(op, size, kernel, stride, padding, dilation):
    """Output length of a sliding window (conv, pooling) along one axis, as torch computes it."""
    if stride <= 0 or dilation <= 0 or kernel <= 0 or padding < 0:
        raise ShapeError(f"{op}: kernel, stride and dilation must be positive and padding "
                         "non-negative", code="bad_request")
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - span) // stride + 1
    if out <= 0:
        raise ShapeError(f"{op}: an input of size {size} (padding {padding}) is smaller than "
                         f"the kernel span {span}")
    return out


def conv2d(op, x, w, stride, padding, dilation, groups):
    """Output shape of conv2d: x [N, C, H, W], weight [O, C / groups, kH, kW]."""
    if len(x) != 4 or len(w) != 4:
        raise ShapeError(f"{op}: expects input [N, C, H, W] and weight [O, C/groups, kH, kW], "
                         f"got {fmt(x)} and {fmt(w)}")
    if groups <= 0 or x[1] != w[1] * groups or w[0] % groups:
        raise ShapeError(f"{op}: input {fmt(x)} and weight {fmt(w)} do not match with "
                         f"groups={groups}")
    oh = window_out(op, x[2], w[2], stride[0], padding[0], dilation[0])
    ow = window_out(op, x[3], w[3], stride[1], padding[1], dilation[1])
    return (x[0], w[0], oh, ow)


def pool2d(op, x, kernel, stride, padding, dilation):
    """Output shape of max_pool2d / avg_pool2d over x [N, C, H, W]."""
    if len(x) != 4:
        raise ShapeError(f"{op}: expects input [N, C, H, W], got {fmt(x)}")
    for k, p in zip(kernel, padding):
        if p * 2 > k:
            raise ShapeError(f"{op}: padding {p} should be at most half of kernel size {k}",
                             code="bad_request")
    oh = window_out(op, x[2], kernel[0], stride[0], padding[0], dilation[0])
    ow = window_out(op, x[3], kernel[1], stride[1], padding[1], dilation[1])
    return (x[0], x[1], oh, ow)
