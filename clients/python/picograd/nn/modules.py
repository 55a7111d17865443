"""picograd.nn.modules: torch.nn's Module, Parameter and layers, with torch's names, arguments,
defaults, initializers and state_dict keys.

Parameters and buffers are tensors in the daemon. A new module's parameters are pending graphs
(their initializers over pg.rand), so building a model sends nothing; the first call of any
module (or the creation of an optimizer, or state_dict()) realizes every such tensor in one
run. After that a parameter is a daemon handle that optimizer steps assign to.

BatchNorm's running statistics are updated like torch's, at each training forward: the update
is queued as an `assign` of the buffer and goes out with the next run (normally the optimizer
step's, so the whole training step stays one request). Until then, anything built over the
buffer reads the updated value, so ``bn.running_mean`` reads as torch's does right after
forward.
"""

import collections
import itertools
import math
import operator

import weakref

import numpy as np

from .. import dtypes, shapes
from .. import functional as _f
from ..autograd_api import no_grad
from ..devices import CPU, as_device, device
from ..tensor import (Tensor, _LAZY, _assign_later, _dtype_name, _execute, _mark_mutable,
                      realize_lazy, tensor as _tensor)
from . import functional as F
from . import init

__all__ = ["Parameter", "Module", "Sequential", "ModuleList", "ModuleDict", "Identity",
           "Linear", "Conv2d", "ReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "Flatten",
           "MaxPool2d", "AvgPool2d", "Dropout", "LayerNorm", "BatchNorm1d", "BatchNorm2d",
           "Embedding", "CrossEntropyLoss", "MSELoss", "Softmax", "LogSoftmax"]


class Parameter(Tensor):
    """A tensor that is a module's parameter: a leaf that requires grad (by default).

    ``Parameter(t)`` shares t's daemon tensor when t is realized (so, as in torch, t sees
    the optimizer's updates); a pending t's graph becomes the parameter's, realized later
    with the module's other pending tensors."""

    __slots__ = ()

    def __new__(cls, data=None, requires_grad=True):
        if data is None:
            data = _f.zeros(0)
        if not isinstance(data, Tensor):
            data = _tensor(data)
        t = object.__new__(cls)
        for name in ("_op", "_inputs", "_attrs", "_shape", "_dtype", "_buf", "_conn", "_weak",
                     "_site", "_dev"):
            setattr(t, name, getattr(data, name))
        t._rg, t._grad, t._ag, t._val = 0, None, None, None
        if requires_grad:
            t.requires_grad_()
        elif t._buf is not None:
            _mark_mutable(t)
        else:
            _LAZY[id(t)] = t
        return t

    def __init__(self, data=None, requires_grad=True):
        pass

    def __repr__(self):
        return "Parameter containing:\n" + Tensor.__repr__(self)

    def __reduce__(self):
        return (Parameter, (_tensor(self.numpy()), self.requires_grad))


def _as_value(name, value, like):
    """A state_dict value (picograd tensor, numpy array, torch tensor, number) as a realized
    picograd tensor of ``like``'s dtype and shape."""
    if isinstance(value, Tensor):
        t = value
    else:
        if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
            value = value.detach().cpu().numpy()
        t = _tensor(np.asarray(value))
    if tuple(t.shape) != tuple(like.shape):
        raise RuntimeError(f"size mismatch for {name}: copying a param with shape "
                           f"{list(t.shape)} from checkpoint, the shape in current model is "
                           f"{list(like.shape)}.")
    if t.dtype is not like.dtype:
        t = t.to(like.dtype)
    return t


def _move_in_place(t, dev):
    """Makes Tensor t name a copy of its value on ``dev`` (the daemon copies; t keeps its
    identity, its requires_grad and its place in any optimizer)."""
    moved = t.to(dev)
    t._buf, t._dev, t._val = moved._buf, moved._dev, None
    if t._rg == 1:  # a leaf an optimizer may assign to: readers are tracked per buffer
        t._buf.readers = weakref.WeakValueDictionary()


