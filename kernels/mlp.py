"""The feature map phi: a two-layer MLP evaluated row by row in numba."""

from __future__ import annotations

import numpy as np

from kernels import _validate as v
from kernels._jit import kernel


@kernel
def _tanh(x):  # pragma: no cover - compiled
    """tanh via one ``exp``: ``sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|)``.

    libm's ``tanh`` is ~3x slower here than ``exp``. The formula's absolute error is a few ulp of
    1; below |x| = 1/8, where ``1 - e`` would lose relative accuracy, libm's tanh is used.
    """
    ax = abs(x)
    if ax < 0.125:
        return np.tanh(x)
    e = np.exp(-2.0 * ax)
    t = (1.0 - e) / (1.0 + e)
    return t if x > 0.0 else -t


@kernel
def _phi_many(u, w1, b1, w2, b2):  # pragma: no cover - compiled
    n, d_in = u.shape
    hidden = w1.shape[1]
    d_out = w2.shape[1]
    out = np.empty((n, d_out + 1), dtype=np.float64)
    h = np.empty(hidden, dtype=np.float64)
    z = np.empty(d_out, dtype=np.float64)
    for i in range(n):
        for j in range(hidden):
            h[j] = b1[j]
        for a in range(d_in):  # h += u[i, a] * w1[a, :]  (contiguous rows of w1)
            ua = np.float64(u[i, a])
            for j in range(hidden):
                h[j] += ua * w1[a, j]
        for j in range(d_out):
            z[j] = b2[j]
        for j in range(hidden):
            hj = h[j]
            if hj > 0.0:  # relu; rows with h <= 0 contribute nothing
                for k in range(d_out):
                    z[k] += hj * w2[j, k]
        for k in range(d_out):
            out[i, k] = _tanh(z[k])
        out[i, d_out] = 1.0
    return out


def phi_many(
    u: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray
) -> np.ndarray:
    """Evaluate the feature map for ``n`` (context, candidate) inputs.

    ``h = relu(u @ w1 + b1)``, ``z = tanh(h @ w2 + b2)``, ``phi = [z, 1]`` (the trailing constant
    is the bias of the Bayesian linear head).

    Parameters
    ----------
    u : float32 or float64, shape (n, d_in), C-contiguous
        Inputs ``[x, a]`` (standardisation is folded into ``w1``/``b1``). ``n`` may be 0.
    w1 : float32 or float64, shape (d_in, H)
    b1 : float32 or float64, shape (H,)
    w2 : float32 or float64, shape (H, d_out)
    b2 : float32 or float64, shape (d_out,)
        Weights; float32 weights are widened to float64 (lossless; a small copy).

    Returns
    -------
    float64, shape (n, d_out + 1)
        Features; the last column is 1.

    Raises
    ------
    KernelInputError
        On a wrong rank, dtype, layout or a shape mismatch between the arrays.
    """
    v.array("u", u, 2, "float")
    v.array("w1", w1, 2, "float")
    v.array("b1", b1, 1, "float")
    v.array("w2", w2, 2, "float")
    v.array("b2", b2, 1, "float")
    v.dim("w1", w1.shape[0], u.shape[1], "rows (d_in, the width of u)")
    v.dim("b1", b1.shape[0], w1.shape[1], "length (H, the columns of w1)")
    v.dim("w2", w2.shape[0], w1.shape[1], "rows (H, the columns of w1)")
    v.dim("b2", b2.shape[0], w2.shape[1], "length (d_out, the columns of w2)")
    return _phi_many(
        u,
        w1.astype(np.float64, copy=False),
        b1.astype(np.float64, copy=False),
        w2.astype(np.float64, copy=False),
        b2.astype(np.float64, copy=False),
    )


