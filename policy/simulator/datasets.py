"""Logged bandit data drawn from the simulated market, in the layout of :mod:`policy.logs`.

Rows are interleaved across segments in a seeded random order (as a live system would log them), not
grouped; use :meth:`policy.logs.LoggedData.subset` or :meth:`~policy.logs.LoggedData.segment_rows` to
get one segment's rows.
"""

from __future__ import annotations

import numpy as np

from policy.logs import LoggedData
from policy.simulator.market import Market

LOGGING_POLICIES = ("uniform",)


def simulate_logs(
    market: Market,
    segments: np.ndarray,
    n_per_segment: int,
    seed: int,
    value_weight: float = 0.0,
    logging: str = "uniform",
) -> LoggedData:
    """Log ``n_per_segment`` decisions in each of ``segments`` under a logging policy.

    Parameters
    ----------
    market
        The world (its current theta is used; drift is not advanced).
    segments
        int[s], segment indices (duplicates log that segment more than once).
    n_per_segment
        Decisions per listed segment.
    seed
        Seeds requests, actions and outcomes; equal arguments give equal logs.
    value_weight
        ``reward = click + value_weight * value``, the reward used by
        :meth:`Market.expected_reward` with the same weight.
    logging
        ``"uniform"``: each candidate with probability 1/K (the propensity logged).

    Returns
    -------
    LoggedData
        ``segment_names`` are all of the market's names; ``click`` and ``value`` are included.
    """
    if logging not in LOGGING_POLICIES:
        raise ValueError(f"unknown logging policy {logging!r}; known: {LOGGING_POLICIES}")
    if n_per_segment < 1:
        raise ValueError(f"n_per_segment must be >= 1, got {n_per_segment}")
    segments = np.asarray(segments)
    if segments.ndim != 1 or segments.size == 0 or not np.issubdtype(segments.dtype, np.integer):
        raise ValueError("segments must be a non-empty 1-D integer array")
    rng = np.random.default_rng(seed)
    order = rng.permutation(segments.size * n_per_segment)
    seg = np.repeat(segments.astype(np.int64), n_per_segment)[order]
    requests = market.sample_requests(seg, rng)
    k = requests.candidates.shape[1]
    action = rng.integers(0, k, seg.shape[0])
    outcomes = market.respond(requests, action, rng)
    click = outcomes.click.astype(np.float64)
    return LoggedData(
        segment=seg,
        segment_names=tuple(market.segment_names),
        context=requests.context,
        candidates=requests.candidates,
        action=action,
        reward=click + value_weight * outcomes.value,
        propensity=np.full(seg.shape[0], 1.0 / k),
        click=click,
        value=outcomes.value,
        candidate_ids=requests.ad_ids,
    )
