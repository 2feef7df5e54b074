"""``metacart status``: what the running system is doing, read from Kafka alone.

- **Workers** from the worker-stats topic: each worker's newest report (policy version, open
  decisions, segments in memory) and its rates over the last two reports, joined to its consumer-group
  membership (workers use their name as Kafka client id): assigned partitions and their lag.
- **Consumer groups** (one per worker id) from the broker: members and the partitions assigned to
  each, committed offsets and the lag behind each partition's end.
- **Segments** from the tail of ad-decisions and the ads posteriors changelog: decisions seen, the
  updates behind the newest decision, the posterior's summary (updates absorbed, trace of its
  covariance), the expected CTR of the ads chosen most often, and how much of the chosen ad's score
  came from the meta-learned prior versus the segment's own evidence (``score = prior + evidence``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.app import topics_for
from streams.kafka_io import client_config, make_consumer
from streams.settings import Settings

RATES = ("decisions", "updates", "dead_letters", "retention_actions", "retention_updates", "batch_events")


@dataclass
class WorkerView:
    worker: str
    group: str
    policy_version: str
    pending: int
    segments_in_memory: int
    last_report_age_s: float
    rates_per_s: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    partitions: list[str] = field(default_factory=list)
    """``topic[partition]`` assigned to this worker (from the group's membership)."""
    lag: int | None = None
    """Messages behind on its partitions (committed offset to end); None when not a group member."""


@dataclass
class GroupView:
    group: str
    state: str
    members: list[dict] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)
    """``topic[partition]`` → messages between the committed offset and the end."""
    total_lag: int = 0


@dataclass
class AdView:
    ad_id: str
    chosen: int
    expected_ctr: float
    """Mean posterior expected reward of this ad when chosen (a click probability for a click model)."""


@dataclass
class SegmentView:
    segment: str
    decisions: int
    updates: int
    """Updates the segment's posterior had absorbed at its newest decision."""
    prior_score: float
    evidence_score: float
    evidence_share: float
    """|evidence| / (|prior| + |evidence|), averaged over the decisions seen: 0 = all prior."""
    top_ads: list[AdView] = field(default_factory=list)
    posterior_updates: int | None = None
    posterior_trace: float | None = None


def collect(settings: Settings, decisions: int = 20000, timeout_s: float = 10.0) -> dict:
    """Read the system's state; returns ``{"workers": [...], "groups": [...], "segments": [...]}``."""
    topics = topics_for(settings)
    reports = _tail(settings, topics.worker_stats.name, 5000, timeout_s)
    workers = _workers([json.loads(m.value()) for m in reports], settings.stats_interval_s)
    groups = sorted({w.group for w in workers} or {settings.worker_id})
    group_views = [_group(settings, g, timeout_s) for g in groups]
    for w in workers:
        for g in group_views:
            member = next((m for m in g.members if m["client"] == w.worker), None)
            if member is not None:
                w.partitions = member["partitions"]
                w.lag = sum(g.lag.get(p, 0) for p in member["partitions"])
    seen = [json.loads(m.value()) for m in _tail(settings, topics.ad_decisions.name, decisions, timeout_s)]
    posteriors = {}
    for g in groups:
        changelog = f"{g}-ads-segments-changelog"
        if changelog in _topic_names(settings, timeout_s):
            posteriors |= _posteriors(_tail(settings, changelog, 10**6, timeout_s))
    return {"workers": [asdict(w) for w in workers], "groups": [asdict(g) for g in group_views],
            "segments": [asdict(s) for s in _segments(seen, posteriors)]}


def _topic_names(settings: Settings, timeout_s: float) -> set[str]:
    return set(AdminClient(client_config(settings.kafka)).list_topics(timeout=timeout_s).topics)


