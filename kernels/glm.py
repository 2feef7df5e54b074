"""The v2 segment head: a linear or logistic score with per-item terms, adapted by a decoupled Kalman filter.

Model of one segment (``docs/ARCHITECTURE.md``, "learning core v2")::

    score(x, a) = w . phi(x, a) + b_item(a)           w ~ N(m, P), b_item ~ N(mu_i, v_i) independent
    gaussian:   reward ~ N(score, noise_var)
    bernoulli:  click  ~ Bernoulli(sigmoid(score))

``b_item`` is a per-segment term for the candidate's identity (an ``ad_id``), so a segment can learn
that *this* ad does better or worse than its features say. A segment keeps at most ``C`` item terms in
a small table (``tab_ids``, ``tab_mean``, ``tab_var``, ``tab_tick``; id ``-1`` = empty slot); an item not
in the table has the prior ``N(prior_mean, prior_var)`` (the artifact's pooled estimate for that id, 0
for an unknown id), and when a new item must be stored in a full table the least recently used term is
evicted (it returns to its prior). Candidates with id ``-1`` have no item term.

Update with one observation ``(phi, item, y)`` (an extended / decoupled Kalman filter step, the online
Laplace approximation of Chapelle & Li 2011 "An Empirical Evaluation of Thompson Sampling" with full
covariance; decoupling the item block from ``w`` as in Puskorius & Feldkamp's decoupled EKF)::

    P <- P / forget ; v <- v / forget                      (forgetting, 1 = none)
    mu   = phi . m + b_mean
    s_w  = phi . P phi ;  s_b = v                          (prior variances of the two parts of the score)
    s    = s_w + s_b                                       the score's prior is N(mu, s)
    gaussian:  R = noise_var ;  l* = mu + s (y - mu) / (s + R)
    bernoulli: l* = argmax_l  log Bernoulli(y | sigmoid(l)) - (l - mu)^2 / (2 s)    (1-D Newton, converged)
               R = 1 / max(h, H_MIN),  h = sigmoid(l*) (1 - sigmoid(l*))           (Laplace at the mode)
    g = (l* - mu) / s
    m <- m + P phi g ;  P <- P - (P phi)(P phi)^T / (s + R)
    b_mean <- b_mean + s_b g ;  v <- v - s_b^2 / (s + R)

The bernoulli step is the Laplace approximation of the one-dimensional posterior of the score, mapped
back to ``w`` and ``b`` through their Gaussian prior (assumed density filtering); solving for the mode
instead of linearising at the prior mean (a plain extended Kalman filter) removes most of the shrinkage a
one-pass filter shows against a batch Laplace fit (``tests/unit/kernels/test_glm.py`` states the tolerance).

With no item term and the gaussian likelihood this is exactly :func:`kernels.update_one`. The joint
posterior's small cross-covariance between ``w`` and ``b`` is dropped (the decoupling).

Decisions: Thompson sampling over the candidates' scores, jointly ``N(Phi m + b, scale (Phi P Phi^T +
diag(v)))``, with Monte-Carlo propensities and ``eps`` uniform mixing: the one decision loop of
:mod:`kernels.scoring`, given the item terms as score offsets; the
sigmoid is monotone, so the argmax over sampled scores is the argmax over sampled click probabilities.
``scale = 0`` is greedy on the posterior mean.
"""

from __future__ import annotations

import numpy as np

from kernels import _validate as v
from kernels._jit import kernel
from kernels.exceptions import (
    BAD_SEGMENT, NON_FINITE_INPUT, NON_POSITIVE_VARIANCE, OK, raise_for_status,
)
from kernels.posterior import _apply_rank1, _moments
from kernels.scoring import _decide_many

#: Floor of the logistic curvature ``p (1 - p)``: keeps the pseudo-observation noise ``1 / h`` finite
#: for scores far in the tails (|score| > ~23).
H_MIN = 1e-10
#: Newton iterations of the one-dimensional mode search (it stops earlier once a step is below 1e-12).
NEWTON_MAX = 30

GAUSSIAN = 0
BERNOULLI = 1


