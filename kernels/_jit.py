"""The one decorator every kernel in this package is compiled with.

Keeping the numba options in one place (an idea taken from numba-stats' ``_util.py``) means a
change of policy - e.g. turning fastmath on - is a one-line edit that every kernel follows.

- ``cache=True``: compiled machine code is stored next to the module, so a new process loads it
  in milliseconds instead of recompiling (the first call still pays the load; see ``warmup``).
- ``error_model="numpy"``: division by zero gives inf/nan instead of raising, so no hidden
  branch is emitted around every division; the kernels check for non-finite values explicitly.
- ``nogil=True``: a worker thread running a kernel releases the GIL.
- ``fastmath=False``: results must match the numpy references to rounding, and the NaN/inf
  checks must not be optimised away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from numba import njit

F = TypeVar("F", bound=Callable[..., object])

JIT_OPTIONS = {"cache": True, "error_model": "numpy", "nogil": True, "fastmath": False}


def kernel(fn: F) -> F:
    """Compile ``fn`` with the package-wide numba options (lazily, per argument types)."""
    return njit(**JIT_OPTIONS)(fn)  # type: ignore[return-value]
