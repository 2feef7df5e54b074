"""Argument checks shared by the public wrappers.

The per-event wrappers (``thompson_one``, ``ucb_one``, ``update_one``) test type, dtype, rank and
layout inline - those decide which compiled specialisation numba would pick - and call
:func:`array` only to explain a failure. Shape relations, finiteness and index ranges are checked
inside the kernels, which read the data anyway, and come back as status codes (``exceptions``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels.exceptions import KernelInputError

F64 = np.dtype(np.float64)
F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)
FLOATS = (F64, F32)
INF = float("inf")


def array(name: str, a: Any, ndim: int, kind: str) -> np.ndarray:
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
