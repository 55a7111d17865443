"""picograd.tensor: lazy, PyTorch-like tensors whose data lives in picogradd.

A Tensor is one of two things:

- **realized**: a handle of a tensor the daemon holds for our Connection (pg.tensor uploads its
  data at once with `put`, and every evaluated result ends up like this);
- **pending**: one node of a graph that has not run yet: an op name, the input Tensors and the
  op's attributes. ``x * 2 + 1`` makes two pending nodes and sends nothing.

Each pending node already knows its shape and dtype (``picograd.shapes`` infers them with the
daemon's rules), so ``y.shape``, ``len(y)`` and ``y[5]``'s bounds check cost no round trip. Data
is needed only by ``y.numpy()``, ``y.item()``, ``print(y)``, ``bool(y)`` and friends, or when you
ask with ``pg.realize(y, z)``. Then the pending graph behind the requested tensors is walked (no
recursion: graphs may be thousands of nodes deep), each shared subgraph is emitted once, leaves
become `input` nodes (realized tensors) or `const` nodes (Python numbers), and ONE `run` request
goes out; its reply turns every requested tensor into a realized handle and returns the data
asked for inline. A realized Tensor drops its graph, so the intermediates can be collected.

    import picograd as pg
    x = pg.tensor([[1.0, 2.0], [3.0, 4.0]])   # put: realized, handle on the default connection
    y = (x @ x.T).relu().sum(dim=1)            # three pending nodes; y.shape == (2,)
    y.numpy()                                  # one `run`: y kept as a handle, data inline

When the daemon refuses a node ("node 3 (add): shapes [2, 3] and [4] do not broadcast"), the
error is re-raised with the file and line where that node was built, so it points at your code
rather than at the line that asked for the data.

A realized Tensor's handle is freed when the Tensor is garbage collected. The finalizer only
queues the handle (a finalizer may run in the middle of another request, where sending would
corrupt the stream); the queue goes out pipelined in front of the next `run`/`get` on that
connection, or with pg.flush().

Everything here is immutable: there are no in-place ops, so tensors may share handles and graphs.
The one exception is the low-level hook _commit() (``from picograd.tensor import _commit``), on
which optimizers are built: it sends one `run` whose `assign` nodes point realized tensors'
handles at new values when the run succeeds (PROTOCOL.md, `assign`). See its docstring.
"""

import builtins
import collections
import operator
import re
import struct
import sys
import threading
import weakref

import numpy as np

from . import dtypes, shapes
from .client import default_connection
from .devices import CPU, as_device, device, get_default_device
from .dtypes import as_dtype
from .shapes import DimError, ShapeError, Size
from .wire import PicogradError

__all__ = ["Tensor", "tensor", "from_numpy", "as_tensor", "realize", "flush", "where", "explain"]

MAX_RUN_NODES = 65536   # PROTOCOL.md: nodes of one `run`; bigger graphs are run in pieces
RUN_CHUNK = 32768       # nodes evaluated per piece when a graph is bigger than that
_MAX_IN_FLIGHT = 32     # frees sent before their replies are read (below the daemon's queue)
_FLUSH_AT = 1024        # queued frees that make pg.tensor flush before its put

# What x.max(dim) and x.min(dim) return, like torch.return_types.max.
max_result = collections.namedtuple("max", ["values", "indices"])
min_result = collections.namedtuple("min", ["values", "indices"])


# ---------------------------------------------------------------------------------------------
# Creation sites
# ---------------------------------------------------------------------------------------------


class _Local(threading.local):
    """Per-thread state of the tensor layer: grad mode (as torch's, thread-local) and the
    creation site that graph builders inside picograd (an optimizer step, backward()) stamp on
    every node they make, so that they walk the frames once instead of once per node."""

    grad_enabled = True
    site = None


_local = _Local()


def _user_site():
    """Returns (file, line) of the innermost caller outside the picograd package, or None.

    Walking frames costs a few attribute reads per level, cheap enough to do for every node;
    it is what lets a daemon error name the user's line that built the failing node.
    """
    site = _local.site
    if site is not None:
        return site
    f = sys._getframe(2)
    while f is not None:
        name = f.f_globals.get("__name__", "")
        if name != "picograd" and not name.startswith("picograd."):
            return (f.f_code.co_filename, f.f_lineno)
        f = f.f_back
    return None


# ---------------------------------------------------------------------------------------------
# Handles and the per-connection free queue
# ---------------------------------------------------------------------------------------------


class _ConnState:
    """What the tensor layer keeps per Connection: handles of dead tensors waiting to be freed.

    ``dead`` holds (session, handle) pairs; a deque because finalizers append to it from any
    thread while a flush pops from it, and both operations are atomic.
    """

    def __init__(self):
        self.dead = collections.deque()
        self.assigns = {}  # id(_Buffer) -> (_Buffer, value): queued by _assign_later


# Pending leaves that must become daemon handles before an optimizer assigns to them: leaves
# made to require grad while pending, lazy nn.Parameters and module buffers. Modules and
# optimizers realize them all in one run (realize_lazy) before they build anything over them.
_LAZY = weakref.WeakValueDictionary()  # id -> Tensor (a WeakSet would compare with ==)


def realize_lazy():
    """Realizes every pending tensor in _LAZY in one run (and makes them mutable)."""
    groups = {}
    for t in list(_LAZY.values()):
        if t._buf is None and (t._conn is None or not t._conn.closed):
            groups.setdefault(id(t._conn), []).append(t)
        elif t._buf is not None or t._conn.closed:
            _LAZY.pop(id(t), None)
    for lazy in groups.values():
        # fills one `put` each (see _realize_distinct), the rest in one run
        _realize_distinct([t for t in lazy if t._op == "full"])
        rest = [t for t in lazy if t._buf is None]
        if rest:
            _execute(keep=rest)
        for t in lazy:
            _mark_mutable(t)
            _LAZY.pop(id(t), None)


_states_lock = threading.Lock()


def _state(conn):
    """conn's _ConnState, kept on the Connection itself: every run looks it up, and a plain
    attribute costs a fraction of a locked weak-dictionary lookup."""
    st = getattr(conn, "_tensor_state", None)
    if st is None:
        with _states_lock:
            st = getattr(conn, "_tensor_state", None)
            if st is None:
                st = conn._tensor_state = _ConnState()
    return st


class _Buffer:
    """One daemon tensor handle, freed (queued for `free`) when the last Tensor using it dies.

    Tensors never free handles themselves: a pending graph holds its input Tensors, which hold
    their _Buffer, so a handle stays valid for as long as any graph can still reference it.
    ``session`` is the Connection's hello reply at creation: after a reconnect the handle
    numbers start over, and a stale handle must not free a new session's tensor.
    """

    __slots__ = ("conn", "handle", "session", "readers", "pending", "_dead", "__weakref__")

    def __init__(self, conn, handle):
        self.conn = conn
        self.handle = handle
        self.session = conn.server_info
        # A *mutable* buffer (a parameter, an optimizer state, a BatchNorm running stat: a
        # target of `assign`) has ``readers``, a WeakValueDictionary (id -> Tensor) of the
        # pending Tensors built over it, and ``pending``, the value an assign will give it at
        # the next run (None: none).
        # See _mark_mutable, _assign_later and _execute.
        self.readers = None
        self.pending = None
        self._dead = _state(conn).dead

    def __del__(self):
        # Only queues the handle (see the module docstring); at exit the session closes, which
        # frees everything anyway. (A __del__ costs a fraction of a weakref.finalize, which
        # every run's every kept output would otherwise create.)
        dead = getattr(self, "_dead", None)  # None: __init__ did not get that far
        if dead is not None:
            dead.append((self.session, self.handle))


def _take_dead(conn):
    """Pops the queued handles of ``conn`` that belong to its current session."""
    dead = _state(conn).dead
    current = conn.server_info
    out = []
    while True:
        try:
            session, handle = dead.popleft()
        except IndexError:
            return out
        if session is current:
            out.append(handle)


# The capture hook of picograd.jit: while a jitted function is being captured, every request
# (_exchange) and every tensor that adopts a run output (_adopt) is reported to it.
_recorder = None


def _exchange(conn, op, **fields):
    """Sends the queued frees and then request ``op``; returns its reply (raises on error).

    A `run` carries the queued handles in its own `free` field. Before any other request the
    frees are pipelined in front of it, so they cost no extra round trip; replies
    come back in order and the free replies are read and dropped (a handle the user freed by
    hand gives unknown_handle, which is harmless). Long queues go in batches so that the daemon's
    per-connection request queue never fills while we are still writing.
    """
    with conn._call_lock:  # another thread's conn.call() must not read one of our replies
        dead = _take_dead(conn)
        if not dead:
            rid, reply = conn.exchange(op, fields)
        elif op == "run":
            # A run carries them itself (its `free` field): a training step stays one request.
            rid, reply = conn.exchange(op, dict(fields, free=dead))
        else:
            rid, reply = _exchange_with_frees(conn, op, fields, dead)
    if reply.get("ok") is not True:
        err = reply.get("error") if isinstance(reply.get("error"), dict) else {}
        raise PicogradError(err.get("code", "bad_reply"), err.get("message", repr(reply)[:200]))
    if reply.get("id") != rid:
        raise PicogradError("bad_reply", f"expected the reply to request {rid}, got "
                                         f"{reply.get('id')!r}")
    if _recorder is not None:
        _recorder.request(conn, op, fields, reply)
    return reply


