"""The ad-placement engine: the part of the ad agent that does not know about Faust.

``process_many`` takes one batch of raw messages (requests and feedback, in arrival order) and returns
what to send (decisions, dead letters). In between it:

1. skips messages below the partition's *ledger* offset (their outputs are visible and their effects
   are in the state: see "Delivery guarantee" in docs/ARCHITECTURE.md), advancing the watermark only;
2. validates each message at the edge (malformed -> dead letter, never an exception);
3. decides all valid requests of the batch in one kernel call per candidate count
   (``policy.adapter.Adapter.decide_many``), a new segment starting from the meta-learned prior; a
   replayed request whose decision is already in the state gets that decision again (same ad, same
   propensity), never a new one;
4. records a ``Pending`` per decision until its attribution window closes in event time;
5. joins clicks and purchases to their decision by request id; with click rewards a click updates the
   segment posterior at once, exactly once; a window that closes without a click applies the zero update
   once; with ``value_weight > 0`` the update ``click + value_weight * value`` is applied at window close;
6. counts duplicates, late and unknown feedback instead of applying it twice.

Defences (issue 11): a group whose decision raises (``KernelInputError`` from an absurd posterior, say) is
decided again request by request, and a request that fails alone becomes a ``serving_failed`` dead letter,
so nothing is skipped and nothing crashes the agent. An event too far ahead in event time is a dead letter
(``event_time_skew``, the rule of ``streams.event_time`` both engines use). At most
``ads.max_cached_segments`` segments stay in memory (``streams.ads_segments``). A segment head holds at
most ``ads.max_head_feedback`` feedback marks: beyond it the segment's oldest windows close early
(``windows_forced_by_head``), so no head nears the producer's 1 MB limit.

State is written only by ``flush``, which the glue calls at every commit, before the input offsets are
committed: new pending blocks, then the head of every changed segment, then the deletes of finished
blocks, all through the ``streams.store.PartitionStore`` both engines use.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from itertools import chain

import numpy as np

from policy.adapter import Adapter
from policy.items import item_key, item_keys
from policy.artifact import ArtifactError, PolicyArtifact
from streams.ads_records import decision_bytes, shape_problem
from streams.ads_state import Pending
from streams.ads_segments import SegmentCache
from streams.segment_expiry import idle_ttl
from streams.event_time import EventClock
from streams.pending import PendingBook
from streams.store import PartitionStore
from streams.edge import Decoder, RawMessage, dead_letter
from streams.pseudonyms import Pseudonyms
from streams.events import AdRequest, Click, DeadLetter, Impression, Purchase
from streams.settings import AdsSettings, StoreSettings
from streams.topics import Topics

log = logging.getLogger("metacart.ads.engine")


@dataclass
class Outputs:
    """What one batch produced: (key, value) pairs for each output topic."""

    decisions: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[bytes, bytes]] = field(default_factory=list)


def _epoch(t: datetime) -> float:
    return t.timestamp()


class AdsEngine:
    """Decides ads and learns from delayed feedback; see the module docstring for the flow."""

    def __init__(self, adapter: Adapter, store: PartitionStore, topics: Topics, ads: AdsSettings,
                 storage: StoreSettings, pseudonyms: Pseudonyms | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.adapter = adapter
        self.pseudonyms = pseudonyms
        self.store = store
        self.topics = topics
        self.settings = ads
        self._requests = Decoder(topics.ad_requests.payload, ads.max_message_bytes)
        self._feedback = Decoder(topics.ad_feedback.payload, ads.max_message_bytes)
        # Rewards waiting for one ``learn_many`` call: (segment, phi, reward, item key), in arrival order.
        self._to_learn: list[tuple[str, np.ndarray, float, int]] = []
        self.book = PendingBook(ads.attribution_window_s, ads.max_open_decisions)
        self._tag = uuid.uuid4().hex[:8]  # makes block keys unique across worker restarts
        self.event_time = EventClock(storage.max_event_time_skew_s, clock)  # watermarks and the skew rule
        self._rebuild_needed = True
        # Input positions: next offset to process per (topic, partition); the ledger: offsets below which
        # every message's outputs are visible and its effects stored; committed: positions at the last commit.
        self.positions: dict[tuple[str, int], int] = {}
        self.ledger: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.counters: Counter[str] = Counter()
        # Heads and posteriors in memory; the epoch is the version of the artifact whose prior they grew from.
        self.segments = SegmentCache(adapter, store, ads.max_cached_segments, self.counters, adapter.version.encode(),
                                     idle_ttl(ads.segment_idle_ttl_s, ads.attribution_window_s))

    # --- the batch entry point -------------------------------------------------------------------

    def process_many(self, messages: Sequence[RawMessage]) -> Outputs:
        out = Outputs()
        if self._rebuild_needed:
            self._rebuild()
        requests: list[tuple[AdRequest, RawMessage]] = []
        requests_topic = self.topics.ad_requests.name
        for msg in messages:
            tp = (msg.topic, msg.partition)
            at = self.positions.get(tp)
            if at is None:
                self._first_message(tp, msg.offset)
            elif msg.offset < at:  # delivered again to this process: already done
                self.counters["redelivered_skipped"] += 1
                continue
            elif msg.offset > at:  # offsets skipped: transaction markers, or messages never delivered
                self.counters["offset_gaps"] += 1
                log.warning("%s[%d]: offsets %d..%d skipped", tp[0], tp[1], at, msg.offset - 1)
            self.positions[tp] = msg.offset + 1
            replayed = msg.offset < self.ledger.get(tp, -1)
            if msg.topic == requests_topic:
                event = self._requests.decode_one(msg.value, msg)  # a RawMessage names its own source
                if replayed:
                    self._skip(msg.partition, event)
                    continue
                if isinstance(event, DeadLetter):
                    self._dead(out, event)
                    continue
                t = event.event_time.timestamp()
                if self._beyond_skew(msg.partition, event, t, msg, out):
                    continue
                if self.pseudonyms is not None:
                    event = self.pseudonyms.event_one(event)
                self.event_time.advance(msg.partition, t)
                requests.append((event, msg))
            else:
                # Feedback may refer to a request of this same batch: decide what came before it first.
                if requests:
                    self._decide(requests, out)
                    requests = []
                event = self._feedback.decode_one(msg.value, msg)
                if replayed:
                    self._skip(msg.partition, event)
                    continue
                if isinstance(event, DeadLetter):
                    self._dead(out, event)
                    continue
                t = event.event_time.timestamp()
                if self._beyond_skew(msg.partition, event, t, msg, out):
                    continue
                self.event_time.advance(msg.partition, t)
                self._feedback_one(event)
        if requests:
            self._decide(requests, out)
        self._close_windows()
        self._learn_now()
        self.segments.evict_clean()
        return out

    def _first_message(self, tp: tuple[str, int], offset: int) -> None:
        """The first message of a partition since the assignment: it must not start above the ledger."""
        ledger = self.ledger.get(tp)
        log.info("%s[%d]: first offset %d, ledger %s", tp[0], tp[1], offset, ledger)
        if ledger is not None and offset > ledger:
            self.counters["ledger_gaps"] += 1
            log.error("%s[%d] starts at offset %d, above the ledger %d: offsets %d..%d may never be processed",
                      tp[0], tp[1], offset, ledger, ledger, offset - 1)
        elif ledger is None and offset > 0:  # nothing committed yet: the log may start above 0 (retention)
            log.warning("%s[%d] has no ledger and starts at offset %d", tp[0], tp[1], offset)

    def _skip(self, partition: int, event: object) -> None:
        """A message below the ledger: its outputs are visible and its effects stored; time still moves."""
        self.counters["replayed_skipped"] += 1
        if not isinstance(event, DeadLetter) and not self.event_time.too_far(partition, _epoch(event.event_time)):
            self.event_time.advance(partition, _epoch(event.event_time))

    # --- decisions -------------------------------------------------------------------------------

    def _decide(self, requests: list[tuple[AdRequest, RawMessage]], out: Outputs) -> None:
        self._learn_now()  # every reward that arrived before these requests is in the posteriors they read
        artifact = self.adapter.artifact
        dx, da = artifact.meta.dx, artifact.meta.da
        by_k: dict[int, list[tuple[AdRequest, RawMessage, list[list[float]]]]] = {}
        seen: set[str] = set()
        for req, msg in requests:
            known = self.book.known(req.request_id)
            if known is not None and known.offset == msg.offset and known.partition == msg.partition:
                # Replayed after a crash between the state flush and the commit: the same decision again.
                self.segments.load(req.segment, msg.partition)
                out.decisions.append((req.segment.encode(), decision_bytes(req, known)))
                self.counters["decisions_reemitted"] += 1
                continue
            if known is not None or req.request_id in seen:
                self.counters["duplicate_requests"] += 1
                self._dead(out, dead_letter(msg.value or b"", msg, "duplicate_request",
                                            f"request id {req.request_id} was already decided"))
                continue
            features = [c.features for c in req.candidates]
            if len(req.context) != dx or any(len(f) != da for f in features):
                self._dead(out, dead_letter(msg.value or b"", msg, "invalid", shape_problem(req, dx, da)))
                continue
            seen.add(req.request_id)
            by_k.setdefault(len(features), []).append((req, msg, features))
        now = datetime.now(timezone.utc)
        for group in by_k.values():
            self._decide_guarded(group, out, now)

    def _decide_guarded(self, group: list[tuple[AdRequest, RawMessage, list[list[float]]]], out: Outputs,
                        now: datetime) -> None:
        """Decide ``group``; if that raises, decide its requests one by one, and a request that fails alone
        becomes a dead letter (``serving_failed``, the error as reason). Never raises for a serving failure:
        an exception here would make Faust restart the agent and commit past the batch undecided."""
        try:
            self._decide_group(group, out, now)  # emits and opens nothing unless the whole group decided
            return
        except (ValueError, ArithmeticError) as exc:  # KernelInputError and StateError are ValueErrors
            error = exc
        self.counters["serving_failed_groups"] += 1
        if len(group) > 1:
            for one in group:
                self._decide_guarded([one], out, now)
            return
        _, msg, _ = group[0]
        self.counters["serving_failed"] += 1
        reason = f"deciding failed under policy {self.adapter.version}: {type(error).__name__}: {error}"
        self._dead(out, dead_letter(msg.value or b"", msg, "serving_failed", reason))

    def _decide_group(self, group: list[tuple[AdRequest, RawMessage, list[list[float]]]], out: Outputs,
                      now: datetime) -> None:
        segments = [req.segment for req, _, _ in group]
        for req, msg, _ in group:
            self._seen(req.segment, msg.partition, _epoch(req.event_time))
        heads = [self.segments.load(req.segment, msg.partition) for req, msg, _ in group]
        context = np.array([req.context for req, _, _ in group], dtype=np.float64)
        k, da = len(group[0][2]), len(group[0][2][0])  # one group: one candidate count; shapes were checked
        candidates = np.fromiter(chain.from_iterable(chain.from_iterable(f for _, _, f in group)), np.float64,
                                 count=len(group) * k * da).reshape(len(group), k, da)
        items = None  # per-item terms off (the artifact's item_capacity 0): no keys to hash
        if self.adapter.item_capacity > 0:
            items = item_keys(c.ad_id for req, _, _ in group for c in req.candidates).reshape(len(group), k)
        decided = self.adapter.decide_many(segments, context, candidates, items=items)
        version = self.adapter.version
        bernoulli = self.adapter.likelihood == "bernoulli"
        opened, emitted = [], []
        for i, (req, msg, _) in enumerate(group):
            choice = int(decided.choices[i])
            score = float(decided.mean_scores[i, choice])
            pending = Pending(
                req.segment, req.candidates[choice].ad_id, msg.partition, _epoch(req.event_time),
                decided.phis_chosen[i], offset=msg.offset, position=choice,
                propensity=float(decided.propensities[i, choice]), score=score,
                prior_score=float(decided.prior_scores[i, choice]), segment_updates=int(decided.n_updates[i]),
                expected=1.0 / (1.0 + math.exp(-score)) if bernoulli else score,
                decided_at=now.timestamp(), policy_version=version)
            opened.append((req.request_id, pending))
            self.segments.decided_one(req.segment, msg.offset, req.request_id)
            emitted.append((req.segment.encode(), decision_bytes(req, pending)))
        out.decisions.extend(emitted)  # only once the whole group decided
        self.book.add_many(opened, self._tag)
        for (rid, pending), head in zip(opened, heads):  # older than its segment's closed windows: closes at once
            if pending.decided_t + self.settings.attribution_window_s <= head.closed_through:
                self.counters["windows_forced"] += 1
                self._close_one(rid, self.book.close(rid))  # closed in the book too: its deadline is passed
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
        head = self.segments.load(pending.segment, pending.partition)
        self.segments.seen_one(pending.segment, pending.partition, _epoch(event.event_time))
        if isinstance(event, Click):
            if pending.clicked:
                self.counters["clicks_duplicate"] += 1
                return
            pending = pending.with_click()
            head.clicks += 1
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
        head.feedback[event.request_id] = (pending.clicked, pending.value)
        self.segments.mark(pending.segment)
        self.book.update(event.request_id, pending)
        if len(head.feedback) > self.settings.max_head_feedback:
            self._shrink_head(pending.segment, pending.partition)

    def _shrink_head(self, segment: str, partition: int) -> None:
        """Close the segment's oldest windows early until its head holds half its feedback cap.

        The head's size is ``header + posterior + feedback entries``; only the entries grow with traffic.
        Every open decision of the segment up to the chosen deadline closes (with or without feedback), so
        ``closed_through`` keeps its meaning.
        """
        head = self.segments.load(segment, partition)
        window = self.settings.attribution_window_s
        for rid in [rid for rid in head.feedback if self.book.get(rid) is None]:
            del head.feedback[rid]  # not open any more: nothing reads its mark
        deadlines = sorted(self.book.get(rid).decided_t + window for rid in head.feedback)
        excess = len(deadlines) - self.settings.max_head_feedback // 2
        if excess <= 0:
            return
        for rid, pending in list(self.book.close_segment_through(partition, segment, deadlines[excess - 1])):
            self._close_one(rid, pending)
            self.counters["windows_forced_by_head"] += 1

    def _learn(self, pending: Pending, reward: float) -> None:
        """Queue one reward for the segment's posterior; ``_learn_now`` applies the queue in order."""
        head = self.segments.load(pending.segment, pending.partition)
        if self.adapter.likelihood == "bernoulli":  # a logistic head learns the click; value rides along
            reward = float(pending.clicked)
        self._to_learn.append((pending.segment, pending.phi, reward, item_key(pending.ad_id)))
        head.n_updates += 1
        self.segments.mark(pending.segment)
        self.counters["updates"] += 1

    # --- event time ------------------------------------------------------------------------------

    def _beyond_skew(self, partition: int, event: AdRequest | Impression | Click | Purchase, t: float,
                     msg: RawMessage, out: Outputs) -> bool:
        """Dead-letter (``event_time_skew``, counted) an event too far ahead (at ``t``, epoch seconds); it
        moves no watermark."""
        if not self.event_time.too_far(partition, t):
            return False
        self.counters["event_time_skew"] += 1
        mark = self.event_time.mark(partition)
        seen = "none yet" if mark is None else datetime.fromtimestamp(mark, timezone.utc).isoformat()
        self._dead(out, dead_letter(msg.value or b"", msg, "event_time_skew",
                                    f"event_time {event.event_time.isoformat()} is more than {self.event_time.max_skew:.0f} s "
                                    f"ahead of partition {partition}'s watermark ({seen}) and of the wall clock"))
        return True

    def _learn_now(self) -> None:
        """Apply the queued rewards in one ``learn_many`` call (the same rank-one updates in the same order
        as one call per reward: one call per closed window cost ~14 µs of Python, one per batch ~1 µs a row).
        Runs before any decision reads a posterior, at the end of each batch and before state is written."""
        rows, self._to_learn = self._to_learn, []
        if not rows:
            return
        segments, phis, rewards, items = zip(*rows)
        self.adapter.learn_many(list(segments), np.stack(phis), np.array(rewards, dtype=np.float64),
                                np.array(items, dtype=np.int64))

    def _close_windows(self) -> None:
        """Close every open decision whose window ended before its partition's watermark."""
        for partition, watermark in self.event_time.items():
            for rid, pending in self.book.due(partition, watermark):
                self._close_one(rid, pending)
                self.counters["windows_closed"] += 1
        for rid, pending in self.book.overflow():
            self._close_one(rid, pending)
            self.counters["windows_forced"] += 1

    def _close_one(self, request_id: str, pending: Pending) -> None:
        head = self.segments.load(pending.segment, pending.partition)
        self.segments.seen_one(pending.segment, pending.partition, pending.decided_t)  # written with the close
        head.closed_through = max(head.closed_through, pending.decided_t + self.settings.attribution_window_s)
        head.feedback.pop(request_id, None)
        self.segments.mark(pending.segment)
        if self.settings.value_weight > 0.0:
            self._learn(pending, float(pending.clicked) + self.settings.value_weight * pending.value)
        elif not pending.clicked:
            self._learn(pending, 0.0)
            head.zero_updates += 1
            self.counters["zero_updates"] += 1

    # --- state -----------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Reload the open decisions of the assigned partitions, with their heads (after a rebalance)."""
        self._rebuild_needed = False

        def current(request_id: str, pending: Pending) -> Pending | None:
            self.segments.decided_one(pending.segment, pending.offset, request_id)
            head = self.segments.load(pending.segment, pending.partition)
            if pending.decided_t + self.settings.attribution_window_s <= head.closed_through:
                return None
            clicked, value = head.feedback.get(request_id, (False, 0.0))
            return pending if not (clicked or value) else replace(pending, clicked=clicked, value=value)

        self.segments.rebuild_idle()
        self.book.rebuild(self.store, current)

    def flush(self, force: bool = True) -> None:
        """Write new pending blocks, then changed segment heads, then delete finished blocks (in that order).

        The glue calls this at every commit, before Faust's producer flush and the offset commit.
        """
        self._learn_now()
        self.counters["blocks_written"] += self.book.write_new(self.store)
        self.counters["heads_written"] += self.segments.write()
        self.segments.evict_clean()
        requests = self.topics.ad_requests.name
        self.counters["blocks_deleted"] += self.book.delete_done(
            self.store, lambda p: self.committed.get((requests, p), -1))
        self.segments.expire_due_many(self.event_time.items(), self.book.known)

    def _seen(self, segment: str, partition: int, t: float) -> None:
        """A request of the segment at event time ``t`` (``SegmentCache.touch_one``: one idle past its TTL
        expires first); queued rewards are applied before a posterior may go."""
        if self.segments.idle.is_idle(segment, t):
            self._learn_now()
        self.segments.touch_one(segment, partition, t, self.book.known)

    def cached_segments(self) -> int:
        """Segments whose head and posterior are in memory."""
        return len(self.segments)

    def commit_positions(self) -> dict[tuple[str, int], int]:
        """The input positions a commit may record: each at least the partition's ledger.

        A worker that replays from below the ledger skips messages there and its positions pass through
        offsets below the ledger; committing those would move the ledger back, and the next worker would
        then re-emit decisions that are already visible.
        """
        ledger = self.ledger
        return {tp: max(offset, ledger.get(tp, offset)) for tp, offset in self.positions.items()}

    def on_committed(self, positions: dict[tuple[str, int], int]) -> None:
        """The outputs and state of everything below ``positions`` are durable and visible."""
        self.committed.update(positions)
        for tp, offset in positions.items():
            if offset > self.ledger.get(tp, -1):
                self.ledger[tp] = offset

    def swap(self, artifact: PolicyArtifact, on_swap: str) -> None:
        """Serve ``artifact`` from the next decision on; ``on_swap`` is "keep" or "reset".

        An artifact for other feature dimensions is refused (``ArtifactError``): the requests in
        flight were built for the current one. Pending decisions keep the phi they were decided
        with; with "keep" their updates land on the carried-over posteriors.
        """
        self._learn_now()  # queued rewards belong to the posteriors decided under the current artifact
        current = self.adapter.artifact.meta
        if (artifact.meta.dx, artifact.meta.da) != (current.dx, current.da):
            raise ArtifactError(
                f"artifact {artifact.version} expects dx={artifact.meta.dx}, da={artifact.meta.da}; "
                f"traffic has dx={current.dx}, da={current.da}")
        kept = self.adapter.swap_artifact(artifact, "keep" if on_swap == "keep" else "reset")
        if not kept:
            # Every segment restarts from the new prior; heads stored under the old epoch are reset
            # when loaded, and the ones in memory now.
            self.segments.restart_all(artifact.version.encode())
        self.counters["policy_swaps"] += 1

    def on_rebalance(self) -> None:
        """Partitions move: forget cached segments, deadlines and positions, reload lazily.

        The glue commits (``flush`` included) before the partitions go.
        """
        self.adapter.reset_all()
        self._to_learn.clear()  # empty: the revoke commit's flush applied it
        self.segments.clear()
        self.book.clear()
        self.event_time.clear()
        self.positions.clear()
        self.ledger.clear()
        self.committed.clear()
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
