"""Builders for integration tests: simulator requests with chosen event times, feedback, stats."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np

from policy.simulator.market import Market
from metacart.live.ads import feedback_payload, request_payloads

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
_MARKET = Market()


def market() -> Market:
    return _MARKET


def requests_for(segment: int, times: list[float], prefix: str, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """Valid AdRequest payloads for one segment at the given event times (seconds after T0)."""
    rng = np.random.default_rng(seed)
    reqs = _MARKET.sample_requests(np.full(len(times), segment), rng)
    ids = [f"{prefix}-{i}" for i in range(len(times))]
    return request_payloads(_MARKET, reqs, T0 + np.asarray(times, dtype=float), ids)


def mixed_requests(n: int, prefix: str, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """Valid requests spread over the held-out segments."""
    rng = np.random.default_rng(seed)
    segs = rng.choice(_MARKET.heldout_segments, size=n)
    reqs = _MARKET.sample_requests(segs, rng)
    ids = [f"{prefix}-{i}" for i in range(n)]
    return request_payloads(_MARKET, reqs, T0 + np.arange(n, dtype=float), ids)


def click(request_id: str, segment: str, t: float) -> tuple[bytes, bytes]:
    return feedback_payload("click", request_id, segment, "ad0", T0 + t)


def latest_stats(msgs: list) -> dict[str, dict]:
    """The newest WorkerStats per worker."""
    out: dict[str, dict] = {}
    for m in msgs:
        s = json.loads(m.value())
        out[s["worker"]] = s
    return out


def counter(msgs: list, name: str) -> float:
    """A counter summed over the newest report of every worker."""
    return sum(s["counters"].get(name, 0) for s in latest_stats(msgs).values())
