"""picograd.nn.functional: torch.nn.functional's layers and losses as lazy graph nodes.

    import picograd as pg, picograd.nn.functional as F
    x = pg.randn(8, 3, 32, 32)
    w = pg.randn(16, 3, 3, 3)
    y = F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2)    # y.shape == (8, 16, 16, 16)

Most of these are one node each that the daemon lowers to primitives (PROTOCOL.md lists which
ops are composite). Arguments follow torch: an int ``stride``/``padding``/``kernel_size`` means
the same value for height and width, and travels as [n, n]. Options of torch's versions that
picograd does not implement (ceil_mode, class weights, ...) raise NotImplementedError rather than
being ignored.
"""

import operator

from .. import dtypes, shapes
from ..shapes import ShapeError
from ..functional import ones, rand_like
from ..tensor import Tensor, _node, _scalar_value, where

__all__ = [
    "relu", "gelu", "silu", "sigmoid", "tanh", "softmax", "log_softmax", "cross_entropy",
    "mse_loss", "linear", "conv2d", "max_pool2d", "avg_pool2d", "layer_norm", "one_hot",
    "embedding", "pad", "dropout",
]

REDUCTIONS = ("mean", "sum", "none")


def _t(op, x):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    return x


def _unsupported(op, **options):
    """Raises NotImplementedError for each torch option given a value picograd lacks."""
    for name, (value, default) in options.items():
        if value != default:
            raise NotImplementedError(f"{op}: {name}={value!r} is not supported")


def _promote(*tensors):
    return shapes.result_type(*[(t.dtype, shapes.DIMS) for t in tensors if t is not None])


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


def relu(input, inplace=False):
    _unsupported("relu", inplace=(inplace, False))
    return _t("relu", input).relu()