def _tail(settings: Settings, topic: str, n: int, timeout_s: float) -> list:
    """The last ``n`` messages of ``topic`` (spread over its partitions), oldest first per partition."""
    consumer = make_consumer(settings.kafka, f"status-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        ends, tps = {}, []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
                tps.append(TopicPartition(topic, p, max(low, high - max(n // max(len(meta.partitions), 1), 1))))
        if not tps:
            return []
        consumer.assign(tps)
        out, deadline = [], time.monotonic() + timeout_s
        done: set[int] = set()
        while len(done) < len(tps) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10000, timeout=0.2):
                if msg.error() is not None:
                    continue
                if msg.value() is not None:
                    out.append(msg)
                if msg.offset() + 1 >= ends[msg.partition()]:
                    done.add(msg.partition())
        return out
    finally:
        consumer.close()


def _workers(reports: list[dict], interval_s: float) -> list[WorkerView]:
    by_worker: dict[str, list[dict]] = defaultdict(list)
    for r in reports:
        by_worker[r["worker"]].append(r)
    now = time.time()
    views = []
    for name, rs in sorted(by_worker.items()):
        rs.sort(key=lambda r: r["event_time"])
        last = rs[-1]
        t_last = datetime.fromisoformat(last["event_time"]).timestamp()
        rates = {}
        if len(rs) >= 2:
            prev = rs[-2]
            dt = t_last - datetime.fromisoformat(prev["event_time"]).timestamp()
            if dt > 0:
                rates = {k: round((last["counters"].get(k, 0) - prev["counters"].get(k, 0)) / dt, 3)
                         for k in RATES if k in last["counters"]}
        views.append(WorkerView(worker=name, group=name.split("@")[0], policy_version=last["policy_version"],
                                pending=last["pending"], segments_in_memory=last["segments_in_memory"],
                                last_report_age_s=round(now - t_last, 1), rates_per_s=rates,
                                counters=last["counters"]))
    # A worker silent for many report intervals has stopped (or was replaced); keep the live ones.
    live = [v for v in views if v.last_report_age_s <= max(10 * interval_s, 30.0)]
    return live


def _group(settings: Settings, group: str, timeout_s: float) -> GroupView:
    admin = AdminClient(client_config(settings.kafka))
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group].result(timeout_s)
        offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                    request_timeout=timeout_s)[group].result(timeout_s)
    except KafkaException as exc:
        return GroupView(group=group, state=f"unknown ({exc.args[0].str() if exc.args else exc})")
    # The direct ad data path: Faust assigns partition p of the membership topic; the worker reads the
    # ad topics' partition p with its own consumer, whose positions are the ledger group's offsets.
    membership = f"{group}-ads-membership"
    topics = topics_for(settings)
    try:
        ledger = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(f"{group}-ledger")],
                                                   request_timeout=timeout_s)[f"{group}-ledger"].result(timeout_s)
        ledger_offsets = [tp for tp in ledger.topic_partitions
                          if tp.topic in (topics.ad_requests.name, topics.ad_feedback.name)]
    except KafkaException:
        ledger_offsets = []
    members = []
    for m in desc.members:
        tps = m.assignment.topic_partitions if m.assignment else []
        tps = [x for tp in tps for x in ([TopicPartition(topics.ad_requests.name, tp.partition),
                                          TopicPartition(topics.ad_feedback.name, tp.partition)]
                                         if tp.topic == membership else [tp])]
        parts = sorted(f"{tp.topic}[{tp.partition}]" for tp in tps if not tp.topic.endswith("-changelog")
                       and "__assignor" not in tp.topic)
        members.append({"member": m.member_id[-12:], "client": m.client_id, "host": m.host.lstrip("/"),
                        "partitions": parts})
    consumer = make_consumer(settings.kafka, f"status-{uuid.uuid4().hex[:8]}")
    lag = {}
    try:
        for tp in list(offsets.topic_partitions) + ledger_offsets:
            if tp.offset < 0 or tp.topic.endswith("-changelog") or "__assignor" in tp.topic:
                continue
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout_s)
            lag[f"{tp.topic}[{tp.partition}]"] = max(high - tp.offset, 0)
    finally:
        consumer.close()
    state = getattr(desc.state, "name", str(desc.state))
    return GroupView(group=group, state=state, members=members, lag=dict(sorted(lag.items())),
                     total_lag=sum(lag.values()))


