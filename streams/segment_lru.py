"""The bound both engines keep on the segments they hold in memory: least recently used first, and only
*clean* ones leave.

A segment is *changed* from the moment its posterior moves until the engine has written it to its table
(``written``); it is *clean* otherwise: what the table holds for it is what memory holds, so dropping it from
memory loses nothing, and reading it back from the table gives the same posterior. ``evict`` returns the
least recently used clean segments beyond ``max_items``, skipping the ones a caller pins (e.g. a partition
whose review is paused between slices still decides with them). Changed segments wait for the next write,
so the bound can be exceeded by the segments changed since the last write, never for longer.

The ads engine keys it by segment (:class:`streams.ads_segments.SegmentCache`, values: segment heads); the
retention engine by ``(partition, segment)`` (values unused: the posteriors live in each partition's adapter).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CleanLRU(Generic[K, V]):
    """Values by key, least recently used first, with the keys changed since their last write."""

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items = max_items
        self._items: OrderedDict[K, V] = OrderedDict()
        self._changed: set[K] = set()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        """Keys, least recently used first."""
        return iter(self._items)

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None when it is not held."""
        value = self._items.get(key)
        if value is not None or key in self._items:
            self._items.move_to_end(key)
        return value

    def peek(self, key: K) -> V:
        """The value of ``key`` without making it recently used (``KeyError`` when not held)."""
        return self._items[key]

    def put(self, key: K, value: V, changed: bool = False) -> None:
        """Hold ``key`` (the most recently used); ``changed``: it must be written before it may leave."""
        self._items[key] = value
        self._items.move_to_end(key)
        if changed:
            self._changed.add(key)

    def mark(self, key: K) -> None:
        """``key`` (held) changed: it stays until the next ``written``."""
        self._changed.add(key)

    def changed(self) -> list[K]:
        """The keys changed since the last ``written``."""
        return list(self._changed)

    def is_changed(self, key: K) -> bool:
        return key in self._changed

    def written(self) -> None:
        """Every changed key is now in the store: all of them are clean."""
        self._changed.clear()

    def evict(self, pinned: Callable[[K], bool] = lambda key: False) -> list[tuple[K, V]]:
        """Remove and return the least recently used clean, unpinned keys beyond ``max_items`` (oldest first)."""
        excess = len(self._items) - self.max_items
        if excess <= 0:
            return []
        victims = []
        for key in self._items:  # oldest first
            if len(victims) == excess:
                break
            if key not in self._changed and not pinned(key):
                victims.append(key)
        return [(key, self._items.pop(key)) for key in victims]

    def discard(self, key: K) -> None:
        self._items.pop(key, None)
        self._changed.discard(key)

    def clear(self) -> None:
        self._items.clear()
        self._changed.clear()
