"""picograd.nn.utils: clip_grad_norm_ (torch.nn.utils.clip_grad_norm_), lazily."""

import math

from .. import functional as _f
from ..autograd_api import no_grad
from ..tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector"]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scales the gradients of ``parameters`` so that their joint ``norm_type`` norm is at
    most ``max_norm``, with torch's coefficient max_norm / (total + 1e-6) clamped to 1.0.
    Returns the total norm (a pending 0-d tensor: nothing is sent; the grads become pending
    products, realized with the optimizer step's run)."""
    parameters = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not grads:
        return _f.zeros(())
    if error_if_nonfinite:
        raise NotImplementedError("clip_grad_norm_: error_if_nonfinite needs the norm's value; "
                                  "check it with total.isfinite() yourself")
    with no_grad():
        if norm_type == math.inf:
            norms = [g.abs().amax() for g in grads]
            total = norms[0] if len(norms) == 1 else _f.stack(norms).amax()
        else:
            norms = [_vector_norm(g, norm_type) for g in grads]
            total = _vector_norm(_f.stack(norms), norm_type)
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in parameters:
            if p.grad is not None:
                p.grad = p.grad * coef.to(p.grad.dtype)
    return total


def _vector_norm(x, p):
    if p == 2.0:
        return x.square().sum().sqrt()
    if p == 1.0:
        return x.abs().sum()
    return x.abs().pow(p).sum().pow(1.0 / p)


def clip_grad_value_(parameters, clip_value):
    parameters = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    clip_value = float(clip_value)
    with no_grad():
        for p in parameters:
            if p.grad is not None:
                p.grad = p.grad.clamp(-clip_value, clip_value)


def parameters_to_vector(parameters):
    return _f.cat([p.reshape(-1) for p in parameters])