def _exchange_with_frees(conn, op, fields, dead):
    """_exchange's request ``op`` (not a run) with the queued handles ``dead`` freed first;
    returns (its id, its reply). The caller holds conn._call_lock."""
    while len(dead) > _MAX_IN_FLIGHT:
        batch, dead = dead[:_MAX_IN_FLIGHT], dead[_MAX_IN_FLIGHT:]
        for h in batch:
            conn.send("free", handle=h)
        for _ in batch:
            conn.recv()
    for h in dead:
        conn.send("free", handle=h)
    try:
        rid = conn.send(op, **fields)
    finally:
        # Read the free replies even when the request could not be sent (say, an encoding
        # error): left unread, they would make every later call() fail as "busy".
        for _ in dead:
            conn.recv()
    return rid, conn.recv()


def flush(conn=None):
    """Frees, now, the daemon tensors of Tensors that were garbage collected (on ``conn``, by
    default the default connection). Normally they go out with the next request anyway."""
    conn = conn if conn is not None else default_connection()
    if conn.closed:
        return
    _exchange(conn, "ping")


# ---------------------------------------------------------------------------------------------
# The Tensor
# ---------------------------------------------------------------------------------------------


class Tensor:
    """A lazy tensor: a realized daemon handle or a pending op node (see the module comment).

    Create tensors with pg.tensor, pg.zeros, pg.arange, pg.rand, ... rather than this class.
    """

    __slots__ = ("_op", "_inputs", "_attrs", "_shape", "_dtype", "_buf", "_conn", "_weak",
                 "_site", "_rg", "_grad", "_ag", "_val", "_dev", "__weakref__")

    # Make numpy defer to us in `ndarray + Tensor` (it calls our __radd__ instead of turning the
    # tensor into an array), as torch does.
    __array_priority__ = 1000

    def __init__(self, *args, **kwargs):
        raise TypeError("create tensors with picograd.tensor(data), picograd.zeros(shape), "
                        "picograd.arange(n), ...")

    # -- internal construction ----------------------------------------------------------------

    @classmethod
    def _make(cls, op, inputs, attrs, shape, dtype, conn=None, buf=None, weak=False):
        t = cls.__new__(cls)
        t._op = op
        t._inputs = tuple(inputs)
        t._attrs = attrs
        t._shape = Size(shape)
        t._dtype = dtype
        t._buf = buf
        t._conn = conn
        t._weak = weak
        t._site = _user_site()
        t._rg = 0        # autograd: 0 no grad, 1 a leaf that requires grad, 2 a non-leaf that does
        t._grad = None   # a leaf's .grad
        t._ag = None     # a realized non-leaf's recorded node (op, inputs, attrs), for backward;
        #                  False once backward() consumed its graph
        t._val = None    # numpy data fetched with the run that realized it (loss.item() after step)
        t._dev = None    # the device's name ("cuda:0") when not the CPU; ops inherit it (_node)
        return t

    # -- metadata (no round trip) --------------------------------------------------------------

    @property
    def shape(self):
        return self._shape

    @property
    def dtype(self):
        return self._dtype

    @property
    def ndim(self):
        return len(self._shape)

    @property
    def device(self):
        """Where the tensor lives: a pg.device ("cpu" unless it was made with device= or moved
        with .to(); the daemon refuses devices it does not have, with no_device)."""
        return CPU if self._dev is None else as_device(self._dev)

    @property
    def is_cuda(self):
        return self._dev is not None and self._dev.startswith("cuda")

    def dim(self):
        return len(self._shape)

    ndimension = dim

    def size(self, dim=None):
        """The shape, or the length of axis ``dim``."""
        if dim is None:
            return self._shape
        if self.ndim == 0:
            raise DimError(f"size: dim {dim} of a tensor with no dims")
        return self._shape[shapes.norm_dim("size", dim, self.ndim)]

    def numel(self):
        return shapes.numel(self._shape)

    nelement = numel

    def element_size(self):
        return self._dtype.itemsize

    def is_floating_point(self):
        return self._dtype.is_floating_point

    @property
    def is_realized(self):
        """True when the tensor is a daemon handle, False while it is a pending graph node."""
        return self._buf is not None

    @property
    def handle(self):
        """The daemon handle (an int) of a realized tensor; None while pending."""
        return self._buf.handle if self._buf is not None else None

    @property
    def connection(self):
        """The Connection this tensor belongs to; None for a pending graph with no realized
        input yet (it will run on the default connection)."""
        return self._conn

    # -- getting data (these run the graph) ----------------------------------------------------

    def realize(self):
        """Evaluates this tensor into a daemon handle (no data comes back); returns self."""
        _execute(keep=[self])
        return self

    def numpy(self):
        """Returns the data as a new numpy array (one round trip when pending)."""
        if self._val is not None:
            return self._val.copy()
        return _execute(keep=[self], fetch=[self])[0]

    def item(self):
        """The value of a one-element tensor as a Python number."""
        n = self.numel()
        if n != 1:
            raise RuntimeError(f"a Tensor with {n} elements cannot be converted to Scalar")
        if self._val is None and self._buf is None:
            out = _run_one(self, "item")  # a loss.item(): the common case, without numpy
            if out is not None:
                return out[0]
        return self.numpy().item()

    def tolist(self):
        return self.numpy().tolist()

    def __array__(self, dtype=None, copy=None):  # copy: numpy 2 passes it; the array is ours
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __bool__(self):
        n = self.numel()
        if n != 1:
            what = "no values" if n == 0 else "more than one value"
            raise RuntimeError(f"Boolean value of Tensor with {what} is ambiguous")
        return builtins.bool(self.item())

    def __float__(self):
        return builtins.float(self.item())

    def __int__(self):
        return builtins.int(self.item())

    def __index__(self):
        if self._dtype.is_floating_point or self.numel() != 1:
            raise TypeError("only integer tensors of a single element can be converted to an "
                            "index")
        return builtins.int(self.item())

    def __len__(self):
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def __iter__(self):
        if not self._shape:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._shape[0]))

    def __contains__(self, value):
        return builtins.bool((self == value).any())

    def __repr__(self):
        arr = self.numpy()
        body = np.array2string(arr, separator=", ", prefix="tensor(")
        if arr.size == 0 and arr.ndim != 1:  # "[]" alone would hide the shape, as in torch
            body += f", size={tuple(arr.shape)}"
        return f"tensor({body}, dtype={self._dtype})"

    __str__ = __repr__

    def __format__(self, spec):
        if spec and self.numel() == 1:
            return format(self.item(), spec)
        return format(repr(self), spec)

    def __setitem__(self, key, value):
        raise TypeError("picograd tensors are immutable; build a new one, e.g. with "
                        "pg.where(mask, value, x) or x.masked_fill(mask, value)")

    # Tensors are immutable, so a copy may share the handle; pickling ships the data.
    def __copy__(self):
        return self.clone()

    def __deepcopy__(self, memo):
        return self.clone()

    def __reduce__(self):
        return (tensor, (self.numpy(),))

    # `==` is elementwise (below), so hashing falls back to identity, as for torch tensors.
    __hash__ = object.__hash__

    # -- arithmetic and comparison operators ---------------------------------------------------

    def __add__(self, other):
        return _binary_or_not("add", self, other)

    def __radd__(self, other):
        return _binary_or_not("add", other, self)

    def __sub__(self, other):
        return _binary_or_not("sub", self, other)

    def __rsub__(self, other):
        return _binary_or_not("sub", other, self)

    def __mul__(self, other):
        return _binary_or_not("mul", self, other)

    def __rmul__(self, other):
        return _binary_or_not("mul", other, self)

    def __truediv__(self, other):
        return _binary_or_not("div", self, other)

    def __rtruediv__(self, other):
        return _binary_or_not("div", other, self)

    def __pow__(self, other):
        return _binary_or_not("pow", self, other)

    def __rpow__(self, other):
        return _binary_or_not("pow", other, self)

    def __matmul__(self, other):
        other = _operand(other, self)
        return NotImplemented if other is None else matmul(self, other)

    def __rmatmul__(self, other):
        other = _operand(other, self)
        return NotImplemented if other is None else matmul(other, self)

    def __eq__(self, other):
        return _binary_or_not("eq", self, other)

    def __ne__(self, other):
        return _binary_or_not("ne", self, other)

    def __lt__(self, other):
        return _binary_or_not("lt", self, other)

    def __le__(self, other):
        return _binary_or_not("le", self, other)

    def __gt__(self, other):
        return _binary_or_not("gt", self, other)

    def __ge__(self, other):
        return _binary_or_not("ge", self, other)

    # & | ^ ~ are the logical ops on bool tensors; picograd has no bitwise integer ops.
    def __and__(self, other):
        return _logical_or_not("logical_and", self, other)

    __rand__ = __and__

    def __or__(self, other):
        return _logical_or_not("logical_or", self, other)

    __ror__ = __or__

    def __xor__(self, other):
        return _logical_or_not("ne", self, other)

    __rxor__ = __xor__

    def __invert__(self):
        if self._dtype is not dtypes.bool_:
            raise TypeError(f"~ is logical_not and needs a bool tensor, got {self._dtype}")
        return self.logical_not()

    def __neg__(self):
        return self.neg()

    def __pos__(self):
        return self

    def __abs__(self):
        return self.abs()

    # -- elementwise methods -------------------------------------------------------------------

    def add(self, other):
        return _binary("add", self, _operand_or_raise(other, self))

    def sub(self, other):
        return _binary("sub", self, _operand_or_raise(other, self))

    def mul(self, other):
        return _binary("mul", self, _operand_or_raise(other, self))

    def div(self, other):
        return _binary("div", self, _operand_or_raise(other, self))

    true_divide = divide = div
    subtract = sub
    multiply = mul

    def pow(self, exponent):
        return _binary("pow", self, _operand_or_raise(exponent, self))

    def maximum(self, other):
        return _binary("maximum", self, _operand_or_raise(other, self))

    def minimum(self, other):
        return _binary("minimum", self, _operand_or_raise(other, self))

    def eq(self, other):
        return _binary("eq", self, _operand_or_raise(other, self))

    def ne(self, other):
        return _binary("ne", self, _operand_or_raise(other, self))

    def lt(self, other):
        return _binary("lt", self, _operand_or_raise(other, self))

    def le(self, other):
        return _binary("le", self, _operand_or_raise(other, self))

    def gt(self, other):
        return _binary("gt", self, _operand_or_raise(other, self))

    def ge(self, other):
        return _binary("ge", self, _operand_or_raise(other, self))

    def logical_and(self, other):
        return _binary("logical_and", self, _operand_or_raise(other, self))

    def logical_or(self, other):
        return _binary("logical_or", self, _operand_or_raise(other, self))

    def logical_not(self):
        return _node("logical_not", [self], {}, self._shape, dtypes.bool_)

    def neg(self):
        return _unary("neg", self)

    negative = neg

    def abs(self):
        return _unary("abs", self)

    absolute = abs

    def relu(self):
        return _unary("relu", self)

    def sign(self):
        return _unary("sign", self)

    def square(self):
        # torch squares a bool tensor into int64 (it is pow(x, 2), and 2 is an int).
        out = dtypes.int64 if self._dtype is dtypes.bool_ else self._dtype
        return _node("square", [self], {}, self._shape, out)

    def exp(self):
        return _unary("exp", self, float_result=True)

    def log(self):
        return _unary("log", self, float_result=True)

    def sqrt(self):
        return _unary("sqrt", self, float_result=True)

    def rsqrt(self):
        return _unary("rsqrt", self, float_result=True)

    def sin(self):
        return _unary("sin", self, float_result=True)

    def cos(self):
        return _unary("cos", self, float_result=True)

    def tanh(self):
        return _unary("tanh", self, float_result=True)

    def sigmoid(self):
        return _unary("sigmoid", self, float_result=True)

    def reciprocal(self):
        return _unary("reciprocal", self, float_result=True)

    def erf(self):
        return _unary("erf", self, float_result=True)

    def clamp(self, min=None, max=None):
        """Limits every element to [min, max]; either bound may be None, a number or a tensor.

        Number bounds of a higher category than the tensor (a float bound on an int tensor)
        promote it first, as torch does, so the clamp itself never changes the dtype.
        """
        if min is None and max is None:
            raise ValueError("clamp: at least one of min and max must not be None")
        out = self
        if isinstance(min, Tensor) or isinstance(max, Tensor):
            if min is not None:
                out = out.maximum(min)
            if max is not None:
                out = out.minimum(max)
            return out
        attrs = {}
        operands = [(self._dtype, shapes.DIMS)]
        for name, bound in (("min", min), ("max", max)):
            if bound is not None:
                attrs[name] = _scalar_value(bound)
                operands.append((shapes.scalar_type(attrs[name]), shapes.WEAK))
        target = shapes.result_type(*operands)
        if target is not self._dtype:
            out = out.to(target)
        return _node("clamp", [out], attrs, out._shape, out._dtype)

    clip = clamp

    def where(self, condition, other):
        """``where(condition, self, other)``, torch's method form."""
        return where(condition, self, other)

    def masked_fill(self, mask, value):
        """Returns a copy with ``value`` wherever ``mask`` (bool, broadcast) is true."""
        if isinstance(value, Tensor):
            if value.ndim != 0:
                raise ShapeError(f"masked_fill: the value must be a scalar, got shape "
                                 f"{shapes.fmt(value.shape)}", code="bad_request")
            return where(mask, value.to(self._dtype), self)
        if not isinstance(mask, Tensor):
            raise TypeError("masked_fill: mask must be a bool Tensor")
        shape = shapes.broadcast("masked_fill", self._shape, mask._shape)
        return _node("masked_fill", [self, mask], {"value": _scalar_value(value)}, shape,
                     self._dtype)

    # -- reductions ----------------------------------------------------------------------------

    def sum(self, dim=None, keepdim=False, dtype=None):
        return _reduce("sum", self, dim, keepdim, shapes.sum_type, dtype=dtype)

    def prod(self, dim=None, keepdim=False, dtype=None):
        return _reduce("prod", self, dim, keepdim, shapes.sum_type, dtype=dtype)

    def mean(self, dim=None, keepdim=False, dtype=None):
        return _reduce("mean", self, dim, keepdim, shapes.float_type, dtype=dtype)

    def any(self, dim=None, keepdim=False):
        return _reduce("any", self, dim, keepdim, lambda d: dtypes.bool_)

    def all(self, dim=None, keepdim=False):
        return _reduce("all", self, dim, keepdim, lambda d: dtypes.bool_)

    def logsumexp(self, dim, keepdim=False):
        return _reduce("logsumexp", self, dim, keepdim, shapes.float_type)

    def var(self, dim=None, unbiased=True, keepdim=False, *, correction=None):
        """Variance, dividing by N - correction (correction defaults to 1, or 0 when
        ``unbiased`` is False), as torch 1.13."""
        return _var("var", self, dim, unbiased, keepdim, correction)

    def std(self, dim=None, unbiased=True, keepdim=False, *, correction=None):
        return _var("std", self, dim, unbiased, keepdim, correction)

    def max(self, dim=None, keepdim=False):
        """max() of all elements; max(dim) -> (values, indices); max(other) -> maximum."""
        return _minmax("max", self, dim, keepdim)

    def min(self, dim=None, keepdim=False):
        return _minmax("min", self, dim, keepdim)

    def amax(self, dim=None, keepdim=False):
        return _reduce("max", self, dim, keepdim, lambda d: d)

    def amin(self, dim=None, keepdim=False):
        return _reduce("min", self, dim, keepdim, lambda d: d)

    def argmax(self, dim=None, keepdim=False):
        return _argreduce("argmax", self, dim, keepdim)

    def argmin(self, dim=None, keepdim=False):
        return _argreduce("argmin", self, dim, keepdim)

    def cumsum(self, dim, dtype=None):
        x = self if dtype is None else self.to(dtype)
        d = shapes.norm_dim("cumsum", dim, x.ndim)
        out = dtype if dtype is not None else shapes.sum_type(x._dtype)
        return _node("cumsum", [x], {"dim": d}, x._shape, as_dtype(out))

    def softmax(self, dim, dtype=None):
        return _softmax("softmax", self, dim, dtype)

    def log_softmax(self, dim, dtype=None):
        return _softmax("log_softmax", self, dim, dtype)

    # -- movement ------------------------------------------------------------------------------

    def reshape(self, *shape):
        new = shapes.reshape("reshape", self._shape, _shape_args(shape))
        if new == self._shape:
            return self
        return _node("reshape", [self], {"shape": list(new)}, new, self._dtype)

    view = reshape

    def view_as(self, other):
        return self.reshape(other.shape)

    reshape_as = view_as

    def flatten(self, start_dim=0, end_dim=-1):
        if self.ndim == 0:
            return self.reshape(1)
        s = shapes.norm_dim("flatten", start_dim, self.ndim)
        e = shapes.norm_dim("flatten", end_dim, self.ndim)
        if s > e:
            raise ShapeError("flatten: start_dim cannot come after end_dim", code="bad_request")
        new = self._shape[:s] + (shapes.numel(self._shape[s:e + 1]),) + self._shape[e + 1:]
        return self.reshape(new)

    def unsqueeze(self, dim):
        d = shapes.norm_dim("unsqueeze", dim, self.ndim + 1)
        return self.reshape(self._shape[:d] + (1,) + self._shape[d:])

    def squeeze(self, dim=None):
        if dim is None:
            drop = {i for i, n in enumerate(self._shape) if n == 1}
        else:
            drop = {d for d in shapes.norm_dims("squeeze", dim, self.ndim)
                    if self.ndim and self._shape[d] == 1}
        return self.reshape(tuple(n for i, n in enumerate(self._shape) if i not in drop))

    def permute(self, *dims):
        order, new = shapes.permute("permute", self._shape, _shape_args(dims))
        if list(order) == list(range(self.ndim)):
            return self
        return _node("permute", [self], {"dims": list(order)}, new, self._dtype)

    def transpose(self, dim0, dim1):
        n = self.ndim
        a = shapes.norm_dim("transpose", dim0, n)
        b = shapes.norm_dim("transpose", dim1, n)
        if n < 2 or a == b:
            return self
        order = list(range(n))
        order[a], order[b] = order[b], order[a]
        return self.permute(order)

    swapaxes = swapdims = transpose

    @property
    def T(self):
        """All dims reversed (numpy's .T; the usual transpose for a matrix)."""
        return self.permute(list(range(self.ndim))[::-1])

    @property
    def mT(self):
        """The last two dims swapped (a batch of matrices transposed)."""
        if self.ndim < 2:
            raise ShapeError("mT: needs a tensor of at least 2 dims", code="bad_request")
        return self.transpose(-2, -1)

    def t(self):
        if self.ndim > 2:
            raise ShapeError(f"t: expects a tensor of at most 2 dims, got {self.ndim}",
                             code="bad_request")
        return self.T

    def expand(self, *sizes):
        new = shapes.expand("expand", self._shape, _shape_args(sizes))
        if new == self._shape:
            return self
        return _node("expand", [self], {"shape": list(new)}, new, self._dtype)

    broadcast_to = expand

    def expand_as(self, other):
        return self.expand(other.shape)

    def flip(self, *dims):
        """Reverses the listed axes: flip(0, 2) or flip((0, 2)) or flip([0, 2])."""
        order = shapes.norm_dims("flip", list(_shape_args(dims)), self.ndim)
        if not order or self.ndim == 0:
            return self
        return _node("flip", [self], {"dims": list(order)}, self._shape, self._dtype)

    def contiguous(self):
        return self  # the daemon decides layouts; every tensor is contiguous to the client

    def clone(self):
        """A distinct Tensor with the same value (tensors are immutable, so it may share the
        handle or the pending node). The clone of a tensor an optimizer updates (a parameter)
        is a pending copy that keeps today's value, as torch's copy does."""
        if self._buf is not None and self._buf.readers is not None or self._rg:
            return _node("reshape", [self], {"shape": list(self._shape)}, self._shape,
                         self._dtype)
        t = Tensor._make(self._op, self._inputs, self._attrs, self._shape, self._dtype,
                         self._conn, self._buf, self._weak)
        t._site = self._site
        t._val = self._val
        t._dev = self._dev
        return t

    def detach(self):
        """The same value as a new tensor that gradients do not flow through (a `detach`
        node: backward() and picograd.autograd.grad see nothing behind it). It does not
        require grad. Unlike torch's, it does not alias: the detached value of a parameter
        keeps the value it had when detach() was called, after an optimizer step too."""
        return _node("detach", [self], {}, self._shape, self._dtype)

    def detach_(self):
        if self._rg == 2:
            raise RuntimeError("detach_() of a non-leaf is not supported by picograd; use "
                               "detach()")
        self._rg = 0
        return self

    # -- autograd (picograd.autograd_api does the work) ----------------------------------------

    @property
    def requires_grad(self):
        return self._rg != 0

    @requires_grad.setter
    def requires_grad(self, value):
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad=True):
        """Makes this tensor a leaf whose gradient backward() computes (floats only)."""
        from .autograd_api import requires_grad_
        return requires_grad_(self, requires_grad)

    @property
    def is_leaf(self):
        """True unless the tensor was computed from tensors that require grad (torch's rule)."""
        return self._rg != 2

    @property
    def grad(self):
        """The gradient backward() accumulated into this leaf (lazy), or None."""
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None:
            _need_tensor("grad", value)
            if value._shape != self._shape:
                raise RuntimeError(f"assigned grad has data of a different size: "
                                   f"{shapes.fmt(value._shape)} for a tensor of "
                                   f"{shapes.fmt(self._shape)}")
            if value._dtype is not self._dtype:
                raise RuntimeError(f"assigned grad has data of a different type: "
                                   f"{value._dtype} for a {self._dtype} tensor")
        self._grad = value

    @property
    def grad_fn(self):
        """Not a graph object as in torch: the op name of a non-leaf, else None."""
        if self._rg != 2:
            return None
        return self._op if self._op is not None else (self._ag[0] if self._ag else "realized")

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulates d(self)/d(leaf) into the .grad of every leaf that requires grad and that
        self depends on (lazily: one `grad` node per leaf, all sharing one reverse pass in the
        daemon). A tensor of more than one element needs ``gradient``, as in torch."""
        from .autograd_api import backward
        backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph,
                 inputs=inputs)

    def zero_(self):
        raise TypeError("picograd tensors are immutable; p.grad = None or optimizer.zero_grad()")

    def cpu(self):
        return self

    def __getitem__(self, key):
        return _getitem(self, key)

    # -- indexing ops --------------------------------------------------------------------------

    def gather(self, dim, index):
        """out[i][j] = self[index[i][j]][j] along ``dim`` (torch.gather)."""
        _need_tensor("gather", index)
        d = shapes.norm_dim("gather", dim, self.ndim)
        if index.ndim != self.ndim:
            raise ShapeError(f"gather: index {shapes.fmt(index.shape)} must have as many dims "
                             f"as the input {shapes.fmt(self._shape)}")
        return _node("gather", [self, index], {"dim": d}, index.shape, self._dtype)

    def index_select(self, dim, index):
        """The slices of axis ``dim`` listed by the 1-D int tensor ``index``."""
        _need_tensor("index_select", index)
        d = shapes.norm_dim("index_select", dim, self.ndim)
        if index.ndim > 1:
            raise ShapeError(f"index_select: index must be 1-D, got {shapes.fmt(index.shape)}")
        shape = self._shape[:d] + (index.numel(),) + self._shape[d + 1:] if self.ndim else ()
        return _node("index_select", [self, index], {"dim": d}, shape, self._dtype)

    def matmul(self, other):
        return matmul(self, other)

    # -- dtype conversion ----------------------------------------------------------------------

    def to(self, *args, **kwargs):
        """Converts to a dtype and/or moves to a device, as torch's: to(pg.float64),
        to("cuda:0"), to("cuda", pg.float64), to(dtype=..., device=...), to(other_tensor) (its
        dtype and device). A move to the tensor's own device ("cpu" for a CPU tensor) is free;
        any other is a copy that the daemon makes at once (a `run` on the target device), so
        a device the daemon does not have raises its no_device error here."""
        dtype = kwargs.pop("dtype", None)
        dev = kwargs.pop("device", None)
        for ignored in ("non_blocking", "copy", "memory_format"):
            kwargs.pop(ignored, None)
        if kwargs:
            raise TypeError(f"to() got unexpected arguments {sorted(kwargs)}")
        for a in args:
            if isinstance(a, Tensor):
                dtype, dev = a._dtype, a.device
            elif isinstance(a, str) and a == "picograd":
                continue
            elif isinstance(a, str) and _dtype_name(a):
                dtype = a  # "float64": a dtype name
            elif isinstance(a, (str, device)) or (hasattr(a, "type") and hasattr(a, "index")):
                dev = a  # "cuda:0", a pg.device or a torch.device
            else:
                dtype = a
        out = self
        if dev is not None:
            dev = as_device(dev)
            if dev != self.device:
                out = _copy_to(self, dev)
        if dtype is None:
            return out
        dtype = as_dtype(dtype)
        if dtype is out._dtype:
            return out
        return _node("cast", [out], {"dtype": dtype.name}, out._shape, dtype)

    def cuda(self, device=None, non_blocking=False):
        """A copy on a GPU: "cuda" (the first) or cuda:<device> for an int."""
        return self.to(as_device("cuda" if device is None else device))

    def cpu(self):
        """This tensor on the CPU (itself when it is there already)."""
        return self.to(CPU)

    def type_as(self, other):
        return self.to(other.dtype)

    def double(self):
        return self.to(dtypes.float64)

    def long(self):
        return self.to(dtypes.int64)

    # Methods named like builtins (float, int, bool) come last in the class: inside the class
    # body, a name defined above shadows the builtin for everything below it.
    def float(self):
        return self.to(dtypes.float32)

    def int(self):
        return self.to(dtypes.int32)

    def bool(self):
        return self.to(dtypes.bool_)


# ---------------------------------------------------------------------------------------------
# Building nodes
# ---------------------------------------------------------------------------------------------


_NO_GRAD_OPS = frozenset(("grad", "detach"))


def _dtype_name(s):
    """True when string ``s`` names a dtype ("float32", "torch.long") rather than a device."""
    try:
        as_dtype(s)
    except TypeError:
        return False
    return True


def _copy_to(t, dev):
    """A copy of ``t`` on device ``dev``, made now: t is realized (on its own device), then one
    `run` on ``dev`` reads it (an `input` node) and keeps the result. The daemon copies between
    devices only when asked this way; one that does not have ``dev`` answers no_device."""
    t.realize()
    conn = t._buf.conn
    fields = {"nodes": [{"op": "input", "handle": t._buf.handle}],
              "outputs": [{"node": 0, "keep": True}]}
    if dev != CPU:
        fields["device"] = str(dev)
    reply = _exchange(conn, "run", **fields)
    results = reply.get("outputs")
    if not isinstance(results, list) or len(results) != 1:
        raise PicogradError("bad_reply", "a run reply needs 1 output")
    out = Tensor._make("input", (), None, t._shape, t._dtype, conn)
    _adopt(out, conn, results[0], [])
    out._dev = None if dev == CPU else str(dev)
    if t._rg and _local.grad_enabled:
        out._rg = 2 if t._dtype.is_floating_point else 0
    return out


def _node(op, inputs, attrs, shape, dtype):
    """Returns a new pending Tensor for ``op`` over ``inputs``; all inputs must share one
    connection (inputs with none yet go along with any).

    Autograd bookkeeping happens here too: the result requires grad (as a non-leaf) when grad
    mode is on, it is a float and an input requires grad; an input that is a mutable buffer
    (see _Buffer) is replaced by the value a pending assign will give it, else the new node is
    recorded among the buffer's readers (so that a step can keep its old value for it).
    """
    conn = None
    rg = False
    mutable = False
    dev = None
    for t in inputs:
        # As in torch, a 0-d CPU tensor (a Python scalar's constant) goes with any device.
        if t._dev is None and t._shape == ():
            pass
        elif t._dev is not None or dev is not None:
            if dev is not None and t._dev != dev:
                raise RuntimeError(f"{op}: expected all tensors to be on the same device, but "
                                   f"found {dev} and {t._dev or 'cpu'}")
            dev = t._dev
        c = t._conn
        if c is not None and c is not conn:
            if conn is not None:
                raise PicogradError("bad_request", f"{op}: inputs belong to different "
                                                   "connections (daemon sessions)")
            conn = c
        if t._rg:
            rg = True
        b = t._buf
        if b is not None and b.readers is not None:
            mutable = True
    if mutable:
        inputs = [t._buf.pending if t._buf is not None and t._buf.pending is not None else t
                  for t in inputs]
        for t in inputs:
            if t._rg:
                rg = True
    out = Tensor._make(op, inputs, attrs, shapes.check_shape(op, shape), dtype, conn)
    out._dev = dev
    if mutable:
        for t in inputs:
            b = t._buf
            if b is not None and b.readers is not None:
                b.readers[id(out)] = out
    if rg and _local.grad_enabled and dtype.is_floating_point and op not in _NO_GRAD_OPS:
        out._rg = 2
    return out


def _fast(op, inputs, attrs, shape, dtype, conn):
    """A pending node whose shape and dtype the caller already knows (an optimizer's update,
    where every tensor has its parameter's shape and dtype): no inference, no promotion, no
    autograd (grad mode is off there) and no pending-assign substitution; mutable inputs
    still record their reader."""
    t = Tensor.__new__(Tensor)
    t._op, t._inputs, t._attrs, t._shape, t._dtype = op, inputs, attrs, shape, dtype
    t._buf, t._conn, t._weak, t._site = None, conn, False, _local.site
    t._rg, t._grad, t._ag, t._val, t._dev = 0, None, None, None, None
    for i in inputs:
        if i._dev is not None:  # on its inputs' device (callers pass one device's tensors)
            t._dev = i._dev
        b = i._buf
        if b is not None and b.readers is not None:
            b.readers[id(t)] = t
    return t


def _scalar_value(x):
    """Returns ``x`` as a plain Python bool/int/float (what msgpack sends); raises TypeError."""
    if isinstance(x, Tensor):
        raise TypeError("expected a number, got a Tensor")
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, (bool, int)):
        if not isinstance(x, bool) and not -2 ** 63 <= x < 2 ** 63:
            raise OverflowError(f"{x} does not fit int64")
        return x
    if isinstance(x, float):
        return x
    raise TypeError(f"expected a number, got {type(x).__name__}")


def _weak(value):
    """A `const` node for a Python number: a weak scalar that does not promote tensors."""
    v = _scalar_value(value)
    return Tensor._make("const", (), {"value": v}, (), shapes.scalar_type(v), weak=True)


def _operand(x, like):
    """Returns ``x`` as an operand of a binary op with ``like``: a Tensor as is, a number as a
    weak scalar, a numpy array uploaded; None for anything else (the operator then returns
    NotImplemented)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (bool, int, float)) or (isinstance(x, np.generic) and
                                             x.dtype.kind in "biuf"):
        return _weak(x)
    if isinstance(x, np.ndarray):
        return tensor(x, conn=like._conn)
    return None


