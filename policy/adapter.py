"""The meta-learned policy online: an artifact's features ``phi`` with per-segment posteriors from its prior
(torch-free; the maths runs in ``kernels``).

:class:`Adapter` is a :class:`policy.segment_bandit.SegmentBandit` whose features and prior come from a
:class:`policy.artifact.PolicyArtifact`; the same object serves the Python API, the benchmarks and the Faust agents:

>>> adapter = Adapter(PolicyArtifact.load("artifact/"))               # doctest: +SKIP
>>> dec = adapter.decide_many(["m00-c01"], context, candidates)       # doctest: +SKIP
>>> adapter.learn_many(["m00-c01"], dec.phis_chosen, rewards)          # doctest: +SKIP
>>> table[segment] = adapter.state_bytes("m00-c01")                   # doctest: +SKIP

:func:`check_serves` scores a probe batch on an artifact before it may serve. ``Decisions``,
``SegmentBandit``, ``StateError`` and ``decode_state`` are re-exported here for existing callers.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

import kernels
from kernels.mlp import features_into
from policy.artifact import ArtifactError, PolicyArtifact
from policy.features import build_inputs, raw_features
from policy.segment_bandit import Decisions, SegmentBandit
from policy.segment_state import StateError, decode_state, decode_state_items

__all__ = ["PROBE_SCORE_LIMIT", "Adapter", "Decisions", "SegmentBandit", "StateError", "check_serves",
           "decode_state", "decode_state_items"]

PHI_BUFFER = 1 << 20
"""Most feature values (float64) an adapter keeps in its reused buffer for deciding (8 MB; ~2,200 ad
requests of 10 candidates at d = 46)."""


class Adapter(SegmentBandit):
    """The meta-learned policy online: artifact features ``phi`` + per-segment posteriors from its prior.

    Parameters
    ----------
    artifact : PolicyArtifact
    eps, scale : float or None
        See :class:`SegmentBandit`; None (the default) serves the exploration the artifact's training
        chose and recorded (``artifact.meta.serving``).
    n_draws, forget, seed, shared
        See :class:`SegmentBandit`.
    prior_scale : float
        Multiplies the artifact's prior covariance (1 = as learned).
    item_capacity : int or None
        Per-item terms per segment; None = the artifact's ``serving.item_capacity``.
    """

    def __init__(
        self,
        artifact: PolicyArtifact,
        eps: float | None = None,
        n_draws: int = 64,
        forget: float = 1.0,
        seed: int = 0,
        scale: float | None = None,
        prior_scale: float = 1.0,
        shared: bool = False,
        item_capacity: int | None = None,
    ) -> None:
        if not isinstance(artifact, PolicyArtifact):
            raise ArtifactError("Adapter needs a PolicyArtifact (use PolicyArtifact.load(path))")
        self._take_artifact(artifact)
        self.prior_scale = float(prior_scale)
        serving = artifact.meta.serving
        super().__init__(
            artifact.prior_mean,
            self.prior_scale * artifact.prior_cov,
            artifact.noise_var,
            eps=serving.eps if eps is None else eps,
            n_draws=n_draws,
            forget=forget,
            scale=serving.scale if scale is None else scale,
            seed=seed,
            shared=shared,
            version=artifact.version,
            likelihood=artifact.meta.likelihood,
            item_capacity=serving.item_capacity if item_capacity is None else item_capacity,
            item_prior_var=artifact.item_prior_var,
        )

    def _take_artifact(self, artifact: PolicyArtifact) -> None:
        self.artifact = artifact
        none = np.empty(0)
        self._weights64 = tuple(np.ascontiguousarray(w, dtype=np.float64) for w in (
            artifact.w1, artifact.b1, artifact.w2, artifact.b2,
            none if not artifact.meta.d_raw else artifact.raw_mean, none if not artifact.meta.d_raw else artifact.raw_sd))
        self._phi_buf = np.empty(0)

    def _item_prior_means(self, items: np.ndarray) -> np.ndarray:
        return self.artifact.item_prior_means(items)

    def _features(self, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        a = self.artifact
        if context.ndim != 2 or context.shape[1] != a.meta.dx or candidates.shape[2] != a.meta.da:
            raise ValueError(
                f"artifact expects context [B, {a.meta.dx}] and candidates [B, K, {a.meta.da}], "
                f"got {context.shape} and {candidates.shape}"
            )
        u = build_inputs(context, candidates)
        phi = kernels.phi_many(u, a.w1, a.b1, a.w2, a.b2)
        if a.meta.d_raw:
            raw = raw_features(u, a.meta.dx, a.raw_mean, a.raw_sd, a.meta.raw_interactions)
            phi = np.concatenate([phi[:, :-1], raw, phi[:, -1:]], axis=1)
        return phi.reshape(candidates.shape[0], candidates.shape[1], self.d)

    def _features_for_deciding(self, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The same numbers as ``_features`` from one fused kernel (``kernels.mlp.features_into``: no input
        rows, no concatenation) into a buffer reused by the next call while it is at most ``PHI_BUFFER``
        long; the general path for raw interactions and inputs that are not float64."""
        a = self.artifact
        if (a.meta.raw_interactions or context.dtype != np.float64 or candidates.dtype != np.float64
                or context.ndim != 2 or candidates.ndim != 3 or context.shape[1] != a.meta.dx
                or candidates.shape[2] != a.meta.da):
            return self._features(context, candidates)
        bsz, kk = candidates.shape[0], candidates.shape[1]
        n = bsz * kk * self.d
        if n > PHI_BUFFER:
            out = np.empty(n)
        else:
            if self._phi_buf.shape[0] < n:
                self._phi_buf = np.empty(min(max(n, 2 * self._phi_buf.shape[0]), PHI_BUFFER))
            out = self._phi_buf[:n]
        w1, b1, w2, b2, raw_mean, raw_sd = self._weights64
        return features_into(np.ascontiguousarray(context), np.ascontiguousarray(candidates),
                             w1, b1, w2, b2, raw_mean, raw_sd, out.reshape(bsz, kk, self.d))

    def phi_many(self, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """float64[B, K, d] artifact features of every candidate."""
        return self._features(np.asarray(context), np.asarray(candidates))

    def swap_artifact(
        self, artifact: PolicyArtifact, posteriors: Literal["auto", "keep", "reset"] = "auto"
    ) -> bool:
        """Serve a new artifact from now on. Returns True if segment posteriors were kept.

        ``"reset"`` restarts every segment from the new prior. ``"keep"`` keeps each segment's ``(P, m)``
        (only meaningful when the feature map is unchanged, e.g. a re-calibrated prior; ``d`` must match).
        ``"auto"`` keeps them exactly when the new artifact's ``phi`` weights equal the current ones.
        """
        if not isinstance(artifact, PolicyArtifact):
            raise ArtifactError("swap_artifact needs a PolicyArtifact")
        if posteriors not in ("auto", "keep", "reset"):
            raise ValueError(f"posteriors must be 'auto', 'keep' or 'reset', got {posteriors!r}")
        same_phi = artifact.d == self.d and all(
            getattr(artifact, k).shape == getattr(self.artifact, k).shape
            and np.array_equal(getattr(artifact, k), getattr(self.artifact, k))
            for k in ("w1", "b1", "w2", "b2")
        )
        if posteriors == "keep" and artifact.d != self.d:
            raise ArtifactError(f"cannot keep posteriors: d changes from {self.d} to {artifact.d}")
        same_head = (artifact.meta.likelihood == self.likelihood
                     and artifact.meta.serving.item_capacity == self.artifact.meta.serving.item_capacity
                     and (artifact.item_prior_var > 0) == (self.item_prior_var > 0))
        if posteriors == "keep" and not same_head:
            raise ArtifactError("cannot keep posteriors: the likelihood or the per-item terms change")
        same_phi = same_phi and artifact.meta.d_raw == self.artifact.meta.d_raw \
            and artifact.meta.raw_interactions == self.artifact.meta.raw_interactions and (
            not artifact.meta.d_raw
            or (np.array_equal(artifact.raw_mean, self.artifact.raw_mean)
                and np.array_equal(artifact.raw_sd, self.artifact.raw_sd))
        )
        keep = posteriors == "keep" or (posteriors == "auto" and same_phi and same_head)
        self._take_artifact(artifact)
        self.version = artifact.version
        self._set_prior(artifact.prior_mean, self.prior_scale * artifact.prior_cov, artifact.noise_var)
        self.likelihood = artifact.meta.likelihood
        self.item_prior_var = artifact.item_prior_var
        self.item_capacity = artifact.meta.serving.item_capacity if artifact.item_prior_var > 0 else 0
        if not keep:
            self.reset_all()
        return keep


PROBE_SCORE_LIMIT = 1e6
"""Largest expected reward a probe may score, in units of the training data's reward scale."""


def check_serves(artifact: PolicyArtifact, context: np.ndarray | None = None,
                 candidates: np.ndarray | None = None, n: int = 64, seed: int = 0) -> None:
    """Raise :class:`ArtifactError` unless ``artifact`` serves a probe batch with finite results.

    A loader checks files and shapes; this scores. The probe is ``context`` float[B, dx] with
    ``candidates`` float[B, K, da] (e.g. representative traffic), else ``n`` seeded standard-normal rows
    with K = 4 candidates. On a throwaway :class:`Adapter` (nothing serving is touched) it checks that the
    features ``phi``, the prior and posterior-mean scores are finite and within ``PROBE_SCORE_LIMIT``
    times the training rewards' scale (``|reward_mean| + reward_std``, at least 1), that propensities are
    finite, >= 0 and sum to 1 per row, and that one learning step (reward 0 at the chosen features) leaves the
    posterior finite. A finite but absurd artifact (weights x 1e300) fails here instead of failing every
    batch once it serves.
    """
    meta = artifact.meta
    if context is None or candidates is None:
        rng = np.random.default_rng(seed)
        context = rng.standard_normal((n, meta.dx))
        candidates = rng.standard_normal((n, 4, meta.da))
    context = np.ascontiguousarray(context, dtype=np.float64)
    candidates = np.ascontiguousarray(candidates, dtype=np.float64)
    segments = ["probe"] * context.shape[0]
    try:
        with np.errstate(all="ignore"):
            probe = Adapter(artifact, seed=seed)
            dec = probe.decide_many(segments, context, candidates)
            data = meta.training_data
            limit = PROBE_SCORE_LIMIT * max(1.0, abs(data.reward_mean) + data.reward_std)
            scores = np.concatenate([dec.mean_scores, dec.prior_scores])
            checks = {"scores": bool(np.isfinite(scores).all() and (np.abs(scores) <= limit).all()),
                      "features": np.isfinite(dec.phis_chosen).all(),
                      "propensities": (np.isfinite(dec.propensities).all() and (dec.propensities >= 0).all()
                                       and np.allclose(dec.propensities.sum(axis=1), 1.0))}
            if all(checks.values()):
                probe.learn_many(segments, dec.phis_chosen, np.zeros(len(segments)))
                p_matrix, mean, _ = probe.posterior("probe")
                checks["learning"] = bool(np.isfinite(p_matrix).all() and np.isfinite(mean).all())
    except (ValueError, ArithmeticError) as exc:  # KernelInputError and StateError are ValueErrors
        raise ArtifactError(f"artifact {artifact.version} fails on a probe batch: {exc}") from exc
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ArtifactError(f"artifact {artifact.version} does not serve a probe batch: non-finite, "
                            f"absurd or invalid {', '.join(bad)}")
