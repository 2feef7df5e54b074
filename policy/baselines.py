"""Reference policies for the adaptation benchmark, all with the :class:`policy.segment_bandit.SegmentBandit` API.

=============  ================================================================================================
``random``     uniform over the candidates
``pooled``     the learned ``phi`` and prior, but **one posterior shared by all segments** (starts at the
               meta prior and is updated by every segment's rewards): a single global model, no per-segment
               adaptation
``scratch_raw``  per-segment linear Thompson sampling on raw standardised features ``[x, a, 1]``, vague prior
``scratch_phi``  per-segment Thompson sampling on the learned ``phi``, vague prior ``N(0, prior_var I)``
``meta``       :class:`policy.adapter.Adapter` (learned ``phi`` + meta-learned prior); not defined here
``oracle``     argmax of the simulator's true expected reward (pseudo-regret 0)
=============  ================================================================================================

The vague priors are zero-mean with variance ``prior_var`` per coefficient (``N(0, prior_var I)``); they
use the artifact's ``noise_var`` so that only the prior (and for ``scratch_raw`` the features) differ
from ``meta``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

import numpy as np

from policy.adapter import Adapter
from policy.artifact import PolicyArtifact
from policy.features import build_inputs
from policy.segment_bandit import Decisions, SegmentBandit


class ExpectedReward(Protocol):
    """What :class:`OraclePolicy` needs from a simulator (``policy.simulator.market.Market`` fits)."""

    def expected_reward(
        self, segments: np.ndarray, context: np.ndarray, candidates: np.ndarray, value_weight: float = 0.0
    ) -> np.ndarray: ...


def _key(segment: Hashable) -> Hashable:
    """Segment keys as the adapter stores them (numpy scalars become Python ones)."""
    return segment.item() if isinstance(segment, np.generic) else segment


def _stateless_decisions(
    choices: np.ndarray, propensities: np.ndarray, scores: np.ndarray, version: str
) -> Decisions:
    bsz, kk = propensities.shape
    return Decisions(
        choices=choices.astype(np.int64),
        propensities=propensities,
        phis_chosen=np.zeros((bsz, 1)),
        mean_scores=scores,
        prior_scores=np.zeros((bsz, kk)),
        n_updates=np.zeros(bsz, dtype=np.int64),
        version=version,
    )


class RandomPolicy:
    """Uniformly random candidate; ``learn_many`` does nothing."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def decide_many(
        self,
        segments: Sequence[Hashable] | np.ndarray,
        context: np.ndarray,
        candidates: np.ndarray,
        k_valid: np.ndarray | None = None,
        items: np.ndarray | None = None,
    ) -> Decisions:
        bsz, kk = candidates.shape[0], candidates.shape[1]
        kv = np.full(bsz, kk, dtype=np.int64) if k_valid is None else np.asarray(k_valid, dtype=np.int64)
        choices = np.floor(self._rng.random(bsz) * kv).astype(np.int64)
        props = (np.arange(kk)[None, :] < kv[:, None]) / kv[:, None].astype(np.float64)
        return _stateless_decisions(choices, props, np.zeros((bsz, kk)), "random")

    def learn_many(self, segments: Sequence[Hashable] | np.ndarray, phis: np.ndarray, rewards: np.ndarray,
                   items: np.ndarray | None = None) -> None:
        return None


class OraclePolicy:
    """Argmax of the simulator's true expected reward; segments must be the simulator's int indices."""

    def __init__(self, market: ExpectedReward, value_weight: float = 0.0) -> None:
        self.market = market
        self.value_weight = float(value_weight)

    def decide_many(
        self,
        segments: Sequence[Hashable] | np.ndarray,
        context: np.ndarray,
        candidates: np.ndarray,
        k_valid: np.ndarray | None = None,
        items: np.ndarray | None = None,
    ) -> Decisions:
        seg = np.asarray(segments, dtype=np.int64)
        r = self.market.expected_reward(seg, context, candidates, self.value_weight)
        if k_valid is not None:
            r = np.where(np.arange(r.shape[1])[None, :] < np.asarray(k_valid)[:, None], r, -np.inf)
        choices = np.argmax(r, axis=1)
        props = np.zeros_like(r)
        props[np.arange(r.shape[0]), choices] = 1.0
        return _stateless_decisions(choices, props, np.where(np.isfinite(r), r, 0.0), "oracle")

    def learn_many(self, segments: Sequence[Hashable] | np.ndarray, phis: np.ndarray, rewards: np.ndarray,
                   items: np.ndarray | None = None) -> None:
        return None


