"""picograd.capture (pg.jit): capture a function's request once, replay it with new inputs (like tinygrad's
TinyJit, or a CUDA graph).

Building a graph in Python costs a few microseconds per op; for a small model a training step's
graph (forward, backward, optimizer update: hundreds of nodes) takes longer to build than the
daemon takes to run it. ``@pg.jit`` removes that cost:

    @pg.jit
    def train_step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for x, y in batches:
        loss = train_step(x, y)      # calls 1 and 2 run the Python; later ones replay

- Call 1 runs the function normally (it creates whatever state the first step creates: the
  optimizer's moments, the gradients).
- Call 2 runs it normally too, while recording the requests it sends. It must send exactly one
  `run` (an optimizer step, or the evaluation of the tensors it returns, which the jit asks for
  when the function itself sent nothing) and no `put`: create data outside and pass it in.
- Later calls send the recorded `run` again with the arguments' handles in place of the
  capture's, without running any Python of the function. Tensors that the captured run
  realized are rebound to the replay's results: the gradients (``p.grad``) and the other
  tensors the function left realized now hold the new values, and the function's return
  values come back as new tensors. Parameters and optimizer state are updated by the run's
  `assign` nodes in the daemon, as in the captured call.

The arguments of every call must be tensors with the shapes and dtypes of the capture call
(pending ones are realized first); anything else raises JitError. Everything that is not an
argument is frozen at capture: Python numbers (a learning rate set by a scheduler between calls
is NOT seen by a replay; call ``fn.reset()`` after changing one), the tensors the function
read besides its arguments (parameters and optimizer state stay valid because they are updated
in place), and which code paths ran. As with TinyJit, a jitted function must compute its
result from its arguments and from such state only.
"""

import functools
import importlib

from .tensor import Tensor, realize
from .wire import PicogradError

_tm = importlib.import_module("picograd.tensor")  # the module (pg.tensor is the function)

__all__ = ["jit", "JitError", "TinyJit"]


class JitError(PicogradError):
    """A call that cannot be captured or replayed (raised before anything is sent)."""

    def __init__(self, message):
        super().__init__("bad_request", message)


class _Recorder:
    """Installed as picograd.tensor._recorder during a capture call: collects the requests
    sent and, by handle, the tensors that adopted run outputs."""

    def __init__(self):
        self.requests = []   # (conn, op, fields, reply)
        self.by_handle = {}  # handle -> the Tensor that adopted it

    def request(self, conn, op, fields, reply):
        self.requests.append((conn, op, fields, reply))

    def adopted(self, t, handle):
        self.by_handle[handle] = t


def _flatten(ret):
    """The tensors of a return value (a tensor, or a tuple/list of them) and a rebuild function."""
    if isinstance(ret, Tensor):
        return [ret], lambda ts: ts[0]
    if isinstance(ret, (tuple, list)) and all(isinstance(r, Tensor) for r in ret):
        kind = type(ret)
        return list(ret), lambda ts: kind(ts)
    if ret is None:
        return [], lambda ts: None
    raise JitError("a jitted function must return a Tensor, a tuple or list of Tensors, or "
                   "None; got %s" % type(ret).__name__)


