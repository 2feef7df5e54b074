"""Simulator logs written as v2 (:mod:`policy.logformat`), streamed so any number of rows fits in memory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from policy.logformat.writer import LogWriter
from policy.simulator.market import Market

T0_US = np.datetime64("2026-01-01T00:00:00", "us")


def simulate_v2(
    market: Market,
    segments: np.ndarray,
    n_rows: int,
    seed: int,
    out: str | os.PathLike[str],
    value_weight: float = 0.0,
    chunk_rows: int = 65536,
    rate_per_s: float = 100.0,
) -> Path:
    """Log ``n_rows`` uniform-random decisions over ``segments`` (drawn uniformly) into the v2 log ``out``.

    Candidate ids are the market's global ad ids; the item table holds the features of every ad offered.
    Rewards: ``click``, ``value`` (purchase value) and ``reward = click + value_weight * value``.
    Timestamps start at 2026-01-01 and advance ``1 / rate_per_s`` seconds a row.
    """
    segments = np.asarray(segments, dtype=np.int64)
    if segments.ndim != 1 or segments.size == 0:
        raise ValueError("segments must be a non-empty 1-D integer array")
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows}")
    rng = np.random.default_rng(seed)
    names = np.asarray(market.segment_names)
    items: dict[int, np.ndarray] = {}
    step_us = int(round(1e6 / rate_per_s))
    with LogWriter(out, source=f"metacart market simulator, seed {seed}, uniform logging") as writer:
        done = 0
        while done < n_rows:
            n = min(chunk_rows, n_rows - done)
            seg = segments[rng.integers(0, segments.size, n)]
            req = market.sample_requests(seg, rng)
            k = req.candidates.shape[1]
            action = rng.integers(0, k, n)
            outcome = market.respond(req, action, rng)
            ads, first = np.unique(req.ad_ids.reshape(-1), return_index=True)
            flat = req.candidates.reshape(-1, req.candidates.shape[2])
            for ad, j in zip(ads.tolist(), first.tolist()):
                if ad not in items:
                    items[ad] = flat[j]
            click = outcome.click.astype(np.float64)
            writer.write_many(
                segment=names[seg], context=req.context, candidate_ids=req.ad_ids,
                action_id=req.ad_ids[np.arange(n), action], propensity=np.full(n, 1.0 / k),
                rewards={"reward": click + value_weight * outcome.value, "click": click, "value": outcome.value},
                timestamp=T0_US + (done + np.arange(n)) * step_us,
            )
            done += n
        ids = np.array(sorted(items), dtype=np.int64)
        writer.write_items(ids, np.stack([items[i] for i in ids]))
    return Path(out)