class RawLinearTS(SegmentBandit):
    """Per-segment linear Thompson sampling on ``[(x - mean) / sd, (a - mean) / sd, 1]`` with a vague prior.

    Parameters
    ----------
    u_mean, u_sd : float[dx + da]
        Standardisation of the raw inputs ``[x, a]`` (e.g. from the training logs).
    prior_var : float
        Prior variance of every coefficient (zero prior mean).
    noise_var : float
        Reward noise variance.
    """

    def __init__(
        self,
        u_mean: np.ndarray,
        u_sd: np.ndarray,
        noise_var: float,
        prior_var: float = 1.0,
        *,
        eps: float = 0.02,
        n_draws: int = 64,
        seed: int = 0,
    ) -> None:
        self.u_mean = np.asarray(u_mean, dtype=np.float64)
        sd = np.asarray(u_sd, dtype=np.float64)
        self.u_sd = np.where(sd > 1e-12, sd, 1.0)
        d = self.u_mean.shape[0] + 1
        super().__init__(
            np.zeros(d), prior_var * np.eye(d), noise_var, eps=eps, n_draws=n_draws, seed=seed,
            version="scratch_raw",
        )

    def _features(self, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        bsz, kk = candidates.shape[0], candidates.shape[1]
        u = (build_inputs(context, candidates).astype(np.float64) - self.u_mean) / self.u_sd
        return np.concatenate([u, np.ones((u.shape[0], 1))], axis=1).reshape(bsz, kk, self.d)


def scratch_phi(
    artifact: PolicyArtifact, prior_var: float = 1.0, *, eps: float = 0.02, n_draws: int = 64, seed: int = 0
) -> Adapter:
    """Per-segment Thompson sampling on the learned ``phi`` with the vague prior ``N(0, prior_var I)``."""
    policy = Adapter(artifact, eps=eps, n_draws=n_draws, seed=seed)
    policy._set_prior(np.zeros(artifact.d), prior_var * np.eye(artifact.d), artifact.noise_var)
    policy.version = "scratch_phi"
    return policy


def pooled(artifact: PolicyArtifact, *, eps: float = 0.02, n_draws: int = 64, seed: int = 0) -> Adapter:
    """One posterior shared by every segment, starting at the meta prior (learned ``phi``)."""
    policy = Adapter(artifact, eps=eps, n_draws=n_draws, seed=seed, shared=True)
    policy.version = "pooled"
    return policy


# ---------------------------------------------------------------------------------------------------------
# What a practitioner tries first (the world-family benchmark, ``metacart.bench.worlds``). All of them take
# ``items`` (candidate identities, -1 = none) and ``k_valid`` (padding never chosen); every propensity row
# sums to 1 over the valid candidates and the shown candidate's propensity is > 0.


def _greedy_propensities(
    scores: np.ndarray, k_valid: np.ndarray, eps: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Choices and exact propensities of "argmax of ``scores``, ties uniformly, ``eps`` uniform".

    ``scores`` float[B, K]; slots ``>= k_valid`` are never chosen. Returns ``(choices int64[B],
    propensities float64[B, K])`` with ``p = eps / k + (1 - eps) 1[best] / n_best``.
    """
    bsz, kk = scores.shape
    valid = np.arange(kk)[None, :] < k_valid[:, None]
    s = np.where(valid, scores, -np.inf)
    best = valid & (s >= s.max(axis=1, keepdims=True))
    n_best = best.sum(axis=1)
    uniform = valid / k_valid[:, None].astype(np.float64)
    props = eps * uniform + (1.0 - eps) * best / n_best[:, None]
    # one draw from the mixture: the i-th best (ties uniformly) or a uniform valid slot
    u_mix, u_pick = rng.random(bsz), rng.random(bsz)
    explore = u_mix < eps
    rank = np.floor(u_pick * np.where(explore, k_valid, n_best)).astype(np.int64)
    pool = np.where(explore[:, None], valid, best)
    choices = np.argmax(np.cumsum(pool, axis=1) > rank[:, None], axis=1).astype(np.int64)
    return choices, props


class Frozen:
    """A policy that decides like ``policy`` and never learns (``learn_many`` does nothing)."""

    def __init__(self, policy: SegmentBandit, version: str = "frozen") -> None:
        self.policy = policy
        self.version = version

    def decide_many(self, segments: Sequence[Hashable] | np.ndarray, context: np.ndarray, candidates: np.ndarray,
                    k_valid: np.ndarray | None = None, items: np.ndarray | None = None) -> Decisions:
        dec = self.policy.decide_many(segments, context, candidates, k_valid=k_valid, items=items)
        return Decisions(**{**dec.__dict__, "version": self.version})

    def learn_many(self, segments: Sequence[Hashable] | np.ndarray, phis: np.ndarray, rewards: np.ndarray,
                   items: np.ndarray | None = None) -> None:
        return None


class InteractionFeatures:
    """Raw features ``[zx, za, zx (x) za, 1]`` with ``zx = (x - x_mean) / x_sd``, ``za`` likewise.

    The outer product lets a linear model score candidates differently for different users (with ``[x, a]``
    alone the context adds the same to every candidate and cannot change a decision).
    ``d = dx + da + dx * da + 1``.
    """

    def __init__(self, x_mean: np.ndarray, x_sd: np.ndarray, a_mean: np.ndarray, a_sd: np.ndarray) -> None:
        self.x_mean, self.a_mean = np.asarray(x_mean, np.float64), np.asarray(a_mean, np.float64)
        self.x_sd = np.where(np.asarray(x_sd) > 1e-12, np.asarray(x_sd, np.float64), 1.0)
        self.a_sd = np.where(np.asarray(a_sd) > 1e-12, np.asarray(a_sd, np.float64), 1.0)
        self.dx, self.da = self.x_mean.shape[0], self.a_mean.shape[0]
        self.d = self.dx + self.da + self.dx * self.da + 1

    @classmethod
    def from_logs(cls, context: np.ndarray, candidates: np.ndarray, k_valid: np.ndarray | None = None,
                  max_rows: int = 50_000) -> "InteractionFeatures":
        """Standardisation from (the first ``max_rows`` rows of) logged requests; padding slots ignored."""
        x = np.asarray(context[:max_rows], np.float64)
        a = np.asarray(candidates[:max_rows], np.float64)
        kv = np.full(a.shape[0], a.shape[1]) if k_valid is None else np.asarray(k_valid[:max_rows])
        flat = a[np.arange(a.shape[1])[None, :] < kv[:, None]]
        return cls(x.mean(0), x.std(0), flat.mean(0), flat.std(0))

    def __call__(self, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """float64[B, K, d]."""
        zx = (np.asarray(context, np.float64) - self.x_mean) / self.x_sd
        za = (np.asarray(candidates, np.float64) - self.a_mean) / self.a_sd
        bsz, kk = za.shape[0], za.shape[1]
        out = np.empty((bsz, kk, self.d))
        out[:, :, : self.dx] = zx[:, None, :]
        out[:, :, self.dx : self.dx + self.da] = za
        out[:, :, self.dx + self.da : -1] = (zx[:, None, :, None] * za[:, :, None, :]).reshape(bsz, kk, -1)
        out[:, :, -1] = 1.0
        return out


class InteractionLinearTS(SegmentBandit):
    """Linear Thompson sampling on :class:`InteractionFeatures` (per segment, or pooled with ``shared``)."""

    def __init__(self, features: InteractionFeatures, prior_mean: np.ndarray, prior_cov: np.ndarray,
                 noise_var: float, *, eps: float = 0.01, n_draws: int = 64, seed: int = 0, shared: bool = False,
                 version: str = "linear_ts") -> None:
        self.features = features
        super().__init__(prior_mean, prior_cov, noise_var, eps=eps, n_draws=n_draws, seed=seed, shared=shared,
                         version=version)

    def _features(self, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return self.features(context, candidates)


def fit_pooled_linear(features: InteractionFeatures, context: np.ndarray, chosen: np.ndarray, reward: np.ndarray,
                      prior_var: float, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray, float]:
    """Bayesian linear regression of ``reward`` on ``features(x, chosen a)`` with prior ``N(0, prior_var I)``.

    ``chosen`` float[N, da] are the shown candidates. The noise variance is the residual mean square of
    the posterior mean (``noise_var`` scales the likelihood: precision ``I / prior_var + F^T F / noise_var``).
    Returns ``(posterior mean, posterior covariance, noise_var)``.
    """
    d = features.d
    ftf, fty, yty, n = np.zeros((d, d)), np.zeros(d), 0.0, int(reward.shape[0])
    for lo in range(0, n, chunk):
        f = features(context[lo:lo + chunk], chosen[lo:lo + chunk, None, :])[:, 0, :]
        y = np.asarray(reward[lo:lo + chunk], np.float64)
        ftf += f.T @ f
        fty += f.T @ y
        yty += float(y @ y)
    noise = max(float(np.var(reward)), 1e-6)
    for _ in range(3):  # noise_var <- residual mean square at the posterior mean (converges in 2-3 steps)
        prec = np.eye(d) / prior_var + ftf / noise
        mean = np.linalg.solve(prec, fty / noise)
        resid = (yty - 2.0 * mean @ fty + mean @ ftf @ mean) / max(n, 1)
        noise = max(float(resid), 1e-6)
    prec = np.eye(d) / prior_var + ftf / noise
    cov = np.linalg.inv(prec)
    return mean, 0.5 * (cov + cov.T), noise


class MostPopular:
    """Per segment, the candidate with the most clicks so far (ties uniformly, ``eps`` uniform exploration).

    Clicks are counted per ``(segment, item)``; ``decide_many`` and ``learn_many`` need ``items``.
    Memory grows with the distinct (segment, item) pairs seen.
    """

    def __init__(self, eps: float = 0.05, seed: int = 0) -> None:
        if not 0.0 < eps <= 1.0:
            raise ValueError(f"eps must be in (0, 1] (clicks-so-far never explores by itself), got {eps}")
        self.eps = float(eps)
        self._rng = np.random.default_rng(seed)
        self._clicks: dict[tuple[Hashable, int], float] = {}

    def decide_many(self, segments: Sequence[Hashable] | np.ndarray, context: np.ndarray, candidates: np.ndarray,
                    k_valid: np.ndarray | None = None, items: np.ndarray | None = None) -> Decisions:
        if items is None:
            raise ValueError("MostPopular needs items (the candidates' identities)")
        items = np.asarray(items, dtype=np.int64)
        bsz, kk = items.shape
        kv = np.full(bsz, kk, dtype=np.int64) if k_valid is None else np.asarray(k_valid, dtype=np.int64)
        keys = [_key(s) for s in (segments.tolist() if isinstance(segments, np.ndarray) else segments)]
        get = self._clicks.get
        scores = np.array([[get((s, i), 0.0) for i in row] for s, row in zip(keys, items.tolist())])
        choices, props = _greedy_propensities(scores, kv, self.eps, self._rng)
        dec = _stateless_decisions(choices, props, scores, "most_popular")
        return Decisions(**{**dec.__dict__, "items_chosen": items[np.arange(bsz), choices]})

    def learn_many(self, segments: Sequence[Hashable] | np.ndarray, phis: np.ndarray, rewards: np.ndarray,
                   items: np.ndarray | None = None) -> None:
        if items is None:
            raise ValueError("MostPopular needs items (Decisions.items_chosen)")
        keys = segments.tolist() if isinstance(segments, np.ndarray) else segments
        for s, i, r in zip(keys, np.asarray(items).tolist(), np.asarray(rewards, np.float64).tolist()):
            if r != 0.0:
                k = (_key(s), i)
                self._clicks[k] = self._clicks.get(k, 0.0) + r


class MostViewed:
    """Show the candidate this user viewed most (``candidates[:, :, view_column]``, monotone in views).

    Ties go uniformly at random; ``eps`` mixes uniform exploration (0 = the pure heuristic). Never learns.
    """

    def __init__(self, view_column: int, eps: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1], got {eps}")
        self.view_column, self.eps = int(view_column), float(eps)
        self._rng = np.random.default_rng(seed)

    def decide_many(self, segments: Sequence[Hashable] | np.ndarray, context: np.ndarray, candidates: np.ndarray,
                    k_valid: np.ndarray | None = None, items: np.ndarray | None = None) -> Decisions:
        cand = np.asarray(candidates)
        bsz, kk = cand.shape[0], cand.shape[1]
        kv = np.full(bsz, kk, dtype=np.int64) if k_valid is None else np.asarray(k_valid, dtype=np.int64)
        scores = cand[:, :, self.view_column].astype(np.float64)
        choices, props = _greedy_propensities(scores, kv, self.eps, self._rng)
        dec = _stateless_decisions(choices, props, scores, "most_viewed")
        chosen = None if items is None else np.asarray(items, np.int64)[np.arange(bsz), choices]
        return Decisions(**{**dec.__dict__, "items_chosen": chosen})

    def learn_many(self, segments: Sequence[Hashable] | np.ndarray, phis: np.ndarray, rewards: np.ndarray,
                   items: np.ndarray | None = None) -> None:
        return None


class EpsGreedyLogistic:
    """Per-segment online logistic regression on :class:`InteractionFeatures`, epsilon-greedy.

    Each segment's weights start at ``w0`` (zeros but the intercept, set to ``logit(base_rate)``) and take
    one AdaGrad step per observation on the L2-penalised log loss::

        g = (sigmoid(w . f) - y) f + l2 (w - w0);   G += g^2;   w -= lr g / sqrt(G + 1e-8)

    Decisions: argmax of ``w . f`` (ties uniformly), uniform with probability ``eps``.
    """

    def __init__(self, features: InteractionFeatures, base_rate: float, *, eps: float = 0.05, lr: float = 0.05,
                 l2: float = 1e-3, seed: int = 0) -> None:
        if not 0.0 < base_rate < 1.0:
            raise ValueError(f"base_rate must be in (0, 1), got {base_rate}")
        if not 0.0 <= eps <= 1.0 or lr <= 0 or l2 < 0:
            raise ValueError("need eps in [0, 1], lr > 0, l2 >= 0")
        self.features, self.eps, self.lr, self.l2 = features, float(eps), float(lr), float(l2)
        self.w0 = np.zeros(features.d)
        self.w0[-1] = np.log(base_rate / (1.0 - base_rate))
        self._rng = np.random.default_rng(seed)
        self._slots: dict[Hashable, int] = {}
        self._w = np.empty((0, features.d))
        self._g2 = np.empty((0, features.d))

    def _slots_for(self, segments: Sequence[Hashable] | np.ndarray) -> np.ndarray:
        keys = segments.tolist() if isinstance(segments, np.ndarray) else segments
        out = np.empty(len(keys), dtype=np.int64)
        for j, s in enumerate(keys):
            k = _key(s)
            slot = self._slots.get(k)
            if slot is None:
                slot = self._slots[k] = len(self._slots)
                if slot >= self._w.shape[0]:
                    cap = max(8, 2 * self._w.shape[0])
                    self._w = np.concatenate([self._w, np.tile(self.w0, (cap - self._w.shape[0], 1))])
                    self._g2 = np.concatenate([self._g2, np.zeros((cap - self._g2.shape[0], self.features.d))])
            out[j] = slot
        return out

    def decide_many(self, segments: Sequence[Hashable] | np.ndarray, context: np.ndarray, candidates: np.ndarray,
                    k_valid: np.ndarray | None = None, items: np.ndarray | None = None) -> Decisions:
        f = self.features(context, candidates)
        bsz, kk = f.shape[0], f.shape[1]
        kv = np.full(bsz, kk, dtype=np.int64) if k_valid is None else np.asarray(k_valid, dtype=np.int64)
        slots = self._slots_for(segments)
        scores = np.einsum("bkd,bd->bk", f, self._w[slots])
        choices, props = _greedy_propensities(scores, kv, self.eps, self._rng)
        rows = np.arange(bsz)
        return Decisions(choices=choices, propensities=props, phis_chosen=np.ascontiguousarray(f[rows, choices]),
                         mean_scores=scores, prior_scores=f @ self.w0, n_updates=np.zeros(bsz, dtype=np.int64),
                         version="egreedy_logistic",
                         items_chosen=None if items is None else np.asarray(items, np.int64)[rows, choices])

    def learn_many(self, segments: Sequence[Hashable] | np.ndarray, phis: np.ndarray, rewards: np.ndarray,
                   items: np.ndarray | None = None) -> None:
        slots = self._slots_for(segments)
        phis, rewards = np.asarray(phis, np.float64), np.asarray(rewards, np.float64)
        for j in range(slots.shape[0]):  # in row order: a segment may appear twice in one batch
            s, f = slots[j], phis[j]
            w = self._w[s]
            p = 1.0 / (1.0 + np.exp(-float(f @ w)))
            g = (p - rewards[j]) * f + self.l2 * (w - self.w0)
            self._g2[s] += g * g
            self._w[s] = w - self.lr * g / np.sqrt(self._g2[s] + 1e-8)
