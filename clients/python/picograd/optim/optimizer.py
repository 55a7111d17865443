"""picograd.optim.optimizer: the Optimizer base class; a whole training step in one run.

``step()`` builds, lazily, the new value of every parameter and every state tensor (momentum
buffers, Adam's moments and step counts, all daemon tensors) and sends ONE `run` that assigns
them all. The same run realizes every parameter's ``.grad`` (so forward and backward happen
there too, unless something was realized before) and the outputs backward() was called on;
a one-element output's value comes back inline, so ``loss.item()`` after ``step()`` costs no
round trip and is the pre-step loss, as in torch. Any other pending tensor still reading a
parameter keeps the old value (tensor._execute snapshots it).

The graph is the same every step (hyper-parameters are Python numbers, which the daemon treats
as data, not structure; the step count is a daemon tensor and Adam's bias corrections are
computed in the graph), so from the second step on nothing is planned or compiled. The first
step creates the state tensors with one extra run.
"""

import collections

from .. import functional as _f
from ..autograd_api import no_grad, take_backward_outputs
from .. import dtypes
from ..shapes import Size
from ..tensor import (Tensor, _execute, _fast, _local, _mark_mutable, _realize_distinct,
                      _user_site, _weak, realize_lazy)

__all__ = ["Optimizer", "required"]

_SCALAR = Size(())


class _Ops:
    """Builds one parameter's update graph fast: every tensor has the parameter's shape and
    dtype, or is a 0-d scalar, so nodes are made without shape inference or promotion
    (tensor._fast). ``t(op, *inputs)`` is a parameter-shaped node, ``s(op, dtype, *inputs)``
    a scalar, ``cast(x, dtype)`` a scalar cast."""

    __slots__ = ("shape", "dtype", "conn")

    def __init__(self, p):
        self.shape, self.dtype, self.conn = p._shape, p._dtype, p._conn

    def t(self, op, *inputs):
        return _fast(op, inputs, None, self.shape, self.dtype, self.conn)

    def s(self, op, dtype, *inputs):
        return _fast(op, inputs, None, _SCALAR, dtype, self.conn)

    def cast(self, x, dtype):
        if x._dtype is dtype:
            return x
        return _fast("cast", (x,), {"dtype": dtype.name}, x._shape, dtype, self.conn)


def _const(value):
    """A Python number as a weak scalar (torch's "wrapped number": it takes the tensor's
    dtype)."""
    return _weak(value)


class _Required:
    def __repr__(self):
        return "<required parameter>"


required = _Required()


def _hyper(value):
    """A Python number as a weak scalar node of its own (not merged with an equal number
    elsewhere), so the graph's shape never depends on a learning rate's value."""
    t = _weak(float(value))
    t._weak = 2
    return t


