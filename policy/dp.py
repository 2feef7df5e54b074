"""Segment-level differential privacy for meta-training: the budget, the accountant, the Gaussian releases.

The unit of privacy is one **segment's whole data** (all its logged rows): two training sets are neighbours
when one has one segment more than the other (add/remove adjacency). A mechanism ``M`` is
``(epsilon, delta)``-DP when for all neighbours ``D, D'`` and output sets ``O``::

    P[M(D) in O] <= exp(epsilon) P[M(D') in O] + delta

What the DP trainer (``policy.train_glm``, ``TrainConfig.dp_epsilon``) releases, and how:

* ``phi`` and the shared head ``mu_phi`` (stage 1): DP-SGD with Poisson sampling of segments at rate ``q``,
  the gradient of each sampled segment (the mean over its sampled rows) clipped to L2 norm ``C``, the sum
  plus ``N(0, (sigma C)^2 I)``, divided by the expected batch ``q N``; ``steps`` such steps (the sampled
  Gaussian mechanism, Mironov et al. 2019). A segment's own deviation ``delta_s`` is updated from its own
  rows only and never released.
* the base rate, the empirical-Bayes prior ``(mu0, s2 I)`` and (with ``dp_standardise``) the input
  standardisation: per-segment statistics clipped to a fixed bound, summed, plus Gaussian noise (the
  Gaussian mechanism, ``q = 1``).
* nothing else the serving path reads is computed from the data: no pooled item offsets, a per-item
  variance from the settings (``dp_item_prior_var``), the exploration scale from the settings
  (``dp_explore_scale``).

All mechanisms are composed by one Renyi-DP accountant (Opacus ``RDPAccountant``); the budget is split:
``stats_share`` of ``epsilon`` (and half of ``delta``) for the one-shot statistics, the rest for DP-SGD,
each noise multiplier chosen by Opacus' ``get_noise_multiplier``. The composed ``epsilon`` reported is the
accountant's over all mechanisms together, which is at most the sum of the two shares.

As in Opacus, the number of training segments ``N`` is treated as public (it sets the expected batch).

Opacus (and so torch) is imported inside the functions that need it: this module stays importable on the
serving path.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from policy.train_config import TrainingError

COVERED = (
    "phi (w1, b1, w2, b2) and the shared head it was trained with (DP-SGD, per-segment clipping)",
    "raw_mean / raw_sd and the input standardisation folded into w1, b1 (mean 0 / sd 1 unless "
    "dp_standardise: then a Gaussian mechanism)",
    "the base rate that initialises the shared head (Gaussian mechanism)",
    "prior_mean and prior_cov (noisy clipped per-segment head moments, Gaussian mechanism)",
    "item terms: no pooled item offsets are released; item_prior_var is the setting dp_item_prior_var",
    "serving.scale: the setting dp_explore_scale, not chosen on data",
)
NOT_COVERED = (
    "meta.report, meta.curves['heldout_nll'] and the held-out metrics: computed exactly on the held-out "
    "segments (the evaluation set, never trained on); remove them before sharing if those segments must "
    "be protected too",
    "meta.training_data counts and reward_mean / reward_std: exact",
    "the number of training segments (public, as in Opacus)",
)


class PrivacyError(TrainingError):
    """A differential-privacy setting cannot be met (the message says which and why)."""


@dataclass(frozen=True)
class DPPlan:
    """Noise multipliers that meet ``(target_epsilon, delta)`` for a training run, and what they cover."""

    target_epsilon: float
    """The budget asked for (``TrainConfig.dp_epsilon``)."""
    delta: float
    """``delta`` of the guarantee."""
    sample_rate: float
    """``q``: probability that a training segment is in one DP-SGD step's batch (Poisson sampling)."""
    steps: int
    """DP-SGD steps planned (the accountant charges the steps actually run, at most these)."""
    clip: float
    """``C``: L2 bound of one segment's gradient of the shared parameters in one step."""
    sgd_noise_multiplier: float
    """``sigma``: the noise added to a step's summed clipped gradients is ``N(0, (sigma C)^2 I)``."""
    stats_releases: int
    """One-shot Gaussian releases of clipped per-segment statistics (standardisation, base rate, prior)."""
    stats_noise_multiplier: float
    """Noise of each one-shot release, in units of its clipping bound."""
    stats_share: float
    """Share of ``epsilon`` planned for the one-shot releases."""
    n_segments: int
    """Training segments (the expected batch is ``sample_rate * n_segments``)."""

    def record(self, steps_run: int) -> dict[str, Any]:
        """The JSON record for the artifact: the plan, the composed ``epsilon`` spent and what is covered."""
        out = asdict(self)
        out.update(unit="segment", adjacency="add/remove one segment's whole data", accountant="rdp (opacus)",
                   steps_run=int(steps_run), epsilon=spent_epsilon(self, steps_run),
                   covered=list(COVERED), not_covered=list(NOT_COVERED))
        return out


ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + list(range(64, 1025, 32))
"""Renyi orders the accountant optimises over (Opacus' defaults stop at 63, too low for large noise)."""


