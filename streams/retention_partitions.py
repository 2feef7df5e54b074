"""What the engine holds per user partition: posteriors, risk offsets, budget, review mark (a mixin of
:class:`streams.retention_engine.RetentionEngine`, whose state it uses).

Budget under several partitions and workers. One process cannot see the spend of users on partitions
it does not own, so each user partition gets a fixed share of every cap: ``cap / user_partitions`` for
the total cap and for each segment cap (in micro-units, rounded down), in a :class:`Budget` of its own.
Whatever the assignment of partitions to workers, the global spend of a period is the sum of partition
spends, each within its share, so no cap is exceeded globally. The price: a partition cannot borrow
another's unused share. A user always lives on one partition, so the frequency cap (at most
``max_contacts_per_user`` contacts in any window of ``period_s``) and the never-contact list are exact.

Learning per partition. Segment posteriors and risk offsets are kept per (partition, segment): a
partition learns from its own users only, so state never needs merging and moves with its partition on
a rebalance. (Combining partitions exactly is possible — Gaussian evidence adds in natural parameters —
but is left out.)

Segments in memory. At most ``retention.max_cached_segments`` (partition, segment) pairs keep their posterior
and risk offset in memory, with the bound the ads engine keeps (:class:`streams.segment_lru.CleanLRU`): after
each flush the least recently used ones whose stored state is current leave (``retention_segments_evicted``)
and are read back from the ``segments`` records when next used, with the same posterior. Segments of a
partition whose review is paused between slices stay: the rest of the review decides with them.

Segments in the store. A (partition, segment) that no review decided for and no outcome reached for
``retention.segment_idle_ttl_s`` of its partition's event time *expires* (:mod:`streams.segment_expiry`,
the rule the ads engine keeps): the flush deletes its record (a tombstone in the partition's next block) and
forgets it (``retention_segments_expired``); used again, it starts from the prior. The TTL is longer than an
action's outcome window and grace, so an idle segment has no open action. Its record carries the last-seen
time (days): ``0x00``, float64, then the layout before it (epoch length, epoch, posterior, risk offset), which
is still read (last seen: unknown until used again).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from policy.adapter import Adapter
from policy.retention.artifacts import RetentionArtifacts
from policy.retention.budget import Budget
from policy.retention.risk import RiskModel
from streams.retention_state import TICK, budget_key


@dataclass
class Partition:
    """What the engine holds in memory for one user partition."""

    adapter: Adapter
    risk: RiskModel
    budget: Budget
    last_tick: float | None
    loaded: set[str] = field(default_factory=set)
    """Its segments in memory (posterior in ``adapter``, offset in ``risk``)."""
    dirty: bool = False
    watermark_dirty: bool = False
    users: int = 0
    reviewing: bool = False
    """A review of this partition is under way (paused between slices): its tick is not stored yet."""


class Partitions:
    """Loads a partition's state from the store on first use (see the module docstring)."""

    def _part(self, partition: int) -> Partition:
        part = self._parts.get(partition)
        if part is not None:
            return part
        art = self.artifacts.uplift
        p = self.policy
        adapter = Adapter(art, eps=p.eps, n_draws=p.n_draws, forget=p.forget, scale=p.scale,
                          seed=p.seed * 1009 + partition)
        risk = risk_model(self.artifacts)
        budget = self._load_budget(partition)
        tick = self.store.get("partitions", f"tick:{partition}", partition)
        mark = self.store.get("partitions", f"watermark:{partition}", partition)
        if mark is not None:
            self.event_time.advance(partition, TICK.unpack(mark)[0])
        part = Partition(adapter, risk, budget, None if tick is None else TICK.unpack(tick)[0],
                          users=self._user_counts.get(partition, 0))
        self._parts[partition] = part
        return part

    def _load_budget(self, partition: int) -> Budget:
        """The partition's budget from its records (caps follow the current settings). A budget stored
        as one value (before records) is read once and moved to records at the next flush."""
        legacy = self.store.get("partitions", budget_key(partition), partition)
        if legacy is not None:
            budget = Budget.from_bytes(legacy)
            budget.config = self.budget_config
            budget.mark_all_changed()
            self._legacy_budgets.add(partition)
            return budget
        prefix = budget_key(partition, "")
        return Budget.from_records(self.budget_config, ((k[len(prefix):], v) for k, v in
                                                        self.store.items("partitions", prefix)))

    def _load_segment(self, partition: int, segment: str) -> None:
        """Bring the segment's posterior and risk offset into memory (from its record; a new one starts
        from the prior) and make it the most recently used; a use (a decision, an outcome) at the partition's
        watermark. A segment idle past the TTL expires first, as the flush would have expired it."""
        part = self._part(partition)
        key = (partition, segment)
        now = self.event_time.mark(partition)
        if now is not None and self._idle.is_idle(key, now):
            self._expire_segment(partition, segment)
        if now is not None:
            self._idle.seen_one(key, partition, now)
        if segment in part.loaded:
            self._segments.get(key)
            return
        part.loaded.add(segment)
        self._segments.put(key, None)
        raw = self.store.get("segments", f"{partition}/{segment}", partition)
        if raw is None:
            self.counters["retention_segments_new"] += 1
            return
        record = split_segment_record(raw)
        if math.isfinite(record.last_seen):
            self._idle.seen_one(key, partition, record.last_seen)
        if record.epoch != self._epoch:
            self.counters["retention_segments_reset_by_swap"] += 1
            return
        part.adapter.load_state(segment, record.adapter_state)
        part.risk.load_state(segment, record.risk_state)
        self.counters["retention_segments_restored"] += 1

    def _evict_segments(self) -> None:
        """Drop the least recently used segments beyond the bound whose stored state is current, except
        those of a partition whose review is under way (see the module docstring)."""
        victims = self._segments.evict(pinned=lambda key: self._parts[key[0]].reviewing)
        for (partition, segment), _ in victims:
            part = self._parts[partition]
            part.loaded.discard(segment)
            part.adapter.evict(segment)
            part.risk.evict(segment)
        self.counters["retention_segments_evicted"] += len(victims)

    def _segment_record(self, partition: int, segment: str) -> bytes:
        """The segment's record: last-seen time, epoch, posterior bytes, risk offset (module docstring)."""
        part = self._parts[partition]
        last = self._idle.last_seen((partition, segment))
        adapter_state = part.adapter.state_bytes(segment)
        return (b"\x00" + _LAST.pack(-math.inf if last is None else last) + bytes([len(self._epoch)])
                + self._epoch + len(adapter_state).to_bytes(4, "little") + adapter_state
                + part.risk.state_bytes(segment))

    def _expire_idle_segments(self) -> None:
        """Delete the records of the segments idle at their partition's watermark (flush time, from the
        heap; a partition under review keeps its segments until the review is done)."""
        for partition, part in self._parts.items():
            now = self.event_time.mark(partition)
            if now is None:
                continue
            for key in self._idle.due_many(partition, now):
                if part.reviewing:
                    self._idle.hold(key)
                else:
                    self._expire_segment(*key)

    def _expire_segment(self, partition: int, segment: str) -> None:
        part = self._part(partition)
        self.store.delete("segments", f"{partition}/{segment}", partition)
        self._segments.discard((partition, segment))
        if segment in part.loaded:
            part.loaded.discard(segment)
            part.adapter.evict(segment)
            part.risk.evict(segment)
        self._idle.forget((partition, segment))
        self.counters["retention_segments_expired"] += 1

    def _rebuild_idle(self) -> None:
        """Track the last-seen time of every stored segment record (start, rebalance)."""
        self._idle.clear()
        if not self._idle.enabled:
            return
        for name, raw in self.store.items("segments"):
            last_seen, _ = split_last_seen(raw)
            if math.isfinite(last_seen):
                partition, segment = name.split("/", 1)
                self._idle.seen_one((int(partition), segment), int(partition), last_seen)


