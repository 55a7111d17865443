"""picograd.autograd: gradients, computed by the daemon as part of the graph.

``grad`` works like ``torch.autograd.grad``, but lazily: it adds one `grad` node per (output,
input) pair to the pending graph (PROTOCOL.md, `grad`), and the daemon differentiates when the
graph runs. The gradients are ordinary lazy Tensors, so a whole training step (forward,
backward, update) still goes out as one `run`, and its plan is cached like any graph's:

    import picograd as pg
    w = pg.randn(3, 2)
    x = pg.randn(8, 3)
    loss = ((x @ w).tanh() ** 2).mean()
    (gw,) = pg.autograd.grad(loss, w)     # lazy; gw.shape == w.shape
    w2 = w - 0.1 * gw                     # still lazy
    w2.numpy()                            # one round trip: forward, backward and update

Differences from torch, all of them from picograd being lazy and immutable:

- Nothing is recorded: there is no ``requires_grad``; the graph behind ``outputs`` is what is
  differentiated, and any input can be asked for.
- An input that an output does not depend on gets zeros (torch's ``allow_unused=True`` with
  ``materialize_grads=True``) instead of an error.
- A tensor that has been realized (``numpy()``, ``item()``, ``print``, ``pg.realize``) keeps only
  its value, not the graph that made it, so gradients do not flow back through it: ask for the
  gradient before realizing the output, or realize the output and its gradients together
  (``pg.realize(loss, *grads)``). Graphs over 65,536 nodes are run in pieces, which realizes
  intermediate results the same way.
- Gradients are themselves lazy graphs, so higher derivatives are ``grad`` of a gradient.

``Tensor.detach()`` makes a `detach` node: the same value, no gradient through it.
"""

from . import shapes
from .tensor import Tensor, _node, as_tensor

__all__ = ["grad"]


def _as_list(what, x):
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        for t in x:
            if not isinstance(t, Tensor):
                raise TypeError(f"grad: {what} must be Tensors, got {type(t).__name__}")
        return list(x)
    raise TypeError(f"grad: {what} must be a Tensor or a sequence of Tensors, got "
                    f"{type(x).__name__}")


def _grad_node(y, x, gy):
    """One `grad` node: d(sum(y * gy))/dx (gy None: y must hold one element)."""
    shape, dtype = shapes.grad("grad", y.shape, y.dtype, x.shape, x.dtype,
                               None if gy is None else gy.shape)
    inputs = [y, x] if gy is None else [y, x, gy]
    return _node("grad", inputs, {}, shape, dtype)


def grad(outputs, inputs, grad_outputs=None):
    """The gradients of ``outputs`` with respect to ``inputs``, as a tuple of lazy Tensors (one
    per input, each of its input's shape and dtype).

    ``outputs`` and ``inputs`` are Tensors or sequences of Tensors. ``grad_outputs`` gives the
    vector of a vector-Jacobian product for each output (its shape exactly, cast to its dtype);
    it may be None, or hold None, for outputs with one element (then 1). With several outputs,
    each input's gradient is the sum over them, d(sum_k sum(y_k * gy_k))/dx, as in torch.
    Outputs and inputs must be float32 or float64.
    """
    ys = _as_list("outputs", outputs)
    xs = _as_list("inputs", inputs)
    if not ys:
        raise ValueError("grad: outputs is empty")
    if grad_outputs is None:
        gys = [None] * len(ys)
    elif isinstance(grad_outputs, (list, tuple)):
        gys = list(grad_outputs)
    else:
        gys = [grad_outputs]
    if len(gys) != len(ys):
        raise ValueError(f"grad: {len(gys)} grad_outputs for {len(ys)} outputs")
    gys = [g if g is None or isinstance(g, Tensor) else as_tensor(g) for g in gys]
    result = []
    for x in xs:
        total = None
        for y, gy in zip(ys, gys):
            g = _grad_node(y, x, gy)
            total = g if total is None else total + g
        result.append(total)
    return tuple(result)