def _operand_or_raise(x, like):
    out = _operand(x, like)
    if out is None:
        raise TypeError(f"expected a Tensor or a number, got {type(x).__name__}")
    return out


_BOOL_RESULT = frozenset(("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or"))


def _tier(t):
    """Where ``t`` stands in torch's promotion: a Python number, a 0-d tensor, or one with dims."""
    if t._weak:
        return shapes.WEAK
    return shapes.DIMS if t._shape else shapes.ZERO_DIM


def _promote(tensors):
    """Returns (dtype, tensors): the dtype torch computes ``tensors`` in, and the tensors with
    every 0-d one cast to it when tensors with dims are present.

    The casts are what makes the daemon agree: it promotes 0-d tensors like any other (only
    Python numbers are weak there), while torch lets float32[3] + float64[] stay float32.
    """
    dtype = shapes.result_type(*[(t._dtype, _tier(t)) for t in tensors])
    if builtins.any(_tier(t) == shapes.DIMS for t in tensors):
        tensors = [t.to(dtype) if _tier(t) == shapes.ZERO_DIM else t for t in tensors]
    return dtype, tensors


def _binary(op, a, b):
    """An elementwise binary node: numpy broadcasting, torch promotion (weak scalars and 0-d
    tensors included); comparisons and logical ops give bool, div gives a float."""
    shape = shapes.broadcast(op, a._shape, b._shape)
    if op in ("logical_and", "logical_or"):
        return _node(op, [a, b], {}, shape, dtypes.bool_)  # truth values need no common dtype
    dtype, (a, b) = _promote([a, b])
    if op in _BOOL_RESULT:
        dtype = dtypes.bool_
    elif op == "div":
        dtype = shapes.float_type(dtype)
    return _node(op, [a, b], {}, shape, dtype)