class TinyJit:
    """The callable that @pg.jit returns (see the module docstring)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0
        self._plan = None
        functools.update_wrapper(self, fn)

    def reset(self):
        """Forgets the capture: the next two calls run the Python again."""
        self.calls = 0
        self._plan = None

    @property
    def captured(self):
        return self._plan is not None

    def __call__(self, *args):
        for i, a in enumerate(args):
            if not isinstance(a, Tensor):
                raise JitError("argument %d of a jitted function must be a Tensor, got %s"
                               % (i, type(a).__name__))
        pending = [a for a in args if a._buf is None]
        if pending:
            realize(*pending)
        self.calls += 1
        if self._plan is not None:
            return self._replay(args)
        if self.calls == 1:
            return self.fn(*args)
        return self._capture(args)

    # -- capture ----------------------------------------------------------------------------

    def _capture(self, args):
        if _tm._recorder is not None:
            raise JitError("jitted functions cannot call each other while capturing")
        rec = _Recorder()
        _tm._recorder = rec
        try:
            ret = self.fn(*args)
            outs, rebuild = _flatten(ret)
            if not any(op == "run" for _, op, _, _ in rec.requests):
                realize(*[t for t in outs if t._buf is None])
        finally:
            _tm._recorder = None
        runs = [r for r in rec.requests if r[1] == "run"]
        others = sorted({op for _, op, _, _ in rec.requests if op != "run"})
        if others:
            raise JitError("a jitted function may only build graphs; it sent %s (create data "
                           "and read results outside it)" % ", ".join(others))
        if len(runs) != 1:
            raise JitError("a jitted function must send exactly one run; it sent %d (return "
                           "tensors instead of reading values inside it)" % len(runs))
        conn, _, fields, reply = runs[0]
        wire_outs = fields["outputs"]
        results = reply.get("outputs", [])
        if any(t._buf is None for t in outs):
            raise JitError("a jitted function returned a tensor that its run did not compute; "
                           "return only tensors that the step realizes")
        # Data fetched inline is only replayable as the cached value of a returned tensor that
        # the same run keeps (the loss an optimizer step realizes, so that loss.item() after the
        # call costs no request); data read inside the function would be frozen.
        returned = {t._buf.handle for t in outs}
        kept_at = {o["node"]: pos for pos, o in enumerate(wire_outs)
                   if o.get("keep") and results[pos].get("handle") in returned}
        inline = []  # (inline output position, kept output position of the same node)
        for pos, o in enumerate(wire_outs):
            if not o.get("keep"):
                if o["node"] not in kept_at:
                    raise JitError("a jitted function must not fetch data (.item(), .numpy(), "
                                   "print) inside; return the tensor and read it outside")
                inline.append((pos, kept_at[o["node"]]))
        arg_pos = {}
        for i, a in enumerate(args):
            if a._buf.conn is not conn:
                raise JitError("argument %d belongs to another connection" % i)
            arg_pos.setdefault(a._buf.handle, []).append(i)
        slots = []  # (node index, argument position)
        for k, node in enumerate(fields["nodes"]):
            if node.get("op") == "input" and node["handle"] in arg_pos:
                slots.append((k, arg_pos[node["handle"]][0]))
        out_index = {id(t): i for i, t in enumerate(outs)}
        rebind = []  # (output position, tensor to rebind, or None) and return slots
        ret_slots = {}
        for pos, res in enumerate(results):
            t = rec.by_handle.get(res.get("handle"))
            if t is not None and id(t) in out_index:
                ret_slots[out_index[id(t)]] = pos
            elif t is not None:
                rebind.append((pos, t))
        fixed = {i: t for i, t in enumerate(outs) if i not in ret_slots}
        self._plan = dict(conn=conn, nodes=list(fields["nodes"]), outputs=wire_outs, slots=slots,
                          rebind=rebind, ret_slots=ret_slots, fixed=fixed, rebuild=rebuild,
                          inline=inline, sig=[(a.shape, a.dtype, str(a.device)) for a in args],
                          device=fields.get("device"))
        return ret

    # -- replay -----------------------------------------------------------------------------

    def _replay(self, args):
        p = self._plan
        sig = [(a.shape, a.dtype, str(a.device)) for a in args]
        if sig != p["sig"]:
            raise JitError("a jitted function was captured for arguments %s and called with %s; "
                           "call .reset() to capture again"
                           % (_sig_text(p["sig"]), _sig_text(sig)))
        conn = p["conn"]
        nodes = list(p["nodes"])
        for k, i in p["slots"]:
            if args[i]._buf.conn is not conn:
                raise JitError("argument %d belongs to another connection" % i)
            nodes[k] = {"op": "input", "handle": args[i]._buf.handle}
        extra = {"device": p["device"]} if p["device"] else {}  # where the captured run ran
        reply = _tm._exchange(conn, "run", nodes=nodes, outputs=p["outputs"], **extra)
        results = reply.get("outputs")
        if not isinstance(results, list) or len(results) != len(p["outputs"]):
            raise PicogradError("bad_reply", "a run reply needs %d outputs" % len(p["outputs"]))
        made = {}  # kept output position -> the tensor that holds it now
        for pos, t in p["rebind"]:
            t._buf = _tm._Buffer(conn, results[pos]["handle"])
            t._val = None
            made[pos] = t
        outs = []
        for i in range(len(p["ret_slots"]) + len(p["fixed"])):
            if i in p["fixed"]:
                outs.append(p["fixed"][i])
                continue
            pos = p["ret_slots"][i]
            res = results[pos]
            t = Tensor._make(None, (), None, tuple(res["shape"]), _tm.as_dtype(res["dtype"]),
                             conn)
            t._buf = _tm._Buffer(conn, res["handle"])
            t._dev = p["device"]
            made[pos] = t
            outs.append(t)
        for pos, kept in p["inline"]:
            if kept in made:
                arr = _tm._decode(results[pos])
                arr.flags.writeable = False
                made[kept]._val = arr
        return p["rebuild"](outs)


def _sig_text(sig):
    return "(%s)" % ", ".join("%s %s%s" % (list(s), d, "" if dev == "cpu" else " on " + dev)
                              for s, d, dev in sig)


def jit(fn):
    """Decorator: capture ``fn``'s request on its second call and replay it afterwards (see the
    module docstring for what a jitted function may do)."""
    return TinyJit(fn)