def _noise_for(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound holds, only looser
            warnings.filterwarnings("ignore", message="Optimal order", category=UserWarning)
            return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                              steps=steps, accountant="rdp", epsilon_tolerance=0.01,
                                              alphas=ALPHAS))
    except ValueError as exc:
        raise PrivacyError(f"no noise multiplier reaches epsilon {epsilon:g} at delta {delta:g} "
                           f"(q={sample_rate:g}, {steps} steps): {exc}") from None


def plan_budget(epsilon: float, delta: float, sample_rate: float, steps: int, clip: float, n_segments: int,
                stats_releases: int, stats_share: float) -> DPPlan:
    """Noise multipliers such that all mechanisms composed are ``(epsilon, delta)``-DP per segment.

    The one-shot releases get ``stats_share * epsilon`` at ``delta / 2`` and DP-SGD the rest at
    ``delta / 2`` (basic composition bounds the total by ``(epsilon, delta)``); both multipliers are then
    scaled down by one common factor for as long as the RDP accountant over all of them
    (:func:`spent_epsilon`, tighter than basic composition) still gives at most ``epsilon``.
    """
    if not (epsilon > 0 and np.isfinite(epsilon)):
        raise PrivacyError(f"dp_epsilon must be a positive number, got {epsilon!r}")
    if not 0 < delta < 1:
        raise PrivacyError(f"dp_delta must be in (0, 1), got {delta!r}")
    if not 0 < sample_rate <= 1:
        raise PrivacyError(f"dp_sample_rate must be in (0, 1], got {sample_rate!r}")
    if steps < 1 or clip <= 0 or not 0 < stats_share < 1:
        raise PrivacyError("need dp_steps >= 1, dp_clip > 0 and 0 < dp_stats_share < 1")
    sgd = _noise_for((1.0 - stats_share) * epsilon, delta / 2, sample_rate, steps)
    stats = _noise_for(stats_share * epsilon, delta / 2, 1.0, stats_releases) if stats_releases else 0.0

    def plan(factor: float) -> DPPlan:
        return DPPlan(target_epsilon=float(epsilon), delta=float(delta), sample_rate=float(sample_rate),
                      steps=int(steps), clip=float(clip), sgd_noise_multiplier=sgd * factor,
                      stats_releases=int(stats_releases), stats_noise_multiplier=stats * factor,
                      stats_share=float(stats_share), n_segments=int(n_segments))

    # Basic composition over-charges: shrink both noise multipliers together while the composed RDP
    # epsilon stays within the target (bisection on the common factor; factor 1 always fits).
    lo, hi = 0.3, 1.0
    if spent_epsilon(plan(lo), steps) <= epsilon:
        return plan(lo)
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        if spent_epsilon(plan(mid), steps) <= epsilon:
            hi = mid
        else:
            lo = mid
    return plan(hi)


