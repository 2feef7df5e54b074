"""Which items wait for an outcome, per partition, and which windows are due: the one deadline book that the
ad engine (``streams.pending.PendingBook``, decisions) and the retention engine
(``streams.retention_book.ActionBook``, actions) build on.

An open item is its id, its partition, an opening token and one heap entry ``(deadline, order, id, token)`` in
its partition's heap.
``order`` is the opening order when the book ``ties_by_opening`` (items due at the same deadline close in the
order they opened, as a scan of the open items would), else 0, and ties close in id order (an order that a
rebuild from the store reproduces). Closing an item (:meth:`OutcomeBook.close_one`) leaves its heap entry in
place; :meth:`OutcomeBook.pop_due` skips an entry whose token is not the item's current one (closed, or closed
and opened again since), so a close costs a dict delete and a batch costs the windows that end, not a scan of
every open item.

Invariant: an id is open at most once; an id that :meth:`pop_due` returned has no heap entry left and is the
caller's to close. A closed id may be *remembered* until a horizon (a replay of its outcome is then recognised
as a duplicate); remembered ids are forgotten through a second heap per partition.

What an item holds, how it is encoded and where it is persisted belong to each problem.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

_Entry = tuple[float, int, str, int]  # deadline, opening order (or 0), id, opening token


class OutcomeBook:
    """Open items by id, a deadline heap per partition, closed ids remembered until their horizon."""

    def __init__(self, ties_by_opening: bool) -> None:
        self.ties_by_opening = ties_by_opening
        self._open: dict[str, tuple[int, int]] = {}  # id -> (partition, opening token)
        self._heaps: dict[int, list[_Entry]] = {}
        self._closed: dict[str, tuple[int, float, bool]] = {}  # id -> (partition, horizon, by outcome)
        self._forgets: dict[int, list[tuple[float, str]]] = {}  # partition -> heap (horizon, id)
        self._seq = 0

    def __len__(self) -> int:
        """Open items."""
        return len(self._open)

    def __contains__(self, item_id: str) -> bool:
        """Whether ``item_id`` is open."""
        return item_id in self._open

    def partition_of(self, item_id: str) -> int | None:
        """The partition of the open item ``item_id``; None when it is not open."""
        held = self._open.get(item_id)
        return None if held is None else held[0]

    def knows(self, item_id: str) -> bool:
        """Whether ``item_id`` is open or a remembered closed id."""
        return item_id in self._open or item_id in self._closed

    def remembered(self) -> int:
        """Closed ids remembered."""
        return len(self._closed)

    def closed_by_outcome(self, item_id: str) -> bool:
        """Whether ``item_id`` is a remembered closed id that its outcome closed (not its deadline)."""
        closed = self._closed.get(item_id)
        return closed is not None and closed[2]

    def open_one(self, item_id: str, partition: int, deadline: float) -> None:
        """Hold ``item_id`` open until ``deadline`` (event time of its partition)."""
        self._seq += 1
        token = self._seq
        self._open[item_id] = (partition, token)
        order = token if self.ties_by_opening else 0
        heapq.heappush(self._heaps.setdefault(partition, []), (deadline, order, item_id, token))

    def open_many(self, partition: int, items: Iterable[tuple[str, float]]) -> None:
        """``open_one`` for each ``(id, deadline)`` of ``partition``."""
        heap = self._heaps.setdefault(partition, [])
        ties = self.ties_by_opening
        for item_id, deadline in items:
            self._seq += 1
            token = self._seq
            self._open[item_id] = (partition, token)
            heapq.heappush(heap, (deadline, token if ties else 0, item_id, token))

    def close_one(self, item_id: str, remember_until: float | None = None, by_outcome: bool = False) -> int | None:
        """Close the open item ``item_id``; returns its partition, None when it was not open. With
        ``remember_until``, its id is remembered (``by_outcome``: how it closed) until a mark reaches it."""
        held = self._open.pop(item_id, None)
        if held is None:
            return None
        partition = held[0]
        if remember_until is not None:
            self._closed[item_id] = (partition, remember_until, by_outcome)
            heapq.heappush(self._forgets.setdefault(partition, []), (remember_until, item_id))
        return partition

    def pop_due(self, partition: int, through: float) -> list[str]:
        """Pop the entries of ``partition`` whose deadline is at or before ``through``; the ids still open, in
        (deadline, order, id) order. They stay open: closing them is the caller's."""
        heap = self._heaps.get(partition)
        due = []
        while heap and heap[0][0] <= through:
            _, _, item_id, token = heapq.heappop(heap)
            held = self._open.get(item_id)
            if held is not None and held[1] == token:
                due.append(item_id)
        return due

    def pop_due_many(self, marks: Mapping[int, float]) -> list[str]:
        """``pop_due`` of every partition of ``marks`` (partition -> through), in opening order across
        partitions (in partition order then (deadline, id) without ``ties_by_opening``)."""
        due: list[tuple[int, str]] = []
        for partition, through in marks.items():
            heap = self._heaps.get(partition)
            while heap and heap[0][0] <= through:
                _, order, item_id, token = heapq.heappop(heap)
                held = self._open.get(item_id)
                if held is not None and held[1] == token:
                    due.append((order, item_id))
        due.sort(key=lambda e: e[0])
        return [item_id for _, item_id in due]

    def open_through(self, partition: int, through: float) -> list[str]:
        """The open ids of ``partition`` whose deadline is at or before ``through``, earliest first, without
        popping them (a scan of the partition's heap: for rare early closes)."""
        hits = sorted(e for e in self._heaps.get(partition, ())
                      if e[0] <= through and self._open.get(e[2], (None, None))[1] == e[3])
        return [e[2] for e in hits]

    def earliest(self) -> tuple[float, int] | None:
        """``(deadline, partition)`` of the earliest heap entry (it may belong to an item closed since)."""
        tops = [(heap[0][0], partition) for partition, heap in self._heaps.items() if heap]
        return min(tops) if tops else None

    def forget_closed(self, marks: Mapping[int, float]) -> None:
        """Forget the remembered closed ids of each partition of ``marks`` whose horizon is at or before its
        mark."""
        for partition, heap in self._forgets.items():
            through = marks.get(partition)
            if through is None:
                continue
            while heap and heap[0][0] <= through:
                until, item_id = heapq.heappop(heap)
                closed = self._closed.get(item_id)
                if closed is not None and closed[1] == until:
                    del self._closed[item_id]

    def clear(self) -> None:
        """Forget every item, open and closed (partitions moved: the problem rebuilds from its store)."""
        self._open.clear()
        self._heaps.clear()
        self._closed.clear()
        self._forgets.clear()
