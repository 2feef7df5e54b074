"""Decisions: Thompson sampling (with Monte-Carlo propensities) and UCB, each eps-mixed.

Thompson sampling works on the K candidates' mean rewards ``phi_k . w`` rather than on ``w``:
under the posterior ``w ~ N(m, P)`` they are jointly ``N(mu, C)`` with ``mu = Phi m`` and
``C = scale * Phi P Phi^T`` (K x K, cheaper than sampling in d dimensions when K < d). With
``L`` the Cholesky factor of ``C`` (plus a small relative jitter, see ``_linalg.JITTER_REL``),
draw ``j`` is ``s_j = mu + L z_j`` for the supplied standard normals ``z_j``.

- choice: ``argmax s_0`` (lowest index on ties), unless ``uniforms[0] < eps``, then the uniform
  pick ``min(int(uniforms[1] * K), K - 1)``.
- propensity: ``(1 - eps) * count_k / n_draws + eps / K`` where ``count_k`` is the number of draws
  (draw 0 included) whose argmax is ``k``. Averaged over the normals it equals the true
  probability of choosing ``k`` (an unbiased Monte-Carlo estimate); every value is in (0, 1] when
  eps > 0 and they sum to 1 (values are capped at 1.0, which only matters when ``(1 - eps) + eps``
  rounds to 1 + 2**-52).

The propensity-by-resampling idea is the standard one for logging Thompson sampling decisions
for off-policy evaluation (e.g. the Open Bandit Pipeline's BernoulliTS ``compute_batch_action_dist``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import _validate as v
from kernels._jit import kernel
from kernels._linalg import _cholesky_psd
from kernels.exceptions import BAD_K_VALID, BAD_SEGMENT, BAD_SHAPE, BAD_UNIFORM, NON_FINITE_INPUT, raise_for_status

#: Used for ``eps / K`` when a subnormal eps would make it underflow to 0.
SMALLEST_SUBNORMAL = 5e-324


@kernel
def _score_moments(phis, P, m, kv, scale, row, C, mu):  # pragma: no cover - compiled
    """``mu = Phi m`` and the lower triangle of ``C = scale * Phi P Phi^T`` (first kv candidates).

    For each candidate ``k`` the row ``phi_k P`` is accumulated in the scratch ``row`` (length d)
    as axpys over the contiguous rows of P, four rows at a time (LLVM vectorises them without
    fastmath), then dotted with ``phi_j`` for ``j <= k``. Returns False if a value is not finite.
    """
    d = m.shape[0]
    d4 = d - d % 4
    ok = True
    for k in range(kv):
        acc = 0.0
        for a in range(d):
            acc += np.float64(phis[k, a]) * m[a]
        mu[k] = acc
        if not np.isfinite(acc):
            ok = False
        for b in range(d):
            row[b] = 0.0
        for a in range(0, d4, 4):  # four rows of P per pass: a quarter of the loads/stores of row
            p0 = np.float64(phis[k, a])
            p1 = np.float64(phis[k, a + 1])
            p2 = np.float64(phis[k, a + 2])
            p3 = np.float64(phis[k, a + 3])
            for b in range(d):
                row[b] += (p0 * P[a, b] + p1 * P[a + 1, b]) + (p2 * P[a + 2, b] + p3 * P[a + 3, b])
        for a in range(d4, d):
            pa = np.float64(phis[k, a])
            for b in range(d):
                row[b] += pa * P[a, b]
        for j in range(k + 1):
            acc = 0.0
            for b in range(d):
                acc += row[b] * np.float64(phis[j, b])
            acc *= scale
            C[k, j] = acc
            if not np.isfinite(acc):
                ok = False
    return ok


@kernel
def _eps_floor(eps, k):  # pragma: no cover - compiled
    """``eps / k``, but never 0 when eps > 0 (a subnormal eps would underflow to 0)."""
    floor = eps / k
    if floor == 0.0 and eps > 0.0:
        floor = SMALLEST_SUBNORMAL
    return floor


@kernel
def _explore_choice(u0, u1, eps, greedy, kv):  # pragma: no cover - compiled
    if u0 < eps:
        c = int(u1 * kv)
        return c if c < kv else kv - 1
    return greedy


@kernel
def _count_argmax_draws(mean, L, normals, kv, zt, acc, best, arg, counts):  # pragma: no cover - compiled
    """Form every draw ``s_j = mean + L z_j``, count argmaxes into ``counts``; return draw 0's argmax.

    Vectorised across draws: the normals are transposed into ``zt`` (K x n_draws) so that each
    candidate's draws accumulate as contiguous axpys, and the running argmax over candidates is a
    branch-free select per draw (strict ``>``: the lowest index wins ties). Returns -1 if a draw
    is not finite.
    """
    n_draws = normals.shape[0]
    for j in range(n_draws):
        for col in range(kv):
            zt[col, j] = normals[j, col]
    for i in range(kv):
        mi = mean[i]
        for j in range(n_draws):
            acc[j] = mi
        for col in range(i + 1):
            lic = L[i, col]
            for j in range(n_draws):
                acc[j] += lic * zt[col, j]
        if i == 0:
            for j in range(n_draws):
                best[j] = acc[j]
                arg[j] = 0
        else:
            for j in range(n_draws):
                better = acc[j] > best[j]
                best[j] = acc[j] if better else best[j]
                arg[j] = i if better else arg[j]
    total = 0.0
    for j in range(n_draws):  # acc holds the last candidate's draws, which use every normal
        total += acc[j]
    if not np.isfinite(total):  # a nan/inf normal (or overflow) poisons the sum
        return -1
    for k in range(kv):
        counts[k] = 0
    for j in range(n_draws):
        counts[arg[j]] += 1
    return arg[0]


@kernel
def _thompson_core(phis, P, m, normals, uniforms, eps, scale, kv, scratch, prop, mean, off_mean, off_var):  # pragma: no cover
    """One Thompson decision over the first kv candidates; writes prop[:kv] and mean[:kv].

    ``off_mean`` / ``off_var`` (length >= kv) are added to each candidate's score mean and variance (the
    per-item terms of ``kernels.glm``; zeros for the plain head). ``scratch`` comes from :func:`_scratch`.
    Returns the choice, or a negative status code (then prop and mean hold nothing meaningful).
    """
    row, C, L, counts, zt, acc, best, arg = scratch
    u0 = uniforms[0]
    u1 = uniforms[1]
    if not (u0 >= 0.0 and u0 <= 1.0 and u1 >= 0.0 and u1 <= 1.0):
        return BAD_UNIFORM
    if not _score_moments(phis, P, m, kv, scale, row, C, mean):
        return NON_FINITE_INPUT
    for k in range(kv):
        mean[k] += off_mean[k]
        C[k, k] += scale * off_var[k]
    _cholesky_psd(C, L, kv)
    greedy = _count_argmax_draws(mean, L, normals, kv, zt, acc, best, arg, counts)
    if greedy < 0:
        return NON_FINITE_INPUT
    w = (1.0 - eps) / normals.shape[0]
    floor = _eps_floor(eps, kv)
    for k in range(kv):  # min: (1 - eps) + eps can round to 1 + 2**-52
        prop[k] = min(w * counts[k] + floor, 1.0)
    return _explore_choice(u0, u1, eps, greedy, kv)


@kernel
def _scratch(kk, d, n_draws):  # pragma: no cover - compiled
    """Scratch for :func:`_thompson_core`, allocated once per call or batch.

    row (d), C and L (K x K), counts (K), zt (K x n_draws), acc, best and arg (n_draws).
    """
    return (
        np.empty(d, dtype=np.float64),
        np.empty((kk, kk), dtype=np.float64),
        np.empty((kk, kk), dtype=np.float64),
        np.empty(kk, dtype=np.int64),
        np.empty((kk, n_draws), dtype=np.float64),
        np.empty(n_draws, dtype=np.float64),
        np.empty(n_draws, dtype=np.float64),
        np.empty(n_draws, dtype=np.int64),
    )


@kernel
def _thompson_one(phis, P, m, normals, uniforms, eps, scale):  # pragma: no cover - compiled
    kk, d = phis.shape
    n_draws = normals.shape[0]
    if kk < 1 or P.shape != (d, d) or m.shape[0] != d or uniforms.shape[0] != 2:
        return BAD_SHAPE, np.empty(0, dtype=np.float64)
    if n_draws < 1 or normals.shape[1] != kk:
        return BAD_SHAPE, np.empty(0, dtype=np.float64)
    scratch = _scratch(kk, d, n_draws)
    prop = np.empty(kk, dtype=np.float64)
    mean = np.empty(kk, dtype=np.float64)
    zero = np.zeros(kk, dtype=np.float64)
    choice = _thompson_core(phis, P, m, normals, uniforms, eps, scale, kk, scratch, prop, mean, zero, zero)
    return choice, prop


@kernel
def _ucb_one(phis, P, m, alpha, uniforms, eps):  # pragma: no cover - compiled
    kk, d = phis.shape
    prop = np.empty(kk, dtype=np.float64)
    if kk < 1 or P.shape != (d, d) or m.shape[0] != d or uniforms.shape[0] != 2:
        return BAD_SHAPE, prop
    u0 = uniforms[0]
    u1 = uniforms[1]
    if not (u0 >= 0.0 and u0 <= 1.0 and u1 >= 0.0 and u1 <= 1.0):
        return BAD_UNIFORM, prop
    pp = np.empty(d, dtype=np.float64)
    best = 0.0
    greedy = 0
    for k in range(kk):
        mean = 0.0
        quad = 0.0
        for b in range(d):
            pp[b] = 0.0
        for a in range(d):  # pp = phi_k P as an axpy over rows of the symmetric P
            pa = np.float64(phis[k, a])
            for b in range(d):
                pp[b] += pa * P[a, b]
        for a in range(d):
            pa = np.float64(phis[k, a])
            mean += pa * m[a]
            quad += pa * pp[a]
        if quad < 0.0:  # rounding on a (near-)singular P; the true value is >= 0
            quad = 0.0
        score = mean + alpha * np.sqrt(quad)
        if not np.isfinite(score):
            return NON_FINITE_INPUT, prop
        if k == 0 or score > best:
            best = score
            greedy = k
    floor = _eps_floor(eps, kk)
    for k in range(kk):
        prop[k] = floor
    prop[greedy] = min(floor + (1.0 - eps), 1.0)  # rounding can exceed 1 by an ulp
    return _explore_choice(u0, u1, eps, greedy, kk), prop


@kernel
def _decide_many(phis, P, m, seg, k_valid, normals, uniforms, eps, scale, off_mean, off_var):  # pragma: no cover
    """Thompson decisions for B rows, scores offset by ``off_mean`` / ``off_var`` [B, K];
    returns (choices, props, means, status, bad_row)."""
    bsz, kk, d = phis.shape
    n_seg = P.shape[0]
    choices = np.empty(bsz, dtype=np.int64)
    props = np.zeros((bsz, kk), dtype=np.float64)
    means = np.zeros((bsz, kk), dtype=np.float64)
    scratch = _scratch(kk, d, normals.shape[1])
    for b in range(bsz):
        s = seg[b]
        kv = k_valid[b]
        if s < 0 or s >= n_seg:
            return choices, props, means, BAD_SEGMENT, b
        if kv < 1 or kv > kk:
            return choices, props, means, BAD_K_VALID, b
        c = _thompson_core(phis[b], P[s], m[s], normals[b], uniforms[b], eps, scale, kv, scratch, props[b], means[b],
                           off_mean[b], off_var[b])
        if c < 0:
            return choices, props, means, c, b
        choices[b] = c
    return choices, props, means, 0, -1


_ND = np.ndarray


def _explain_one(phis: Any, P: Any, m: Any, normals: Any, uniforms: Any) -> None:
    """Slow path of the per-event wrappers: raise a KernelInputError naming what is wrong."""
    v.array("phis", phis, 2, "float")
    kk, d = phis.shape
    if kk < 1:
        raise v.KernelInputError("phis must have at least one candidate (K >= 1)")
    v.array("P", P, 2, "f64")
    v.array("m", m, 1, "f64")
    if m.shape != (d,) or P.shape != (d, d):
        raise v.KernelInputError(
            f"P must be ({d}, {d}) and m ({d},) to match phis' d={d}; got {P.shape} and {m.shape}"
        )
    if normals is not None:
        v.array("normals", normals, 2, "float")
        if normals.shape[0] < 1 or normals.shape[1] != kk:
            raise v.KernelInputError(f"normals must have shape (n_draws >= 1, K={kk}), got {normals.shape}")
    v.array("uniforms", uniforms, 1, "f64")
    v.dim("uniforms", uniforms.shape[0], 2, "length")


def thompson_one(
    phis: np.ndarray,
    P: np.ndarray,
    m: np.ndarray,
    normals: np.ndarray,
    uniforms: np.ndarray,
    eps: float,
    scale: float = 1.0,
) -> tuple[int, np.ndarray]:
    """Eps-mixed Thompson sampling over K candidates, with Monte-Carlo propensities.

    ``mu = Phi m``, ``C = scale * Phi P Phi^T``, ``L = chol(C + delta I)`` with
    ``delta = 1e-10 * trace(C) / K`` (non-positive pivots zero their column, so P = 0 or identical
    candidates are fine), draws ``s_j = mu + L z_j``. Choice: argmax of ``s_0`` (lowest index on
    ties), or ``min(int(uniforms[1] * K), K - 1)`` when ``uniforms[0] < eps``. Propensity:
    ``(1 - eps) * count_k / n_draws + eps / K``.

    Parameters
    ----------
    phis : float32 or float64, shape (K, d), K >= 1
        Candidate features.
    P : float64, shape (d, d)
        Posterior covariance (symmetric PSD; only read).
    m : float64, shape (d,)
        Posterior mean.
    normals : float32 or float64, shape (n_draws, K), n_draws >= 1
        Independent standard normals; row 0 decides.
    uniforms : float64, shape (2,)
        Uniforms in [0, 1]: ``[explore coin, explore pick]``.
    eps : float
        Uniform exploration rate in [0, 1].
    scale : float, default 1.0
        Posterior inflation (>= 0) applied to C.

    Returns
    -------
    choice : int
        Chosen candidate in [0, K).
    propensities : float64, shape (K,)
        Probability of each candidate under this policy (sums to 1).

    Raises
    ------
    KernelInputError
        On bad shapes/dtypes/layout, out-of-range scalars or uniforms, or non-finite values.
    """
    # Per-event path: only what decides the compiled specialisation is checked here (type, dtype,
    # rank, layout); shapes are checked inside the kernel and explained by _explain_one.
    if not (
        type(phis) is _ND and phis.dtype in v.FLOATS and phis.ndim == 2 and phis.flags.c_contiguous
        and type(P) is _ND and P.dtype is v.F64 and P.ndim == 2 and P.flags.c_contiguous
        and type(m) is _ND and m.dtype is v.F64 and m.ndim == 1 and m.flags.c_contiguous
        and type(normals) is _ND and normals.dtype in v.FLOATS and normals.ndim == 2 and normals.flags.c_contiguous
        and type(uniforms) is _ND and uniforms.dtype is v.F64 and uniforms.ndim == 1 and uniforms.flags.c_contiguous
    ):
        _explain_one(phis, P, m, normals, uniforms)
    if not (type(eps) is float and 0.0 <= eps <= 1.0):
        eps = v.scalar("eps", eps, 0.0, 1.0)
    if not (type(scale) is float and 0.0 <= scale < v.INF):
        scale = v.scalar("scale", scale, 0.0, v.INF)
    choice, prop = _thompson_one(phis, P, m, normals, uniforms, eps, scale)
    if choice < 0:
        if choice == BAD_SHAPE:
            _explain_one(phis, P, m, normals, uniforms)
        raise_for_status(choice, "thompson_one")
    return choice, prop


def ucb_one(
    phis: np.ndarray, P: np.ndarray, m: np.ndarray, alpha: float, uniforms: np.ndarray, eps: float
) -> tuple[int, np.ndarray]:
    """Eps-mixed upper-confidence-bound choice over K candidates.

    Score ``phi_k . m + alpha * sqrt(max(phi_k^T P phi_k, 0))``; greedy = argmax (lowest index on
    ties); choice = greedy, or ``min(int(uniforms[1] * K), K - 1)`` when ``uniforms[0] < eps``.
    Propensity ``(1 - eps) * [k == greedy] + eps / K``.

    Parameters
    ----------
    phis : float32 or float64, shape (K, d), K >= 1
    P : float64, shape (d, d)
    m : float64, shape (d,)
    alpha : float
        Width of the bonus, >= 0.
    uniforms : float64, shape (2,)
        Uniforms in [0, 1].
    eps : float
        In [0, 1].

    Returns
    -------
    choice : int
    propensities : float64, shape (K,)

    Raises
    ------
    KernelInputError
        As :func:`thompson_one`.
    """
    if not (
        type(phis) is _ND and phis.dtype in v.FLOATS and phis.ndim == 2 and phis.flags.c_contiguous
        and type(P) is _ND and P.dtype is v.F64 and P.ndim == 2 and P.flags.c_contiguous
        and type(m) is _ND and m.dtype is v.F64 and m.ndim == 1 and m.flags.c_contiguous
        and type(uniforms) is _ND and uniforms.dtype is v.F64 and uniforms.ndim == 1 and uniforms.flags.c_contiguous
    ):
        _explain_one(phis, P, m, None, uniforms)
    a = v.scalar("alpha", alpha, 0.0, v.INF)
    e = v.scalar("eps", eps, 0.0, 1.0)
    choice, prop = _ucb_one(phis, P, m, a, uniforms, e)
    if choice < 0:
        if choice == BAD_SHAPE:
            _explain_one(phis, P, m, None, uniforms)
        raise_for_status(choice, "ucb_one")
    return choice, prop


def decide_many(
    phis: np.ndarray,
    P: np.ndarray,
    m: np.ndarray,
    seg: np.ndarray,
    k_valid: np.ndarray,
    normals: np.ndarray,
    uniforms: np.ndarray,
    eps: float,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thompson decisions for a batch of B requests from S segments (see :func:`thompson_one`).

    Row ``b`` uses the posterior of segment ``seg[b]`` and only its first ``k_valid[b]``
    candidates (``phis[b, :k]``, ``normals[b, :, :k]``); ``eps / K`` uses ``K = k_valid[b]``.
    Row ``b`` equals ``thompson_one(phis[b, :k], P[seg[b]], m[seg[b]], normals[b, :, :k],
    uniforms[b], eps, scale)``.

    Parameters
    ----------
    phis : float32 or float64, shape (B, K, d)
    P : float64, shape (S, d, d)
    m : float64, shape (S, d)
    seg : int64, shape (B,)
        Segment of each row, in [0, S).
    k_valid : int64, shape (B,)
        Number of real candidates per row, in [1, K]; the rest is padding.
    normals : float32 or float64, shape (B, n_draws, K), n_draws >= 1
    uniforms : float64, shape (B, 2)
    eps : float
        In [0, 1].
    scale : float, default 1.0
        >= 0.

    Returns
    -------
    choices : int64, shape (B,)
        Always < k_valid[b].
    propensities : float64, shape (B, K)
        Padding entries are 0; each row sums to 1.
    mean_scores : float64, shape (B, K)
        Posterior mean reward ``phi . m`` of each candidate; padding entries are 0.

    Raises
    ------
    KernelInputError
        On bad shapes/dtypes/layout or scalars, or a bad value in some row (the message names it).
    """
    v.array("phis", phis, 3, "float")
    bsz, kk, d = phis.shape
    if kk < 1:
        raise v.KernelInputError("phis must have at least one candidate slot (K >= 1)")
    v.array("P", P, 3, "f64")
    v.array("m", m, 2, "f64")
    n_seg = m.shape[0]
    if m.shape[1] != d or P.shape != (n_seg, d, d):
        raise v.KernelInputError(
            f"P must be (S, {d}, {d}) and m (S, {d}) to match phis' d={d}; got {P.shape} and {m.shape}"
        )
    v.array("seg", seg, 1, "i64")
    v.array("k_valid", k_valid, 1, "i64")
    v.dim("seg", seg.shape[0], bsz, "length (B)")
    v.dim("k_valid", k_valid.shape[0], bsz, "length (B)")
    v.array("normals", normals, 3, "float")
    if normals.shape[0] != bsz or normals.shape[1] < 1 or normals.shape[2] != kk:
        raise v.KernelInputError(f"normals must have shape (B={bsz}, n_draws >= 1, K={kk}), got {normals.shape}")
    v.array("uniforms", uniforms, 2, "f64")
    if uniforms.shape != (bsz, 2):
        raise v.KernelInputError(f"uniforms must have shape (B={bsz}, 2), got {uniforms.shape}")
    e = v.scalar("eps", eps, 0.0, 1.0)
    sc = v.scalar("scale", scale, 0.0, float("inf"))
    zero = np.zeros(phis.shape[:2])
    choices, props, means, status, row = _decide_many(phis, P, m, seg, k_valid, normals, uniforms, e, sc, zero, zero)
    if status != 0:
        if status == BAD_K_VALID:
            raise v.KernelInputError(f"decide_many, row {row}: k_valid must be in [1, K={kk}], got {k_valid[row]}")
        raise_for_status(status, f"decide_many, row {row}")
    return choices, props, means
