"""picograd.optim.Adam and AdamW: torch 1.13's single-tensor formulas, one run per step."""

from .. import functional as _f
from .optimizer import Optimizer, _hyper

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam as torch 1.13 computes it (amsgrad, weight_decay, maximize included):

        g = grad (negated when maximize) + weight_decay * p
        step += 1; m = beta1 * m + (1 - beta1) * g; v = beta2 * v + (1 - beta2) * g * g
        v_hat = max(v_max, v) if amsgrad else v
        p = p - lr / (1 - beta1^step) * m / (sqrt(v_hat) / sqrt(1 - beta2^step) + eps)

    ``step`` is a float32 daemon tensor per parameter (torch's state["step"]); the bias
    corrections are computed from it in the graph in float64 (torch does them in Python
    floats), so each step sends the same graph.
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable)
        if type(self) is Adam:
            defaults["fused"] = fused
        super().__init__(params, defaults)

    def _init_state(self, p, group):
        st = {"step": _f.zeros((), dtype="float32"),
              "exp_avg": _f.zeros(p.shape, dtype=p.dtype),
              "exp_avg_sq": _f.zeros(p.shape, dtype=p.dtype)}
        if group["amsgrad"]:
            st["max_exp_avg_sq"] = _f.zeros(p.shape, dtype=p.dtype)
        return st

    def _hypers(self, group):
        h = {"lr": _hyper(group["lr"])}
        if self._decoupled:
            h["decay"] = _hyper(1 - group["lr"] * group["weight_decay"])
        return h

    def _update(self, p, grad, state, group, hyper):
        beta1, beta2 = group["betas"]
        wd, eps = group["weight_decay"], group["eps"]
        g = -grad if group["maximize"] else grad
        step_t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        new_step = step_t + 1
        out = [(step_t, new_step)]
        p_base = p
        if wd != 0:
            if self._decoupled:
                p_base = p * hyper["decay"]
            else:
                g = g + p * wd
        new_m = m * beta1 + g * (1 - beta1)
        new_v = v * beta2 + (g * g) * (1 - beta2)
        out += [(m, new_m), (v, new_v)]
        step = new_step.double()
        bias1 = 1 - beta1 ** step
        bias2_sqrt = (1 - beta2 ** step).sqrt()
        step_size = (hyper["lr"] / bias1).to(p.dtype)
        if group["amsgrad"]:
            vmax = state["max_exp_avg_sq"]
            new_vmax = vmax.maximum(new_v)
            out.append((vmax, new_vmax))
            denom = new_vmax.sqrt() / bias2_sqrt.to(p.dtype) + eps
        else:
            denom = new_v.sqrt() / bias2_sqrt.to(p.dtype) + eps
        out.append((p, p_base - step_size * (new_m / denom)))
        return out


class AdamW(Adam):
    """AdamW (decoupled weight decay, default 1e-2): p = p * (1 - lr * weight_decay) first,
    then Adam's update without weight decay in the gradient, as torch 1.13."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                         capturable=capturable)
        for g in self.param_groups:
            g.pop("differentiable", None)
        self.defaults.pop("differentiable", None)