@kernel
def _find(ids, item):  # pragma: no cover - compiled
    """Slot of ``item`` in one segment's id row, or -1."""
    for c in range(ids.shape[0]):
        if ids[c] == item:
            return c
    return -1


@kernel
def _item_offsets(seg, items, k_valid, tab_ids, tab_mean, tab_var, prior_mean, prior_var, off_mean, off_var):  # pragma: no cover
    """Score offset mean/variance of every candidate from its segment's item table or its prior."""
    bsz, kk = items.shape
    for b in range(bsz):
        s = seg[b]
        if s < 0 or s >= tab_ids.shape[0]:
            return BAD_SEGMENT
        for k in range(kk):
            it = items[b, k]
            if k >= k_valid[b] or it < 0:
                off_mean[b, k] = 0.0
                off_var[b, k] = 0.0
                continue
            c = _find(tab_ids[s], it)
            if c >= 0:
                off_mean[b, k] = tab_mean[s, c]
                off_var[b, k] = tab_var[s, c]
            else:
                off_mean[b, k] = prior_mean[b, k]
                off_var[b, k] = prior_var
    return OK


@kernel
def _mode_1d(mu, s, y):  # pragma: no cover - compiled
    """Mode of ``log Bernoulli(y | sigmoid(l)) - (l - mu)^2 / (2 s)`` by Newton's method (concave in l)."""
    l = mu
    for _ in range(NEWTON_MAX):
        p = 1.0 / (1.0 + np.exp(-l))
        grad = (y - p) - (l - mu) / s
        step = grad / (p * (1.0 - p) + 1.0 / s)
        l += step
        if abs(step) < 1e-12:
            break
    return l


@kernel
def _glm_update_core(P, m, phi, y, has_item, b_mean, b_var, likelihood, noise_var, forget, pphi, out):  # pragma: no cover
    """One observation into ``(P, m)`` in place; the item term's new (mean, var) go to ``out[0:2]``.

    Returns a status code; nothing is modified unless it is OK.
    """
    inv_f = 1.0 / forget
    s_w, mu = _moments(P, m, phi, inv_f, pphi)
    s_b = b_var * inv_f if has_item else 0.0
    if has_item:
        mu += b_mean
    if not (np.isfinite(s_w) and np.isfinite(mu) and np.isfinite(y) and np.isfinite(s_b)):
        return NON_FINITE_INPUT
    s0 = s_w + s_b
    if not s0 > 0.0:
        return NON_POSITIVE_VARIANCE
    if likelihood == BERNOULLI:
        l = _mode_1d(mu, s0, y)
        p = 1.0 / (1.0 + np.exp(-l))
        h = p * (1.0 - p)
        if h < H_MIN:
            h = H_MIN
        r = 1.0 / h
        gain = (l - mu) / s0
    else:
        r = noise_var
        gain = (y - mu) / (s0 + r)
    s = s0 + r
    if not (np.isfinite(s) and np.isfinite(gain)):
        return NON_FINITE_INPUT
    _apply_rank1(P, m, pphi, gain, s, inv_f)
    if has_item:
        out[0] = b_mean + s_b * gain
        out[1] = s_b - s_b * s_b / s
    return OK


@kernel
def _glm_update_many(P, m, seg, phis, items, prior_mean, prior_var, tab_ids, tab_mean, tab_var, tab_tick,
                     rewards, likelihood, noise_var, forget, tick):  # pragma: no cover - compiled
    """Apply rows in order; return (status, row). Rows before ``row`` were applied on failure.

    ``tick`` is the use counter of the first row (row ``i`` uses ``tick + i``); a stored item term's
    ``tab_tick`` is set to the tick of its last update, and the smallest tick is evicted first.
    """
    n = seg.shape[0]
    n_seg = P.shape[0]
    cap = tab_ids.shape[1]
    for i in range(n):
        if seg[i] < 0 or seg[i] >= n_seg:
            return BAD_SEGMENT, i
    pphi = np.empty(m.shape[1], dtype=np.float64)
    out = np.zeros(2, dtype=np.float64)
    for i in range(n):
        s = seg[i]
        it = items[i]
        has_item = it >= 0 and cap > 0
        c = -1
        b_mean = 0.0
        b_var = 0.0
        if has_item:
            c = _find(tab_ids[s], it)
            if c >= 0:
                b_mean = tab_mean[s, c]
                b_var = tab_var[s, c]
            else:
                b_mean = prior_mean[i]
                b_var = prior_var
        status = _glm_update_core(P[s], m[s], phis[i], np.float64(rewards[i]), has_item, b_mean, b_var,
                                  likelihood, noise_var, forget, pphi, out)
        if status != OK:
            return status, i
        if has_item:
            if c < 0:  # store it: an empty slot, else evict the least recently used
                c = 0
                for j in range(cap):
                    if tab_ids[s, j] < 0:
                        c = j
                        break
                    if tab_tick[s, j] < tab_tick[s, c]:
                        c = j
                tab_ids[s, c] = it
            tab_mean[s, c] = out[0]
            tab_var[s, c] = out[1]
            tab_tick[s, c] = tick + i
    return OK, -1