def spent_epsilon(plan: DPPlan, steps_run: int) -> float:
    """``epsilon`` at ``plan.delta`` of ``steps_run`` DP-SGD steps and the one-shot releases, composed (RDP)."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    if steps_run > 0:
        acc.history.append((plan.sgd_noise_multiplier, plan.sample_rate, int(steps_run)))
    if plan.stats_releases:
        acc.history.append((plan.stats_noise_multiplier, 1.0, plan.stats_releases))
    if not acc.history:
        return 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order", category=UserWarning)
        return float(acc.get_epsilon(delta=plan.delta, alphas=ALPHAS))


def clip_rows(values: np.ndarray, bound: float) -> np.ndarray:
    """Each row (one segment's statistic, flattened) scaled down to L2 norm at most ``bound``."""
    flat = values.reshape(values.shape[0], -1)
    norms = np.linalg.norm(flat, axis=1)
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-12))
    return (flat * scale[:, None]).reshape(values.shape)


def noisy_sum(values: np.ndarray, bound: float, noise_multiplier: float, rng: np.random.Generator) -> np.ndarray:
    """``sum_s clip(values[s], bound) + N(0, (noise_multiplier * bound)^2 I)``: the Gaussian mechanism.

    ``values[S, ...]`` holds one statistic per segment; adding or removing a segment moves the sum by at
    most ``bound`` in L2, so this is one release at ``noise_multiplier`` in the accountant.
    """
    total = clip_rows(np.asarray(values, dtype=np.float64), bound).sum(axis=0)
    return total + rng.normal(0.0, noise_multiplier * bound, size=total.shape)


def noisy_sym_sum(mats: np.ndarray, bound: float, noise_multiplier: float, rng: np.random.Generator) -> np.ndarray:
    """:func:`noisy_sum` of symmetric ``mats[S, d, d]``, noise drawn on the upper triangle and mirrored.

    The upper triangle of a segment's clipped matrix has L2 norm at most its Frobenius norm (``<= bound``),
    so one release; mirroring is post-processing.
    """
    total = clip_rows(np.asarray(mats, dtype=np.float64), bound).sum(axis=0)
    d = total.shape[0]
    noise = np.triu(rng.normal(0.0, noise_multiplier * bound, size=(d, d)))
    return total + noise + np.triu(noise, 1).T


def shrink(noisy: np.ndarray, noise_var: float) -> np.ndarray:
    """Positive-part James-Stein shrinkage of a noisy vector towards 0, given its known noise variance.

    ``noisy * max(0, 1 - (n - 2) noise_var / |noisy|^2)`` (``n`` its length; ``n <= 2``: unchanged). It reads
    only the released value and the public noise level, so it is post-processing: it costs no privacy.
    """
    v = np.asarray(noisy, dtype=np.float64)
    n = v.size
    if n <= 2:
        return v.copy()
    factor = max(0.0, 1.0 - (n - 2) * noise_var / max(float(v @ v) if v.ndim == 1 else float((v * v).sum()), 1e-300))
    return v * factor


def stats_releases(config: Any) -> int:
    """One-shot releases of the DP trainer: base rate, prior mean, prior width, and with ``dp_standardise``
    the input mean and second moment."""
    return 3 + (2 if config.dp_standardise else 0)