def _binary_or_not(op, a, b):
    """_binary for the operators: a non-operand gives NotImplemented so Python can try the
    other side (and ``t == None`` is simply False)."""
    like = a if isinstance(a, Tensor) else b
    a2, b2 = _operand(a, like), _operand(b, like)
    if a2 is None or b2 is None:
        return NotImplemented
    return _binary(op, a2, b2)


def _logical_or_not(op, a, b):
    b2 = _operand(b, a)
    if b2 is None:
        return NotImplemented
    for t in (a, b2):
        if t._dtype is not dtypes.bool_:
            raise TypeError(f"&, | and ^ are logical ops on bool tensors here, got {t._dtype}")
    return _binary(op, a, b2)


def _unary(op, x, float_result=False):
    dtype = shapes.float_type(x._dtype) if float_result else x._dtype
    return _node(op, [x], {}, x._shape, dtype)


def _need_tensor(op, x):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")


def _shape_args(args):
    """reshape(2, 3), reshape((2, 3)) and reshape([2, 3]) all mean the shape (2, 3)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


def _reduce_dims(op, x, dim):
    """Normalized, sorted axes for a reduction, or None for all of them."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0) or x.ndim == 0:
        if dim is not None and x.ndim == 0:
            shapes.norm_dims(op, dim, 0)  # still reject dim 5 of a scalar
        return None
    return shapes.norm_dims(op, dim, x.ndim)