class Optimizer:
    """Base class: param groups, state, zero_grad, state_dict, and the one-run step."""

    def __init__(self, params, defaults):
        self.defaults = defaults
        self.state = collections.defaultdict(dict)
        self.param_groups = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            "Tensors or dicts, but got " + type(params).__name__)
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)
        realize_lazy()
        for g in self.param_groups:
            for p in g["params"]:
                _mark_mutable(p)
        self._step_count = 0

    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError("param group must be a dict")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of tensors in sets will change between runs. "
                            "Please use a list instead.")
        params = list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params is "
                                + type(p).__module__ + "." + type(p).__name__)
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
            if not p.requires_grad:
                # torch accepts it and silently never updates it; picograd says so at once.
                raise ValueError("can't optimize a Tensor that does not require grad (call "
                                 "requires_grad_() on it, or leave it out)")
        group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError("parameter group didn't specify a value of required "
                                 "optimization parameter " + name)
            group.setdefault(name, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)
        if any(p._buf is None for p in params):
            realize_lazy()
        for p in params:
            _mark_mutable(p)

    def zero_grad(self, set_to_none=False):
        """Zeroes every parameter's .grad (torch 1.13's default), or drops it (set_to_none).
        A zeroed grad is a pending zeros node: the next backward() replaces it, adding nothing
        to the graph."""
        for g in self.param_groups:
            for p in g["params"]:
                if p._grad is not None:
                    p._grad = None if set_to_none else _f.zeros_like(p)

    # -- the step ------------------------------------------------------------------------------

    def _init_state(self, p, group):
        """Returns a dict of new state tensors (pending) for ``p``'s first step."""
        return {}

    def _update(self, p, grad, state, group, hyper):
        """Returns [(target, new value)] for ``p`` and its state (tensors, built lazily)."""
        raise NotImplementedError

    def _hypers(self, group):
        return {}

    def step(self, closure=None):
        """One update of every parameter that has a .grad, in one run (see the module)."""
        loss = None
        if closure is not None:
            from ..autograd_api import enable_grad
            with enable_grad():
                loss = closure()
        prev = _local.site
        _local.site = _user_site() if prev is None else prev
        try:
            with no_grad():
                self._create_state()
                assigns, grads = [], []
                for group in self.param_groups:
                    hyper = self._hypers(group)
                    for p in group["params"]:
                        g = p._grad
                        if g is None:
                            continue
                        if g._buf is None:
                            # The new gradient lands in the parameter's own daemon tensor
                            # (an assign, like torch's in-place accumulation): no new handle
                            # per step, so nothing to free next step.
                            gbuf = self._gbufs[id(p)]
                            assigns.append((gbuf, g))
                            grads.append((p, gbuf))
                        assigns.extend(self._update(p, g, self.state[p], group, hyper))
        finally:
            _local.site = prev
        outs = take_backward_outputs()
        fetch = [o for o in outs if o.numel() == 1]
        _execute(keep=outs, fetch=fetch, assigns=assigns, cache=fetch)
        for p, gbuf in grads:
            p._grad = gbuf
        self._step_count += 1
        return loss

    def _create_state(self):
        """Makes the state of parameters that have none yet (and the daemon tensor each
        parameter's gradient is assigned to), realized in one run."""
        made = []
        gbufs = self.__dict__.setdefault("_gbufs", {})
        for group in self.param_groups:
            for p in group["params"]:
                if p._grad is None:
                    continue
                if id(p) not in gbufs:
                    gbufs[id(p)] = gb = _f.zeros_like(p)
                    made.append(gb)
                if self.state.get(p):
                    continue
                st = self._init_state(p, group)
                self.state[p].update(st)
                made.extend(t for t in st.values() if isinstance(t, Tensor))
        if made:
            _realize_distinct(made)

    # -- state_dict ----------------------------------------------------------------------------

    def state_dict(self):
        """torch's layout: {"state": {index: {name: tensor}}, "param_groups": [{..., "params":
        [indices]}]}, parameters numbered in group order."""
        index, groups, k = {}, [], 0
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                if id(p) not in index:
                    index[id(p)] = k
                    k += 1
                ids.append(index[id(p)])
            packed = {name: v for name, v in g.items() if name != "params"}
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for g in self.param_groups:
            for p in g["params"]:
                if p in self.state and self.state[p]:
                    state[index[id(p)]] = {
                        name: (_share(v) if isinstance(v, Tensor) else v)
                        for name, v in self.state[p].items() if not name.startswith("_")}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Loads a state_dict of this optimizer's layout (from picograd, or torch's own with
        numpy arrays or torch tensors as values). Hyper-parameters come from it too."""
        groups = self.param_groups
        saved = state_dict["param_groups"]
        if len(groups) != len(saved):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match "
                             "the size of optimizer's group")
        id_map = {}
        for g, s in zip(groups, saved):
            for p, i in zip(g["params"], s["params"]):
                id_map[i] = p
        new_state = collections.defaultdict(dict)
        for i, st in state_dict["state"].items():
            p = id_map.get(int(i))
            if p is None:
                continue
            for name, v in st.items():
                new_state[p][name] = self._load_value(p, name, v)
            self._loaded(p, new_state[p])
        for g, s in zip(groups, saved):
            for name, v in s.items():
                if name != "params":
                    g[name] = v
        made = [t for st in new_state.values() for t in st.values()
                if isinstance(t, Tensor) and t._buf is None]
        if made:
            _execute(keep=made)
        for st in new_state.values():
            for t in st.values():
                if isinstance(t, Tensor):
                    _mark_mutable(t)
        self.state = new_state

    def _loaded(self, p, state):
        """Adds hidden state a loaded entry implies (SGD's started flag)."""

    @staticmethod
    def _load_value(p, name, v):
        from ..nn.modules import _as_value
        from ..tensor import _node
        if v is None:
            return None
        if isinstance(v, Tensor):  # a copy: the optimizer's state must not alias the caller's
            v = _node("reshape", [v], {"shape": list(v.shape)}, v.shape, v.dtype)
        else:
            if hasattr(v, "detach") and hasattr(v, "numpy"):
                v = v.detach().cpu().numpy()
            from ..tensor import tensor as _tensor
            import numpy as np
            arr = np.asarray(v)
            if name == "step":
                arr = arr.astype(np.float32)
            v = _tensor(arr)
        if name == "step":
            return v.to("float32").reshape(()) if v.shape != () else v.to("float32")
        return _as_value(name, v, p)

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def _share(t):
    s = Tensor._make(None, (), None, t.shape, t.dtype, t._conn, t._buf)
    s._dev = t._dev
    return s
