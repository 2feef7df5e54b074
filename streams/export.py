"""Live decisions into training and evaluation data: ``ad-decisions`` ⋈ ``ad-requests`` ⋈ ``ad-feedback`` → v2.

Each topic is read from its first offset up to the end offsets taken when the export starts (a fixed
topic range), then joined by ``request_id``:

- the **request** gives the segment, the context and the offered candidates with their features;
- the **decision** gives the chosen ad, its slot/position, the propensity and the policy version (the first
  decision per request is kept: the worker delivers at least once);
- the **feedback** inside the attribution window (``click``/``purchase`` event time within
  ``attribution_window_s`` of the request's event time) gives ``click`` (0/1) and ``value`` (sum of
  purchase values); ``reward = click + value_weight * value``.

A decision is exported only once its window has closed: its request time plus the window is at or before
the latest event time seen on the three topics (the watermark). Later ones are counted as ``open``.
``since``/``until`` keep decisions whose request time falls in ``[since, until)`` (a time range).

Ad ids (strings) become int64 item ids by a stable hash (BLAKE2b, 63 bits); the item table keeps the
original id in ``item_key`` and is time-versioned (``valid_from``) when an ad's features change.
Messages that do not parse are skipped and counted (the worker already dead-lettered them).
The requests' user ids (raw: the shop writes them) are replaced by the workers' pseudonyms
(:mod:`streams.pseudonyms`, same key), so the exported log carries pseudonyms only.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from pydantic import TypeAdapter, ValidationError

from policy.logformat.writer import LogWriter
from streams.app import topics_for
from streams.events import AdDecision, AdFeedback, AdRequest
from streams.kafka_io import make_consumer
from streams.pseudonyms import pseudonyms_for
from streams.settings import KafkaSettings, Settings

_FEEDBACK = TypeAdapter(AdFeedback)


def item_id(ad_id: str) -> int:
    """Stable non-negative int64 id of an ad id string."""
    return int.from_bytes(hashlib.blake2b(ad_id.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)


@dataclass
class ExportSummary:
    """What an export read and wrote."""

    rows: int = 0
    clicks: int = 0
    purchases: int = 0
    open: int = 0
    outside_range: int = 0
    no_request: int = 0
    duplicate_decisions: int = 0
    unparsable: int = 0
    items: int = 0
    watermark: str | None = None
    read: dict[str, int] = field(default_factory=dict)


def read_topic(kafka: KafkaSettings, topic: str, timeout_s: float = 60.0) -> list[bytes]:
    """Every message value of ``topic`` from its first offset up to its end offsets taken now."""
    consumer = make_consumer(kafka, f"export-{os.getpid()}-{topic}", **{"enable.auto.commit": False,
                                                                         "enable.partition.eof": True})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaException(f"topic {topic} does not exist")
        ends: dict[int, int] = {}
        starts = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, low))
        out: list[bytes] = []
        if not ends:
            return out
        consumer.assign(starts)
        deadline = time.monotonic() + timeout_s
        done: set[int] = set()
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end offsets within {timeout_s:.0f} s")
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        if msg.partition() in ends and msg.offset() >= ends[msg.partition()]:
                            done.add(msg.partition())
                        continue
                    raise KafkaException(msg.error())
                p = msg.partition()
                if msg.offset() < ends[p]:
                    out.append(msg.value())
                if msg.offset() + 1 >= ends[p]:
                    done.add(p)
        return out
    finally:
        consumer.close()


def export_ads(settings: Settings, out: str | os.PathLike[str], *, since: datetime | None = None,
               until: datetime | None = None, value_weight: float = 0.0,
               attribution_window_s: float | None = None, timeout_s: float = 120.0) -> ExportSummary:
    """Export the ad decisions on ``settings``' topics into the v2 log directory ``out``."""
    pseudonyms = pseudonyms_for(settings)  # the shop writes raw ids: the exported log carries pseudonyms only
    topics = topics_for(settings)
    window = attribution_window_s if attribution_window_s is not None else settings.ads.attribution_window_s
    summary = ExportSummary()
    raw = {name: read_topic(settings.kafka, spec.name, timeout_s)
           for name, spec in (("requests", topics.ad_requests), ("decisions", topics.ad_decisions),
                              ("feedback", topics.ad_feedback))}
    summary.read = {k: len(v) for k, v in raw.items()}
    watermark = None

    def later(t: datetime) -> None:
        nonlocal watermark
        watermark = t if watermark is None or t > watermark else watermark

    requests: dict[str, AdRequest] = {}
    for value in raw["requests"]:
        try:
            r = AdRequest.model_validate_json(value)
        except ValidationError:
            summary.unparsable += 1
            continue
        if pseudonyms is not None:
            r = pseudonyms.event_one(r)
        requests.setdefault(r.request_id, r)
        later(r.event_time)
    feedback: dict[str, list] = defaultdict(list)
    for value in raw["feedback"]:
        try:
            f = _FEEDBACK.validate_json(value)
        except ValidationError:
            summary.unparsable += 1
            continue
        feedback[f.request_id].append(f)
        later(f.event_time)
    decisions: dict[str, AdDecision] = {}
    for value in raw["decisions"]:
        try:
            d = AdDecision.model_validate_json(value)
        except ValidationError:
            summary.unparsable += 1
            continue
        if d.request_id in decisions:
            summary.duplicate_decisions += 1
            continue
        decisions[d.request_id] = d
    summary.watermark = watermark.isoformat() if watermark else None

    rows = []
    for rid, d in decisions.items():
        req = requests.get(rid)
        if req is None:
            summary.no_request += 1
            continue
        t = req.event_time
        if (since is not None and t < since) or (until is not None and t >= until):
            summary.outside_range += 1
            continue
        if watermark is None or (watermark - t).total_seconds() < window:
            summary.open += 1
            continue
        click = value = 0.0
        bought = 0
        for f in feedback.get(rid, ()):
            dt = (f.event_time - t).total_seconds()
            if f.ad_id != d.ad_id or not 0.0 <= dt <= window:
                continue
            if f.type == "click":
                click = 1.0
            elif f.type == "purchase":
                value += f.value
                bought += 1
        rows.append((req, d, click, value))
        summary.clicks += int(click)
        summary.purchases += bought
    rows.sort(key=lambda row: row[0].event_time)
    summary.rows = len(rows)
    if not rows:
        raise ValueError(f"no decision to export: {summary}")
    _write(out, rows, value_weight, summary)
    return summary


