"""Decisions waiting for their attribution window to close: in memory, persisted in immutable blocks.

Writing one table key per decision costs two changelog messages per request (put, then delete). The
book instead writes the decisions of one partition made since the last commit as a single *block*,
once. What feedback changes (clicks, purchases, closes) lives in the segment's head record
(``streams.ads_state.SegmentHead``), never in the block, so a block is written once and deleted once.

A block is written before the heads of the same commit (same table, same changelog partition, so a
head that reached the changelog implies its blocks did), and deleted only once all its decisions are
closed *and* the committed input offsets passed its requests: a replayed request always finds its
decision (open or closed) while it may still be replayed.

Blocks are in the pair codec of :mod:`streams.pairs` (shared with the retention engine's blocks); which
decisions are open and which windows are due is the deadline book of :mod:`streams.outcome_book` (shared
with the retention engine's actions), ties at one deadline closing in request id order.

Memory is bounded: beyond ``max_open`` open decisions the earliest windows are closed early (their
zero-reward update applied, counted as ``windows_forced``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from streams.ads_segments import SEGMENTS
from streams.ads_state import Pending
from streams.outcome_book import OutcomeBook
from streams.pairs import encode_pairs, iter_pairs
from streams.store import PartitionStore

BLOCK = "b:"  # key prefix of the book's blocks in its table


def encode_block(records: list[tuple[str, Pending]]) -> bytes:
    return encode_pairs((request_id, pending.encode()) for request_id, pending in records)


def decode_block(raw: bytes) -> list[tuple[str, Pending]]:
    return [(rid, Pending.decode(raw[at:at + n])) for rid, at, n in iter_pairs(raw)]


@dataclass(slots=True)
class _Entry:
    pending: Pending
    block: str


@dataclass
class PendingBook:
    """Decisions by request id (open, or closed but still in a retained block), deadlines per partition."""

    window_s: float
    max_open: int = 1_000_000
    table: str = SEGMENTS  # where the blocks live, keys ``b:<block key>`` (beside the segment heads)
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _due: OutcomeBook = field(default_factory=lambda: OutcomeBook(ties_by_opening=False))
    _block_rids: dict[str, list[str]] = field(default_factory=dict)
    _block_open: dict[str, int] = field(default_factory=dict)
    _block_partition: dict[str, int] = field(default_factory=dict)
    _block_offset: dict[str, int] = field(default_factory=dict)
    _unwritten: list[str] = field(default_factory=list)
    _emptied: set[str] = field(default_factory=set)
    _seq: int = 0

    def __len__(self) -> int:
        return len(self._due)

    def known(self, request_id: str) -> Pending | None:
        """The decision of ``request_id`` while its block is retained (open or closed)."""
        entry = self._entries.get(request_id)
        return entry.pending if entry else None

    def get(self, request_id: str) -> Pending | None:
        """The decision of ``request_id`` while its window is open."""
        entry = self._entries.get(request_id)
        return entry.pending if entry is not None and request_id in self._due else None

    def add_many(self, records: list[tuple[str, Pending]], tag: str) -> None:
        """Open new decisions (one block per partition, written at the next ``write_new``)."""
        by_partition: dict[int, list[tuple[str, Pending]]] = {}
        for request_id, pending in records:
            by_partition.setdefault(pending.partition, []).append((request_id, pending))
        for partition, recs in by_partition.items():
            self._seq += 1
            key = f"{partition}:{tag}:{self._seq}"
            self._index(key, partition, recs, [True] * len(recs))
            self._unwritten.append(key)

    def update(self, request_id: str, pending: Pending) -> None:
        """Feedback changed an open decision (persisted in its segment's head, not here)."""
        self._entries[request_id].pending = pending

    def close(self, request_id: str) -> Pending | None:
        """Close one open decision now (its deadline entry is skipped when it comes due); None if not open."""
        return self._close(request_id) if request_id in self._due else None

    def due(self, partition: int, watermark: float) -> Iterator[tuple[str, Pending]]:
        """Close the decisions of ``partition`` whose window ended at or before ``watermark``."""
        for request_id in self._due.pop_due(partition, watermark):
            yield request_id, self._close(request_id)

    def overflow(self) -> Iterator[tuple[str, Pending]]:
        """Close the earliest-deadline decisions while more than ``max_open`` are open.

        Decisions of the same partition sharing that deadline close with it, so that "every window
        ending at or before t is closed" stays true per segment (``SegmentHead.closed_through``).
        """
        while len(self._due) > self.max_open:
            deadline, partition = self._due.earliest()
            yield from self.due(partition, deadline)

    def close_segment_through(self, partition: int, segment: str, deadline: float) -> Iterator[tuple[str, Pending]]:
        """Close early every open decision of ``segment`` whose window ends at or before ``deadline``.

        Scans the partition's deadlines (rare: a segment head over its feedback cap), earliest first, so
        that "every window ending at or before t is closed" stays true for the segment.
        """
        hits = [rid for rid in self._due.open_through(partition, deadline)
                if self._entries[rid].pending.segment == segment]
        for request_id in hits:
            if request_id in self._due:
                yield request_id, self._close(request_id)

    def _close(self, request_id: str) -> Pending:
        self._due.close_one(request_id)
        entry = self._entries[request_id]
        left = self._block_open[entry.block] - 1
        self._block_open[entry.block] = left
        if not left:
            self._emptied.add(entry.block)
        return entry.pending

    def write_new(self, store: PartitionStore) -> int:
        """Write the blocks opened since the last call; returns how many."""
        for key in self._unwritten:
            recs = [(rid, self._entries[rid].pending) for rid in self._block_rids[key]]
            store.put(self.table, BLOCK + key, self._block_partition[key], encode_block(recs))
        n = len(self._unwritten)
        self._unwritten.clear()
        return n

    def delete_done(self, store: PartitionStore, committed: Callable[[int], int]) -> int:
        """Delete written blocks with nothing open whose requests are all below ``committed(partition)``."""
        done = [k for k in self._emptied
                if self._block_offset[k] < committed(self._block_partition[k])]
        for key in done:
            store.delete(self.table, BLOCK + key, self._block_partition.pop(key))
            for rid in self._block_rids.pop(key):
                self._entries.pop(rid, None)
            del self._block_open[key], self._block_offset[key]
            self._emptied.discard(key)
        return len(done)

    def clear(self) -> None:
        self._entries.clear()
        self._due.clear()
        self._block_rids.clear()
        self._block_open.clear()
        self._block_partition.clear()
        self._block_offset.clear()
        self._unwritten.clear()
        self._emptied.clear()

    def rebuild(self, store: PartitionStore, current: Callable[[str, Pending], Pending | None]) -> None:
        """Reload every retained decision from the store (after a restart or a rebalance).

        ``current(request_id, pending)`` returns the decision with its feedback applied while its
        window is open, None once it is closed (both known from the segment's head).
        """
        self.clear()
        for name, raw in store.items(self.table, BLOCK):
            key = name[len(BLOCK):]
            recs = decode_block(raw)
            if not recs:
                continue
            states = [current(rid, p) for rid, p in recs]
            self._index(key, recs[0][1].partition, [(rid, s if s is not None else p) for (rid, p), s in
                                                     zip(recs, states)], [s is not None for s in states])

    def _index(self, key: str, partition: int, recs: list[tuple[str, Pending]], open_: list[bool]) -> None:
        opened = []
        for (request_id, pending), is_open in zip(recs, open_):
            self._entries[request_id] = _Entry(pending, key)
            if is_open:
                opened.append((request_id, pending.decided_t + self.window_s))
        self._due.open_many(partition, opened)
        self._block_rids[key] = [rid for rid, _ in recs]
        self._block_open[key] = len(opened)
        self._block_partition[key] = partition
        self._block_offset[key] = max(p.offset for _, p in recs)
        if not opened:
            self._emptied.add(key)
