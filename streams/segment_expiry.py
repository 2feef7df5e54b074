"""The bound both engines keep on the segments they *store*: a segment idle for ``ttl`` of its partition's
event time expires (its stored state is deleted; seen again, it starts from the meta-prior like a new one).

A segment is *seen* when traffic touches it: a decision, feedback, an outcome (each engine says which, with
the event time). It is *idle at* ``t`` when ``last_seen + ttl <= t``. Expiry is decided by event time only,
so replaying the same input reaches the same state: the engines expire an idle segment both when their
flush finds it (``due_many``, against the partition's watermark) and when traffic touches it after it went
idle (``is_idle``, before the touch counts), whichever comes first.

Work is bounded: one heap entry per tracked key, ordered by its last-seen time when pushed; ``due_many``
pops only entries that have reached the TTL (an entry whose key was seen since is pushed again at its new
time), so a flush costs O(expired + re-pushed · log n), never a scan of all segments. A candidate the caller
cannot expire yet (something open that a replay could need) is ``hold``-ed and offered again at the next
``due_many`` of its partition until it expires or is seen.

``ttl`` 0 turns expiry off (nothing is tracked). The engines use ``idle_ttl``: never shorter than what can
stay open (an attribution window, an outcome window and its grace), so an idle segment has nothing open. The ads engine keys it by segment, the retention engine by
``(partition, segment)``, as :mod:`streams.segment_lru`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def idle_ttl(ttl_s: float, open_s: float) -> float:
    """The TTL an engine keeps: ``ttl_s`` (0: off), at least ``open_s``, the longest a decision stays open."""
    return 0.0 if ttl_s == 0 else max(ttl_s, open_s)


class IdleSegments(Generic[K]):
    """Last-seen event time per key and, per partition, a heap of keys by that time."""

    def __init__(self, ttl: float) -> None:
        if ttl < 0 or not math.isfinite(ttl):
            raise ValueError(f"ttl must be finite and at least 0, got {ttl}")
        self.ttl = ttl
        self._last: dict[K, float] = {}
        self._partition: dict[K, int] = {}
        self._heaps: dict[int, list[tuple[float, int, K]]] = {}
        self._queued: set[K] = set()
        self._held: dict[int, set[K]] = {}
        self._seq = 0  # ties in time pop in insertion order (keys need not be comparable)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._last)

    def last_seen(self, key: K) -> float | None:
        return self._last.get(key)

    def seen_one(self, key: K, partition: int, t: float) -> None:
        """Traffic touched ``key`` (of ``partition``) at event time ``t``; its last-seen time only moves on."""
        if not self.enabled:
            return
        last = self._last.get(key)
        if last is not None and t <= last:
            return
        self._last[key] = t
        self._partition[key] = partition
        held = self._held.get(partition)
        if held is not None:
            held.discard(key)
        if key not in self._queued:
            self._push(key, partition, t)

    def is_idle(self, key: K, t: float) -> bool:
        """Whether ``key`` was seen before and ``last_seen + ttl <= t``."""
        last = self._last.get(key)
        return self.enabled and last is not None and last + self.ttl <= t

    def due_many(self, partition: int, watermark: float) -> list[K]:
        """The keys of ``partition`` idle at ``watermark`` (held ones first), oldest first. Each stays tracked
        until the caller ``forget``s it (expired) or ``hold``s it (not yet)."""
        if not self.enabled:
            return []
        out = list(self._held.pop(partition, ()))
        heap = self._heaps.get(partition, [])
        while heap and heap[0][0] + self.ttl <= watermark:
            t, _, key = heapq.heappop(heap)
            self._queued.discard(key)
            last = self._last.get(key)
            if last is None:
                continue  # forgotten since it was pushed
            if last > t:
                self._push(key, partition, last)  # seen since: its entry moves to its new time
                continue
            out.append(key)
        return out

    def hold(self, key: K) -> None:
        """``key`` is idle but cannot expire yet: offer it again at the next ``due_many`` of its partition."""
        if key in self._last:
            self._held.setdefault(self._partition[key], set()).add(key)

    def forget(self, key: K) -> None:
        """Stop tracking ``key`` (it expired, or left with its partition)."""
        self._last.pop(key, None)
        partition = self._partition.pop(key, None)
        if partition is not None and partition in self._held:
            self._held[partition].discard(key)
        # its heap entry, if any, is dropped when popped

    def clear(self) -> None:
        self._last.clear()
        self._partition.clear()
        self._heaps.clear()
        self._queued.clear()
        self._held.clear()

    def _push(self, key: K, partition: int, t: float) -> None:
        self._seq += 1
        heapq.heappush(self._heaps.setdefault(partition, []), (t, self._seq, key))
        self._queued.add(key)
