"""The ad-placement engine: the part of the ad agent that does not know about Faust.

``process_many`` takes one batch of raw messages (requests and feedback, in arrival order) and returns
what to send (decisions, dead letters). In between it:

1. validates each message at the edge (malformed → dead letter, never an exception);
2. decides all valid requests of the batch in one kernel call per candidate count
   (``policy.adapter.Adapter.decide_many``), a new segment starting from the meta-learned prior;
3. records a ``Pending`` per decision until its attribution window closes in event time;
4. joins clicks and purchases to their decision by request id; with click rewards a click updates the
   segment posterior at once, exactly once; a window that closes without a click applies the zero update
   once; with ``value_weight > 0`` the update ``click + value_weight * value`` is applied at window close;
5. counts duplicates, late and unknown feedback instead of applying it twice;
6. writes changed segment posteriors (and deletes closed pending records) to the state store at most
   every ``state_flush_interval_s``.

State goes through a ``StateStore`` so the Faust glue can route each write to the changelog partition
of its segment, and unit tests can use plain dicts.
"""

from __future__ import annotations

import math

import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

import numpy as np

from policy.adapter import Adapter
from policy.items import item_key, item_keys
from policy.artifact import ArtifactError, PolicyArtifact
from streams.ads_state import Pending
from streams.pending import BookStore, PendingBook
from streams.edge import Decoder, Source, dead_letter
from streams.pseudonyms import Pseudonyms
from streams.events import (AdDecision, AdRequest, Click, DeadLetter, Explanation, Impression,
                            Purchase)
from streams.settings import AdsSettings, StoreSettings
from streams.topics import Topics


class StateStore(BookStore, Protocol):
    """Where segment posteriors and open decisions live (Faust tables in production)."""

    def get_posterior(self, segment: str, partition: int) -> bytes | None: ...
    def put_posterior(self, segment: str, partition: int, value: bytes) -> None: ...


@dataclass
class DictStore:
    """A ``StateStore`` over dicts (for tests and offline replays)."""

    posteriors: dict[str, bytes] = field(default_factory=dict)
    blocks: dict[str, bytes] = field(default_factory=dict)
    marks: dict[str, bytes] = field(default_factory=dict)

    def get_posterior(self, segment: str, partition: int) -> bytes | None:
        return self.posteriors.get(segment)

    def put_posterior(self, segment: str, partition: int, value: bytes) -> None:
        self.posteriors[segment] = value

    def put_block(self, key: str, partition: int, value: bytes) -> None:
        self.blocks[key] = value

    def del_block(self, key: str, partition: int) -> None:
        self.blocks.pop(key, None)

    def iter_blocks(self) -> Iterator[tuple[str, bytes]]:
        return iter(list(self.blocks.items()))

    def get_mark(self, request_id: str, partition: int) -> bytes | None:
        return self.marks.get(request_id)

    def put_mark(self, request_id: str, partition: int, value: bytes) -> None:
        self.marks[request_id] = value

    def del_mark(self, request_id: str, partition: int) -> None:
        self.marks.pop(request_id, None)


