"""The ad segments a worker holds in memory: each one's head and its posterior, least recently used first.

A segment's *head* (``streams.ads_state.SegmentHead``: posterior bytes, feedback marks, closed-through
time, counts) lives in the engine's table under ``h:<segment>``. ``load`` brings a segment in (from its
head, or new from the prior), ``mark`` records that it changed, ``write`` puts every changed head back
(the engine's ``flush``, at every commit), and ``evict_clean`` keeps at most ``max_cached`` segments in
memory by dropping the least recently used ones whose stored head is current (the bound of
:mod:`streams.segment_lru`, which the retention engine keeps too). An evicted segment comes back from its
head when next seen.

Heads carry the event time the segment was last seen (a decision or feedback): a segment idle for
``ads.segment_idle_ttl_s`` of its partition's event time, with no decision a replay could need, *expires*
(:mod:`streams.segment_expiry`): ``expire_due_many`` (the engine's flush, after the block deletes) deletes its
head (a changelog tombstone, committed with the rest of the flush) and forgets it, counted as
``segments_expired``; seen again it starts from the prior (``segments_new``). ``touch_one`` expires an idle
segment a request reaches before any flush did, so the state does not depend on when flushes ran. A segment
whose latest decision is still in a retained pending block is held instead: a replay could need the decision,
and a rebuild reads its open/closed state from the head (blocks of a partition go in request order and every
decision of a segment idle longer than the window is closed, so the latest decision is enough).
``rebuild_idle`` finds the stored heads' last-seen times after a restart or rebalance.

Heads carry the *epoch* (the version of the artifact whose prior the posterior grew from): a head of
another epoch is reset to the current prior when loaded (``segments_reset_by_swap``), and one that cannot
be decoded restarts from the prior (``segments_unreadable``) instead of failing every batch that touches it.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import Counter
from collections.abc import Callable, Iterable

from policy.adapter import Adapter
from streams.ads_state import SegmentHead
from streams.segment_expiry import IdleSegments
from streams.segment_lru import CleanLRU
from streams.store import PartitionStore

log = logging.getLogger("metacart.ads.engine")

SEGMENTS = "ads-segments"
"""The ad engine's table: segment heads under ``h:<segment>``, pending blocks under ``b:<block key>`` (one
table, so both go to the changelog partition of their segment, in the order they were written: a head
that reached the changelog implies the blocks written before it did)."""
HEAD = "h:"


class SegmentCache:
    """Heads and posteriors of the segments in memory (see the module docstring)."""

    def __init__(self, adapter: Adapter, store: PartitionStore, max_cached: int, counters: Counter[str],
                 epoch: bytes, idle_ttl_s: float = 0.0) -> None:
        self.adapter = adapter
        self.store = store
        self.counters = counters
        self.epoch = epoch
        self._heads: CleanLRU[str, SegmentHead] = CleanLRU(max_cached)
        self.idle: IdleSegments[str] = IdleSegments(idle_ttl_s)
        self._latest: dict[str, tuple[int, str]] = {}  # segment -> (offset, request id) of its latest decision

    @property
    def max_cached(self) -> int:
        return self._heads.max_items

    def __len__(self) -> int:
        return len(self._heads)

    def load(self, segment: str, partition: int) -> SegmentHead:
        """The segment's head, its posterior in the adapter; loaded from the table when not in memory."""
        head = self._heads.get(segment)
        if head is not None:
            return head
        raw = self.store.get(SEGMENTS, HEAD + segment, partition)
        if raw is None:
            self.counters["segments_new"] += 1
            return self._cache(segment, SegmentHead(self.epoch, partition), changed=False)
        try:
            head = SegmentHead.decode(raw)
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            # A record this code cannot read (corrupt, or written by an incompatible version); the bad record
            # is overwritten at the next write.
            log.error("segment %s: stored head unreadable (%s: %s); restarting it from the prior",
                      segment, type(exc).__name__, exc)
            self.counters["segments_unreadable"] += 1
            return self._cache(segment, SegmentHead(self.epoch, partition), changed=True)
        if head.epoch != self.epoch:
            head.epoch, head.state = self.epoch, None
            self.counters["segments_reset_by_swap"] += 1
            return self._cache(segment, head, changed=True)
        if head.state is not None:
            self.adapter.load_state(segment, head.state)  # a bad state raises before the head is cached
        self.counters["segments_restored"] += 1
        if math.isfinite(head.last_seen):
            self.idle.seen_one(segment, partition, head.last_seen)
        return self._cache(segment, head, changed=False)

    def seen_one(self, segment: str, partition: int, t: float) -> None:
        """Traffic (a decision, feedback) touched the segment (loaded) at event time ``t``. Not a change: the
        head carries ``t`` at its next write (every decision's window close writes it)."""
        head = self._heads.peek(segment)
        head.last_seen = max(head.last_seen, t)
        self.idle.seen_one(segment, partition, t)

    def decided_one(self, segment: str, offset: int, request_id: str) -> None:
        """A decision of the segment (new, or reloaded with its block): the latest one guards its expiry."""
        if self.idle.enabled and offset >= self._latest.get(segment, (-1, ""))[0]:
            self._latest[segment] = (offset, request_id)

    def touch_one(self, segment: str, partition: int, t: float, retained: Callable[[str], object]) -> None:
        """A request of the segment at event time ``t``: expire it first when idle past its TTL (and its
        latest decision is not ``retained``), then load it and mark it seen."""
        if self.idle.is_idle(segment, t) and not self._held(segment, retained):
            self._expire_one(segment, partition)
        self.load(segment, partition)
        self.seen_one(segment, partition, t)

    def expire_due_many(self, watermarks: Iterable[tuple[int, float]], retained: Callable[[str], object]) -> None:
        """Expire the segments idle at their partition's watermark (from the heap, no scan); one whose
        latest decision is ``retained`` (a request id -> its pending or None) is held for the next flush."""
        for partition, watermark in watermarks:
            for segment in self.idle.due_many(partition, watermark):
                if self._held(segment, retained):
                    self.idle.hold(segment)
                else:
                    self._expire_one(segment, partition)

    def _held(self, segment: str, retained: Callable[[str], object]) -> bool:
        latest = self._latest.get(segment)
        return latest is not None and retained(latest[1]) is not None

    def _expire_one(self, segment: str, partition: int) -> None:
        """Delete the segment's stored head and forget it (memory, posterior, last-seen time)."""
        self.store.delete(SEGMENTS, HEAD + segment, partition)
        self._heads.discard(segment)
        self.adapter.evict(segment)
        self.idle.forget(segment)
        self._latest.pop(segment, None)
        self.counters["segments_expired"] += 1

    def rebuild_idle(self) -> None:
        """Track the last-seen time of every stored head (after a restart or a rebalance; the pending book's
        rebuild then reports the retained decisions with ``decided_one``)."""
        self.idle.clear()
        self._latest.clear()
        if not self.idle.enabled:
            return
        for key, raw in self.store.items(SEGMENTS, HEAD):
            try:
                partition, last_seen = SegmentHead.last_seen_of(raw)
            except struct.error:
                continue  # unreadable: restarted from the prior when next loaded
            if math.isfinite(last_seen):
                self.idle.seen_one(key[len(HEAD):], partition, last_seen)

    def _cache(self, segment: str, head: SegmentHead, changed: bool) -> SegmentHead:
        self._heads.put(segment, head, changed)
        return head

    def mark(self, segment: str) -> None:
        """The segment (loaded) changed: its head is written at the next ``write``."""
        self._heads.mark(segment)

    def write(self) -> int:
        """Put the head (with the posterior's current bytes) of every changed segment; returns how many."""
        changed = self._heads.changed()
        for segment in changed:
            head = self._heads.peek(segment)
            head.state = self.adapter.state_bytes(segment)
            self.store.put(SEGMENTS, HEAD + segment, head.partition, head.encode())
        self._heads.written()
        return len(changed)

    def evict_clean(self) -> None:
        """Drop least recently used segments beyond ``max_cached`` whose stored head is current (not
        changed since the last ``write``); changed ones wait for the next ``write``."""
        victims = self._heads.evict()
        for segment, _ in victims:
            self.adapter.evict(segment)
        self.counters["segments_evicted"] += len(victims)

    def restart_all(self, epoch: bytes) -> None:
        """A new artifact whose prior every segment restarts from: heads in memory now, stored ones when
        loaded (their epoch differs)."""
        self.epoch = epoch
        for segment in self._heads:
            head = self._heads.peek(segment)
            head.epoch, head.state = epoch, None
            self._heads.mark(segment)

    def clear(self) -> None:
        """Forget every segment (the adapter's posteriors are reset by the caller)."""
        self._heads.clear()
        self.idle.clear()
        self._latest.clear()
