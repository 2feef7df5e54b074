"""Errors raised by the public kernel wrappers, and the status codes the jitted kernels return.

Jitted functions cannot raise informative exceptions cheaply, so numeric problems found inside a
kernel (non-finite values, a non-positive predictive variance, a segment index out of range) come
back as a negative status code and the public wrapper turns them into :class:`KernelInputError`.
"""

from __future__ import annotations

OK = 0
NON_FINITE_INPUT = -1
NON_POSITIVE_VARIANCE = -2
BAD_SEGMENT = -3
BAD_UNIFORM = -4
BAD_K_VALID = -5
BAD_SHAPE = -6

_MESSAGES = {
    NON_FINITE_INPUT: "non-finite value (nan or inf) in the inputs or the posterior state",
    NON_POSITIVE_VARIANCE: "predictive variance noise_var + phi' P phi is not positive (is P positive semi-definite?)",
    BAD_SEGMENT: "segment index out of range [0, S)",
    BAD_UNIFORM: "uniforms must lie in [0, 1]",
    BAD_K_VALID: "k_valid must be in [1, K]",
    BAD_SHAPE: "array shapes do not match",
}


class KernelInputError(ValueError):
    """An input to a kernel has the wrong shape, dtype, layout or value."""


def raise_for_status(status: int, where: str) -> None:
    """Raise :class:`KernelInputError` describing ``status`` (a negative kernel status code)."""
    raise KernelInputError(f"{where}: {_MESSAGES.get(status, f'kernel status {status}')}")