def _write(out: str | os.PathLike[str], rows: list, value_weight: float, summary: ExportSummary) -> None:
    versions: dict[int, list[tuple[np.datetime64, tuple[float, ...], str]]] = defaultdict(list)
    with LogWriter(Path(out), source="metacart export: ad-decisions joined with ad-requests and ad-feedback") as w:
        for start in range(0, len(rows), 65536):
            part = rows[start:start + 65536]
            ts = np.array([r.event_time.replace(tzinfo=None).isoformat() for r, *_ in part], dtype="datetime64[us]")
            ids = []
            for (req, *_), t in zip(part, ts):
                row_ids = []
                for c in req.candidates:
                    iid = item_id(c.ad_id)
                    row_ids.append(iid)
                    feats = tuple(c.features)
                    if not versions[iid] or versions[iid][-1][1] != feats:
                        versions[iid].append((t, feats, c.ad_id))
                ids.append(np.array(row_ids, dtype=np.int64))
            click = np.array([c for _, _, c, _ in part])
            value = np.array([v for _, _, _, v in part])
            w.write_many(
                segment=[r.segment for r, *_ in part], timestamp=ts,
                context=np.array([r.context for r, *_ in part], dtype=np.float32),
                candidate_ids=ids, action_id=np.array([item_id(d.ad_id) for _, d, *_ in part]),
                propensity=np.array([d.propensity for _, d, *_ in part]),
                rewards={"reward": click + value_weight * value, "click": click, "value": value},
                extra={"request_id": [r.request_id for r, *_ in part], "user_id": [r.user_id for r, *_ in part],
                       "slot": [d.slot for _, d, *_ in part], "position": np.array([d.position for _, d, *_ in part]),
                       "policy_version": [d.policy_version for _, d, *_ in part]},
            )
        item_rows = []
        for iid, vs in versions.items():
            vs.sort(key=lambda v: v[0])
            kept = [vs[0]]
            for v in vs[1:]:
                if v[1] != kept[-1][1]:
                    kept.append(v)
            # The first version is valid from the beginning of time: a row never predates its item.
            kept[0] = (np.datetime64("1970-01-01T00:00:00", "us"),) + kept[0][1:]
            item_rows += [(iid,) + v for v in kept]
        summary.items = len(versions)
        w.write_items(np.array([r[0] for r in item_rows]), np.array([r[2] for r in item_rows]),
                      valid_from=np.array([r[1] for r in item_rows], dtype="datetime64[us]"),
                      extra={"item_key": [r[3] for r in item_rows]})
