"""The reward model behind DM and DR: ridge regression, cross-fitted over row folds, streamed.

``q(x, a) = beta . f(x, a)`` with ``f = [1, x, a, vec(x a^T)]`` (the outer product only while
``dx * da <= max_pairwise``; beyond it ``f = [1, x, a]``). Row ``i`` belongs to fold ``i mod n_folds``;
fold ``f``'s predictions come from the coefficients fitted on the other folds, so no row's own reward
enters its prediction (cross-fitting, Chernozhukov et al. 2018), which keeps DR's interval honest when
the model overfits. The fit needs only ``F'F`` and ``F'r`` per fold, accumulated chunk by chunk.

The ridge penalty is scale-free: ``(F'F + l2 * diag(F'F) + 1e-9 I) beta = F'r``. Predictions are clipped
to the range of the rewards seen in training.
"""

from __future__ import annotations

import numpy as np

from policy.ope.exceptions import OpeError


def reward_features(context: np.ndarray, candidates: np.ndarray, pairwise: bool) -> np.ndarray:
    """float64[n, K, p], the regression features of every candidate."""
    context = np.asarray(context, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.float64)
    n, k, da = candidates.shape
    x = np.broadcast_to(context[:, None, :], (n, k, context.shape[1]))
    parts = [np.ones((n, k, 1)), x, candidates]
    if pairwise:
        parts.append((x[:, :, :, None] * candidates[:, :, None, :]).reshape(n, k, -1))
    return np.concatenate(parts, axis=2)


class RidgeRewardModel:
    """Cross-fitted ridge reward model (see the module docstring).

    Parameters
    ----------
    n_folds
        Folds of the cross-fit (>= 2).
    l2
        Relative ridge penalty.
    max_pairwise
        Largest ``dx * da`` for which the context-candidate products are features.
    """

    def __init__(self, n_folds: int = 2, l2: float = 1e-3, max_pairwise: int = 256) -> None:
        if n_folds < 2:
            raise OpeError(f"n_folds must be >= 2, got {n_folds}")
        self.n_folds = int(n_folds)
        self.l2 = float(l2)
        self.max_pairwise = int(max_pairwise)
        self._a: np.ndarray | None = None
        self._b: np.ndarray | None = None
        self._beta: np.ndarray | None = None
        self._pairwise: bool | None = None
        self._r_range = [np.inf, -np.inf]

    def fold_of(self, rows: np.ndarray) -> np.ndarray:
        """Fold of each global row index."""
        return np.asarray(rows, dtype=np.int64) % self.n_folds

    def _feats(self, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        if self._pairwise is None:
            self._pairwise = context.shape[1] * candidates.shape[2] <= self.max_pairwise
        return reward_features(context, candidates, self._pairwise)

    def absorb_many(self, context: np.ndarray, candidates: np.ndarray, action: np.ndarray,
                    reward: np.ndarray, fold: np.ndarray) -> None:
        """Add logged rows (their chosen candidate and reward) to their folds' sufficient statistics."""
        rows = np.arange(action.shape[0])
        f = self._feats(context, candidates[rows, action][:, None, :])[:, 0, :]
        p = f.shape[1]
        if self._a is None:
            self._a = np.zeros((self.n_folds, p, p))
            self._b = np.zeros((self.n_folds, p))
        for k in range(self.n_folds):
            sel = fold == k
            if sel.any():
                fk = f[sel]
                self._a[k] += fk.T @ fk
                self._b[k] += fk.T @ reward[sel]
        if reward.size:
            self._r_range = [min(self._r_range[0], float(reward.min())), max(self._r_range[1], float(reward.max()))]
        self._beta = None

    def fit(self) -> None:
        """Solve each fold's out-of-fold coefficients."""
        if self._a is None:
            raise OpeError("the reward model saw no rows")
        total_a, total_b = self._a.sum(axis=0), self._b.sum(axis=0)
        p = total_a.shape[0]
        betas = []
        for k in range(self.n_folds):
            a = total_a - self._a[k]
            a = a + self.l2 * np.diag(np.diag(a)) + 1e-9 * np.eye(p)
            betas.append(np.linalg.solve(a, total_b - self._b[k]))
        self._beta = np.stack(betas)

    def predict_many(self, context: np.ndarray, candidates: np.ndarray, fold: np.ndarray) -> np.ndarray:
        """float64[n, K] out-of-fold predictions for every candidate.

        Computed blockwise (``b0 + x . bx + a . ba + x' B a``) without building the features of every
        candidate.
        """
        if self._beta is None:
            self.fit()
        x = np.asarray(context, dtype=np.float64)
        a = np.asarray(candidates, dtype=np.float64)
        dx, da = x.shape[1], a.shape[2]
        beta = self._beta[fold]
        q = beta[:, 0] + np.einsum("nd,nd->n", x, beta[:, 1:1 + dx])
        q = q[:, None] + np.einsum("nke,ne->nk", a, beta[:, 1 + dx:1 + dx + da])
        if self._pairwise:
            inter = beta[:, 1 + dx + da:].reshape(-1, dx, da)
            q = q + np.einsum("nke,ne->nk", a, np.einsum("nd,nde->ne", x, inter))
        return np.clip(q, self._r_range[0], self._r_range[1])