def _reduce(op, x, dim, keepdim, rule, dtype=None, extra=None):
    """A reduction node over ``dim`` (None: all); ``rule`` maps the input dtype to the output.
    With ``dtype`` the input is cast first and the result is exactly that dtype, as in torch."""
    if dtype is not None:
        dtype = as_dtype(dtype)
        x = x.to(dtype)
    dims = _reduce_dims(op, x, dim)
    attrs = {} if dims is None else {"dims": list(dims)}
    attrs["keepdim"] = builtins.bool(keepdim)
    if extra:
        attrs.update(extra)
    out = _node(op, [x], attrs, shapes.reduce_shape(x._shape, dims, keepdim), rule(x._dtype))
    return out if dtype is None else out.to(dtype)


def _var(op, x, dim, unbiased, keepdim, correction):
    if isinstance(dim, builtins.bool):  # torch's var(unbiased) overload: x.var(False)
        unbiased, dim = dim, None
    if correction is None:
        correction = 1 if unbiased else 0
    return _reduce(op, x, dim, keepdim, shapes.float_type,
                   extra={"correction": _scalar_value(correction)})


def _argreduce(op, x, dim, keepdim):
    if dim is None or x.ndim == 0:
        if dim is not None:
            shapes.norm_dim(op, dim, 0)
        attrs = {"keepdim": builtins.bool(keepdim)}
        shape = (1,) * x.ndim if keepdim else ()
    else:
        d = shapes.norm_dim(op, dim, x.ndim)
        attrs = {"dim": d, "keepdim": builtins.bool(keepdim)}
        shape = shapes.reduce_shape(x._shape, (d,), keepdim)
    return _node(op, [x], attrs, shape, dtypes.int64)


def _minmax(op, x, dim, keepdim):
    """torch.max's three forms: max(x), max(x, dim) -> (values, indices), max(x, other)."""
    if isinstance(dim, Tensor):
        return _binary("maximum" if op == "max" else "minimum", x, dim)
    if dim is None:
        return _reduce(op, x, None, False, lambda d: d)
    values = _reduce(op, x, operator.index(dim), keepdim, lambda d: d)
    indices = _argreduce("arg" + op, x, dim, keepdim)
    return (max_result if op == "max" else min_result)(values, indices)


def _softmax_dim(ndim):
    """torch's legacy implicit softmax dim, used when none is given."""
    return 0 if ndim in (0, 1, 3) else 1


def _softmax(op, x, dim, dtype):
    if dtype is not None:
        x = x.to(dtype)
    if dim is None:
        dim = _softmax_dim(x.ndim)
    d = shapes.norm_dim(op, dim, x.ndim)
    return _node(op, [x], {"dim": d}, x._shape, shapes.float_type(x._dtype))


def matmul(a, b):
    """torch.matmul: 1-D and 2-D operands, and batches with broadcast batch dims."""
    _need_tensor("matmul", a)
    _need_tensor("matmul", b)
    shape = shapes.matmul("matmul", a._shape, b._shape)
    dtype = shapes.result_type((a._dtype, shapes.DIMS), (b._dtype, shapes.DIMS))
    return _node("matmul", [a, b], {}, shape, dtype)


def where(condition, input, other):
    """Elements of ``input`` where ``condition`` is true, else of ``other``; either may be a
    Python number (a weak scalar). The three broadcast together."""
    _need_tensor("where", condition)
    a = _operand_or_raise(input, condition)
    b = _operand_or_raise(other, condition)
    shape = shapes.broadcast("where", condition._shape, a._shape, b._shape)
    dtype, (a, b) = _promote([a, b])
    return _node("where", [condition, a, b], {}, shape, dtype)


# ---------------------------------------------------------------------------------------------
# Indexing: x[1, :, None, ..., 2:8:2]
# ---------------------------------------------------------------------------------------------


def _getitem(x, key):
    """Basic indexing as one `slice` node plus, when ints drop axes or None adds some, one
    `reshape`. Every bound is checked here, since shapes are known."""
    key = key if isinstance(key, tuple) else (key,)
    if [k is Ellipsis for k in key].count(True) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    consumed = builtins.sum(1 for k in key if k is not None and k is not Ellipsis)
    if consumed > x.ndim:
        raise IndexError(f"too many indices for tensor of dimension {x.ndim}")
    fill = (slice(None),) * (x.ndim - consumed)
    ellipsis = [i for i, k in enumerate(key) if k is Ellipsis]
    if ellipsis:
        key = key[:ellipsis[0]] + fill + key[ellipsis[0] + 1:]
    else:
        key = key + fill

    slices = []     # [start, stop, step] per input axis
    sliced = []     # shape after the slice node
    final = []      # shape after dropping int axes and adding None axes
    axis = 0
    for k in key:
        if k is None:
            final.append(1)
            continue
        size = x._shape[axis]
        if isinstance(k, slice):
            step = 1 if k.step is None else operator.index(k.step)
            if step <= 0:
                raise ValueError("step must be greater than zero")
            start, stop, step = k.indices(size)
            n = len(range(start, stop, step))
            slices.append([start, stop, step])
            sliced.append(n)
            final.append(n)
        else:
            i = _index_int(k)
            if not -size <= i < size:
                raise DimError(f"index {i} is out of bounds for dimension {axis} with size "
                               f"{size}")
            i %= size
            slices.append([i, i + 1, 1])
            sliced.append(1)
        axis += 1

    out = x
    # Trailing whole-axis slices need not be sent: the `slice` op leaves later axes alone.
    while slices and slices[-1] == [0, x._shape[len(slices) - 1], 1]:
        slices.pop()
    if slices:
        shape = tuple(sliced[:len(slices)]) + x._shape[len(slices):]
        out = _node("slice", [x], {"slices": slices}, shape, x._dtype)
    return out.reshape(final) if tuple(final) != out._shape else out