_LAST = struct.Struct("<d")


def split_last_seen(raw: bytes) -> tuple[float, bytes]:
    """``(last seen, the rest)`` of a segment record; a record of the layout before it: ``(-inf, raw)``."""
    if raw[:1] == b"\x00":
        return _LAST.unpack_from(raw, 1)[0], raw[1 + _LAST.size:]
    return -math.inf, raw


class SegmentRecord(NamedTuple):
    """The parts of a stored (partition, segment) record (``RetentionPartitions._segment_record``)."""

    last_seen: float  # -inf: the layout before last-seen times, or never seen
    epoch: bytes
    adapter_state: bytes
    risk_state: bytes


def split_segment_record(raw: bytes) -> SegmentRecord:
    """A stored segment record, either layout, in its parts."""
    last_seen, raw = split_last_seen(raw)
    n = raw[0]
    at = 1 + n
    size = int.from_bytes(raw[at:at + 4], "little")
    return SegmentRecord(last_seen, raw[1:at], raw[at + 4:at + 4 + size], raw[at + 4 + size:])


def risk_model(artifacts: RetentionArtifacts) -> RiskModel:
    """A fresh risk model (no segment offsets) of ``artifacts``: one per partition."""
    r = artifacts.risk
    return RiskModel(r.mean, r.sd, r.w1, r.b1, r.w2, r.b2, r.tau2, dict(r.meta))