# ---------------------------------------------------------------------------------------------- wrappers
_ND = np.ndarray


def _quick(arrays: tuple, dtypes: tuple) -> bool:
    """True when every array is a C-contiguous ndarray of its dtype (the per-event fast path)."""
    for a, dt in zip(arrays, dtypes):
        if type(a) is not _ND or a.dtype is not dt or not a.flags.c_contiguous:
            return False
    return True


def _check_tables(tab_ids, tab_mean, tab_var, tab_tick, n_seg: int) -> None:
    v.array("tab_ids", tab_ids, 2, "i64")
    v.array("tab_mean", tab_mean, 2, "f64w")
    v.array("tab_var", tab_var, 2, "f64w")
    v.array("tab_tick", tab_tick, 2, "i64")
    if tab_ids.shape[0] != n_seg:
        raise v.KernelInputError(f"tab_ids must have S={n_seg} rows, got {tab_ids.shape}")
    for name, arr in (("tab_mean", tab_mean), ("tab_var", tab_var), ("tab_tick", tab_tick)):
        if arr.shape != tab_ids.shape:
            raise v.KernelInputError(f"{name} must have the shape of tab_ids {tab_ids.shape}, got {arr.shape}")


def item_offsets(
    seg: np.ndarray,
    items: np.ndarray,
    k_valid: np.ndarray,
    tab_ids: np.ndarray,
    tab_mean: np.ndarray,
    tab_var: np.ndarray,
    prior_mean: np.ndarray,
    prior_var: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate item-term mean and variance ``(off_mean[B, K], off_var[B, K])``.

    From the segment's table where the item is stored, else ``(prior_mean[b, k], prior_var)``; 0 for
    id ``-1`` and for padding slots (``k >= k_valid[b]``). ``seg`` int64[B] indexes the tables' rows.
    """
    if not (_quick((seg, items, k_valid, prior_mean), (v.I64, v.I64, v.I64, v.F64))
            and seg.ndim == 1 and items.ndim == 2 and k_valid.ndim == 1 and prior_mean.ndim == 2):
        v.array("seg", seg, 1, "i64")
        v.array("items", items, 2, "i64")
        v.array("k_valid", k_valid, 1, "i64")
        v.array("prior_mean", prior_mean, 2, "f64")
    if tab_ids.ndim != 2 or tab_mean.shape != tab_ids.shape or tab_var.shape != tab_ids.shape:
        raise v.KernelInputError("item tables must be 2-D arrays of one shape (S, C)")
    bsz = seg.shape[0]
    if items.shape[0] != bsz or k_valid.shape[0] != bsz or prior_mean.shape != items.shape:
        raise v.KernelInputError(f"items {items.shape}, k_valid {k_valid.shape} and prior_mean "
                                 f"{prior_mean.shape} must have B={bsz} rows and one shape")
    pv = prior_var if type(prior_var) is float and 0.0 <= prior_var < v.INF else v.scalar(
        "prior_var", prior_var, 0.0, v.INF)
    off_mean = np.zeros(items.shape)
    off_var = np.zeros(items.shape)
    status = _item_offsets(seg, items, k_valid, tab_ids, tab_mean, tab_var, prior_mean, pv, off_mean, off_var)
    if status != OK:
        raise_for_status(status, "item_offsets")
    return off_mean, off_var


def glm_decide_many(
    phis: np.ndarray,
    P: np.ndarray,
    m: np.ndarray,
    seg: np.ndarray,
    k_valid: np.ndarray,
    off_mean: np.ndarray,
    off_var: np.ndarray,
    normals: np.ndarray,
    uniforms: np.ndarray,
    eps: float,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thompson decisions with per-candidate score offsets (the item terms).

    Parameters
    ----------
    phis : float32 or float64 [B, K, d]
    P : float64 [S, d, d]; m : float64 [S, d]
    seg : int64 [B]; k_valid : int64 [B] in [1, K]
    off_mean, off_var : float64 [B, K]
        Item-term mean and variance added to each candidate's score (:func:`item_offsets`).
    normals : float [B, n_draws, K]; uniforms : float64 [B, 2] in [0, 1]
    eps : float in [0, 1]; scale : float >= 0 (0 = greedy on the posterior mean)

    Returns
    -------
    choices int64[B], propensities float64[B, K] (padding 0, rows sum to 1), mean_scores float64[B, K].
    """
    if not (_quick((P, m, seg, k_valid, off_mean, off_var, uniforms), (v.F64, v.F64, v.I64, v.I64, v.F64, v.F64, v.F64))
            and type(phis) is _ND and phis.dtype in v.FLOATS and phis.flags.c_contiguous and phis.ndim == 3
            and type(normals) is _ND and normals.dtype in v.FLOATS and normals.flags.c_contiguous
            and normals.ndim == 3 and P.ndim == 3 and m.ndim == 2):
        v.array("phis", phis, 3, "float")
        v.array("P", P, 3, "f64")
        v.array("m", m, 2, "f64")
        v.array("seg", seg, 1, "i64")
        v.array("k_valid", k_valid, 1, "i64")
        v.array("off_mean", off_mean, 2, "f64")
        v.array("off_var", off_var, 2, "f64")
        v.array("normals", normals, 3, "float")
        v.array("uniforms", uniforms, 2, "f64")
    bsz, kk, d = phis.shape
    n_seg = m.shape[0]
    if P.shape != (n_seg, d, d) or m.shape != (n_seg, d):
        raise v.KernelInputError(f"P {P.shape} and m {m.shape} must be (S, d, d) and (S, d) with d={d}")
    for name, arr, shape in (("seg", seg, (bsz,)), ("k_valid", k_valid, (bsz,)), ("off_mean", off_mean, (bsz, kk)),
                             ("off_var", off_var, (bsz, kk)), ("uniforms", uniforms, (bsz, 2))):
        if arr.shape != shape:
            raise v.KernelInputError(f"{name} must have shape {shape}, got {arr.shape}")
    if normals.shape[0] != bsz or normals.shape[2] != kk or normals.shape[1] < 1:
        raise v.KernelInputError(f"normals must have shape (B={bsz}, n_draws >= 1, K={kk}), got {normals.shape}")
    e = eps if type(eps) is float and 0.0 <= eps <= 1.0 else v.scalar("eps", eps, 0.0, 1.0)
    sc = scale if type(scale) is float and 0.0 <= scale < v.INF else v.scalar("scale", scale, 0.0, v.INF)
    choices, props, means, status, row = _decide_many(phis, P, m, seg, k_valid, normals, uniforms, e, sc,
                                                      off_mean, off_var)
    if status != OK:
        raise_for_status(status, f"glm_decide_many, row {row}")
    return choices, props, means


def glm_update_many(
    P: np.ndarray,
    m: np.ndarray,
    seg: np.ndarray,
    phis: np.ndarray,
    items: np.ndarray,
    prior_mean: np.ndarray,
    prior_var: float,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    rewards: np.ndarray,
    likelihood: int,
    noise_var: float = 1.0,
    forget: float = 1.0,
    tick: int = 0,
) -> None:
    """Apply ``n`` observations in row order (the update in the module docstring), in place.

    Parameters
    ----------
    P : float64 [S, d, d]; m : float64 [S, d]   (writeable)
    seg : int64 [n]; phis : float [n, d]
    items : int64 [n]
        Identity of each row's shown candidate (-1 = no item term).
    prior_mean : float64 [n]
        Prior mean of each row's item term, used when the segment has not stored the item yet.
    prior_var : float >= 0
        Prior variance of an item term (0 turns item terms off: they never move).
    tables : (tab_ids int64[S, C], tab_mean float64[S, C], tab_var float64[S, C], tab_tick int64[S, C])
    rewards : float [n]   (0/1 clicks for the bernoulli likelihood)
    likelihood : GAUSSIAN (0) or BERNOULLI (1)
    noise_var : float > 0 (gaussian only); forget : float in (0, 1]; tick : int, the first row's use counter
    """
    tab_ids, tab_mean, tab_var, tab_tick = tables
    quick = (_quick((P, m, seg, items, prior_mean, tab_ids, tab_mean, tab_var, tab_tick),
                    (v.F64, v.F64, v.I64, v.I64, v.F64, v.I64, v.F64, v.F64, v.I64))
             and P.flags.writeable and m.flags.writeable and tab_mean.flags.writeable and tab_var.flags.writeable
             and tab_ids.flags.writeable and tab_tick.flags.writeable and P.ndim == 3 and m.ndim == 2
             and seg.ndim == 1 and items.ndim == 1 and prior_mean.ndim == 1 and tab_ids.ndim == 2
             and type(phis) is _ND and phis.dtype in v.FLOATS and phis.flags.c_contiguous and phis.ndim == 2
             and type(rewards) is _ND and rewards.dtype in v.FLOATS and rewards.flags.c_contiguous
             and rewards.ndim == 1)
    if not quick:
        v.array("P", P, 3, "f64w")
        v.array("m", m, 2, "f64w")
        v.array("seg", seg, 1, "i64")
        v.array("phis", phis, 2, "float")
        v.array("items", items, 1, "i64")
        v.array("prior_mean", prior_mean, 1, "f64")
        v.array("rewards", rewards, 1, "float")
    n_seg, d = m.shape
    if P.shape != (n_seg, d, d):
        raise v.KernelInputError(f"P must have shape (S, d, d) = ({n_seg}, {d}, {d}) to match m, got {P.shape}")
    if not quick or tab_ids.shape[0] != n_seg or tab_mean.shape != tab_ids.shape or tab_var.shape != tab_ids.shape \
            or tab_tick.shape != tab_ids.shape:
        _check_tables(tab_ids, tab_mean, tab_var, tab_tick, n_seg)
    n = seg.shape[0]
    if phis.shape != (n, d):
        raise v.KernelInputError(f"phis must have shape (n={n}, d={d}), got {phis.shape}")
    if not (items.shape[0] == n and prior_mean.shape[0] == n and rewards.shape[0] == n):
        for name, arr in (("items", items), ("prior_mean", prior_mean), ("rewards", rewards)):
            v.dim(name, arr.shape[0], n, "length (n, the length of seg)")
    if likelihood not in (GAUSSIAN, BERNOULLI):
        raise v.KernelInputError(f"likelihood must be GAUSSIAN (0) or BERNOULLI (1), got {likelihood!r}")
    nv = noise_var if type(noise_var) is float and 0.0 < noise_var < v.INF else v.scalar(
        "noise_var", noise_var, 0.0, v.INF, lo_open=True)
    f = forget if type(forget) is float and 0.0 < forget <= 1.0 else v.scalar("forget", forget, 0.0, 1.0, lo_open=True)
    pv = prior_var if type(prior_var) is float and 0.0 <= prior_var < v.INF else v.scalar(
        "prior_var", prior_var, 0.0, v.INF)
    if n == 0:
        return
    status, row = _glm_update_many(P, m, seg, phis, items, prior_mean, pv, tab_ids, tab_mean, tab_var, tab_tick,
                                   rewards if rewards.dtype is v.F64 else rewards.astype(np.float64),
                                   likelihood, nv, f, tick)
    if status != OK:
        raise_for_status(status, f"glm_update_many, row {row}")


__all__ = ["BERNOULLI", "GAUSSIAN", "H_MIN", "glm_decide_many", "glm_update_many", "item_offsets"]
