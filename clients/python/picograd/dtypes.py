"""picograd.dtypes: the five element types a picograd tensor can have, as objects.

PROTOCOL.md section 5 names them by string on the wire ("float32", ...). The Tensor API hands out
one DType object per name instead, the way torch does, so that ``x.dtype is pg.float32`` works and
a dtype can carry what the client needs to reason about it (its size, its numpy twin, its place in
type promotion):

    import picograd as pg
    pg.float32            # picograd.float32; str() gives "float32", the wire name
    pg.long is pg.int64   # torch-style aliases: float, double, long, int
    pg.as_dtype("float64"), pg.as_dtype(np.int32), pg.as_dtype(float)   # -> DType

Type promotion itself (weak scalars and all) lives in ``picograd.shapes`` next to the other
inference rules.
"""

import numpy as np

__all__ = ["DType", "as_dtype", "float32", "float64", "int32", "int64", "bool_", "ALL"]


class DType:
    """One picograd element type. There is exactly one object per type; compare with ``is``/``==``.

    ``name`` is the wire name, ``itemsize`` the bytes per element, ``numpy_dtype`` the matching
    little-endian numpy dtype, ``is_floating_point`` as in torch. ``rank`` orders the types for
    promotion (bool < int32 < int64 < float32 < float64) and ``category`` groups them into
    bool (0), integer (1) and floating (2), which is what weak Python scalars are compared by.
    """

    __slots__ = ("name", "itemsize", "numpy_dtype", "is_floating_point", "rank", "category")

    def __init__(self, name, numpy_dtype, rank, category):
        self.name = name
        self.numpy_dtype = np.dtype(numpy_dtype)
        self.itemsize = self.numpy_dtype.itemsize
        self.is_floating_point = category == 2
        self.rank = rank
        self.category = category

    def __repr__(self):
        return f"picograd.{self.name}"

    def __str__(self):
        return self.name

    # Equal to its own wire name too, so that tests and user code may write x.dtype == "float32".
    def __eq__(self, other):
        if isinstance(other, DType):
            return self is other
        if isinstance(other, str):
            return other == self.name
        return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        return hash(self.name)

    def __reduce__(self):  # pickling keeps the one-object-per-type rule
        return (as_dtype, (self.name,))


float32 = DType("float32", "<f4", 3, 2)
float64 = DType("float64", "<f8", 4, 2)
int32 = DType("int32", "<i4", 1, 1)
int64 = DType("int64", "<i8", 2, 1)
bool_ = DType("bool", "?", 0, 0)  # "bool_" because a module-level `bool` would hide the builtin

ALL = (bool_, int32, int64, float32, float64)  # in promotion order

_BY_NAME = {d.name: d for d in ALL}
_BY_NAME.update({"float": float32, "double": float64, "long": int64, "int": int32})
# numpy (kind, itemsize) -> DType: every numpy spelling of one type ('i8', 'q', np.int64, ...)
# and either byte order map the same.
_BY_NUMPY = {(d.numpy_dtype.kind, d.itemsize): d for d in ALL}
# Python types as dtype arguments mean what they mean to torch: float is double precision.
_BY_PYTYPE = {float: float64, int: int64, bool: bool_}

# The default dtype of each category, used for Python scalars and for ints that must turn float.
DEFAULT_FOR_CATEGORY = (bool_, int64, float32)


def as_dtype(x):
    """Returns the DType that ``x`` names: a DType, a wire name or torch-style alias ("float32",
    "long"), a numpy dtype or scalar type, a Python type (float is float64, as in torch), or a
    torch dtype (matched by name). Raises TypeError for anything else, including numpy types
    picograd cannot hold (uint8, float16, ...).
    """
    if isinstance(x, DType):
        return x
    if isinstance(x, str):
        name = x[len("torch."):] if x.startswith("torch.") else x
        if name in _BY_NAME:
            return _BY_NAME[name]
        raise TypeError(f"unknown dtype {x!r}; picograd has float32, float64, int32, int64, bool")
    if x in _BY_PYTYPE:
        return _BY_PYTYPE[x]
    if type(x).__module__ == "torch":  # torch.float32 and friends, without importing torch
        return as_dtype(str(x))
    try:
        nd = np.dtype(x)
    except TypeError:
        raise TypeError(f"{x!r} is not a dtype") from None
    found = _BY_NUMPY.get((nd.kind, nd.itemsize))
    if found is None:
        raise TypeError(f"numpy dtype {nd} has no picograd dtype "
                        "(float32, float64, int32, int64, bool)")
    return found


def from_numpy_dtype(nd):
    """Returns the DType of numpy dtype ``nd``, or None when picograd has no such type."""
    return _BY_NUMPY.get((nd.kind, nd.itemsize))
