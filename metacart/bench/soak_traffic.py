"""The traffic of ``metacart bench soak``: ad requests of ever newer segment generations with new users, and
retention session events, half from new users (the module docstring of :mod:`metacart.bench.soak` has the rates
and clocks).
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from metacart.live.ads import request_payloads
from streams.settings import Settings

if TYPE_CHECKING:
    from metacart.bench.soak import SoakConfig


def segment_name(base: str, generation: int) -> str:
    return f"{base}.g{generation}"


def pick_generation(rng: random.Random, latest: int, live: int) -> int:
    """A generation drawn uniformly from ``0..latest``, or from the ``live`` latest ones when ``live > 0``."""
    return rng.randint(0 if live == 0 else max(0, latest - live + 1), latest)


# --- traffic ---------------------------------------------------------------------------------------

class Traffic:
    """Builds ad requests and session events; keeps what is needed to answer and time them."""

    def __init__(self, cfg: "SoakConfig", settings: Settings, t0_wall: float) -> None:
        from policy.retention.artifacts import load_artifacts
        from policy.simulator.market import Market
        from policy.simulator.retention import draw_segments

        self.cfg = cfg
        self.rng = random.Random(0)
        self.t0_wall = t0_wall
        self.run = uuid.uuid4().hex[:6]
        market = Market()
        gen = np.random.default_rng(0)
        reqs = market.sample_requests(gen.choice(market.heldout_segments, size=2000), gen)
        self.ad_pool = [json.loads(v) for _, v in request_payloads(market, reqs, np.zeros(2000),
                                                                     [f"p{i}" for i in range(2000)])]
        spec = load_artifacts(settings.retention.artifact).world
        names, _ = draw_segments(int(spec["n_markets"]), int(spec["n_cohorts"]), seed=int(spec["seed"]))
        self.retention_bases = [names[i] for i in spec["heldout_index"]]
        self.n_requests = self.n_sessions = self.n_users = 0
        self.sent_at: dict[str, float] = {}

    def generation(self, now: float) -> int:
        return int((now - self.t0_wall) / self.cfg.segment_every_s)

    def ad_request(self, now: float) -> tuple[bytes, bytes, str]:
        body = dict(self.rng.choice(self.ad_pool))
        rid = f"{self.run}-r{self.n_requests}"
        self.n_requests += 1
        body["request_id"], body["user_id"] = rid, f"{self.run}-a{self.n_requests}"
        generation = pick_generation(self.rng, self.generation(now), self.cfg.ad_generations)
        body["segment"] = segment_name(body["segment"], generation)
        t = self.t0_wall + (now - self.t0_wall) * self.cfg.ad_speed
        body["event_time"] = datetime.fromtimestamp(t, timezone.utc).isoformat()
        return body["segment"].encode(), json.dumps(body, separators=(",", ":")).encode(), rid

    def session(self, now: float) -> tuple[bytes, bytes]:
        if self.n_users == 0 or self.rng.random() < 0.5:
            self.n_users += 1
            user = self.n_users
        else:
            user = self.rng.randint(max(1, self.n_users - self.cfg.recent_users), self.n_users)
        uid = f"{self.run}-s{user}"
        base = self.retention_bases[user % len(self.retention_bases)]
        segment = segment_name(base, user // 2000)  # a new retention segment every 2,000 users
        purchase = self.rng.random() < 0.1
        t = self.t0_wall + (now - self.t0_wall) * self.cfg.retention_speed
        self.n_sessions += 1
        body = {"schema_version": 1, "user_id": uid, "segment": segment, "session_id": f"{self.run}-x{self.n_sessions}",
                "kind": "purchase" if purchase else "session_start",
                "value": round(self.rng.uniform(5, 80), 2) if purchase else 0.0,
                "event_time": datetime.fromtimestamp(t, timezone.utc).isoformat()}
        return uid.encode(), json.dumps(body, separators=(",", ":")).encode()
