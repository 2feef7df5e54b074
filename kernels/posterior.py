"""Online posterior of the Bayesian linear head: the rank-1 (Sherman-Morrison) update.

For a Gaussian prior ``w ~ N(m, P)`` and an observation ``r = w . phi + noise``,
``noise ~ N(0, noise_var)``, the exact posterior is (with an optional forgetting factor ``f``
in (0, 1] that inflates the prior covariance first, ``P <- P / f``)::

    Pphi = P phi
    s    = noise_var + phi . Pphi          # predictive variance of r, > 0 when P is PSD
    k    = Pphi / s                        # gain
    m   <- m + k (r - phi . m)
    P   <- P - k Pphi^T                    # = P - Pphi Pphi^T / s, symmetric

P must be symmetric (it is read by rows as if it were). The downdate is applied as
``P <- P - g g^T`` with ``g = Pphi / sqrt(s)``; floating-point products commute, so a symmetric
P stays exactly symmetric however many updates it sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import _validate as v
from kernels._jit import kernel
from kernels.exceptions import BAD_SEGMENT, BAD_SHAPE, NON_FINITE_INPUT, NON_POSITIVE_VARIANCE, OK, raise_for_status


@kernel
def _moments(P, m, phi, inv_f, pphi):  # pragma: no cover - compiled
    """``pphi = P phi / forget`` (into the scratch ``pphi``); returns ``(phi . pphi, phi . m)``.

    ``P phi`` is formed as ``sum_b phi[b] P[b]`` (rows of the symmetric P: contiguous, vectorised).
    """
    d = m.shape[0]
    for a in range(d):
        pphi[a] = 0.0
    for b in range(d):
        pb = np.float64(phi[b])
        for a in range(d):
            pphi[a] += pb * P[b, a]
    quad = 0.0
    pred = 0.0
    for a in range(d):
        pphi[a] *= inv_f
        pa = np.float64(phi[a])
        quad += pa * pphi[a]
        pred += pa * m[a]
    return quad, pred


@kernel
def _apply_rank1(P, m, pphi, gain, s, inv_f):  # pragma: no cover - compiled
    """``m <- m + pphi gain``; ``P <- P / forget - pphi pphi^T / s`` (``pphi`` is overwritten).

    The downdate is applied as ``P - g g^T`` with ``g = pphi / sqrt(s)``; since ``g[a] g[b] == g[b] g[a]``
    in floating point, a symmetric P stays exactly symmetric.
    """
    d = m.shape[0]
    for a in range(d):
        m[a] += pphi[a] * gain
    inv_root = 1.0 / np.sqrt(s)
    for a in range(d):
        pphi[a] *= inv_root
    if inv_f == 1.0:
        for a in range(d):
            ga = pphi[a]
            for b in range(d):
                P[a, b] -= ga * pphi[b]
    else:
        for a in range(d):
            ga = pphi[a]
            for b in range(d):
                P[a, b] = P[a, b] * inv_f - ga * pphi[b]


@kernel
def _update_core(P, m, phi, reward, noise_var, forget, pphi):  # pragma: no cover - compiled
    """Update ``(P, m)`` in place with one observation; return a status code (0 = ok).

    Nothing is modified unless the status is 0. ``pphi`` is float64 scratch of length d.
    """
    inv_f = 1.0 / forget
    quad, pred = _moments(P, m, phi, inv_f, pphi)
    s = quad + noise_var
    if not (np.isfinite(s) and np.isfinite(pred) and np.isfinite(reward)):
        return NON_FINITE_INPUT
    if not s > 0.0:
        return NON_POSITIVE_VARIANCE
    _apply_rank1(P, m, pphi, (reward - pred) / s, s, inv_f)
    return OK


@kernel
def _update_one(P, m, phi, reward, noise_var, forget):  # pragma: no cover - compiled
    d = m.shape[0]
    if P.shape != (d, d) or phi.shape[0] != d:
        return BAD_SHAPE
    pphi = np.empty(m.shape[0], dtype=np.float64)
    return _update_core(P, m, phi, reward, noise_var, forget, pphi)


@kernel
def _update_many(P, m, seg, phis, rewards, noise_var, forget):  # pragma: no cover - compiled
    """Apply rows in order; return (status, row). Rows before ``row`` were applied on failure.

    Segment indices are all checked before anything is modified.
    """
    n = seg.shape[0]
    n_seg = P.shape[0]
    for i in range(n):
        if seg[i] < 0 or seg[i] >= n_seg:
            return BAD_SEGMENT, i
    pphi = np.empty(m.shape[1], dtype=np.float64)
    for i in range(n):
        s = seg[i]
        status = _update_core(P[s], m[s], phis[i], np.float64(rewards[i]), noise_var, forget, pphi)
        if status != OK:
            return status, i
    return OK, -1


_ND = np.ndarray


def _explain_one(P: Any, m: Any, phi: Any) -> None:
    """Slow path of :func:`update_one`: raise a KernelInputError naming what is wrong."""
    v.array("P", P, 2, "f64w")
    v.array("m", m, 1, "f64w")
    v.array("phi", phi, 1, "float")
    d = m.shape[0]
    if P.shape != (d, d):
        raise v.KernelInputError(f"P must have shape (d, d) = ({d}, {d}) to match m, got {P.shape}")
    v.dim("phi", phi.shape[0], d, "length (d)")


def _check_noise_forget(noise_var: float, forget: float) -> tuple[float, float]:
    return (
        v.scalar("noise_var", noise_var, 0.0, v.INF, lo_open=True),
        v.scalar("forget", forget, 0.0, 1.0, lo_open=True),
    )


def update_one(
    P: np.ndarray, m: np.ndarray, phi: np.ndarray, reward: float, noise_var: float, forget: float = 1.0
) -> None:
    """Condition one segment's posterior on one observed reward, in place.

    ``P <- P / forget``; ``Pphi = P phi``; ``s = noise_var + phi . Pphi``; ``k = Pphi / s``;
    ``m <- m + k (reward - phi . m)``; ``P <- P - k Pphi^T`` (kept exactly symmetric).

    Parameters
    ----------
    P : float64, shape (d, d), C-contiguous, writeable
        Posterior covariance (symmetric positive semi-definite; symmetry is assumed, not
        checked), updated in place and kept exactly symmetric.
    m : float64, shape (d,), C-contiguous, writeable
        Posterior mean, updated in place.
    phi : float32 or float64, shape (d,)
        Features of the chosen candidate.
    reward : float
        Observed reward (finite).
    noise_var : float
        Observation noise variance, > 0.
    forget : float, default 1.0
        Forgetting factor in (0, 1]; 1 means no forgetting.

    Raises
    ------
    KernelInputError
        On bad shapes/dtypes/layout, out-of-range scalars, non-finite values or a non-positive
        predictive variance. P and m are unchanged when it raises.
    """
    # Per-event path: type, dtype, rank, layout here; shapes inside the kernel (see _explain_one).
    if not (
        type(P) is _ND and P.dtype is v.F64 and P.ndim == 2 and P.flags.c_contiguous and P.flags.writeable
        and type(m) is _ND and m.dtype is v.F64 and m.ndim == 1 and m.flags.c_contiguous and m.flags.writeable
        and type(phi) is _ND and phi.dtype in v.FLOATS and phi.ndim == 1 and phi.flags.c_contiguous
    ):
        _explain_one(P, m, phi)
    if not (type(reward) is float and -v.INF < reward < v.INF):
        reward = v.scalar("reward", reward, -v.INF, v.INF)
    if not (type(noise_var) is float and 0.0 < noise_var < v.INF):
        noise_var = v.scalar("noise_var", noise_var, 0.0, v.INF, lo_open=True)
    if not (type(forget) is float and 0.0 < forget <= 1.0):
        forget = v.scalar("forget", forget, 0.0, 1.0, lo_open=True)
    status = _update_one(P, m, phi, reward, noise_var, forget)
    if status != OK:
        if status == BAD_SHAPE:
            _explain_one(P, m, phi)
        raise_for_status(status, "update_one")


def update_many(
    P: np.ndarray,
    m: np.ndarray,
    seg: np.ndarray,
    phis: np.ndarray,
    rewards: np.ndarray,
    noise_var: float,
    forget: float = 1.0,
) -> None:
    """Apply ``n`` observations in row order, row ``i`` to segment ``seg[i]``, in place.

    Equivalent to ``for i in range(n): update_one(P[seg[i]], m[seg[i]], phis[i], rewards[i],
    noise_var, forget)`` (so with ``forget < 1`` a segment is inflated once per row it receives).

    Parameters
    ----------
    P : float64, shape (S, d, d), C-contiguous, writeable
    m : float64, shape (S, d), C-contiguous, writeable
    seg : int64, shape (n,)
        Segment of each row, in [0, S).
    phis : float32 or float64, shape (n, d)
    rewards : float32 or float64, shape (n,)
        Widened to float64 before the kernel runs.
    noise_var : float
        > 0.
    forget : float, default 1.0
        In (0, 1].

    Raises
    ------
    KernelInputError
        On bad shapes/dtypes/layout or scalars, a segment out of range (checked before anything
        changes), or a non-finite value / non-positive variance at some row ``i`` (rows before
        ``i`` have then been applied; the message names ``i``).
    """
    v.array("P", P, 3, "f64w")
    v.array("m", m, 2, "f64w")
    v.array("seg", seg, 1, "i64")
    v.array("phis", phis, 2, "float")
    v.array("rewards", rewards, 1, "float")
    n_seg, d = m.shape
    if P.shape != (n_seg, d, d):
        raise v.KernelInputError(f"P must have shape (S, d, d) = ({n_seg}, {d}, {d}) to match m, got {P.shape}")
    n = seg.shape[0]
    v.dim("phis", phis.shape[0], n, "rows (n, the length of seg)")
    v.dim("phis", phis.shape[1], d, "columns (d)")
    v.dim("rewards", rewards.shape[0], n, "length (n, the length of seg)")
    nv, f = _check_noise_forget(noise_var, forget)
    if n == 0:
        return
    status, row = _update_many(P, m, seg, phis, rewards.astype(np.float64, copy=False), nv, f)
    if status != OK:
        raise_for_status(status, f"update_many, row {row}")
