"""picograd.autograd_api: torch's autograd front-end over the daemon's `grad` node.

    import picograd as pg
    w = pg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    loss = (w * w).sum()
    loss.backward()          # w.grad is a pending `grad` node: nothing has run yet
    print(w.grad)            # one run: forward and reverse pass together -> [[2, 4], [6, 8]]

How it works, in PyTorch's terms:

- **requires_grad** propagates when a node is built (``tensor._node``): the result of an op
  requires grad when grad mode is on, it is a float and one of its inputs requires grad. Such a
  result is a non-leaf (``is_leaf`` False); tensors you make with ``requires_grad=True`` (and
  ``nn.Parameter``) are leaves.
- **backward()** walks the client-side lazy graph from the output through the tensors that
  require grad and collects the leaves it reaches; each leaf's ``.grad`` becomes one `grad`
  node (``{"op": "grad", "in": [y, x]}`` or ``[y, x, gradient]``), added to the old ``.grad``
  as torch accumulates. All the `grad` nodes of one output share one reverse pass in the
  daemon when they run together (an optimizer step realizes them in one run). Nothing is sent
  by backward() itself.
- A non-leaf realized before backward() (``loss.item()`` first) keeps the node that made it,
  so backward() can rebuild the graph behind it (the daemon recomputes that forward; random
  nodes repeat exactly, being counter-based). backward() consumes a graph as torch does:
  a second backward() through an output already realized raises, unless ``retain_graph``.
- **no_grad()** (context manager or decorator), **enable_grad()**, **set_grad_enabled(mode)**
  switch grad mode for the current thread, as in torch.

The daemon's gradient of a tensor that the output does not depend on is zeros; backward() only
visits the leaves the output reaches, so such leaves keep ``.grad`` None, as in torch.
``picograd.autograd.grad`` (torch.autograd.grad) is the functional form.
"""

import functools
import weakref

from . import shapes
from .tensor import Tensor, _LAZY, _local, _need_tensor, _node, _operand_or_raise

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "inference_mode"]

# Outputs that backward() was called on, weakly: the next optimizer step realizes those still
# pending in its run (kept, and a one-element output's value comes back inline), so that
# loss.item() after opt.step() needs no other round trip and reads the pre-step loss.
_backward_outputs = []


def is_grad_enabled():
    return _local.grad_enabled


class _GradMode:
    """A context manager that is also a decorator (torch's _DecoratorContextManager)."""

    mode = True

    def __enter__(self):
        self._prev = _local.grad_enabled
        _local.grad_enabled = self.mode

    def __exit__(self, *exc):
        _local.grad_enabled = self._prev
        return False

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return func(*args, **kwargs)
        return wrapper


class no_grad(_GradMode):
    """Ops inside make tensors that do not require grad (context manager or decorator)."""

    mode = False


class enable_grad(_GradMode):
    """Grad mode on inside, even within no_grad."""

    mode = True


inference_mode = no_grad


class set_grad_enabled(_GradMode):
    """set_grad_enabled(False) switches grad mode now (a function call) or for a with block."""

    def __init__(self, mode):
        self.mode = bool(mode)
        self._prev = _local.grad_enabled
        _local.grad_enabled = self.mode

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        _local.grad_enabled = self._prev
        return False


def requires_grad_(t, requires_grad=True):
    """Tensor.requires_grad_(): float leaves only, as torch."""
    requires_grad = bool(requires_grad)
    if not requires_grad:
        if t._rg == 2:
            raise RuntimeError("you can only change requires_grad flags of leaf variables. If "
                               "you want to use a computed variable in a subgraph that doesn't "
                               "require differentiation use var_no_grad = var.detach().")
        t._rg = 0
        return t
    if not t._dtype.is_floating_point:
        raise RuntimeError("only Tensors of floating point dtype can require gradients")
    if t._rg == 0:
        t._rg = 1
        if t._buf is not None:
            from .tensor import _mark_mutable
            _mark_mutable(t)
        elif not t._weak:
            _LAZY[id(t)] = t  # realized (and made mutable) before an optimizer or module uses it
    return t


