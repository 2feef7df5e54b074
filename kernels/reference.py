"""Readable numpy references for every kernel: the executable specification the tests compare to.

Written for clarity, not speed; each mirrors one public kernel's contract (no input validation).
The idea of keeping naive references next to fast kernels comes from stumpy's ``tests/naive.py``.
"""

from __future__ import annotations

import numpy as np

from kernels._linalg import JITTER_REL


def phi_many(u, w1, b1, w2, b2):
    """``[tanh(relu(u @ w1 + b1) @ w2 + b2), 1]`` in float64."""
    u, w1, b1, w2, b2 = (np.asarray(a, dtype=np.float64) for a in (u, w1, b1, w2, b2))
    h = np.maximum(u @ w1 + b1, 0.0)
    z = np.tanh(h @ w2 + b2)
    return np.hstack([z, np.ones((u.shape[0], 1))])


def update_one(P, m, phi, reward, noise_var, forget=1.0):
    """Rank-1 posterior update of ``(P, m)`` in place (see ``kernels.posterior``)."""
    phi = np.asarray(phi, dtype=np.float64)
    if forget < 1.0:
        P /= forget
    p_phi = P @ phi
    s = noise_var + phi @ p_phi
    k = p_phi / s
    m += k * (reward - phi @ m)
    P -= np.outer(k, p_phi)
    P[...] = 0.5 * (P + P.T)


def update_many(P, m, seg, phis, rewards, noise_var, forget=1.0):
    """``update_one`` on ``(P[seg[i]], m[seg[i]])`` for each row ``i`` in order."""
    for i in range(len(seg)):
        update_one(P[seg[i]], m[seg[i]], phis[i], float(rewards[i]), noise_var, forget)


def cholesky_psd(C):
    """Lower Cholesky factor of ``C + delta I``, ``delta = JITTER_REL * trace(C) / K``.

    Uses LAPACK when ``C + delta I`` is positive definite; otherwise the explicit algorithm where a
    non-positive pivot zeroes its column (the convention of ``kernels._linalg._cholesky_psd``).
    Only the lower triangle of ``C`` is read.
    """
    k = C.shape[0]
    C = np.tril(C) + np.tril(C, -1).T
    trace = np.trace(C)
    delta = JITTER_REL * trace / k if trace > 0 else 0.0
    A = C + delta * np.eye(k)
    try:
        return np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        pass
    L = np.zeros((k, k))
    for j in range(k):
        pivot = A[j, j] - L[j, :j] @ L[j, :j]
        if pivot > 0:
            L[j, j] = np.sqrt(pivot)
            L[j + 1 :, j] = (A[j + 1 :, j] - L[j + 1 :, :j] @ L[j, :j]) / L[j, j]
    return L


def _eps_floor(eps, k):
    """``eps / k``, never 0 when eps > 0 (a subnormal eps would underflow)."""
    floor = eps / k
    return 5e-324 if floor == 0.0 and eps > 0.0 else floor


def _explore(uniforms, eps, greedy, k):
    if uniforms[0] < eps:
        return min(int(uniforms[1] * k), k - 1)
    return greedy


def thompson_one(phis, P, m, normals, uniforms, eps, scale=1.0):
    """Eps-mixed Thompson sampling on the K candidate means (see ``kernels.scoring``)."""
    phis = np.asarray(phis, dtype=np.float64)
    normals = np.asarray(normals, dtype=np.float64)
    k = phis.shape[0]
    mu = phis @ m
    C = scale * (phis @ P @ phis.T)
    L = cholesky_psd(C)
    draws = mu + normals @ L.T  # (n_draws, K)
    winners = np.argmax(draws, axis=1)  # lowest index on ties
    counts = np.bincount(winners, minlength=k)
    propensities = np.minimum((1.0 - eps) * counts / normals.shape[0] + _eps_floor(eps, k), 1.0)
    return _explore(uniforms, eps, int(winners[0]), k), propensities


def ucb_one(phis, P, m, alpha, uniforms, eps):
    """Eps-mixed UCB: argmax of ``phi . m + alpha * sqrt(phi' P phi)``."""
    phis = np.asarray(phis, dtype=np.float64)
    k = phis.shape[0]
    quad = np.einsum("ka,ab,kb->k", phis, P, phis)
    scores = phis @ m + alpha * np.sqrt(np.maximum(quad, 0.0))
    greedy = int(np.argmax(scores))
    propensities = np.full(k, _eps_floor(eps, k))
    propensities[greedy] = min(propensities[greedy] + (1.0 - eps), 1.0)
    return _explore(uniforms, eps, greedy, k), propensities


def decide_many(phis, P, m, seg, k_valid, normals, uniforms, eps, scale=1.0):
    """``thompson_one`` per row on the row's segment and its first ``k_valid[b]`` candidates."""
    bsz, k_max = phis.shape[:2]
    choices = np.zeros(bsz, dtype=np.int64)
    propensities = np.zeros((bsz, k_max))
    mean_scores = np.zeros((bsz, k_max))
    for b in range(bsz):
        s, k = seg[b], k_valid[b]
        choices[b], propensities[b, :k] = thompson_one(
            phis[b, :k], P[s], m[s], normals[b, :, :k], uniforms[b], eps, scale
        )
        mean_scores[b, :k] = np.asarray(phis[b, :k], dtype=np.float64) @ m[s]
    return choices, propensities, mean_scores