def _index_int(k):
    if isinstance(k, builtins.bool):
        raise TypeError("indexing with a bool is not supported")
    if isinstance(k, Tensor):
        if k.ndim == 0 and not k._dtype.is_floating_point and k._dtype is not dtypes.bool_:
            return builtins.int(k.item())
        raise TypeError("indexing with tensors (masks, index lists) is not supported; use "
                        "index_select, gather or where")
    try:
        return operator.index(k)
    except TypeError:
        raise TypeError(f"an index must be an int, a slice, None or ..., got "
                        f"{type(k).__name__}") from None


# ---------------------------------------------------------------------------------------------
# Realization
# ---------------------------------------------------------------------------------------------


def _key(t):
    """Identity of a graph node for deduplication: tensors sharing a handle are one `input`,
    equal numbers are one `const` (repr keeps -0.0 apart from 0.0 and 1 apart from 1.0). A
    number made with ``weak=2`` (an optimizer's learning rate) is a node of its own, so the
    graph's shape never depends on whether it happens to equal another number."""
    if t._buf is not None:
        return ("h", id(t._buf))
    if t._weak is True:
        return ("c", repr(t._attrs["value"]))
    return ("t", id(t))


def _build(roots):
    """Returns (nodes, order, index) for the graph behind ``roots``: the wire nodes in
    topological order, the Tensor behind each node, and _key -> node index.

    An explicit stack replaces recursion. A node is pushed once "unexpanded"; popping it pushes
    it back "ready" with its inputs above it, so it is emitted after all of them. ``seen``
    (id of a Tensor object -> its node) spares most _key calls: a step's graph is rebuilt
    every step, so this loop is on the hot path of training.
    """
    nodes, order, index = [], [], {}
    seen = {}
    stack = list(zip(reversed(roots), [False] * len(roots)))  # (tensor, ready) pairs
    pop, push = stack.pop, stack.append
    while stack:
        t, ready = pop()
        if id(t) in seen:
            continue
        buf = t._buf
        if buf is None:
            inputs = t._inputs
            if inputs and not ready:
                push((t, True))
                for i in reversed(inputs):
                    if id(i) not in seen:
                        push((i, False))
                continue
            k = ("c", repr(t._attrs["value"])) if t._weak is True else ("t", id(t))
        else:
            k = ("h", id(buf))
        j = index.get(k)
        if j is None:
            j = index[k] = len(nodes)
            if buf is not None:
                node = {"op": "input", "handle": buf.handle}
            else:
                node = {"op": t._op}
                if inputs:  # map, not a list comprehension: no Python call per node
                    node["in"] = list(map(seen.__getitem__, map(id, inputs)))
                if t._attrs:
                    node.update(t._attrs)
            nodes.append(node)
            order.append(t)
        seen[id(t)] = j
    return nodes, order, index


def _graph_conn(order):
    """The one Connection of a graph's realized leaves, else the default connection."""
    conn = None
    for t in order:
        c = t._buf.conn if t._buf is not None else t._conn
        if c is not None and c is not conn:
            if conn is not None:
                raise PicogradError("bad_request", "a graph mixes tensors of different "
                                                   "connections (daemon sessions)")
            conn = c
    return conn if conn is not None else default_connection()


def _unique(tensors):
    seen, out = set(), []
    for t in tensors:
        _need_tensor("realize", t)
        if _key(t) not in seen:
            seen.add(_key(t))
            out.append(t)
    return out


