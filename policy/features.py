"""Model inputs from a request: the rows ``u = [x, a]`` that the representation ``phi`` reads.

Torch-free: the serving path (adapter, stream agents) and the trainer both call :func:`build_inputs`, so
the row layout is defined once.
"""

from __future__ import annotations

import numpy as np


def build_inputs(context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Pair every request's user context with each of its candidates.

    ``u[i * K + k] = concat(context[i], candidates[i, k])`` (row-major: request ``i``, candidate ``k``).

    Parameters
    ----------
    context
        float[n, dx], one row per request.
    candidates
        float[n, K, da], the K candidate ads of each request.

    Returns
    -------
    numpy.ndarray
        float[n * K, dx + da], C-contiguous. float32 when both inputs are float32, float64 otherwise
        (integer inputs are promoted to float64).
    """
    context = np.asarray(context)
    candidates = np.asarray(candidates)
    if context.ndim != 2:
        raise ValueError(f"context must be 2-D [n, dx], got shape {context.shape}")
    if candidates.ndim != 3:
        raise ValueError(f"candidates must be 3-D [n, K, da], got shape {candidates.shape}")
    n, dx = context.shape
    if candidates.shape[0] != n:
        raise ValueError(f"context has {n} rows but candidates has {candidates.shape[0]}")
    k, da = candidates.shape[1], candidates.shape[2]
    dtype = np.result_type(context.dtype, candidates.dtype, np.float32)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    u = np.empty((n, k, dx + da), dtype=dtype)
    u[:, :, :dx] = context[:, None, :]
    u[:, :, dx:] = candidates
    return u.reshape(n * k, dx + da)


def raw_features(u: np.ndarray, dx: int, mean: np.ndarray, sd: np.ndarray, interactions: bool) -> np.ndarray:
    """The raw skip of ``phi``: standardised inputs, and optionally their context x candidate products.

    ``z = (u - mean) / sd``; returns ``[z]`` (``d_raw = dx + da``) or ``[z, z_x (x) z_a]`` with the outer
    product of the standardised context ``z[:, :dx]`` and candidate ``z[:, dx:]`` flattened row-major
    (``d_raw = dx + da + dx * da``): the terms with which a linear head can score the same candidate
    differently for different users.
    """
    z = (np.asarray(u, dtype=np.float64) - mean) / sd
    if not interactions:
        return z
    zx, za = z[:, :dx], z[:, dx:]
    return np.concatenate([z, (zx[:, :, None] * za[:, None, :]).reshape(z.shape[0], -1)], axis=1)


def raw_dim(dx: int, da: int, interactions: bool) -> int:
    """Width of :func:`raw_features`."""
    return dx + da + (dx * da if interactions else 0)