# ------------------------------------------------------------------------ v2 head (``kernels.glm``)
def glm_update_one(P, m, phi, y, item_term, likelihood, noise_var=1.0, forget=1.0, h_min=1e-10):
    """One decoupled Kalman step (see ``kernels.glm``); ``item_term`` is ``[mean, var]`` or None.

    Updates ``P``, ``m`` in place and returns the item term's new ``[mean, var]`` (or None).
    """
    phi = np.asarray(phi, dtype=np.float64)
    if forget < 1.0:
        P /= forget
    mu = phi @ m + (item_term[0] if item_term is not None else 0.0)
    s_b = item_term[1] / forget if item_term is not None else 0.0
    p_phi = P @ phi
    s0 = phi @ p_phi + s_b  # prior variance of the score
    if likelihood == 1:  # bernoulli: Laplace at the mode of the 1-D posterior of the score
        l = mu
        for _ in range(30):
            p = 1.0 / (1.0 + np.exp(-l))
            step = ((y - p) - (l - mu) / s0) / (p * (1.0 - p) + 1.0 / s0)
            l += step
            if abs(step) < 1e-12:
                break
        p = 1.0 / (1.0 + np.exp(-l))
        r, g = 1.0 / max(p * (1.0 - p), h_min), (l - mu) / s0
    else:
        r = noise_var
        g = (y - mu) / (s0 + r)
    m += p_phi * g
    P -= np.outer(p_phi, p_phi) / (s0 + r)
    P[...] = 0.5 * (P + P.T)
    if item_term is None:
        return None
    return [item_term[0] + s_b * g, s_b - s_b * s_b / (s0 + r)]


def glm_update_many(P, m, seg, phis, items, prior_mean, prior_var, tables, rewards, likelihood,
                    noise_var=1.0, forget=1.0, tick=0):
    """``glm_update_one`` per row with each segment's bounded least-recently-used item table."""
    tab_ids, tab_mean, tab_var, tab_tick = tables
    for i in range(len(seg)):
        s, item = seg[i], items[i]
        if item < 0 or tab_ids.shape[1] == 0:
            glm_update_one(P[s], m[s], phis[i], float(rewards[i]), None, likelihood, noise_var, forget)
            continue
        stored = np.flatnonzero(tab_ids[s] == item)
        term = [tab_mean[s, stored[0]], tab_var[s, stored[0]]] if stored.size else [prior_mean[i], prior_var]
        new = glm_update_one(P[s], m[s], phis[i], float(rewards[i]), term, likelihood, noise_var, forget)
        if stored.size:
            c = stored[0]
        else:
            empty = np.flatnonzero(tab_ids[s] < 0)
            c = empty[0] if empty.size else int(np.argmin(tab_tick[s]))
            tab_ids[s, c] = item
        tab_mean[s, c], tab_var[s, c], tab_tick[s, c] = new[0], new[1], tick + i


def glm_decide_many(phis, P, m, seg, k_valid, off_mean, off_var, normals, uniforms, eps, scale=1.0):
    """Thompson sampling on scores ``N(Phi m + off_mean, scale (Phi P Phi^T + diag(off_var)))`` per row."""
    bsz, k_max = phis.shape[:2]
    choices = np.zeros(bsz, dtype=np.int64)
    propensities = np.zeros((bsz, k_max))
    mean_scores = np.zeros((bsz, k_max))
    for b in range(bsz):
        s, k = seg[b], k_valid[b]
        ph = np.asarray(phis[b, :k], dtype=np.float64)
        mu = ph @ m[s] + off_mean[b, :k]
        C = scale * (ph @ P[s] @ ph.T + np.diag(off_var[b, :k]))
        L = cholesky_psd(C)
        draws = mu + np.asarray(normals[b, :, :k], dtype=np.float64) @ L.T
        winners = np.argmax(draws, axis=1)
        counts = np.bincount(winners, minlength=k)
        propensities[b, :k] = np.minimum((1.0 - eps) * counts / normals.shape[1] + _eps_floor(eps, k), 1.0)
        choices[b] = _explore(uniforms[b], eps, int(winners[0]), k)
        mean_scores[b, :k] = mu
    return choices, propensities, mean_scores


def laplace_logistic(Phi, y, prior_mean, prior_cov, iters=50):
    """Batch Laplace posterior of a logistic head: Newton MAP under ``N(prior_mean, prior_cov)``.

    Returns ``(mean, cov)``: the MAP and the inverse Hessian of the negative log posterior at it.
    """
    Phi = np.asarray(Phi, dtype=np.float64)
    prec0 = np.linalg.inv(prior_cov)
    w = np.array(prior_mean, dtype=np.float64)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(Phi @ w)))
        grad = Phi.T @ (y - p) - prec0 @ (w - prior_mean)
        H = prec0 + (Phi * (p * (1.0 - p))[:, None]).T @ Phi
        step = np.linalg.solve(H, grad)
        w = w + step
        if np.max(np.abs(step)) < 1e-12:
            break
    p = 1.0 / (1.0 + np.exp(-(Phi @ w)))
    H = prec0 + (Phi * (p * (1.0 - p))[:, None]).T @ Phi
    return w, np.linalg.inv(H)
