"""The market, live against Kafka: a closed loop around the worker.

Requests go out at ``rate`` per wall-clock second, stamped in simulated event time that runs ``speed``
times faster than the wall clock (so a 10-minute attribution window passes in 10 s at speed 60). Each
decision read back is answered by the simulator: a click after its delay, a purchase after that, sent
when simulated time reaches their event time — never earlier, so event-time windows behave as in
production. Because the simulator knows the truth, every decision is scored against the random and
the oracle choice (expected click probability), and latency is measured from produce to consume.
"""

from __future__ import annotations

import heapq
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from policy.simulator.market import Market, MarketConfig, Requests
from streams.app import topics_for
from streams.kafka_io import ensure_topics, make_producer, tail_consumer
from streams.settings import Settings


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


def request_payloads(market: Market, reqs: Requests, times: np.ndarray, ids: list[str]
                     ) -> list[tuple[bytes, bytes]]:
    """(key, JSON value) of an ``AdRequest`` per simulated request, keyed by segment."""
    out = []
    names = market.segment_names
    for i, rid in enumerate(ids):
        seg = names[int(reqs.segment[i])]
        body = {
            "schema_version": 1,
            "request_id": rid,
            "user_id": f"u{int(reqs.user_ids[i])}",
            "segment": seg,
            "slot": "main",
            "context": reqs.context[i].round(6).tolist(),
            "candidates": [{"ad_id": f"ad{int(a)}", "features": f}
                           for a, f in zip(reqs.ad_ids[i], reqs.candidates[i].round(6).tolist())],
            "event_time": _iso(float(times[i])),
        }
        out.append((seg.encode(), json.dumps(body, separators=(",", ":")).encode()))
    return out


def feedback_payload(kind: str, rid: str, segment: str, ad_id: str, t: float, value: float = 0.0
                     ) -> tuple[bytes, bytes]:
    body = {"schema_version": 1, "type": kind, "request_id": rid, "segment": segment, "ad_id": ad_id,
            "event_time": _iso(t)}
    if kind == "purchase":
        body["value"] = round(value, 4)
    return segment.encode(), json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class LiveConfig:
    rate: float = 400.0
    """Ad requests per wall-clock second."""
    duration_s: float = 60.0
    """How long requests are produced (then the loop drains outstanding decisions)."""
    speed: float = 60.0
    """Simulated event-time seconds per wall-clock second."""
    seed: int = 0
    """Seed of the traffic (the world itself is ``MarketConfig()``'s, as in training)."""
    segments: str = "heldout"
    """Which segments send traffic: ``heldout`` (never seen in training), ``train`` or ``all``."""
    drain_s: float = 5.0
    """After the last request, wait this long for its decision."""


@dataclass
class LiveStats:
    """What the loop measured so far."""

    sent: int = 0
    decided: int = 0
    clicks: int = 0
    purchases: int = 0
    revenue: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    exp_policy: list[float] = field(default_factory=list)
    exp_random: list[float] = field(default_factory=list)
    exp_oracle: list[float] = field(default_factory=list)
    seg_rank: list[int] = field(default_factory=list)
    """For each decision: how many decisions its segment had before (adaptation progress)."""
    versions: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        pol, rnd, orc = (float(np.mean(x)) if x else float("nan")
                         for x in (self.exp_policy, self.exp_random, self.exp_oracle))
        return {
            "requests_sent": self.sent,
            "decisions": self.decided,
            "clicks": self.clicks,
            "purchases": self.purchases,
            "revenue": round(self.revenue, 2),
            "ctr_realised": self.clicks / max(self.decided, 1),
            "ctr_expected_policy": pol,
            "ctr_expected_random": rnd,
            "ctr_expected_oracle": orc,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "decisions_per_s": self.decided / max(time.monotonic() - self.started, 1e-9),
            "policy_versions": self.versions,
        }


