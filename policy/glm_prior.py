"""Stage 2 of the logistic head's meta-training (``policy.train_glm``), numpy only: with ``phi`` fixed, the
Gaussian prior over segment heads by Laplace EM (:func:`fit_prior`), each segment's own Laplace posterior (the
DP prior's per-segment statistics), and the item offsets' variance by empirical Bayes over a grid
(:func:`fit_offsets`)."""

from __future__ import annotations

import numpy as np


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))



def _newton_head(Phi: np.ndarray, y: np.ndarray, off: np.ndarray, mu0: np.ndarray, prec0: np.ndarray,
                 w: np.ndarray, iters: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Laplace posterior ``(mode, covariance)`` of one logistic head under ``N(mu0, prec0^-1)``."""
    for _ in range(iters):
        p = _sigmoid(Phi @ w + off)
        grad = Phi.T @ (y - p) - prec0 @ (w - mu0)
        H = prec0 + (Phi * (p * (1.0 - p))[:, None]).T @ Phi
        step = np.linalg.solve(H, grad)
        big = np.max(np.abs(step))
        if big > 5.0:  # damped: a first step from a poor start can overshoot a flat likelihood
            step *= 5.0 / big
        w = w + step
        if big < 1e-6:
            break
    return w, np.linalg.inv(H)  # the Hessian at the last iterate (one step from the mode)



def fit_prior(Phi: np.ndarray, y: np.ndarray, off: np.ndarray, groups: list[np.ndarray], mu0: np.ndarray,
              cov0: np.ndarray, iters: int, jitter: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Laplace EM for ``N(mu0, Sigma0)`` over segment heads; returns ``(mu0, Sigma0, heads[S, d])``."""
    d = mu0.shape[0]
    heads = np.tile(mu0, (len(groups), 1))
    for _ in range(iters):
        prec0 = np.linalg.inv(cov0)
        acc = np.zeros((d, d))
        covs = []
        for g, rows in enumerate(groups):
            heads[g], cov = _newton_head(Phi[rows], y[rows], off[rows], mu0, prec0, heads[g].copy())
            covs.append(cov)
        mu0 = heads.mean(axis=0)
        for g in range(len(groups)):
            dev = heads[g] - mu0
            acc += np.outer(dev, dev) + covs[g]
        cov0 = _floor_eigen(acc / len(groups), jitter)
    return mu0, cov0, heads



def segment_posteriors(Phi: np.ndarray, y: np.ndarray, groups: list[np.ndarray], mu: np.ndarray, l2: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Each segment's Laplace posterior ``(modes[S, d], covs[S, d, d])`` under ``N(mu, I / l2)``: a function
    of that segment's rows and ``mu`` only (the DP prior's per-segment statistics)."""
    prec0 = np.eye(mu.shape[0]) * l2
    pairs = [_newton_head(Phi[rows], y[rows], np.zeros(rows.size), mu, prec0, mu.copy()) for rows in groups]
    return np.stack([w for w, _ in pairs]), np.stack([c for _, c in pairs])



def _floor_eigen(cov: np.ndarray, floor: float) -> np.ndarray:
    """``cov`` symmetrised with every eigenvalue at least ``floor`` (so it is positive definite)."""
    vals, vecs = np.linalg.eigh(0.5 * (cov + cov.T))
    out = (vecs * np.maximum(vals, floor)) @ vecs.T
    return 0.5 * (out + out.T)



TAU2_GRID = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
"""Candidate variances of item offsets; the one with the largest Laplace evidence is kept."""



def fit_offsets(y: np.ndarray, base: np.ndarray, group: np.ndarray, grid: tuple[float, ...] = TAU2_GRID
                ) -> tuple[float, np.ndarray]:
    """Empirical Bayes for per-group score offsets ``gamma_g ~ N(0, tau2)`` given the rest of the score.

    For each ``tau2`` in ``grid`` the offsets' modes are found by Newton's method (all groups at once) and
    the Laplace approximation of the marginal likelihood is summed over groups::

        sum_g [ sum_rows log Bernoulli(y | sigmoid(base + gamma_g)) - gamma_g^2 / (2 tau2)
                - log(1 + tau2 h_g) / 2 ],   h_g = sum_rows p (1 - p) at the mode

    The best ``tau2`` and its offsets' modes are returned (``tau2 = 0``: no offsets). A direct search is used
    because EM for a variance converges very slowly when each group has little data (measured: it kept
    0.87 after four iterations on groups whose true variance was 0).
    """
    if group.size == 0:
        return 0.0, np.zeros(0)
    n_groups = int(group.max()) + 1

    def loglik(gamma: np.ndarray) -> np.ndarray:
        z = base + gamma[group]
        return np.bincount(group, y * z - np.logaddexp(0.0, z), n_groups)

    best_tau2, best_gamma, best_ev = 0.0, np.zeros(n_groups), float(loglik(np.zeros(n_groups)).sum())
    for tau2 in grid:
        if tau2 <= 0.0:
            continue
        gamma = np.zeros(n_groups)
        for _ in range(12):
            p = _sigmoid(base + gamma[group])
            grad = np.bincount(group, y - p, n_groups) - gamma / tau2
            hess = np.bincount(group, p * (1.0 - p), n_groups) + 1.0 / tau2
            step = grad / hess
            gamma += step
            if np.max(np.abs(step)) < 1e-8:
                break
        p = _sigmoid(base + gamma[group])
        h = np.bincount(group, p * (1.0 - p), n_groups)
        ev = float((loglik(gamma) - gamma ** 2 / (2 * tau2) - 0.5 * np.log1p(tau2 * h)).sum())
        if ev > best_ev:
            best_tau2, best_gamma, best_ev = tau2, gamma, ev
    return best_tau2, best_gamma
