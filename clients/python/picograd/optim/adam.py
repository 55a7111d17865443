"""picograd.optim.Adam and AdamW: torch 1.13's single-tensor formulas, one run per step."""

from .. import dtypes
from .. import functional as _f
from .optimizer import Optimizer, _Ops, _const, _hyper

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
        st = {"step": _f.zeros((), dtype="float32", device=p.device),
              "exp_avg": _f.zeros_like(p),
              "exp_avg_sq": _f.zeros_like(p)}
        if group["amsgrad"]:
            st["max_exp_avg_sq"] = _f.zeros_like(p)
        return st

    def _hypers(self, group):
        beta1, beta2 = group["betas"]
        h = {"lr": _hyper(group["lr"]), "one": _const(1), "b1": _const(beta1),
             "omb1": _const(1 - beta1), "b2": _const(beta2), "omb2": _const(1 - beta2),
             "eps": _const(group["eps"]), "wd": _const(group["weight_decay"])}
        if self._decoupled:
            h["decay"] = _hyper(1 - group["lr"] * group["weight_decay"])
        return h

    def _update(self, p, grad, state, group, c):
        o = _Ops(p)
        f64 = dtypes.float64
        g = o.t("neg", grad) if group["maximize"] else grad
        step_t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        new_step = o.s("add", step_t._dtype, step_t, c["one"])
        out = [(step_t, new_step)]
        p_base = p
        if group["weight_decay"] != 0:
            if self._decoupled:
                p_base = o.t("mul", p, c["decay"])
            else:
                g = o.t("add", g, o.t("mul", p, c["wd"]))
        new_m = o.t("add", o.t("mul", m, c["b1"]), o.t("mul", g, c["omb1"]))
        new_v = o.t("add", o.t("mul", v, c["b2"]), o.t("mul", o.t("mul", g, g), c["omb2"]))
        out += [(m, new_m), (v, new_v)]
        step = o.cast(new_step, f64)
        bias1 = o.s("sub", f64, c["one"], o.s("pow", f64, c["b1"], step))
        bias2_sqrt = o.s("sqrt", f64, o.s("sub", f64, c["one"], o.s("pow", f64, c["b2"], step)))
        step_size = o.cast(o.s("div", f64, c["lr"], bias1), p._dtype)
        if group["amsgrad"]:
            vmax = state["max_exp_avg_sq"]
            v_hat = o.t("maximum", vmax, new_v)
            out.append((vmax, v_hat))
        else:
            v_hat = new_v
        denom = o.t("add", o.t("div", o.t("sqrt", v_hat), o.cast(bias2_sqrt, p._dtype)),
                    c["eps"])
        out.append((p, o.t("sub", p_base, o.t("mul", step_size, o.t("div", new_m, denom)))))
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