def run_live(settings: Settings, cfg: LiveConfig,
             on_tick: Callable[[LiveStats], None] | None = None) -> dict:
    """Run the loop for ``cfg.duration_s``; returns ``LiveStats.summary()`` plus the raw series."""
    topics = topics_for(settings)
    ensure_topics(settings.kafka, topics.all())
    market = Market(MarketConfig())
    rng = np.random.default_rng(cfg.seed)
    pool = {"heldout": market.heldout_segments, "train": market.train_segments,
            "all": np.arange(len(market.segment_names))}[cfg.segments]
    producer = make_producer(settings.kafka)
    consumer = tail_consumer(settings.kafka, topics.ad_decisions.name, **{"fetch.wait.max.ms": 10})

    stats = LiveStats()
    outstanding: dict[str, tuple] = {}
    feedback: list[tuple[float, int, bytes, bytes]] = []  # (event time, tiebreak, key, value)
    seen_per_segment: dict[int, int] = {}
    t_wall0 = time.time()
    run_id = uuid.uuid4().hex[:6]
    tick = 0.02
    next_tick = time.monotonic()
    end_send = next_tick + cfg.duration_s
    credit = 0.0
    last_report = 0.0
    while True:
        now_m = time.monotonic()
        sim_now = t_wall0 + (time.time() - t_wall0) * cfg.speed
        if now_m < end_send:
            credit += cfg.rate * tick
            n = int(credit)
            credit -= n
            if n:
                reqs = market.sample_requests(rng.choice(pool, size=n), rng)
                ids = [f"{run_id}-{stats.sent + i}" for i in range(n)]
                times = np.full(n, sim_now)
                sent_at = time.perf_counter()
                for i, (key, value) in enumerate(request_payloads(market, reqs, times, ids)):
                    producer.produce(topics.ad_requests.name, key=key, value=value)
                    outstanding[ids[i]] = (reqs, i, sent_at, sim_now)
                stats.sent += n
        elif not outstanding or now_m > end_send + cfg.drain_s:
            break
        producer.poll(0)
        _read_decisions(consumer, market, outstanding, feedback, stats, seen_per_segment, rng)
        while feedback and feedback[0][0] <= sim_now:
            _, _, key, value = heapq.heappop(feedback)
            producer.produce(topics.ad_feedback.name, key=key, value=value)
        if on_tick is not None and now_m - last_report > 0.5:
            on_tick(stats)
            last_report = now_m
        next_tick += tick
        time.sleep(max(0.0, next_tick - time.monotonic()))
    producer.flush(10)
    consumer.close()
    summary = stats.summary()
    summary["series"] = {"exp_policy": stats.exp_policy, "exp_random": stats.exp_random,
                         "exp_oracle": stats.exp_oracle, "seg_rank": stats.seg_rank}
    summary["latencies_ms"] = stats.latencies_ms
    return summary


def _read_decisions(consumer, market: Market, outstanding: dict, feedback: list, stats: LiveStats,
                    seen_per_segment: dict[int, int], rng: np.random.Generator) -> None:
    msgs = consumer.consume(num_messages=5000, timeout=0)
    got = []
    now = time.perf_counter()
    for msg in msgs:
        if msg.error():
            continue
        d = json.loads(msg.value())
        item = outstanding.pop(d["request_id"], None)
        if item is None:
            continue
        got.append((d, item))
        stats.latencies_ms.append((now - item[2]) * 1000.0)
        stats.versions[d["policy_version"]] = stats.versions.get(d["policy_version"], 0) + 1
    if not got:
        return
    # Score and answer all decisions of this poll in one vectorised call per field.
    seg = np.array([it[0].segment[it[1]] for _, it in got])
    ctx = np.stack([it[0].context[it[1]] for _, it in got])
    cand = np.stack([it[0].candidates[it[1]] for _, it in got])
    choice = np.array([d["position"] for d, _ in got])
    p = market.click_prob(seg, ctx, cand)
    rows = np.arange(len(got))
    stats.exp_policy.extend(p[rows, choice].tolist())
    stats.exp_random.extend(p.mean(axis=1).tolist())
    stats.exp_oracle.extend(p.max(axis=1).tolist())
    for s in seg.tolist():
        stats.seg_rank.append(seen_per_segment.get(s, 0))
        seen_per_segment[s] = seen_per_segment.get(s, 0) + 1
    reqs = Requests(segment=seg, context=ctx, candidates=cand,
                    ad_ids=np.zeros((len(got), cand.shape[1]), dtype=np.int64),
                    user_ids=np.zeros(len(got), dtype=np.int64))
    outcome = market.respond(reqs, choice, rng)
    stats.decided += len(got)
    for i, (d, item) in enumerate(got):
        if not outcome.click[i]:
            continue
        t_click = item[3] + float(outcome.click_delay_s[i])
        key, value = feedback_payload("click", d["request_id"], d["segment"], d["ad_id"], t_click)
        heapq.heappush(feedback, (t_click, stats.clicks, key, value))
        stats.clicks += 1
        if outcome.purchase[i]:
            t_buy = t_click + float(outcome.purchase_delay_s[i])
            key, value = feedback_payload("purchase", d["request_id"], d["segment"], d["ad_id"], t_buy,
                                          float(outcome.value[i]))
            heapq.heappush(feedback, (t_buy, -stats.clicks, key, value))
            stats.purchases += 1
            stats.revenue += float(outcome.value[i])
