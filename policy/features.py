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
