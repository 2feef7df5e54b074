"""Cheap argument checks shared by the public wrappers.

These run on the per-event path, so each is a handful of attribute reads; value checks that need
a pass over the data (finiteness, index ranges) happen inside the kernels, which read the data
anyway, and come back as status codes (see ``exceptions``).
"""

from __future__ import annotations

import math

import numpy as np

from kernels.exceptions import KernelInputError

F64 = np.dtype(np.float64)
F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)


FLOATS = (F64, F32)
ONLY_F64 = (F64,)
ONLY_I64 = (I64,)
_ND = np.ndarray


def ok(a: object, ndim: int, dtypes: tuple[np.dtype, ...]) -> bool:
    """Fast check: a C-contiguous ndarray of rank ``ndim`` whose dtype is in ``dtypes``.

    The wrappers call :func:`array` (which explains the problem) only when this returns False.
    """
    return type(a) is _ND and a.ndim == ndim and a.dtype in dtypes and a.flags.c_contiguous  # type: ignore[attr-defined]


def ok_state(a: object, ndim: int) -> bool:
    """Fast check for in-place state: float64, C-contiguous and writeable."""
    if type(a) is not _ND or a.ndim != ndim or a.dtype is not F64:  # type: ignore[attr-defined]
        return False
    flags = a.flags  # type: ignore[attr-defined]
    return flags.c_contiguous and flags.writeable


def array(name: str, a: object, ndim: int, kind: str) -> np.ndarray:
    """Check that ``a`` is a C-contiguous ndarray of rank ``ndim`` and the dtype ``kind`` allows.

    ``kind`` is ``"float"`` (float32 or float64), ``"f64"``, ``"f64w"`` (float64 and writeable: state
    updated in place) or ``"i64"``.
    """
    if type(a) is not np.ndarray:
        if not isinstance(a, np.ndarray):
            raise KernelInputError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.ndim != ndim:
        raise KernelInputError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    dt = a.dtype
    if kind == "float":
        if dt != F64 and dt != F32:
            raise KernelInputError(f"{name} must be float32 or float64, got {dt}")
    elif kind == "i64":
        if dt != I64:
            raise KernelInputError(f"{name} must be int64, got {dt}")
    elif dt != F64:
        raise KernelInputError(f"{name} must be float64 (posterior state is kept in float64), got {dt}")
    flags = a.flags
    if not flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if kind == "f64w" and not flags.writeable:
        raise KernelInputError(f"{name} is updated in place and must be writeable")
    return a


def scalar(name: str, x: object, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> float:
    """Return ``float(x)`` after checking it is finite and within ``[lo, hi]`` (ends optionally open)."""
    if type(x) is float and lo < x < hi and x - x == 0.0:  # fast path: interior, finite
        return x
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise KernelInputError(f"{name} must be a real number, got {x!r}") from None
    if not math.isfinite(v):
        raise KernelInputError(f"{name} must be finite, got {v}")
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise KernelInputError(f"{name} must be in {left}{lo}, {hi}{right}, got {v}")
    return v


def dim(name: str, got: int, want: int, what: str) -> None:
    """Check one dimension against the size it must match."""
    if got != want:
        raise KernelInputError(f"{name}: {what} must be {want}, got {got}")
