"""Per-segment Bayesian Thompson sampling over a feature map: the mechanism every policy serves through.

Every segment keeps a Gaussian posterior ``N(m, P)`` over its head ``w`` in the feature space ``phi(x, a)``,
plus (when configured) per-item terms ``b_item`` for the candidates' identities in a bounded table; it starts
at the prior ``N(mu0, Sigma0)`` and is updated row by row by :func:`kernels.glm.glm_update_many` under the
likelihood (gaussian rewards or bernoulli clicks). Decisions are Thompson sampling over the candidates' scores
(:func:`kernels.glm.glm_decide_many`), with the posterior width multiplied by ``scale`` (0 = greedy) and uniform
exploration ``eps`` mixed in, so every logged propensity is > 0 when ``eps > 0``. Subclasses define the features:
:class:`policy.adapter.Adapter` (the meta-learned artifact) and the baselines in :mod:`policy.baselines`.

Segment keys are any hashable (``str`` names in the stream, ``int`` indices in benchmarks); numpy integers are
converted to ``int``. A segment's posterior round-trips through :meth:`SegmentBandit.state_bytes` and
:meth:`SegmentBandit.load_state` (layout in :mod:`policy.segment_state`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kernels.glm import BERNOULLI, GAUSSIAN, glm_decide_many, glm_update_many, item_offsets
from kernels.rng import standard_normals
from policy.segment_state import decode_state_items, encode_state

NORMALS_BUFFER = 1 << 20
"""Most Thompson normals (float64) a policy keeps in its reused buffer (8 MB; ~1,600 ad requests of 10
candidates and 64 draws); a larger batch draws into an array of its own."""


@dataclass(frozen=True)
class Decisions:
    """Decisions for a batch of B requests with K candidate slots and feature dimension d.

    Attributes
    ----------
    choices : int64[B]
        Index of the shown candidate.
    propensities : float64[B, K]
        Probability with which each candidate would have been shown (padding slots 0; rows sum to 1).
    phis_chosen : float64[B, d]
        Features of the shown candidate: pass them back to :meth:`SegmentBandit.learn_many`.
    mean_scores : float64[B, K]
        Posterior-mean expected reward ``phi . m`` of each candidate under the segment's posterior.
    prior_scores : float64[B, K]
        Expected reward under the prior mean alone, ``phi . mu0`` (what a brand-new segment believes).
    n_updates : int64[B]
        Observations the segment's posterior had absorbed when the decision was taken.
    version : str
        Version of the artifact (or baseline name) that decided.
    items_chosen : int64[B] or None
        Identity of the shown candidate (from the ``items`` passed to ``decide_many``; -1 = none), to pass
        back to ``learn_many(..., items=...)``; None when no identities were given.
    """

    choices: np.ndarray
    propensities: np.ndarray
    phis_chosen: np.ndarray
    mean_scores: np.ndarray
    prior_scores: np.ndarray
    n_updates: np.ndarray
    version: str
    items_chosen: np.ndarray | None = None


def _key(segment: Hashable) -> Hashable:
    if isinstance(segment, np.generic):
        return segment.item()
    return segment


class SegmentBandit:
    """Per-segment Bayesian Thompson sampling over a feature map (subclasses define the features).

    Parameters
    ----------
    prior_mean : float[d]
    prior_cov : float[d, d]
        Symmetric positive definite.
    noise_var : float
        Reward noise variance, > 0 (used by the gaussian likelihood).
    eps : float
        Uniform exploration mixed into Thompson sampling, in [0, 1].
    n_draws : int
        Posterior draws per decision (propensities are estimated from them).
    forget : float
        Forgetting factor in (0, 1]; 1 = stationary.
    scale : float
        Multiplies the posterior covariance when sampling (1 = plain Thompson sampling, 0 = greedy).
    seed : int
        Seeds the generator of the normals/uniforms passed to the kernels.
    shared : bool
        If True, all segments share one posterior (a pooled model).
    version : str
        Reported in :class:`Decisions`.
    likelihood : "gaussian" or "bernoulli"
        Rewards as gaussian values, or 0/1 clicks through a logistic link.
    item_capacity : int
        Per-item terms one segment keeps (0 = none); the least recently updated is evicted.
    item_prior_var : float
        Prior variance of a per-item term (0 = none).
    """

    def __init__(
        self,
        prior_mean: np.ndarray,
        prior_cov: np.ndarray,
        noise_var: float,
        *,
        eps: float = 0.02,
        n_draws: int = 64,
        forget: float = 1.0,
        scale: float = 1.0,
        seed: int = 0,
        shared: bool = False,
        version: str = "",
        likelihood: Literal["gaussian", "bernoulli"] = "gaussian",
        item_capacity: int = 0,
        item_prior_var: float = 0.0,
    ) -> None:
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1], got {eps}")
        if n_draws < 1:
            raise ValueError(f"n_draws must be >= 1, got {n_draws}")
        if not 0.0 < forget <= 1.0:
            raise ValueError(f"forget must be in (0, 1], got {forget}")
        if scale < 0.0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        if likelihood not in ("gaussian", "bernoulli"):
            raise ValueError(f"likelihood must be 'gaussian' or 'bernoulli', got {likelihood!r}")
        if item_capacity < 0 or not (np.isfinite(item_prior_var) and item_prior_var >= 0.0):
            raise ValueError(f"need item_capacity >= 0 and item_prior_var >= 0, got {item_capacity}, {item_prior_var}")
        self.eps = float(eps)
        self.n_draws = int(n_draws)
        self.forget = float(forget)
        self.scale = float(scale)
        self.shared = bool(shared)
        self.version = version
        self.likelihood = likelihood
        self.item_capacity = int(item_capacity) if item_prior_var > 0 else 0
        self.item_prior_var = float(item_prior_var)
        self._rng = np.random.default_rng(seed)
        self._normal_buf = np.empty(0)
        self._set_prior(prior_mean, prior_cov, noise_var)
        self.reset_all()

    # ------------------------------------------------------------------ features (override)
    def _features(self, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """float64[B, K, d] features of every candidate."""
        raise NotImplementedError

    def _features_for_deciding(self, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """``_features`` for :meth:`decide_many`, which reads them and keeps none: they may live in a buffer
        that the next call overwrites."""
        return self._features(context, candidates)

    def _item_prior_means(self, items: np.ndarray) -> np.ndarray:
        """Prior mean of the per-item term of each id (override: the artifact's pooled offsets)."""
        return np.zeros(np.shape(items))

    # ------------------------------------------------------------------ prior / slots
    def _set_prior(self, prior_mean: np.ndarray, prior_cov: np.ndarray, noise_var: float) -> None:
        mu0 = np.ascontiguousarray(prior_mean, dtype=np.float64)
        cov = np.ascontiguousarray(prior_cov, dtype=np.float64)
        d = mu0.shape[0]
        if mu0.ndim != 1 or cov.shape != (d, d):
            raise ValueError(f"prior shapes disagree: mean {mu0.shape}, cov {cov.shape}")
        if not (np.isfinite(noise_var) and noise_var > 0):
            raise ValueError(f"noise_var must be finite and > 0, got {noise_var}")
        self.prior_mean, self.prior_cov, self.noise_var, self.d = mu0, cov, float(noise_var), d

    def _grow(self, need: int) -> None:
        cap = max(8, 2 * self._P.shape[0], need)
        used, c = len(self._slots), self.item_capacity

        def grown(old: np.ndarray, shape: tuple[int, ...], fill: float | int, dtype: type = np.float64) -> np.ndarray:
            new = np.full((cap,) + shape, fill, dtype=dtype)
            new[:used] = old[:used]
            return new

        self._P = grown(self._P, (self.d, self.d), 0.0)
        self._m = grown(self._m, (self.d,), 0.0)
        self._n = grown(self._n, (), 0, np.int64)
        self._tab_ids = grown(self._tab_ids, (c,), -1, np.int64)
        self._tab_mean = grown(self._tab_mean, (c,), 0.0)
        self._tab_var = grown(self._tab_var, (c,), 0.0)
        self._tab_tick = grown(self._tab_tick, (c,), 0, np.int64)

    def _clear_slot(self, slot: int) -> None:
        self._P[slot] = self.prior_cov
        self._m[slot] = self.prior_mean
        self._n[slot] = 0
        self._tab_ids[slot] = -1
        self._tab_mean[slot] = 0.0
        self._tab_var[slot] = 0.0
        self._tab_tick[slot] = 0

    def _slot(self, segment: Hashable) -> int:
        key = "__shared__" if self.shared else _key(segment)
        slot = self._slots.get(key)
        if slot is None:
            slot = len(self._slots)
            if slot >= self._P.shape[0]:
                self._grow(slot + 1)
            self._clear_slot(slot)
            self._slots[key] = slot
            self._keys.append(key)
        return slot

    def _slots_for(self, segments: Sequence[Hashable] | np.ndarray) -> np.ndarray:
        if isinstance(segments, np.ndarray):
            if segments.ndim != 1:
                raise ValueError(f"segments must be 1-D, got shape {segments.shape}")
            segments = segments.tolist()
        return np.fromiter((self._slot(s) for s in segments), dtype=np.int64, count=len(segments))

    @property
    def segments(self) -> list[Hashable]:
        """Segments that have a posterior (seen by decide/learn/load_state)."""
        return list(self._slots)

    def posterior(self, segment: Hashable) -> tuple[np.ndarray, np.ndarray, int]:
        """Copies of the segment's ``(P, m, n_updates)``; an unseen segment reports the prior."""
        slot = self._slot(segment)
        return self._P[slot].copy(), self._m[slot].copy(), int(self._n[slot])

    def item_terms(self, segment: Hashable) -> dict[int, tuple[float, float]]:
        """``{item id: (mean, variance)}`` of the per-item terms the segment keeps."""
        slot = self._slot(segment)
        ids = self._tab_ids[slot]
        return {int(i): (float(self._tab_mean[slot, c]), float(self._tab_var[slot, c]))
                for c, i in enumerate(ids) if i >= 0}

    def predict_phis(
        self, segments: Sequence[Hashable] | np.ndarray, phis: np.ndarray, items: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of the score of one candidate per row (``phis`` float[B, d]).

        For the bernoulli head the click probability is about ``sigmoid(mean / sqrt(1 + pi var / 8))``
        (the probit approximation); for the gaussian head the reward's predictive variance is
        ``var + noise_var``.
        """
        phis = np.ascontiguousarray(phis, dtype=np.float64)
        slots = self._slots_for(segments)
        mean = np.einsum("bd,bd->b", phis, self._m[slots])
        var = np.einsum("bd,bde,be->b", phis, self._P[slots], phis)
        if items is not None and self.item_capacity > 0:
            used = len(self._slots)
            ids = np.ascontiguousarray(items, dtype=np.int64).reshape(-1, 1)
            off_mean, off_var = item_offsets(
                slots, ids, np.ones(ids.shape[0], dtype=np.int64), self._tab_ids[:used], self._tab_mean[:used],
                self._tab_var[:used], self._item_prior_means(ids), self.item_prior_var,
            )
            mean, var = mean + off_mean[:, 0], var + off_var[:, 0]
        return mean, np.maximum(var, 0.0)

    # ------------------------------------------------------------------ decide / learn
    def decide_many(
        self,
        segments: Sequence[Hashable] | np.ndarray,
        context: np.ndarray,
        candidates: np.ndarray,
        k_valid: np.ndarray | None = None,
        items: np.ndarray | None = None,
    ) -> Decisions:
        """Thompson-sample one candidate per request.

        Parameters
        ----------
        segments : B hashable keys
        context : float[B, dx]
        candidates : float[B, K, da]
        k_valid : int[B], optional
            Real candidates per request (the rest of the K slots are padding, never chosen).
        items : int[B, K], optional
            Identity of each candidate (e.g. a hashed ``ad_id``; -1 = none), for per-item terms.
        """
        context = np.asarray(context)
        candidates = np.asarray(candidates)
        if candidates.ndim != 3:
            raise ValueError(f"candidates must be [B, K, da], got shape {candidates.shape}")
        bsz = candidates.shape[0]
        if len(segments) != bsz or context.shape[0] != bsz:
            raise ValueError(
                f"batch sizes disagree: segments {len(segments)}, context {context.shape}, "
                f"candidates {candidates.shape}"
            )
        return self.decide_phis(segments, self._features_for_deciding(context, candidates), k_valid, items)

    def decide_phis(
        self,
        segments: Sequence[Hashable] | np.ndarray,
        phis: np.ndarray,
        k_valid: np.ndarray | None = None,
        items: np.ndarray | None = None,
    ) -> Decisions:
        """Like :meth:`decide_many` but from precomputed features ``phis`` (float64[B, K, d])."""
        phis = np.ascontiguousarray(phis, dtype=np.float64)
        if phis.ndim != 3 or phis.shape[2] != self.d or phis.shape[0] != len(segments):
            raise ValueError(f"phis must be [B={len(segments)}, K, {self.d}], got {phis.shape}")
        bsz, kk = phis.shape[0], phis.shape[1]
        slots = self._slots_for(segments)
        kv = (
            np.full(bsz, kk, dtype=np.int64)
            if k_valid is None
            else np.ascontiguousarray(k_valid, dtype=np.int64)
        )
        item_ids = None if items is None else np.ascontiguousarray(items, dtype=np.int64)
        if item_ids is not None and item_ids.shape != (bsz, kk):
            raise ValueError(f"items must be [B={bsz}, K={kk}], got {item_ids.shape}")
        used = len(self._slots)
        if item_ids is not None and self.item_capacity > 0:
            off_mean, off_var = item_offsets(
                slots, item_ids, kv, self._tab_ids[:used], self._tab_mean[:used], self._tab_var[:used],
                self._item_prior_means(item_ids), self.item_prior_var,
            )
        else:
            off_mean = off_var = np.zeros((bsz, kk))
        normals = self._normals(bsz * self.n_draws * kk).reshape(bsz, self.n_draws, kk)
        uniforms = self._rng.random((bsz, 2))
        choices, props, means = glm_decide_many(
            phis, self._P[:used], self._m[:used], slots, kv, off_mean, off_var, normals, uniforms,
            self.eps, self.scale,
        )
        prior_scores = phis @ self.prior_mean
        prior_scores[np.arange(kk)[None, :] >= kv[:, None]] = 0.0
        rows = np.arange(bsz)
        return Decisions(
            choices=choices,
            propensities=props,
            phis_chosen=np.ascontiguousarray(phis[rows, choices]),
            mean_scores=means,
            prior_scores=prior_scores,
            n_updates=self._n[slots].copy(),
            version=self.version,
            items_chosen=None if item_ids is None else item_ids[rows, choices],
        )

    def _normals(self, n: int) -> np.ndarray:
        """``n`` standard normals of the policy's generator (the numbers ``rng.standard_normal(n)`` gives), in a
        buffer reused by the next call while it is at most ``NORMALS_BUFFER`` long."""
        if n > NORMALS_BUFFER:
            return standard_normals(self._rng, np.empty(n))
        if self._normal_buf.shape[0] < n:
            self._normal_buf = np.empty(min(max(n, 2 * self._normal_buf.shape[0]), NORMALS_BUFFER))
        return standard_normals(self._rng, self._normal_buf[:n])

    def learn_many(
        self,
        segments: Sequence[Hashable] | np.ndarray,
        phis: np.ndarray,
        rewards: np.ndarray,
        items: np.ndarray | None = None,
    ) -> None:
        """Absorb observed rewards, row ``i`` into ``segments[i]``'s posterior, in row order.

        ``items`` (int[n], optional) names the shown candidate of each row (``Decisions.items_chosen``).
        With the bernoulli likelihood rewards must be 0 or 1.
        """
        phis = np.ascontiguousarray(phis, dtype=np.float64)
        rewards = np.ascontiguousarray(rewards, dtype=np.float64)
        if phis.ndim != 2 or phis.shape[1] != self.d or rewards.shape != (phis.shape[0],):
            raise ValueError(
                f"need phis [n, {self.d}] and rewards [n]; got {phis.shape} and {rewards.shape}"
            )
        n = phis.shape[0]
        if len(segments) != n:
            raise ValueError(f"{len(segments)} segments for {n} rows")
        if self.likelihood == "bernoulli" and np.any((rewards != 0.0) & (rewards != 1.0)):
            raise ValueError("the bernoulli likelihood learns from 0/1 clicks only")
        if items is None or self.item_capacity == 0:
            item_ids = np.full(n, -1, dtype=np.int64)
        else:
            item_ids = np.ascontiguousarray(items, dtype=np.int64)
            if item_ids.shape != (n,):
                raise ValueError(f"items must be [n={n}], got {item_ids.shape}")
        slots = self._slots_for(segments)
        used = len(self._slots)
        glm_update_many(
            self._P[:used], self._m[:used], slots, phis, item_ids, self._item_prior_means(item_ids),
            self.item_prior_var,
            (self._tab_ids[:used], self._tab_mean[:used], self._tab_var[:used], self._tab_tick[:used]),
            rewards, BERNOULLI if self.likelihood == "bernoulli" else GAUSSIAN, self.noise_var, self.forget,
            self._tick,
        )
        self._tick += n
        np.add.at(self._n, slots, 1)

    def learn_one(self, segment: Hashable, phi: np.ndarray, reward: float, item: int = -1) -> None:
        """Absorb one observed reward."""
        self.learn_many([segment], np.asarray(phi, dtype=np.float64)[None, :], np.array([reward]),
                        np.array([item], dtype=np.int64))

    # ------------------------------------------------------------------ state
    def reset(self, segment: Hashable) -> None:
        """Return a segment's posterior (and item terms) to the prior."""
        self._clear_slot(self._slot(segment))

    def evict(self, segment: Hashable) -> bool:
        """Drop a segment's posterior from memory (its slot is reused); False if it held none.

        The caller keeps the posterior elsewhere (:meth:`state_bytes` first, :meth:`load_state` to bring
        it back); an evicted segment seen again starts from the prior. The shared posterior is never
        dropped. The last slot moves into the freed one, so slots stay dense.
        """
        if self.shared:
            return False
        slot = self._slots.pop(_key(segment), None)
        if slot is None:
            return False
        last = len(self._slots)
        moved = self._keys.pop()
        if slot != last:
            for arr in (self._P, self._m, self._n, self._tab_ids, self._tab_mean, self._tab_var, self._tab_tick):
                arr[slot] = arr[last]
            self._slots[moved] = slot
            self._keys[slot] = moved
        return True

    def reset_all(self) -> None:
        """Forget every segment."""
        c = self.item_capacity
        self._slots: dict[Hashable, int] = {}
        self._keys: list[Hashable] = []  # slot -> key, the inverse of _slots
        self._P = np.empty((0, self.d, self.d))
        self._m = np.empty((0, self.d))
        self._n = np.empty(0, dtype=np.int64)
        self._tab_ids = np.empty((0, c), dtype=np.int64)
        self._tab_mean = np.empty((0, c))
        self._tab_var = np.empty((0, c))
        self._tab_tick = np.empty((0, c), dtype=np.int64)
        self._tick = 1

    def state_bytes(self, segment: Hashable) -> bytes:
        """The segment's posterior as bytes (layout in :mod:`policy.segment_state`)."""
        slot = self._slot(segment)
        stored = np.flatnonzero(self._tab_ids[slot] >= 0)
        return encode_state(int(self._n[slot]), self._P[slot], self._m[slot], self._tab_ids[slot, stored],
                            self._tab_mean[slot, stored], self._tab_var[slot, stored], self._tab_tick[slot, stored])

    def load_state(self, segment: Hashable, data: bytes) -> None:
        """Replace the segment's posterior with one produced by :meth:`state_bytes`.

        Item terms beyond this policy's ``item_capacity`` are dropped (the least recently used first).
        """
        P, m, n, items = decode_state_items(data, self.d)
        slot = self._slot(segment)
        self._clear_slot(slot)
        self._P[slot], self._m[slot], self._n[slot] = P, m, n
        ids, mean, var, tick = items
        keep = np.argsort(-tick, kind="stable")[: self.item_capacity]
        k = keep.size
        self._tab_ids[slot, :k], self._tab_mean[slot, :k] = ids[keep], mean[keep]
        self._tab_var[slot, :k], self._tab_tick[slot, :k] = var[keep], tick[keep]
        if k:
            self._tick = max(self._tick, int(tick.max()) + 1)