@kernel
def _features_into(context, candidates, w1, b1, w2, b2, raw_mean, raw_sd, out):  # pragma: no cover - compiled
    bsz, kk, da = candidates.shape
    dx = context.shape[1]
    hidden = w1.shape[1]
    d_out = w2.shape[1]
    d_raw = raw_mean.shape[0]
    h_ctx = np.empty(hidden, dtype=np.float64)
    h = np.empty(hidden, dtype=np.float64)
    z = np.empty(d_out, dtype=np.float64)
    for b in range(bsz):
        for j in range(hidden):  # the context's part of the first layer, once per request (same order of sums)
            h_ctx[j] = b1[j]
        for a in range(dx):
            ua = np.float64(context[b, a])
            for j in range(hidden):
                h_ctx[j] += ua * w1[a, j]
        for c in range(kk):
            for j in range(hidden):
                h[j] = h_ctx[j]
            for a in range(da):
                ua = np.float64(candidates[b, c, a])
                for j in range(hidden):
                    h[j] += ua * w1[dx + a, j]
            for j in range(d_out):
                z[j] = b2[j]
            for j in range(hidden):
                hj = h[j]
                if hj > 0.0:
                    for k in range(d_out):
                        z[k] += hj * w2[j, k]
            for k in range(d_out):
                out[b, c, k] = _tanh(z[k])
            if d_raw:
                for a in range(dx):
                    out[b, c, d_out + a] = (np.float64(context[b, a]) - raw_mean[a]) / raw_sd[a]
                for a in range(da):
                    out[b, c, d_out + dx + a] = (np.float64(candidates[b, c, a]) - raw_mean[dx + a]) / raw_sd[dx + a]
            out[b, c, out.shape[2] - 1] = 1.0
    return out


def features_into(
    context: np.ndarray, candidates: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray,
    b2: np.ndarray, raw_mean: np.ndarray, raw_sd: np.ndarray, out: np.ndarray,
) -> np.ndarray:
    """``phi`` of every (request, candidate) written into ``out``: ``[z, (u - raw_mean) / raw_sd, 1]`` with
    ``u = [context[b], candidates[b, c]]`` and ``z`` the MLP of :func:`phi_many` (the same numbers: the
    context's share of the first layer is summed once per request, in the same order).

    Parameters
    ----------
    context : float64 [B, dx]; candidates : float64 [B, K, da]
    w1, b1, w2, b2 : float64, the MLP's weights (``w1`` has ``dx + da`` rows)
    raw_mean, raw_sd : float64 [dx + da], or both of length 0 for no raw part
    out : float64 [B, K, d_out + d_raw + 1], C-contiguous and writeable

    Raises
    ------
    KernelInputError
        On a wrong rank, dtype, layout or shape.
    """
    for name, a, nd in (("context", context, 2), ("candidates", candidates, 3), ("w1", w1, 2), ("b1", b1, 1),
                        ("w2", w2, 2), ("b2", b2, 1), ("raw_mean", raw_mean, 1), ("raw_sd", raw_sd, 1)):
        v.array(name, a, nd, "f64")
    v.array("out", out, 3, "f64w")
    bsz, kk, da = candidates.shape
    dx = context.shape[1]
    v.dim("context", context.shape[0], bsz, "rows (B, the requests of candidates)")
    v.dim("w1", w1.shape[0], dx + da, "rows (dx + da)")
    v.dim("b1", b1.shape[0], w1.shape[1], "length (H, the columns of w1)")
    v.dim("w2", w2.shape[0], w1.shape[1], "rows (H, the columns of w1)")
    v.dim("b2", b2.shape[0], w2.shape[1], "length (d_out, the columns of w2)")
    if raw_mean.shape[0] not in (0, dx + da) or raw_sd.shape != raw_mean.shape:
        raise v.KernelInputError(f"raw_mean and raw_sd must both have length 0 or {dx + da}, got "
                                 f"{raw_mean.shape[0]} and {raw_sd.shape[0]}")
    want = (bsz, kk, w2.shape[1] + raw_mean.shape[0] + 1)
    if out.shape != want:
        raise v.KernelInputError(f"out must have shape {want}, got {out.shape}")
    return _features_into(context, candidates, w1, b1, w2, b2, raw_mean, raw_sd, out)