class Module:
    """Base class of all layers, as torch.nn.Module: assign Parameters, buffers
    (register_buffer) and sub-modules as attributes in __init__, write forward()."""

    training = True

    def __init__(self):
        object.__setattr__(self, "_parameters", collections.OrderedDict())
        object.__setattr__(self, "_buffers", collections.OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", collections.OrderedDict())
        object.__setattr__(self, "training", True)

    # -- attributes ----------------------------------------------------------------------------

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() call")
            self.__dict__.pop(name, None)
            self._buffers.pop(name, None)
            self._modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            if params is None:
                raise AttributeError("cannot assign module before Module.__init__() call")
            self.__dict__.pop(name, None)
            params.pop(name, None)
            self._buffers.pop(name, None)
            self._modules[name] = value
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter "
                                f"'{name}' (torch.nn.Parameter or None expected)")
            params[name] = None
        elif params is not None and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                                "(torch.Tensor or None expected)")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter "
                            f"'{name}' (torch.nn.Parameter or None required)")
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor of the module's state that is not a parameter (running statistics)."""
        if tensor is not None:
            if not isinstance(tensor, Tensor):
                raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer "
                                f"'{name}' (torch Tensor or None required)")
            if tensor._buf is not None:
                _mark_mutable(tensor)
            else:
                _LAZY[id(tensor)] = tensor
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        self._modules[name] = module

    register_module = add_module

    # -- traversal -----------------------------------------------------------------------------

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        if memo is None:
            memo = set()
        if self in memo:
            return
        if remove_duplicate:
            memo.add(self)
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            sub = prefix + ("." if prefix else "") + name
            yield from module.named_modules(memo, sub, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and m not in seen:
                seen.add(m)
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, store, prefix="", recurse=True):
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, v in getattr(m, store).items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield mprefix + ("." if mprefix else "") + name, v

    def named_parameters(self, prefix="", recurse=True):
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -- modes ---------------------------------------------------------------------------------

    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=False):
        """Zeroes (torch 1.13's default) or drops every parameter's .grad."""
        for p in self.parameters():
            if p._grad is not None:
                p._grad = None if set_to_none else _f.zeros(p.shape, dtype=p.dtype)

    def to(self, *args, **kwargs):
        """Moves the module to a device, in place, as torch's: every parameter and buffer (and
        a parameter's .grad) is copied there by the daemon and the same Tensor objects now name
        the copies, so an optimizer made before still holds them. A device the daemon does not
        have raises its no_device error. A dtype among the arguments is ignored (modules keep
        their dtypes)."""
        dev = kwargs.get("device")
        for a in args:
            if isinstance(a, (str, device)) and not _dtype_name(a) or (
                    hasattr(a, "type") and hasattr(a, "index")):
                dev = a
            elif isinstance(a, Tensor):
                dev = a.device
        if dev is None:
            return self
        dev = as_device(dev)
        realize_lazy()
        tensors = list(self.parameters()) + list(self.buffers())
        if not tensors and dev != CPU:
            # Nothing to move, but the device must exist: an empty tensor asks the daemon.
            _tensor(np.zeros(0, np.float32), device=dev)
        for t in tensors:
            if t.device != dev:
                _move_in_place(t, dev)
            if t._grad is not None and t._grad.device != dev:
                t._grad = t._grad.to(dev)
        return self

    def cuda(self, device=None):
        return self.to(as_device("cuda" if device is None else device))

    def cpu(self):
        return self.to(CPU)

    def type(self, dst_type):
        return self

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """An OrderedDict of every parameter and persistent buffer, keyed as torch does
        ("0.weight", "bn.running_mean", ...). The tensors share the daemon tensors (like torch's,
        they see later optimizer steps); pg.save writes their values."""
        realize_lazy()
        out = collections.OrderedDict() if destination is None else destination
        for mprefix, m in self.named_modules(prefix=prefix.rstrip(".")):
            dot = mprefix + ("." if mprefix else "")
            for name, p in m._parameters.items():
                if p is not None:
                    out[dot + name] = p if keep_vars else _share(p)
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[dot + name] = b if keep_vars else _share(b)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copies the values of ``state_dict`` (picograd tensors, numpy arrays, torch tensors)
        into the parameters and buffers, all in one run. With ``strict`` the keys must match
        exactly (else RuntimeError, and nothing is changed). Returns (missing, unexpected)."""
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            msgs = []
            if unexpected:
                msgs.append("Unexpected key(s) in state_dict: "
                            + ", ".join(f'"{k}"' for k in unexpected) + ". ")
            if missing:
                msgs.append("Missing key(s) in state_dict: "
                            + ", ".join(f'"{k}"' for k in missing) + ". ")
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(msgs))
        assigns = []
        for k, target in own.items():
            if k in state_dict:
                assigns.append((target, _as_value(k, state_dict[k], target)))
        if assigns:
            _execute(assigns=assigns)
        return _IncompatibleKeys(missing, unexpected)

    # -- calling -------------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        if _LAZY:
            realize_lazy()
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required '
                                  '"forward" function')

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = []
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {sub}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"

    def __dir__(self):
        return sorted(set(object.__dir__(self)) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))


_IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys",
                                                                "unexpected_keys"])


def _share(t):
    """A plain Tensor sharing ``t``'s daemon tensor (state_dict's values)."""
    out = Tensor._make(None, (), None, t.shape, t.dtype, t._conn, t._buf)
    out._dev = t._dev
    return out


# ---------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------


class Sequential(Module):
    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], collections.OrderedDict):
            for name, m in args[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(args):
                self.add_module(str(i), m)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(collections.OrderedDict(list(self._modules.items())[idx]))
        mods = list(self._modules.values())
        return mods[operator.index(idx)]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def forward(self, input):
        for m in self._modules.values():
            input = m(input)
        return input


class ModuleList(Module):
    def __init__(self, modules=None):
        super().__init__()
        for m in modules or ():
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(mods[idx])
        return mods[operator.index(idx)]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleDict(Module):
    def __init__(self, modules=None):
        super().__init__()
        for k, m in (modules or {}).items():
            self.add_module(k, m)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()


class Identity(Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input


# ---------------------------------------------------------------------------------------------
# Layers with parameters
# ---------------------------------------------------------------------------------------------


def _dtype(dtype):
    return dtypes.as_dtype(dtype) if dtype is not None else dtypes.float32


class Linear(Module):
    """y = x @ weight.T + bias; weight [out, in] ~ kaiming_uniform(a=sqrt(5)), bias ~
    U(-1/sqrt(in), 1/sqrt(in)), as torch."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        dt = _dtype(dtype)
        self.weight = Parameter(_f.empty((out_features, in_features), dtype=dt))
        self.bias = Parameter(_f.empty((out_features,), dtype=dt)) if bias else None
        if not bias:
            self.register_parameter("bias", None)
        self.reset_parameters()
        if device is not None:  # made where the default device is, then moved
            self.to(device)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._fans(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Conv2d(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None):
        super().__init__()
        if padding_mode != "zeros":
            raise NotImplementedError(f"Conv2d: padding_mode={padding_mode!r} is not supported")
        if in_channels % groups:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups:
            raise ValueError("out_channels must be divisible by groups")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = tuple(shapes.pair("Conv2d", "kernel_size", kernel_size))
        self.stride = tuple(shapes.pair("Conv2d", "stride", stride))
        self.padding = padding if isinstance(padding, str) else tuple(
            shapes.pair("Conv2d", "padding", padding))
        self.dilation = tuple(shapes.pair("Conv2d", "dilation", dilation))
        self.groups = groups
        self.padding_mode = padding_mode
        dt = _dtype(dtype)
        self.weight = Parameter(_f.empty((out_channels, in_channels // groups)
                                         + self.kernel_size, dtype=dt))
        if bias:
            self.bias = Parameter(_f.empty((out_channels,), dtype=dt))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        if device is not None:  # made where the default device is, then moved
            self.to(device)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._fans(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return F.conv2d(input, self.weight, self.bias, list(self.stride), padding,
                        list(self.dilation), self.groups)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding}"
        if self.bias is None:
            s += ", bias=False"
        return s


class LayerNorm(Module):
    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, device=None,
                 dtype=None):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        dt = _dtype(dtype)
        if elementwise_affine:
            self.weight = Parameter(_f.ones(self.normalized_shape, dtype=dt))
            self.bias = Parameter(_f.zeros(self.normalized_shape, dtype=dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if device is not None:  # made where the default device is, then moved
            self.to(device)

    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class _BatchNorm(Module):
    _ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        dt = _dtype(dtype)
        if affine:
            self.weight = Parameter(_f.ones((num_features,), dtype=dt))
            self.bias = Parameter(_f.zeros((num_features,), dtype=dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", _f.zeros((num_features,), dtype=dt))
            self.register_buffer("running_var", _f.ones((num_features,), dtype=dt))
            self.register_buffer("num_batches_tracked", _f.zeros((), dtype=dtypes.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        if device is not None:  # made where the default device is, then moved
            self.to(device)

    def _check_input_dim(self, input):
        raise NotImplementedError

    def forward(self, input):
        self._check_input_dim(input)
        x = input
        c = self.num_features
        if x.shape[1] != c:
            raise RuntimeError(f"running_mean should contain {x.shape[1]} elements not {c}")
        dims = [0] + list(range(2, x.ndim))
        bshape = [1, c] + [1] * (x.ndim - 2)
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            n = x.numel() // c
            if n <= 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got "
                                 f"input size {list(x.shape)}")
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)
            if self.training and self.track_running_stats:
                if self.running_mean._buf is None:
                    realize_lazy()
                with no_grad():
                    nbt = self.num_batches_tracked + 1
                    if self.momentum is None:
                        factor = 1.0 / nbt.to(x.dtype)
                        keep = 1.0 - factor
                    else:
                        factor = self.momentum
                        keep = 1.0 - self.momentum
                    m, v = mean.detach(), var.detach() * (n / (n - 1))
                    new_mean = self.running_mean * keep + m * factor
                    new_var = self.running_var * keep + v * factor
                    _assign_later(self.running_mean, new_mean.to(self.running_mean.dtype))
                    _assign_later(self.running_var, new_var.to(self.running_var.dtype))
                    _assign_later(self.num_batches_tracked, nbt)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean.reshape(bshape)) * (var.reshape(bshape) + self.eps).rsqrt()
        if self.affine:
            y = y * self.weight.reshape(bshape) + self.bias.reshape(bshape)
        return y

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    def _check_input_dim(self, input):
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(_BatchNorm):
    def _check_input_dim(self, input):
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 norm_type=2.0, scale_grad_by_freq=False, sparse=False, _weight=None,
                 device=None, dtype=None):
        super().__init__()
        if padding_idx is not None or max_norm is not None or scale_grad_by_freq or sparse:
            raise NotImplementedError("Embedding: padding_idx, max_norm, scale_grad_by_freq "
                                      "and sparse are not supported")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.max_norm = padding_idx, max_norm
        if _weight is None:
            self.weight = Parameter(_f.empty((num_embeddings, embedding_dim),
                                             dtype=_dtype(dtype)))
            init.normal_(self.weight)
        else:
            self.weight = Parameter(_weight)
        if device is not None:  # made where the default device is, then moved
            self.to(device)

    def forward(self, input):
        return F.embedding(input, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


# ---------------------------------------------------------------------------------------------
# Layers without parameters
# ---------------------------------------------------------------------------------------------


class ReLU(Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return F.relu(input)


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, input):
        return F.gelu(input, approximate=self.approximate)


class SiLU(Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return F.silu(input)


class Sigmoid(Module):
    def forward(self, input):
        return F.sigmoid(input)


class Tanh(Module):
    def forward(self, input):
        return F.tanh(input)


class Softmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return F.softmax(input, self.dim)


class LogSoftmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return F.log_softmax(input, self.dim)


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input):
        return input.flatten(self.start_dim, self.end_dim)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, self.return_indices)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class Dropout(Module):
    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if p < 0 or p > 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = p, inplace

    def forward(self, input):
        return F.dropout(input, self.p, self.training)


class CrossEntropyLoss(Module):
    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0):
        super().__init__()
        self.weight, self.size_average, self.reduce = weight, size_average, reduce
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.weight, self.size_average,
                               self.ignore_index, self.reduce, self.reduction,
                               self.label_smoothing)


class MSELoss(Module):
    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        self.size_average, self.reduce, self.reduction = size_average, reduce, reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, self.size_average, self.reduce, self.reduction)
