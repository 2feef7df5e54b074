"""Reference policies for the adaptation benchmark, all with the :class:`policy.adapter.SegmentBandit` API.

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

from policy.adapter import Adapter, Decisions, SegmentBandit
from policy.artifact import PolicyArtifact
from policy.features import build_inputs


class ExpectedReward(Protocol):
    """What :class:`OraclePolicy` needs from a simulator (``policy.simulator.market.Market`` fits)."""

    def expected_reward(
        self, segments: np.ndarray, context: np.ndarray, candidates: np.ndarray, value_weight: float = 0.0
    ) -> np.ndarray: ...


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