def _decode(out):
    """A numpy array from an inline run output or a get reply ({dtype, shape, data})."""
    try:
        nd = as_dtype(out["dtype"]).numpy_dtype
        arr = np.frombuffer(out["data"], dtype=nd).reshape(out["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PicogradError("bad_reply", f"tensor data does not match its dtype and shape: "
                                         f"{exc}") from None
    return arr if arr.flags.writeable else arr.copy()


# struct formats of one element, by wire dtype: what numpy's .item() would return, for less code
# on a path that usually starts with cold caches.
_ITEM_FORMAT = {"float32": "<f", "float64": "<d", "int32": "<i", "int64": "<q", "bool": "?"}


def _decode_item(out):
    """The value of a one-element inline run output as a Python number."""
    try:
        return struct.unpack(_ITEM_FORMAT[out["dtype"]], out["data"])[0]
    except (KeyError, TypeError, struct.error) as exc:
        raise PicogradError("bad_reply", f"a one-element output does not match its dtype: "
                                         f"{exc!r}") from None


def _split_big_graph(order, index):
    """Realizes the first RUN_CHUNK nodes' results that later nodes still need, so that the
    rest of the graph fits one run. A prefix of a topological order contains all of its own
    inputs, so that sub-run has at most RUN_CHUNK nodes."""
    needed = []
    for t in order[RUN_CHUNK:]:
        for i in t._inputs:
            if index[_key(i)] < RUN_CHUNK and i._buf is None and not i._weak:
                needed.append(i)
    needed = _unique(needed)
    if not needed:
        raise PicogradError("too_large", f"a graph of {len(order)} nodes cannot be split into "
                                         f"runs of {MAX_RUN_NODES}")
    _execute(keep=needed, split=True)


def _mark_mutable(t):
    """Makes realized ``t``'s buffer mutable: a target of assigns, whose pending readers are
    tracked so that an assign never changes what they compute (see _execute)."""
    b = t._buf
    if b is None:
        raise PicogradError("bad_request", "only a realized tensor can be assigned to")
    if b.readers is None:
        b.readers = weakref.WeakValueDictionary()
    return b


def _realize_distinct(tensors):
    """Realizes pending ``full`` tensors (zeros of new optimizer state, lazy buffers) as
    tensors of their own, one `put` each, and makes them mutable.

    A run would do it in one round trip, but the daemon may merge equal `full` nodes into one
    tensor under several handles; a shared tensor cannot be written in place, so the first
    step would plan differently from the next ones (one more plan miss and compile)."""
    for t in tensors:
        if t._buf is not None:
            continue
        if t._op != "full":
            _execute(keep=[t])
        else:
            conn = t._conn if t._conn is not None else default_connection()
            arr = np.full(tuple(t._shape), t._attrs["value"], dtype=t._dtype.numpy_dtype)
            h = conn.put(arr) if t._dev is None else conn.put(arr, device=t._dev)
            t._buf, t._conn = _Buffer(conn, h), conn
            t._op, t._inputs, t._attrs = None, (), None
        _mark_mutable(t)


def _assign_later(target, value):
    """Queues ``target := value`` for the next `run` on target's connection (any run: every
    _execute sends the queued assigns). Until then every new op over ``target`` reads
    ``value`` instead (so a BatchNorm's running_mean reads as updated right after forward, as
    in torch), and data asked of ``target`` is that of ``value``."""
    _need_tensor("assign", value)
    if value._shape != target._shape or value._dtype is not target._dtype:
        raise ShapeError(f"assign: value {shapes.fmt(value._shape)} {value._dtype} does not "
                         f"match the target {shapes.fmt(target._shape)} {target._dtype}")
    b = _mark_mutable(target)
    b.pending = value
    _state(b.conn).assigns[id(b)] = (b, value)


def _run_one(t, fetch):
    """_execute's common case: one pending tensor to keep (pg.realize, a forward pass) and, with
    ``fetch``, its data too (.numpy(), or with fetch "item" the one value as a Python number),
    and no assign queued. It sends the same run as the general path with a fraction of the
    bookkeeping, which matters because a run's round trip starts with the client's caches cold
    more often than not. Returns _execute's result, or None, having sent nothing, when the case
    does not apply.
    """
    _need_tensor("realize", t)
    buf = t._buf
    c = buf.conn if buf is not None else t._conn
    if _state(c if c is not None else default_connection()).assigns:
        return None  # the run must carry them (general path)
    if buf is not None:
        return None if fetch else []  # a handle already: a `get`, or nothing to do
    nodes, order, index = _build([t])
    if len(nodes) > MAX_RUN_NODES:
        return None  # to be split (general path)
    conn = _graph_conn(order)
    i = len(nodes) - 1  # the root is the last node of the topological order
    outputs = [{"node": i, "keep": True}, {"node": i, "keep": False}] if fetch else \
        [{"node": i, "keep": True}]
    try:
        if t._dev is None:
            reply = _exchange(conn, "run", nodes=nodes, outputs=outputs)
        else:
            reply = _exchange(conn, "run", nodes=nodes, outputs=outputs, device=t._dev)
    except PicogradError as exc:
        raise _with_site(exc, order) from None
    results = reply.get("outputs")
    if not isinstance(results, list) or len(results) != len(outputs):
        raise PicogradError("bad_reply", f"a run reply needs {len(outputs)} outputs")
    mismatch = []
    _adopt(t, conn, results[0], mismatch)
    if mismatch:
        raise PicogradError("bad_reply", "the daemon and the client disagree on "
                                         + "; ".join(mismatch))
    if fetch == "item":
        return [_decode_item(results[1])]
    return [_decode(results[1])] if fetch else []


def _execute(keep=(), fetch=(), assigns=None, cache=(), split=False):
    """Evaluates ``keep`` (pending ones become handles) and returns the data of ``fetch`` as
    numpy arrays, in order, with as few round trips as possible (one, normally).

    Every run also sends the assigns queued by _assign_later on its connection, plus the
    explicit ``assigns`` [(target, value)] (an optimizer step), as `assign` nodes: they take
    effect when the run commits. Pending tensors built over an assigned buffer that outlive
    the run get the buffer's old value: the run keeps a snapshot of it (an `input` node kept
    as a new handle) and they are rewired to it. ``cache`` lists fetched tensors whose data is
    kept on the Tensor (``_val``), so that reading them later costs no round trip.
    """
    if len(keep) == 1 and not assigns and not cache and not split and (
            not fetch or (len(fetch) == 1 and fetch[0] is keep[0])):
        out = _run_one(keep[0], bool(fetch))
        if out is not None:
            return out
    fetch = [t._buf.pending if t._buf is not None and t._buf.pending is not None else t
             for t in fetch]
    explicit = list(assigns) if assigns else []
    conn = None
    for t in list(keep) + fetch + [a[0] for a in explicit]:
        if t._buf is not None:
            conn = t._buf.conn
            break
        if t._conn is not None:
            conn = t._conn
            break
    queued = None if split else _state(conn if conn is not None else default_connection()
                                       ).assigns
    pending = [t for t in _unique(list(keep) + fetch) if t._buf is None]
    if not pending and not explicit and not queued:
        if len(fetch) == 1:
            buf = fetch[0]._buf
            return [_decode(_exchange(buf.conn, "get", handle=buf.handle))]
        if not fetch:
            return []
    # The assigns: explicit ones win over queued ones for the same buffer (they were built
    # reading the queued value, through _node's substitution).
    todo = {}
    if queued:
        todo.update(queued)
    for target, value in explicit:
        b = _mark_mutable(target)
        todo[id(b)] = (b, value)
    todo = list(todo.values())
    values = [v for _, v in todo]
    roots = pending + [t for t in _unique(fetch) if t._buf is not None] + values
    nodes, order, index = _build(roots)
    while len(nodes) > MAX_RUN_NODES:
        _split_big_graph(order, index)
        nodes, order, index = _build(roots)
    conn = _graph_conn(order)
    outputs = [{"node": index[_key(t)], "keep": True} for t in pending]
    outputs += [{"node": index[_key(t)], "keep": False} for t in fetch]
    snaps = []  # (buffer, [readers]) whose old value must be kept
    if todo:
        for b, v in todo:
            nodes.append({"op": "assign", "in": [index[_key(v)]], "handle": b.handle})
        kept_ids = {id(t) for t in pending}
        alive = None
        for b, v in todo:
            if not b.readers:
                continue
            if alive is None:  # only when some assigned buffer has pending readers at all
                alive = _outliving(order, kept_ids, {id(v) for v in values})
            readers = [r for r in b.readers.values() if r._buf is None and id(r) not in kept_ids and
                       (("t", id(r)) not in index or id(r) in alive)]
            if readers:
                k = ("h", id(b))
                if k not in index:
                    index[k] = len(nodes)
                    nodes.append({"op": "input", "handle": b.handle})
                outputs.append({"node": index[k], "keep": True})
                snaps.append((b, v, readers))
    extra = _run_device(pending + values)
    try:
        reply = _exchange(conn, "run", nodes=nodes, outputs=outputs, **extra)
    except PicogradError as exc:
        if queued:
            _drop_queued(queued)  # a failed run assigns nothing; the queued updates are lost
        raise _with_site(exc, order) from None
    results = reply.get("outputs")
    if not isinstance(results, list) or len(results) != len(outputs):
        raise PicogradError("bad_reply", f"a run reply needs {len(outputs)} outputs")
    mismatch = []
    for t, res in zip(pending, results):
        _adopt(t, conn, res, mismatch)
    n = len(pending) + len(fetch)
    for (b, v, readers), res in zip(snaps, results[n:]):
        # The old value: readers that outlive the run read it instead of the buffer.
        snap = Tensor._make("input", (), None, v._shape, v._dtype, conn)
        snap._dev = extra.get("device")  # kept where the run ran
        _adopt(snap, conn, res, mismatch)
        for r in readers:
            r._inputs = tuple(snap if i._buf is b else i for i in r._inputs)
    if queued:
        queued.clear()
    for b, _ in todo:
        b.pending = None
        b.readers.clear()
    if mismatch:
        raise PicogradError("bad_reply", "the daemon and the client disagree on "
                                         + "; ".join(mismatch))
    out = [_decode(res) for res in results[len(pending):n]]
    if cache:
        cached = {id(t) for t in cache}
        for t, arr in zip(fetch, out):
            if id(t) in cached and t._buf is not None and t._buf.readers is None:
                t._val = arr
                arr.flags.writeable = False
    return out
def _run_device(tensors):
    """The `device` field of a run computing ``tensors``: their device (creation with device=
    or ops over a moved tensor), or no field for the CPU (the request stays as it was)."""
    devs = {t._dev for t in tensors} - {None}
    if len(devs) > 1:
        raise RuntimeError(f"expected all tensors to be on the same device, but found "
                           f"{', '.join(sorted(devs))}")
    return {"device": devs.pop()} if devs else {}


def _drop_queued(queued):
    for b, _ in queued.values():
        b.pending = None
    queued.clear()


def _outliving(order, kept_ids, dying_ids):
    """The ids of the pending tensors of graph ``order`` that will still exist, pending, once
    the run's kept outputs (``kept_ids``) are realized and the client drops the graph.

    A tensor outlives the run when something outside this graph refers to it (a user
    variable, a node not in this run) or when a pending tensor that outlives it does. The
    references from inside the graph are counted from the nodes' inputs, so the rest is
    sys.getrefcount (CPython) minus those, minus this function's own three (the argument of
    getrefcount, the loop variable and ``order``). ``dying_ids`` are tensors the caller
    drops after the run (the assigned values), counted as referenced by nothing outside.
    Counting too many references only costs a snapshot; too few cannot happen: every
    reference subtracted is one that exists.
    """
    inner = {}
    for t in order:
        for i in t._inputs:
            inner[id(i)] = inner.get(id(i), 0) + 1
    if order:
        del t       # the loop variables would otherwise count as references below
        i = None
    held = set()
    alive = set()
    getrc = sys.getrefcount
    for t in reversed(order):
        if t._buf is not None:
            continue
        if id(t) in kept_ids:
            if t._rg == 2 and t._ag is None:  # it keeps its record (for backward), so its inputs
                held.update(id(i) for i in t._inputs)
            continue
        if id(t) in held or (id(t) not in dying_ids and
                             getrc(t) - 3 - inner.get(id(t), 0) > 0):
            alive.add(id(t))
            held.update(id(i) for i in t._inputs)
    return alive


class _Site:
    """Stands in for a Tensor in a graph's ``order`` where a wire node has no Tensor of its own
    (an `assign`): _with_site reads only ``_site``."""

    __slots__ = ("_site",)

    def __init__(self, site):
        self._site = site


def _commit(assigns=(), outputs=(), keep=True):
    """Sends ONE `run` that evaluates ``outputs`` and replaces the values of realized tensors.

    ``assigns`` is a sequence of ``(target, value)`` pairs. ``target`` must be a realized Tensor
    (a daemon handle); ``value`` a Tensor, pending or realized, with exactly the target's shape
    and dtype (no broadcasting, no promotion: cast first). After the call the target Tensor
    object and its handle are unchanged, but the handle holds the value. The daemon replaces its
    handle's tensor pointer at commit (it never writes into the old tensor), so:

    - every read of a target inside this run (in any value or output) sees its OLD value, the
      assigns all take effect together, and their order does not matter;
    - a run that fails (a ShapeError found here, or any daemon error: bad shape, an index out of
      range while running, ...) assigns nothing and raises PicogradError;
    - pending Tensors built earlier from a target read it when THEY run, i.e. they will see the
      NEW value. A caller that must keep the old value for them (an optimizer stepping while
      the user still holds an unevaluated graph) asks for a snapshot: put the target itself in
      ``outputs`` and use the Tensor returned for it.

    ``outputs`` are Tensors to evaluate in the same run. With ``keep`` true the call returns a
    list with one realized Tensor per output, in order:

    - a pending output is realized in place, as pg.realize() does, and returned (the same
      object); it is computed from the old values of the targets;
    - a realized output that is also a target gives a NEW Tensor, a new handle holding the
      target's value from before the assign (the snapshot);
    - any other realized output is returned as it is (it costs nothing in the run).

    With ``keep`` false nothing new is kept: it returns one numpy array per output, the old
    value for a target. Two assigns to one handle (the same target twice, or two Tensors sharing
    a handle) raise PicogradError("bad_request"); all targets and the graph must belong to one
    connection. Without outputs it returns []. Node limits are those of realize(): a graph over
    MAX_RUN_NODES is evaluated in pieces first, and the assigns go with the last piece.

        w = pg.tensor([1.0, 2.0])                  # a parameter
        g = (w * w).sum()                          # ... something computed from it
        old, = _commit([(w, w - 0.1 * w)], [w])    # w now holds [0.9, 1.8]; old holds [1, 2]
    """
    assigns, outputs = list(assigns), list(outputs)
    targets = {}  # id(_Buffer) -> index in assigns
    for k, pair in enumerate(assigns):
        try:
            target, value = pair
        except (TypeError, ValueError):
            raise TypeError(f"_commit: assigns[{k}] must be a (target, value) pair") from None
        _need_tensor("_commit", target)
        _need_tensor("_commit", value)
        if target._buf is None:
            raise PicogradError("bad_request", f"_commit: assigns[{k}]: the target must be a "
                                               f"realized tensor, not a pending {target._op}")
        if value._shape != target._shape:
            raise ShapeError(f"_commit: assigns[{k}]: the value has shape "
                             f"{shapes.fmt(value._shape)} but the target holds "
                             f"{shapes.fmt(target._shape)}")
        if value._dtype is not target._dtype:
            raise ShapeError(f"_commit: assigns[{k}]: the value is {value._dtype} but the target "
                             f"holds {target._dtype}", code="bad_dtype")
        first = targets.setdefault(id(target._buf), k)
        if first != k:
            raise PicogradError("bad_request", f"_commit: assigns[{first}] and assigns[{k}] "
                                               f"both assign handle {target._buf.handle}")
    for t in outputs:
        _need_tensor("_commit", t)
    if not assigns and not outputs:
        return []

    # One wire output per distinct tensor that needs one; how each result comes back.
    roots = [value for _, value in assigns] + outputs
    nodes, order, index = _build(roots)
    while len(nodes) + len(assigns) > MAX_RUN_NODES:
        _split_big_graph(order, index)
        nodes, order, index = _build(roots)
    conn = _graph_conn(order + [target for target, _ in assigns])
    site = _Site(_user_site())
    for target, value in assigns:
        nodes.append({"op": "assign", "in": [index[_key(value)]], "handle": target._buf.handle})
        order.append(site)
    wire, slot, how = [], {}, []  # wire outputs; _key -> its position; per output: (kind, pos)
    for t in outputs:
        kind = ("data" if not keep else "adopt" if t._buf is None
                else "snapshot" if id(t._buf) in targets else "same")
        if kind != "same" and _key(t) not in slot:
            slot[_key(t)] = len(wire)
            wire.append({"node": index[_key(t)], "keep": kind != "data"})
        how.append((kind, slot.get(_key(t))))
    if not wire and not assigns:  # only realized outputs: nothing to run
        return list(outputs)
    extra = _run_device([t for t in roots if t._buf is None] +
                        [target for target, _ in assigns])
    try:
        reply = _exchange(conn, "run", nodes=nodes, outputs=wire, **extra)
    except PicogradError as exc:
        raise _with_site(exc, order) from None
    results = reply.get("outputs")
    if not isinstance(results, list) or len(results) != len(wire):
        raise PicogradError("bad_reply", f"a run reply needs {len(wire)} outputs")
    out, mismatch, made = [], [], {}
    for t, (kind, pos) in zip(outputs, how):
        if kind == "same":
            out.append(t)
        elif kind == "data":
            out.append(_decode(results[pos]))
        elif kind == "adopt":
            if pos not in made:  # of equal keys (one tensor twice, equal numbers) one adopts
                _adopt(t, conn, results[pos], mismatch)
                made[pos] = t
            out.append(made[pos])
        else:
            if pos not in made:
                snap = Tensor._make(None, (), None, t._shape, t._dtype, conn)
                snap._site = t._site
                snap._dev = extra.get("device")
                _adopt(snap, conn, results[pos], mismatch)
                made[pos] = snap
            out.append(made[pos])
    if mismatch:
        raise PicogradError("bad_reply", "the daemon and the client disagree on "
                                         + "; ".join(mismatch))
    return out


def _adopt(t, conn, res, mismatch):
    """Turns pending ``t`` into a realized tensor holding the handle of run output ``res``."""
    try:
        buf = _Buffer(conn, operator.index(res["handle"]))
        shape, dtype = tuple(res["shape"]), as_dtype(res["dtype"])
    except (KeyError, TypeError) as exc:
        raise PicogradError("bad_reply", f"a kept run output needs handle, dtype and shape: "
                                         f"{exc}") from None
    if shape != t._shape or dtype is not t._dtype:
        mismatch.append(f"the {t._op} built at {_site_text(t._site)}: client "
                        f"{shapes.fmt(t._shape)} {t._dtype}, daemon {shapes.fmt(shape)} {dtype}")
        t._shape, t._dtype = Size(shape), dtype
    t._buf, t._conn = buf, conn
    if t._rg == 1:  # a leaf that requires grad: an optimizer may assign to it
        buf.readers = weakref.WeakValueDictionary()
        _LAZY.pop(id(t), None)
    elif t._rg == 2 and t._ag is None:
        t._ag = (t._op, t._inputs, t._attrs)  # backward() may still need the graph behind it
    t._op, t._inputs, t._attrs = None, (), None
    if _recorder is not None:
        _recorder.adopted(t, buf.handle)


def _site_text(site):
    return f"{site[0]}:{site[1]}" if site else "an unknown place"


_NODE_RE = re.compile(r"\bnode (\d+)")


def _with_site(exc, order):
    """The daemon's error with the creation site of the node it names appended."""
    m = _NODE_RE.search(exc.message)
    if m is None or int(m.group(1)) >= len(order):
        return exc
    site = order[int(m.group(1))]._site
    if site is None:
        return exc
    return PicogradError(exc.code, f"{exc.message}\n  (created at {_site_text(site)})")


def explain(*tensors, file=None):
    """Prints and returns how the daemon would run ``tensors``, without running anything: the
    lowered primitive graph, the steps (which primitives are fused into one compiled kernel and
    which run in the interpreter) and each kernel's source: C, or CUDA for tensors on a GPU.

    The request is exactly the `run` that realizing them would send (same graph, same outputs,
    same device), so what it shows is what happens; where the daemon's compiler is off or has no C
    compiler, the text starts with a note that runs interpret every primitive. Realized tensors
    show up as plain inputs."""
    tensors = _unique(tensors)
    if not tensors:
        raise PicogradError("bad_request", "explain needs at least one tensor")
    nodes, order, index = _build(tensors)
    conn = _graph_conn(order)
    outputs = [{"node": index[_key(t)], "keep": t._buf is None} for t in tensors]
    try:
        reply = _exchange(conn, "explain", nodes=nodes, outputs=outputs,
                          **_run_device([t for t in tensors if t._buf is None]))
    except PicogradError as exc:
        raise _with_site(exc, order) from None
    text = reply.get("text")
    if not isinstance(text, str):
        raise PicogradError("bad_reply", "an explain reply needs 'text'")
    print(text, file=file if file is not None else sys.stdout)
    return text


def realize(*tensors):
    """Evaluates all ``tensors`` in one run, so shared subgraphs are computed once; each becomes
    a daemon handle. Returns the tensor, or the tuple of them."""
    _execute(keep=tensors)
    return tensors[0] if len(tensors) == 1 else tensors


# ---------------------------------------------------------------------------------------------
# Tensors from data
# ---------------------------------------------------------------------------------------------


def _python_array(data, default_dtypes=True):
    """A numpy array of Python data with torch's default dtypes: floats -> float32, ints ->
    int64, bools -> bool (numpy alone would pick float64)."""
    arr = np.array(data)
    if not default_dtypes and arr.dtype.kind in "biuf":
        return arr
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        return arr
    raise TypeError(f"cannot make a tensor of {type(data).__name__} data "
                    f"(numpy sees dtype {arr.dtype})")


def tensor(data, dtype=None, requires_grad=False, conn=None, device=None):
    """Uploads ``data`` (a Python number or nested list, a numpy array or scalar, or a Tensor)
    and returns a realized Tensor on ``conn`` (default: the default connection).

    numpy data keeps its dtype (float64 stays float64); Python data follows torch (floats ->
    float32, ints -> int64, bools -> bool). ``dtype`` converts. numpy types picograd cannot hold
    (uint8, float16, ...) raise PicogradError("bad_dtype"). ``requires_grad`` makes it a leaf
    whose gradient backward() computes (float dtypes only, checked before anything is sent).
    """
    dev = as_device(device) if device is not None else get_default_device()
    if isinstance(data, Tensor):
        # A copy of the value, without autograd history (as torch.tensor(t)).
        out = data.detach().clone() if dtype is None else data.detach().to(dtype)
        if out is data:
            out = data.clone()
        if device is not None:
            out = out.to(dev)
        out._rg = 0
        return out.requires_grad_() if requires_grad else out
    # Conversions overflow to inf quietly, as in torch (numpy would warn).
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(data, (np.ndarray, np.generic)):
            arr = np.asarray(data)
            if dtypes.from_numpy_dtype(arr.dtype) is None and dtype is None:
                raise PicogradError("bad_dtype", f"numpy dtype {arr.dtype} has no picograd "
                                                 "dtype (float32, float64, int32, int64, bool)")
        else:
            # With a dtype, convert straight from numpy's float64/int64 view of the Python data:
            # going through the default float32 first would round 0.1 on its way to float64.
            arr = _python_array(data, default_dtypes=dtype is None)
        if dtype is not None:
            arr = arr.astype(as_dtype(dtype).numpy_dtype)
    shapes.check_shape("tensor", arr.shape)
    dt = dtypes.from_numpy_dtype(arr.dtype)
    if requires_grad and not dt.is_floating_point:
        raise RuntimeError("only Tensors of floating point dtype can require gradients")
    conn = conn if conn is not None else default_connection()
    if len(_state(conn).dead) > _FLUSH_AT:
        flush(conn)
    # The daemon refuses a device it does not have (no_device); the CPU is its default.
    handle = conn.put(arr) if dev == CPU else conn.put(arr, device=str(dev))
    out = Tensor._make(None, (), None, arr.shape, dt, conn, _Buffer(conn, handle))
    out._dev = None if dev == CPU else str(dev)
    return out.requires_grad_() if requires_grad else out


as_tensor = tensor


def from_numpy(array):
    """Uploads numpy ``array`` keeping its dtype; see tensor()."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy.ndarray, got {type(array).__name__}")
    return tensor(array)
