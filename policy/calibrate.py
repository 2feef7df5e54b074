"""Calibrating the learned prior's width by offline replay of the Thompson policy (torch-free)."""

from __future__ import annotations

from typing import Any

import numpy as np

from policy.artifact import PolicyArtifact
from policy.train_config import TrainConfig


def replay_rewards(
    artifact: PolicyArtifact, prep: Any, segments: np.ndarray, config: TrainConfig
) -> dict[float, tuple[float, float]]:
    """Offline replay (Li, Chu, Langford & Wang, WSDM 2011) of the artifact's Thompson policy.

    For every candidate prior scale ``c`` in ``config.calibrate_prior_scales`` a policy whose segments
    start at ``N(mu0, c * Sigma0)`` replays each segment's logged events in logged order: it picks a
    candidate, and the event counts (and its reward is learned) only if the pick equals the logged action
    and a uniform draw falls below ``p_min / propensity`` (rejection sampling that makes any
    full-support logging policy look uniform). Returns ``{c: mean reward over counted events}``, an
    unbiased estimate of each policy's reward over its first ``~calibrate_max_events / K`` decisions,
    and its standard error (``{c: (mean, se)}``). All scales share the features, the acceptance draws
    and the policy seed.

    ``prep`` holds the logs grouped by segment (``policy.train``'s prepared data): ``counts``, ``starts``
    and ``order`` (rows of each segment in logged order), ``context``, ``candidates``, ``action``,
    ``propensity`` and the fitted reward ``y``.
    """
    from policy.adapter import Adapter

    lengths = np.minimum(prep.counts[segments], config.calibrate_max_events)
    rounds = int(lengths.max())
    rows = np.full((segments.size, rounds), -1, dtype=np.int64)
    for b, s in enumerate(segments):
        rows[b, : lengths[b]] = prep.order[prep.starts[s] : prep.starts[s] + lengths[b]]
    p_min = float(prep.propensity.min())
    accept = np.random.default_rng(config.seed + 31).random(rows.shape)
    policies = {
        c: Adapter(artifact, eps=config.calibrate_eps, n_draws=config.calibrate_n_draws,
                   seed=config.seed + 37, prior_scale=c)
        for c in config.calibrate_prior_scales
    }
    features = next(iter(policies.values()))
    totals = {c: [0.0, 0.0, 0] for c in policies}
    for j in range(rounds):
        active = np.flatnonzero(rows[:, j] >= 0)
        idx = rows[active, j]
        segs = segments[active]
        phis = features.phi_many(prep.context[idx], prep.candidates[idx])
        kv = None if getattr(prep, "k_valid", None) is None else prep.k_valid[idx]
        gate = accept[active, j] * prep.propensity[idx] < p_min
        for c, policy in policies.items():
            dec = policy.decide_phis(segs, phis, kv)
            hit = gate & (dec.choices == prep.action[idx])
            if hit.any():
                policy.learn_many(segs[hit], dec.phis_chosen[hit], prep.y[idx][hit])
                got = prep.y[idx][hit]
                totals[c][0] += float(got.sum())
                totals[c][1] += float((got * got).sum())
                totals[c][2] += int(hit.sum())
    out: dict[float, tuple[float, float]] = {}
    for c, (total, total_sq, count) in totals.items():
        n = max(count, 1)
        mean = total / n
        var = max(total_sq / n - mean * mean, 0.0)
        out[c] = (mean, float(np.sqrt(var / max(n - 1, 1))))
    return out
