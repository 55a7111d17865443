"""picograd.serialization: pg.save / pg.load for state dicts, in a safe file format.

The file is a zip archive (numpy's .npz container) with:

- ``structure.json``: the object, in JSON, where dicts are ``{"__dict__": [[key, value],
  ...]}`` (keys keep their type: a torch optimizer state is keyed by int), OrderedDicts
  ``{"__odict__": ...}``, tuples ``{"__tuple__": [...]}``, non-finite floats
  ``{"__float__": "inf"}``, a picograd tensor ``{"__tensor__": "t3"}`` and a numpy array
  ``{"__ndarray__": "t4"}`` (names of entries of the archive);
- ``t0.npy``, ``t1.npy``, ...: the arrays, written with numpy's ``.npy`` format and read with
  ``allow_pickle=False``.

Loading never unpickles anything, so a file cannot run code. Tensors are fetched in one run
when saved and uploaded again when loaded (as realized picograd tensors of the same dtype).

    pg.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": 3}, "ckpt.pg")
    ckpt = pg.load("ckpt.pg")
    model.load_state_dict(ckpt["model"])
"""

import collections
import io
import json
import math
import zipfile

import numpy as np

from .tensor import Tensor, _execute, tensor

__all__ = ["save", "load"]

_FORMAT = "picograd-save-1"


def save(obj, f):
    """Writes ``obj`` (nested dicts / lists / tuples of tensors, numpy arrays, numbers,
    strings, None) to ``f`` (a path or a binary file object)."""
    tensors, arrays = [], []

    def enc(o):
        if isinstance(o, Tensor):
            tensors.append(o)
            return {"__tensor__": f"t{len(tensors) - 1}"}
        if isinstance(o, np.ndarray):
            arrays.append(o)
            return {"__ndarray__": f"a{len(arrays) - 1}"}
        if isinstance(o, np.generic):
            return enc(o.item())
        if isinstance(o, (bool, int, str)) or o is None:
            return o
        if isinstance(o, float):
            return o if math.isfinite(o) else {"__float__": repr(o)}
        if isinstance(o, tuple):
            return {"__tuple__": [enc(v) for v in o]}
        if isinstance(o, list):
            return [enc(v) for v in o]
        if isinstance(o, dict):
            kind = "__odict__" if isinstance(o, collections.OrderedDict) else "__dict__"
            return {kind: [[enc(k), enc(v)] for k, v in o.items()]}
        if hasattr(o, "detach") and hasattr(o, "numpy"):  # a torch tensor
            return enc(o.detach().cpu().numpy())
        raise TypeError(f"pg.save: cannot save a {type(o).__name__}")

    structure = enc(obj)
    values = _execute(fetch=tensors) if tensors else []
    own = not hasattr(f, "write")
    fh = open(f, "wb") if own else f
    try:
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as z:
            z.writestr("format", _FORMAT)
            z.writestr("structure.json", json.dumps(structure))
            for prefix, arrs in (("t", values), ("a", arrays)):
                for i, a in enumerate(arrs):
                    buf = io.BytesIO()
                    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
                    z.writestr(f"{prefix}{i}.npy", buf.getvalue())
    finally:
        if own:
            fh.close()


def load(f, map_location=None, weights_only=True):
    """Reads what save() wrote; tensors come back as realized picograd tensors (uploaded to
    the default connection), numpy arrays as numpy arrays."""
    with zipfile.ZipFile(f, "r") as z:
        if z.read("format").decode() != _FORMAT:
            raise ValueError("pg.load: not a picograd save file")
        structure = json.loads(z.read("structure.json"))

        def arr(name):
            with z.open(name + ".npy") as fh:
                return np.load(io.BytesIO(fh.read()), allow_pickle=False)

        def dec(o):
            if isinstance(o, list):
                return [dec(v) for v in o]
            if isinstance(o, dict):
                if "__tensor__" in o:
                    return tensor(arr(o["__tensor__"]))
                if "__ndarray__" in o:
                    return arr(o["__ndarray__"])
                if "__float__" in o:
                    return float(o["__float__"])
                if "__tuple__" in o:
                    return tuple(dec(v) for v in o["__tuple__"])
                if "__odict__" in o:
                    return collections.OrderedDict((_key(dec(k)), dec(v))
                                                   for k, v in o["__odict__"])
                if "__dict__" in o:
                    return {_key(dec(k)): dec(v) for k, v in o["__dict__"]}
                raise ValueError(f"pg.load: unknown entry {sorted(o)}")
            return o

        return dec(structure)


def _key(k):
    return tuple(k) if isinstance(k, list) else k