def _leaves(y):
    """The leaves requiring grad that ``y`` reaches (in a fixed order: a repeated step builds
    the same graph), and whether a realized non-leaf lies on the way (then the graph behind it
    must be rebuilt from its record)."""
    leaves, stack, seen, rebuild = [], [y], {id(y)}, False
    while stack:
        t = stack.pop()
        if t._rg == 1:
            leaves.append(t)
            continue
        if t._buf is not None:
            if not t._ag:
                raise RuntimeError(
                    "Trying to backward through the graph a second time (or directly access "
                    "saved tensors after they have already been freed). Specify "
                    "retain_graph=True if you need to backward through the graph a second "
                    "time.")
            rebuild = True
            inputs = t._ag[1]
        else:
            inputs = t._inputs
        for i in reversed(inputs):
            if i._rg and id(i) not in seen:
                seen.add(id(i))
                stack.append(i)
    return leaves, rebuild


def _rebuilt(y):
    """A pending copy of y's graph in which realized non-leaves are pending nodes again (from
    their records), so the daemon can differentiate through them."""
    done = {}
    stack = [(y, False)]
    while stack:
        t, ready = stack.pop()
        if id(t) in done:
            continue
        if t._rg != 2:
            done[id(t)] = t
            continue
        op, inputs, attrs = t._ag if t._buf is not None else (t._op, t._inputs, t._attrs)
        if not ready:
            stack.append((t, True))
            stack.extend((i, False) for i in inputs if id(i) not in done)
            continue
        new_inputs = [done[id(i)] for i in inputs]
        if t._buf is None and all(a is b for a, b in zip(new_inputs, inputs)):
            done[id(t)] = t
        else:
            n = Tensor._make(op, new_inputs, attrs, t._shape, t._dtype, t._conn)
            n._rg, n._site, n._dev = 2, t._site, t._dev
            done[id(t)] = n
    return done[id(y)]


def _grad_node(y, x, gy):
    inputs = [y, x] if gy is None else [y, x, gy]
    return _node("grad", inputs, {}, x._shape, x._dtype)


def _check_gradient(y, gradient):
    if gradient is None:
        if y.numel() != 1:
            raise RuntimeError("grad can be implicitly created only for scalar outputs")
        return None
    if not isinstance(gradient, Tensor):
        from .functional import full
        gradient = full(y._shape, _operand_or_raise(gradient, y)._attrs["value"],
                        dtype=y._dtype)
    if gradient._shape != y._shape:
        raise RuntimeError(f"Mismatch in shape: grad_output[0] has a shape of "
                           f"{shapes.fmt(gradient._shape)} and output[0] has a shape of "
                           f"{shapes.fmt(y._shape)}.")
    return gradient


def backward(y, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    """Tensor.backward (see the module comment)."""
    _need_tensor("backward", y)
    if create_graph:
        raise NotImplementedError("backward(create_graph=True): picograd has no higher-order "
                                  "gradients")
    if not y._rg:
        raise RuntimeError("element 0 of tensors does not require grad and does not have a "
                           "grad_fn")
    gy = _check_gradient(y, gradient)
    leaves, rebuild = _leaves(y)
    if inputs is not None:
        wanted = {id(t) for t in ([inputs] if isinstance(inputs, Tensor) else inputs)}
        leaves = [t for t in leaves if id(t) in wanted]
    src = _rebuilt(y) if rebuild else y
    prev = _local.site
    _local.site = y._site if prev is None else prev
    try:
        for x in leaves:
            g = _grad_node(src, x, gy)
            old = x._grad
            if old is None or (old._buf is None and old._op == "full" and
                               old._attrs.get("value") == 0):
                x._grad = g      # 0 + g is g: a zeroed grad adds no node (same graph each step)
            else:
                with no_grad():
                    x._grad = old + g
    finally:
        _local.site = prev
    if not retain_graph:
        y._ag = False            # the graph is consumed (a realized y keeps no record)
    _backward_outputs.append(weakref.ref(y))


def take_backward_outputs():
    """The outputs backward() was called on since the last step that are still pending (the
    list is emptied)."""
    out = []
    for r in _backward_outputs:
        t = r()
        if t is not None and t._buf is None and all(t is not o for o in out):
            out.append(t)
    del _backward_outputs[:]
    return out