def segment_means(values: np.ndarray, segment: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """``[len(segments), ...]``: the mean of ``values`` over each segment's rows (0 for a segment without)."""
    index = np.searchsorted(segments, segment)
    keep = (index < segments.size) & (segments[np.minimum(index, segments.size - 1)] == segment)
    flat = values.reshape(values.shape[0], -1)[keep].astype(np.float64)
    counts = np.bincount(index[keep], minlength=segments.size).astype(np.float64)
    sums = np.zeros((segments.size, flat.shape[1]))
    np.add.at(sums, index[keep], flat)
    return (sums / np.maximum(counts, 1.0)[:, None]).reshape((segments.size,) + values.shape[1:])


def dp_standardisation(u: np.ndarray, y: np.ndarray, segment: np.ndarray, train_segs: np.ndarray, plan: DPPlan,
                       config: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """``(u_mean, u_sd, base rate)`` from Gaussian releases over the training segments.

    Each segment contributes its click rate (bound 1; the noisy average kept in ``[1e-3, 0.5]``). Without
    ``dp_standardise`` the inputs are taken as they come (mean 0, sd 1: no budget spent; give inputs on a
    unit scale, standardised with public statistics). With it, each segment also contributes its mean input
    (L2 bound ``dp_input_clip sqrt(D)``) and its mean squared input (bound ``dp_input_clip^2 sqrt(D)``);
    the noisy averages are shrunk (:func:`shrink`, post-processing) towards a standard input (mean 0,
    second moment 1) and the variance floored at 0.01.
    """
    n, dim = train_segs.size, u.shape[1]
    sigma = plan.stats_noise_multiplier
    rate = float(noisy_sum(segment_means(y, segment, train_segs)[:, None], 1.0, sigma, rng)[0] / n)
    rate = float(np.clip(rate, 1e-3, 0.5))
    if not config.dp_standardise:
        return np.zeros(dim), np.ones(dim), rate
    b_mean = config.dp_input_clip * np.sqrt(dim)
    b_sq = config.dp_input_clip ** 2 * np.sqrt(dim)
    mean = shrink(noisy_sum(segment_means(u, segment, train_segs), b_mean, sigma, rng) / n, (sigma * b_mean / n) ** 2)
    sq_stats = segment_means(u.astype(np.float64) ** 2, segment, train_segs)
    sq = 1.0 + shrink(noisy_sum(sq_stats, b_sq, sigma, rng) / n - 1.0, (sigma * b_sq / n) ** 2)
    return mean, np.sqrt(np.maximum(sq - mean ** 2, 0.01)), rate


def dp_prior(heads: tuple[np.ndarray, np.ndarray], mu: np.ndarray, plan: DPPlan, config: Any,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The prior ``N(mu0, s2 I)`` over segment heads from two Gaussian releases.

    ``heads = (modes[S, d], covs[S, d, d])``: each segment's Laplace posterior under ``N(mu, I / segment_l2)``
    with ``mu`` the DP-SGD shared head. A segment's deviation ``dev_s = mode_s - mu`` is clipped to
    ``B = dp_head_clip sqrt(d / segment_l2)``; released are ``sum dev_s`` (bound ``B``) and
    ``sum (|dev_s|^2 + tr cov_s) / d`` (bound ``(B^2 + d / segment_l2) / d``, as ``cov_s <= I / segment_l2``).
    Then ``mu0 = mu + shrink(mean dev)`` and ``s2 = max(mean second moment - |mean dev|^2 / d, jitter)``.
    An isotropic width, not the full ``Sigma0`` of the non-private path: ``d (d + 1) / 2`` noisy entries
    would bury the covariance under the noise at a few hundred segments.
    """
    modes, covs = heads
    n, d = modes.shape
    sigma = plan.stats_noise_multiplier
    bound = config.dp_head_clip * np.sqrt(d / config.segment_l2)
    dev = clip_rows(modes - mu, bound)
    mean_dev = shrink(noisy_sum(dev, bound, sigma, rng) / n, (sigma * bound / n) ** 2)
    width = (np.einsum("sd,sd->s", dev, dev) + np.einsum("sii->s", covs)) / d
    b_width = (bound ** 2 + d / config.segment_l2) / d
    s2 = float(noisy_sum(width[:, None], b_width, sigma, rng)[0] / n) - float(mean_dev @ mean_dev) / d
    return mu + mean_dev, np.eye(d) * max(s2, config.jitter)
