"""Streaming sums of per-row statistics: what every estimator of :mod:`policy.ope.estimators` reads.

Each logged row ``i`` contributes a vector ``z_i`` of named columns (importance weights, weighted
rewards, doubly-robust terms, ...). :class:`Moments` keeps ``n``, ``S1 = sum_i z_i`` and
``S2 = sum_i z_i z_i^T``, which is all a ratio estimator ``sum(num) / sum(den)`` and its delta-method
variance need, plus optional Poisson-bootstrap replicates ``S1_b = sum_i c_bi z_i`` with
``c_bi ~ Poisson(1)`` (Hanley & MacGibbon 2006; the streaming form of the bootstrap, since the row count
need not be known in advance). Memory is ``O(m^2 + B m)`` for ``m`` columns and ``B`` replicates,
whatever the number of rows; the largest importance weights are kept separately (:class:`TopWeights`)
for the weight-concentration diagnostic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policy.ope.exceptions import OpeError


class Moments:
    """First and second moments of named per-row columns, with optional Poisson-bootstrap replicates.

    Parameters
    ----------
    columns
        Names of the columns, in the order of the arrays passed to :meth:`add_many`.
    n_bootstrap
        Replicates ``B`` (0 = none).
    seed
        Seeds the Poisson multiplicities.
    """

    def __init__(self, columns: Sequence[str], n_bootstrap: int = 0, seed: int = 0) -> None:
        if len(set(columns)) != len(columns):
            raise OpeError("column names must be distinct")
        if n_bootstrap < 0:
            raise OpeError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
        self.columns = tuple(columns)
        self.index = {c: j for j, c in enumerate(self.columns)}
        m = len(self.columns)
        self.n = 0
        self.s1 = np.zeros(m)
        self.s2 = np.zeros((m, m))
        self.n_bootstrap = int(n_bootstrap)
        self.boot_n = np.zeros(self.n_bootstrap)
        self.boot_s1 = np.zeros((self.n_bootstrap, m))
        self._rng = np.random.default_rng(seed)

    def add_many(self, z: np.ndarray) -> None:
        """Absorb rows ``z`` (float[n, m], columns in the order given at construction)."""
        z = np.ascontiguousarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != len(self.columns):
            raise OpeError(f"rows must be [n, {len(self.columns)}], got {z.shape}")
        if not np.all(np.isfinite(z)):
            bad = int(np.argmax(~np.isfinite(z).all(axis=1)))
            col = self.columns[int(np.argmax(~np.isfinite(z[bad])))]
            raise OpeError(f"non-finite per-row statistic {col!r} at chunk row {bad}")
        self.n += z.shape[0]
        self.s1 += z.sum(axis=0)
        # einsum, not BLAS: on a busy 2-core box OpenBLAS's threads made this 8x slower for small blocks.
        self.s2 += np.einsum("ij,ik->jk", z, z)
        if self.n_bootstrap:
            counts = self._rng.poisson(1.0, (self.n_bootstrap, z.shape[0])).astype(np.float64)
            self.boot_n += counts.sum(axis=1)
            self.boot_s1 += counts @ z

    def mean(self) -> np.ndarray:
        """float[m], column means."""
        self._need_rows()
        return self.s1 / self.n

    def cov(self) -> np.ndarray:
        """float[m, m], the sample covariance of the columns (divisor ``n - 1``)."""
        self._need_rows()
        if self.n < 2:
            return np.zeros_like(self.s2)
        mu = self.s1 / self.n
        return (self.s2 - self.n * np.outer(mu, mu)) / (self.n - 1)

    def col(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise OpeError(f"no column {name!r}") from None

    def _need_rows(self) -> None:
        if self.n == 0:
            raise OpeError("no rows were evaluated")


class TopWeights:
    """The largest values seen of a non-negative weight, up to ``capacity`` of them (streamed)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise OpeError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._top = np.empty(0)

    def add_many(self, w: np.ndarray) -> None:
        merged = np.concatenate([self._top, np.asarray(w, dtype=np.float64).ravel()])
        if merged.size > self.capacity:
            merged = np.partition(merged, merged.size - self.capacity)[merged.size - self.capacity:]
        self._top = merged

    def top_sum(self, count: int) -> float:
        """Sum of the ``count`` largest weights kept (``count <= capacity``)."""
        if count > self.capacity:
            raise OpeError(f"only the {self.capacity} largest weights are kept, asked for {count}")
        if count >= self._top.size:
            return float(self._top.sum())
        return float(np.partition(self._top, self._top.size - count)[self._top.size - count:].sum())