def _posteriors(messages: list) -> dict[str, tuple[int, float]]:
    """Newest posterior per segment from the changelog: (updates absorbed, trace of the covariance)."""
    from policy.segment_state import decode_state

    from streams.ads_state import SegmentHead

    out = {}
    for m in messages:
        if m.value() is None or not m.key().startswith(b"h:"):  # pending blocks share the table
            continue
        try:
            state = SegmentHead.decode(m.value()).state
            if state is None:
                continue
            P, _, n = decode_state(state)
        except Exception:  # a state this version cannot read: leave the summary out
            continue
        out[m.key()[2:].decode()] = (n, float(np.trace(P)))
    return out


def _segments(decisions: list[dict], posteriors: dict[str, tuple[int, float]]) -> list[SegmentView]:
    by_segment: dict[str, list[dict]] = defaultdict(list)
    for d in decisions:
        by_segment[d["segment"]].append(d)
    views = []
    for segment, ds in by_segment.items():
        chosen = Counter(d["ad_id"] for d in ds)
        top = [AdView(ad, n, round(float(np.mean([_expected(d) for d in ds if d["ad_id"] == ad])), 5))
               for ad, n in chosen.most_common(3)]
        prior = np.array([d["explanation"]["prior_score"] for d in ds])
        evidence = np.array([d["explanation"]["evidence_score"] for d in ds])
        share = np.abs(evidence) / np.maximum(np.abs(prior) + np.abs(evidence), 1e-12)
        n_post, trace = posteriors.get(segment, (None, None))
        views.append(SegmentView(segment=segment, decisions=len(ds),
                                 updates=max(d["explanation"]["segment_updates"] for d in ds),
                                 prior_score=round(float(prior.mean()), 5),
                                 evidence_score=round(float(evidence.mean()), 5),
                                 evidence_share=round(float(share.mean()), 4), top_ads=top,
                                 posterior_updates=n_post,
                                 posterior_trace=None if trace is None else round(trace, 5)))
    views.sort(key=lambda v: (-v.decisions, v.segment))
    return views


def render(state: dict, segments: int = 10) -> None:
    """Print ``state`` as three tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title="workers (from worker-stats)")
    for col in ("worker", "policy", "partitions", "lag", "open decisions", "segments", "decisions/s", "updates/s",
                "report age"):
        t.add_column(col)
    for w in state["workers"]:
        r = w["rates_per_s"]
        t.add_row(w["worker"], w["policy_version"], str(len(w["partitions"])),
                  "—" if w["lag"] is None else str(w["lag"]), str(w["pending"]), str(w["segments_in_memory"]),
                  f"{r.get('decisions', r.get('retention_actions', 0)):.1f}",
                  f"{r.get('updates', r.get('retention_updates', 0)):.1f}", f"{w['last_report_age_s']:.1f}s")
    if not state["workers"]:
        t.add_row("no worker reported in the last 30 s", *[""] * 8)
    console.print(t)
    g = Table(title="consumer groups (from the broker)")
    for col in ("group", "state", "members: assigned partitions", "lag"):
        g.add_column(col)
    for grp in state["groups"]:
        members = "; ".join(f"{m['host']} {m['member']}: {len(m['partitions'])}" for m in grp["members"]) or "—"
        g.add_row(grp["group"], grp["state"], members, str(grp["total_lag"]))
    console.print(g)
    s = Table(title=f"segments (top {segments} by decisions in the ad-decisions tail)")
    for col in ("segment", "decisions", "updates", "posterior n / trace", "prior | evidence (share)",
                "top ads: chosen, expected CTR"):
        s.add_column(col)
    for seg in state["segments"][:segments]:
        post = "—" if seg["posterior_updates"] is None else f"{seg['posterior_updates']} / {seg['posterior_trace']:.3g}"
        ads = ", ".join(f"{a['ad_id']} {a['chosen']}x {a['expected_ctr']:.3f}" for a in seg["top_ads"])
        s.add_row(seg["segment"], str(seg["decisions"]), str(seg["updates"]), post,
                  f"{seg['prior_score']:.4f} | {seg['evidence_score']:+.4f} ({seg['evidence_share']:.0%})", ads)
    console.print(s)


def _expected(decision: dict) -> float:
    """The decision's posterior-mean expected reward (its score from workers that did not report it)."""
    explanation = decision["explanation"]
    value = explanation.get("expected_reward")
    return float(explanation["score"] if value is None else value)