def gelu(input, approximate="none"):
    """x * Phi(x); approximate="tanh" uses the tanh formula, as torch."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    x = _t("gelu", input)
    return _node("gelu", [x], {"approximate": approximate}, x.shape,
                 shapes.float_type(x.dtype))


def silu(input, inplace=False):
    _unsupported("silu", inplace=(inplace, False))
    x = _t("silu", input)
    return _node("silu", [x], {}, x.shape, shapes.float_type(x.dtype))


def sigmoid(input):
    return _t("sigmoid", input).sigmoid()


def tanh(input):
    return _t("tanh", input).tanh()


def softmax(input, dim=None, dtype=None):
    return _t("softmax", input).softmax(dim, dtype=dtype)


def log_softmax(input, dim=None, dtype=None):
    return _t("log_softmax", input).log_softmax(dim, dtype=dtype)


def dropout(input, p=0.5, training=True, inplace=False):
    """Zeroes each element with probability ``p`` and scales the rest by 1 / (1 - p) when
    ``training``; the mask comes from pg.rand, so manual_seed makes it repeatable."""
    _unsupported("dropout", inplace=(inplace, False))
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    x = _t("dropout", input)
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0
    keep = rand_like(x, dtype=shapes.float_type(x.dtype)) >= p
    return where(keep, x * (1.0 / (1.0 - p)), 0)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def _reduction(op, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0):
    """Softmax cross entropy of logits [N, C] (or [C]) against class indices [N] (or [])."""
    _unsupported("cross_entropy", weight=(weight, None), size_average=(size_average, None),
                 ignore_index=(ignore_index, -100), reduce=(reduce, None),
                 label_smoothing=(label_smoothing, 0.0))
    x, y = _t("cross_entropy", input), _t("cross_entropy", target)
    reduction = _reduction("cross_entropy", reduction)
    if not ((x.ndim == 2 and y.shape == x.shape[:1]) or (x.ndim == 1 and y.ndim == 0)):
        raise ShapeError(f"cross_entropy: expects logits [N, C] with target [N], or [C] with "
                         f"[]; got {shapes.fmt(x.shape)} and {shapes.fmt(y.shape)}")
    if y.dtype.is_floating_point or y.dtype is dtypes.bool_:
        raise ShapeError(f"cross_entropy: target must hold class indices (int), got {y.dtype}",
                         code="bad_dtype")
    shape = y.shape if reduction == "none" else ()
    return _node("cross_entropy", [x, y], {"reduction": reduction}, shape,
                 shapes.float_type(x.dtype))


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """Mean (or summed, or elementwise) squared error; the two broadcast."""
    _unsupported("mse_loss", size_average=(size_average, None), reduce=(reduce, None))
    x, y = _t("mse_loss", input), _t("mse_loss", target)
    reduction = _reduction("mse_loss", reduction)
    shape = shapes.broadcast("mse_loss", x.shape, y.shape)
    return _node("mse_loss", [x, y], {"reduction": reduction},
                 shape if reduction == "none" else (), _promote(x, y))


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def linear(input, weight, bias=None):
    """x @ weight.T + bias, with weight [out, in] and bias [out]."""
    x, w = _t("linear", input), _t("linear", weight)
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ShapeError(f"linear: input {shapes.fmt(x.shape)} and weight "
                         f"{shapes.fmt(w.shape)} do not match (weight is [out, in])")
    inputs = [x, w]
    if bias is not None:
        b = _t("linear", bias)
        shapes.broadcast("linear", (w.shape[0],), b.shape)
        inputs.append(b)
    return _node("linear", inputs, {}, x.shape[:-1] + (w.shape[0],), _promote(*inputs))


def _unbatched(op, x, ndim):
    """torch accepts [C, H, W] for the 2-D layers; returns (x as [N, C, H, W], was_batched)."""
    if x.ndim == ndim - 1:
        return x.unsqueeze(0), False
    return x, True


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution of x [N, C, H, W] (or [C, H, W]) with weight [O, C/groups, kH, kW].

    ``padding`` may also be "valid" (none) or "same" (stride 1 only; an odd total pad puts the
    extra row/column at the end, as torch does, via an explicit pad node).
    """
    x, batched = _unbatched("conv2d", _t("conv2d", input), 4)
    w = _t("conv2d", weight)
    stride = shapes.pair("conv2d", "stride", stride)
    dilation = shapes.pair("conv2d", "dilation", dilation)
    groups = operator.index(groups)
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same":
            if stride != [1, 1]:
                raise ValueError("conv2d: padding='same' needs stride 1")
            if w.ndim != 4:
                raise ShapeError(f"conv2d: weight must be [O, C/groups, kH, kW], got "
                                 f"{shapes.fmt(w.shape)}")
            totals = [dilation[i] * (w.shape[2 + i] - 1) for i in range(2)]
            padding = [t // 2 for t in totals]
            if any(t % 2 for t in totals):
                extra = [t - t // 2 - t // 2 for t in totals]  # 1 where odd: one more at the end
                x = pad(x, [0, extra[1], 0, extra[0]])
        else:
            raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', got "
                             f"{padding!r}")
    else:
        padding = shapes.pair("conv2d", "padding", padding)
    shape = shapes.conv2d("conv2d", x.shape, w.shape, stride, padding, dilation, groups)
    inputs = [x, w]
    if bias is not None:
        b = _t("conv2d", bias)
        if b.shape != (w.shape[0],):
            raise ShapeError(f"conv2d: bias must be [{w.shape[0]}], got {shapes.fmt(b.shape)}")
        inputs.append(b)
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    out = _node("conv2d", inputs, attrs, shape, _promote(*inputs))
    return out if batched else out.squeeze(0)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max over kernel_size windows of x [N, C, H, W] (or [C, H, W]); stride defaults to the
    kernel size."""
    _unsupported("max_pool2d", ceil_mode=(ceil_mode, False),
                 return_indices=(return_indices, False))
    x, batched = _unbatched("max_pool2d", _t("max_pool2d", input), 4)
    kernel = shapes.pair("max_pool2d", "kernel_size", kernel_size)
    stride = kernel if stride is None or stride == [] else shapes.pair("max_pool2d", "stride",
                                                                        stride)
    padding = shapes.pair("max_pool2d", "padding", padding)
    dilation = shapes.pair("max_pool2d", "dilation", dilation)
    shape = shapes.pool2d("max_pool2d", x.shape, kernel, stride, padding, dilation)
    attrs = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    out = _node("max_pool2d", [x], attrs, shape, x.dtype)
    return out if batched else out.squeeze(0)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """Mean over kernel_size windows; with count_include_pad False the padding is left out of
    each window's divisor."""
    _unsupported("avg_pool2d", ceil_mode=(ceil_mode, False),
                 divisor_override=(divisor_override, None))
    x, batched = _unbatched("avg_pool2d", _t("avg_pool2d", input), 4)
    kernel = shapes.pair("avg_pool2d", "kernel_size", kernel_size)
    stride = kernel if stride is None or stride == [] else shapes.pair("avg_pool2d", "stride",
                                                                        stride)
    padding = shapes.pair("avg_pool2d", "padding", padding)
    shape = shapes.pool2d("avg_pool2d", x.shape, kernel, stride, padding, [1, 1])
    attrs = {"kernel_size": kernel, "stride": stride, "padding": padding,
             "count_include_pad": bool(count_include_pad)}
    out = _node("avg_pool2d", [x], attrs, shape, x.dtype)
    return out if batched else out.squeeze(0)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalizes over the trailing ``normalized_shape`` dims, then scales and shifts."""
    x = _t("layer_norm", input)
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    norm = shapes.check_shape("layer_norm", normalized_shape)
    if not norm or len(norm) > x.ndim or x.shape[x.ndim - len(norm):] != norm:
        raise ShapeError(f"layer_norm: normalized_shape {shapes.fmt(norm)} does not match the "
                         f"end of input {shapes.fmt(x.shape)}")
    if weight is None and bias is not None:
        weight = ones(norm, dtype=x.dtype)  # a unit weight lets the bias travel in its slot
    inputs = [x]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            if _t("layer_norm", p).shape != norm:
                raise ShapeError(f"layer_norm: {name} must be {shapes.fmt(norm)}, got "
                                 f"{shapes.fmt(p.shape)}")
            inputs.append(p)
    attrs = {"normalized_shape": list(norm), "eps": float(eps)}
    return _node("layer_norm", inputs, attrs, x.shape, shapes.float_type(_promote(*inputs)))


def one_hot(tensor, num_classes=-1):
    """int64 one-hot vectors of the class indices in ``tensor``: shape + [num_classes].
    num_classes=-1 asks the daemon for the largest index first (one extra round trip)."""
    idx = _t("one_hot", tensor)
    if idx.dtype.is_floating_point or idx.dtype is dtypes.bool_:
        raise ShapeError(f"one_hot: needs an integer tensor, got {idx.dtype}", code="bad_dtype")
    if num_classes == -1:
        num_classes = int(idx.max().item()) + 1 if idx.numel() else 0
    num_classes = operator.index(num_classes)
    if num_classes <= 0:
        raise ShapeError(f"one_hot: num_classes must be positive, got {num_classes}",
                         code="bad_request")
    return _node("one_hot", [idx], {"num_classes": num_classes}, idx.shape + (num_classes,),
                 dtypes.int64)


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0,
              scale_grad_by_freq=False, sparse=False):
    """Rows of ``weight`` [n, d] picked by the int indices ``input``: shape input + [d]."""
    _unsupported("embedding", padding_idx=(padding_idx, None), max_norm=(max_norm, None),
                 scale_grad_by_freq=(scale_grad_by_freq, False), sparse=(sparse, False))
    idx, w = _t("embedding", input), _t("embedding", weight)
    if w.ndim != 2:
        raise ShapeError(f"embedding: weight must be [n, d], got {shapes.fmt(w.shape)}")
    if idx.dtype.is_floating_point or idx.dtype is dtypes.bool_:
        raise ShapeError(f"embedding: indices must be int, got {idx.dtype}", code="bad_dtype")
    return _node("embedding", [idx, w], {}, idx.shape + (w.shape[1],), w.dtype)


def pad(input, pad, mode="constant", value=None):
    """Constant padding, torch order: (left, right) of the last dim first, then (top, bottom)
    of the one before, ... Negative amounts crop, done with a slice after the pad node."""
    if mode != "constant":
        raise NotImplementedError(f"pad: mode {mode!r} is not supported (only 'constant')")
    x = _t("pad", input)
    amounts = [operator.index(p) for p in pad]
    grow = [p if p > 0 else 0 for p in amounts]
    out = x
    if any(grow):
        shape = shapes.pad("pad", x.shape, grow)
        attrs = {"pad": grow}
        if value is not None:
            attrs["value"] = _scalar_value(value)
        out = _node("pad", [x], attrs, shape, x.dtype)
    if any(p < 0 for p in amounts):
        shapes.pad("pad", x.shape, [0] * len(amounts))  # the same entry-count check
        key = [slice(None)] * out.ndim
        for i in range(len(amounts) // 2):
            axis = out.ndim - 1 - i
            lo, hi = -min(amounts[2 * i], 0), -min(amounts[2 * i + 1], 0)
            key[axis] = slice(lo, out.shape[axis] - hi)
        out = out[tuple(key)]
    return out
