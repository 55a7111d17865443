"""picograd.optim.SGD: torch 1.13's SGD (single-tensor path), one run per step."""

from .. import functional as _f
from ..tensor import where
from .optimizer import Optimizer, _Ops, _const, _hyper, required

__all__ = ["SGD"]


class SGD(Optimizer):
    """SGD with optional momentum, dampening, Nesterov momentum and weight decay, exactly as
    torch 1.13 computes it:

        d_p = grad (negated when maximize) + weight_decay * p
        buf = d_p on the first step, else momentum * buf + (1 - dampening) * d_p
        d_p = d_p + momentum * buf (nesterov) or buf
        p = p - lr * d_p

    The momentum buffer is a daemon tensor made (zeros) before the first step; with dampening,
    a hidden per-parameter flag selects the first step's "buf = d_p" inside the graph, so every
    step sends the same graph.
    """

    def __init__(self, params, lr=required, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False):
        if lr is not required and lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    def _init_state(self, p, group):
        if group["momentum"] == 0:
            return {"momentum_buffer": None}
        st = {"momentum_buffer": _f.zeros_like(p)}
        if group["dampening"] != 0:
            st["_started"] = _f.zeros((), dtype=p.dtype, device=p.device)
        return st

    def _loaded(self, p, state):
        if state.get("momentum_buffer") is not None:
            state["_started"] = _f.ones((), dtype=p.dtype, device=p.device)

    def _hypers(self, group):
        return {"neg_lr": _hyper(-group["lr"]), "wd": _const(group["weight_decay"]),
                "momentum": _const(group["momentum"])}

    def _update(self, p, grad, state, group, c):
        o = _Ops(p)
        momentum, dampening = group["momentum"], group["dampening"]
        d_p = o.t("neg", grad) if group["maximize"] else grad
        if group["weight_decay"] != 0:
            d_p = o.t("add", d_p, o.t("mul", p, c["wd"]))
        out = []
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:  # momentum switched on after steps without it: torch's first step
                new_buf = d_p
            elif dampening != 0:
                started = state.get("_started")
                if started is None:
                    new_buf = buf * momentum + d_p * (1 - dampening)
                else:
                    coef = where(started > 0, 1 - dampening, 1.0).to(p.dtype)
                    new_buf = buf * momentum + d_p * coef
                    out.append((started, _f.ones_like(started)))
            else:
                new_buf = o.t("add", o.t("mul", buf, c["momentum"]), d_p)
            if buf is not None:
                out.append((buf, new_buf))
            d_p = o.t("add", d_p, o.t("mul", new_buf, c["momentum"])) if group["nesterov"] \
                else new_buf
        out.append((p, o.t("add", p, o.t("mul", d_p, c["neg_lr"]))))
        return out