@dataclass(frozen=True)
class RawMessage:
    """One consumed message, as the engine needs it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Outputs:
    """What one batch produced: (key, value) pairs for each output topic."""

    decisions: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[bytes, bytes]] = field(default_factory=list)


def _epoch(t: datetime) -> float:
    return t.timestamp()


class AdsEngine:
    """Decides ads and learns from delayed feedback; see the module docstring for the flow."""

    def __init__(self, adapter: Adapter, store: StateStore, topics: Topics, ads: AdsSettings,
                 storage: StoreSettings, pseudonyms: Pseudonyms | None = None) -> None:
        self.adapter = adapter
        self.pseudonyms = pseudonyms
        self.store = store
        self.topics = topics
        self.settings = ads
        self.flush_interval_s = storage.state_flush_interval_s
        self._requests = Decoder(topics.ad_requests.payload, ads.max_message_bytes)
        self._feedback = Decoder(topics.ad_feedback.payload, ads.max_message_bytes)
        self._partition_of: dict[str, int] = {}
        self._dirty: set[str] = set()
        self.book = PendingBook(store, ads.attribution_window_s, ads.max_open_decisions)
        self._tag = uuid.uuid4().hex[:8]  # makes block keys unique across worker restarts
        self._watermark: dict[int, float] = {}
        self._rebuild_needed = True
        self._last_flush = 0.0
        self._epoch = adapter.version.encode()  # version of the artifact whose prior posteriors grew from
        self.counters: Counter[str] = Counter()

    # --- the batch entry point -------------------------------------------------------------------

    def process_many(self, messages: Sequence[RawMessage]) -> Outputs:
        out = Outputs()
        if self._rebuild_needed:
            self.book.rebuild()
            self._rebuild_needed = False
        requests: list[tuple[AdRequest, RawMessage]] = []
        for msg in messages:
            source = Source(msg.topic, msg.partition, msg.offset, msg.key)
            if msg.topic == self.topics.ad_requests.name:
                event = self._requests.decode_one(msg.value, source)
                if isinstance(event, DeadLetter):
                    self._dead(out, event)
                    continue
                if self.pseudonyms is not None:
                    event = self.pseudonyms.event_one(event)
                self._advance(msg.partition, _epoch(event.event_time))
                requests.append((event, msg))
            else:
                # Feedback may refer to a request of this same batch: decide what came before it first.
                if requests:
                    self._decide(requests, out)
                    requests = []
                event = self._feedback.decode_one(msg.value, source)
                if isinstance(event, DeadLetter):
                    self._dead(out, event)
                    continue
                self._advance(msg.partition, _epoch(event.event_time))
                self._feedback_one(event)
        if requests:
            self._decide(requests, out)
        self._close_windows()
        self.flush(force=False)
        return out

    # --- decisions -------------------------------------------------------------------------------

    def _decide(self, requests: list[tuple[AdRequest, RawMessage]], out: Outputs) -> None:
        artifact = self.adapter.artifact
        dx, da = artifact.meta.dx, artifact.meta.da
        by_k: dict[int, list[tuple[AdRequest, int, list[list[float]]]]] = {}
        for req, msg in requests:
            features = [c.features for c in req.candidates]
            if len(req.context) != dx or any(len(f) != da for f in features):
                source = Source(msg.topic, msg.partition, msg.offset, msg.key)
                self._dead(out, dead_letter(msg.value or b"", source, "invalid", _shape_problem(req, dx, da)))
                continue
            by_k.setdefault(len(features), []).append((req, msg.partition, features))
        now = datetime.now(timezone.utc)
        for group in by_k.values():
            self._decide_group(group, out, now)

    def _decide_group(self, group: list[tuple[AdRequest, int, list[list[float]]]], out: Outputs,
                      now: datetime) -> None:
        segments = [req.segment for req, _, _ in group]
        for req, partition, _ in group:
            self._load_segment(req.segment, partition)
        context = np.array([req.context for req, _, _ in group], dtype=np.float64)
        candidates = np.array([features for _, _, features in group], dtype=np.float64)
        items = item_keys(c.ad_id for req, _, _ in group for c in req.candidates).reshape(candidates.shape[:2])
        decided = self.adapter.decide_many(segments, context, candidates, items=items)
        version = self.adapter.version
        bernoulli = self.adapter.likelihood == "bernoulli"
        opened = []
        for i, (req, partition, _) in enumerate(group):
            choice = int(decided.choices[i])
            ad = req.candidates[choice]
            opened.append((req.request_id, Pending(req.segment, ad.ad_id, partition,
                                                   _epoch(req.event_time), decided.phis_chosen[i])))
            score = float(decided.mean_scores[i, choice])
            prior = float(decided.prior_scores[i, choice])
            expected = 1.0 / (1.0 + math.exp(-score)) if bernoulli else score
            decision = AdDecision(
                request_id=req.request_id, user_id=req.user_id, segment=req.segment, slot=req.slot,
                ad_id=ad.ad_id, position=choice, propensity=float(decided.propensities[i, choice]),
                policy_version=version,
                explanation=Explanation(score=score, prior_score=prior, evidence_score=score - prior,
                                        segment_updates=int(decided.n_updates[i]), expected_reward=expected),
                request_time=req.event_time, decided_at=now,
            )
            out.decisions.append((req.segment.encode(), decision.model_dump_json().encode()))
        self.counters["duplicate_requests"] += self.book.add_many(opened, self._tag)
        self.counters["decisions"] += len(group)

    # --- feedback --------------------------------------------------------------------------------

    def _feedback_one(self, event: Impression | Click | Purchase) -> None:
        if isinstance(event, Impression):
            self.counters["impressions"] += 1
            return
        pending = self.book.get(event.request_id)
        if pending is None:
            self.counters[f"{event.type}s_late_or_unknown"] += 1
            return
        if _epoch(event.event_time) > pending.decided_t + self.settings.attribution_window_s:
            self.counters[f"{event.type}s_late_or_unknown"] += 1
            return
        if isinstance(event, Click):
            if pending.clicked:
                self.counters["clicks_duplicate"] += 1
                return
            pending = pending.with_click()
            if self.settings.value_weight == 0.0:
                self._learn(pending, 1.0)
            self.counters["clicks_applied"] += 1
        else:
            if pending.value > 0.0:
                self.counters["purchases_duplicate"] += 1
                return
            pending = pending.with_value(event.value)
            self.counters["purchases_attributed"] += 1
            self.counters["purchase_value"] += event.value
        self.book.update(event.request_id, pending)

    def _learn(self, pending: Pending, reward: float) -> None:
        self._load_segment(pending.segment, pending.partition)
        if self.adapter.likelihood == "bernoulli":  # a logistic head learns the click; value rides along
            reward = float(pending.clicked)
        self.adapter.learn_many([pending.segment], pending.phi[None, :], np.array([reward]),
                                np.array([item_key(pending.ad_id)], dtype=np.int64))
        self._dirty.add(pending.segment)
        self.counters["updates"] += 1

    # --- event time ------------------------------------------------------------------------------

    def _advance(self, partition: int, t: float) -> None:
        if t > self._watermark.get(partition, float("-inf")):
            self._watermark[partition] = t

    def _close_windows(self) -> None:
        """Close every open decision whose window ended before its partition's watermark."""
        for partition, watermark in self._watermark.items():
            for _, pending in self.book.due(partition, watermark):
                self._close_one(pending)
                self.counters["windows_closed"] += 1
        for _, pending in self.book.overflow():
            self._close_one(pending)
            self.counters["windows_forced"] += 1

    def _close_one(self, pending: Pending) -> None:
        if self.settings.value_weight > 0.0:
            self._learn(pending, float(pending.clicked) + self.settings.value_weight * pending.value)
        elif not pending.clicked:
            self._learn(pending, 0.0)
            self.counters["zero_updates"] += 1

    # --- state -----------------------------------------------------------------------------------

    def _load_segment(self, segment: str, partition: int) -> None:
        if segment in self._partition_of:
            return
        self._partition_of[segment] = partition
        raw = self.store.get_posterior(segment, partition)
        if raw is None:
            self.counters["segments_new"] += 1
            return
        epoch, state = _split_epoch(raw)
        if epoch != self._epoch:
            self.counters["segments_reset_by_swap"] += 1
            return
        self.adapter.load_state(segment, state)
        self.counters["segments_restored"] += 1

    def flush(self, force: bool = True) -> None:
        """Write changed posteriors, then drop closed pending records (in that order)."""
        now = time.monotonic()
        if not force and now - self._last_flush < self.flush_interval_s:
            return
        self._last_flush = now
        for segment in self._dirty:
            state = _join_epoch(self._epoch, self.adapter.state_bytes(segment))
            self.store.put_posterior(segment, self._partition_of[segment], state)
        self._dirty.clear()
        self.book.flush_deletes()

    def swap(self, artifact: PolicyArtifact, on_swap: str) -> None:
        """Serve ``artifact`` from the next decision on; ``on_swap`` is "keep" or "reset".

        An artifact for other feature dimensions is refused (``ArtifactError``): the requests in
        flight were built for the current one. Pending decisions keep the phi they were decided
        with; with "keep" their updates land on the carried-over posteriors.
        """
        current = self.adapter.artifact.meta
        if (artifact.meta.dx, artifact.meta.da) != (current.dx, current.da):
            raise ArtifactError(
                f"artifact {artifact.version} expects dx={artifact.meta.dx}, da={artifact.meta.da}; "
                f"traffic has dx={current.dx}, da={current.da}")
        self.flush(force=True)
        kept = self.adapter.swap_artifact(artifact, "keep" if on_swap == "keep" else "reset")
        if not kept:
            # Every segment restarts from the new prior; posteriors stored under the old epoch are
            # ignored from now on, also for segments not in memory.
            self._epoch = artifact.version.encode()
        self.counters["policy_swaps"] += 1

    def on_rebalance(self) -> None:
        """Partitions move: save what changed, forget cached segments and deadlines, reload lazily."""
        self.flush(force=True)
        self.adapter.reset_all()
        self._partition_of.clear()
        self.book.clear()
        self._dirty.clear()
        self._rebuild_needed = True

    def pending_count(self) -> int:
        """Decisions whose attribution window is still open."""
        return len(self.book)

    def _dead(self, out: Outputs, letter: DeadLetter) -> None:
        if self.pseudonyms is not None:
            letter = self.pseudonyms.letter_one(letter)
        self.counters[f"dead_letters_{letter.error_type}"] += 1
        self.counters["dead_letters"] += 1
        out.dead_letters.append((letter.source_topic.encode(), letter.model_dump_json().encode()))


def _shape_problem(req: AdRequest, dx: int, da: int) -> str:
    if len(req.context) != dx:
        return f"context has {len(req.context)} features; the policy expects {dx}"
    bad = next(c for c in req.candidates if len(c.features) != da)
    return f"candidate {bad.ad_id} has {len(bad.features)} features; the policy expects {da}"


def _join_epoch(epoch: bytes, state: bytes) -> bytes:
    return len(epoch).to_bytes(1, "little") + epoch + state


def _split_epoch(raw: bytes) -> tuple[bytes, bytes]:
    n = raw[0]
    return raw[1:1 + n], raw[1 + n:]
