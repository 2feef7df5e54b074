"""Decisions waiting for their attribution window to close: in memory, persisted in immutable blocks.

Writing one table key per decision costs two changelog messages per request (put, then delete). The
book instead writes the decisions of one partition made since the last commit as a single *block*,
once. What feedback changes (clicks, purchases, closes) lives in the segment's head record
(``streams.ads_state.SegmentHead``), never in the block, so a block is written once and deleted once.

A block is written before the heads of the same commit (same table, same changelog partition, so a
head that reached the changelog implies its blocks did), and deleted only once all its decisions are
closed *and* the committed input offsets passed its requests: a replayed request always finds its
decision (open or closed) while it may still be replayed.

The block codec (``encode_pairs`` / ``iter_pairs`` / ``split_pairs``: named byte values, tombstones, chunks
below a size bound) is shared with the retention engine's blocks (``streams.retention_blocks``).

Memory is bounded: beyond ``max_open`` open decisions the earliest windows are closed early (their
zero-reward update applied, counted as ``windows_forced``).
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from streams.ads_segments import SEGMENTS
from streams.ads_state import Pending
from streams.store import PartitionStore

BLOCK = "b:"  # key prefix of the book's blocks in its table
_LEN = struct.Struct("<HI")  # name length, value length
_NO_VALUE = 0xFFFFFFFF  # value length of a pair without a value (a tombstone)


def pair_size(name: str, value: bytes | None) -> int:
    """Bytes one ``(name, value)`` pair takes in a block."""
    return _LEN.size + len(name.encode()) + (0 if value is None else len(value))


def encode_pairs(pairs: Iterable[tuple[str, bytes | None]]) -> bytes:
    """``(name, value)`` pairs as one block: per pair a header (name length, value length), the UTF-8 name,
    the value. A value of ``None`` (a tombstone) is written as length ``0xFFFFFFFF`` and no bytes."""
    parts = []
    for name, value in pairs:
        raw = name.encode()
        if value is None:
            parts.append(_LEN.pack(len(raw), _NO_VALUE) + raw)
        else:
            parts.append(_LEN.pack(len(raw), len(value)) + raw + value)
    return b"".join(parts)


def iter_pairs(raw: bytes, start: int = 0) -> Iterator[tuple[str, int, int]]:
    """The pairs of a block that begins at ``raw[start]`` as ``(name, value offset in raw, value length)``,
    without copying values; the length is -1 for a tombstone."""
    at = start
    while at < len(raw):
        n_name, n_value = _LEN.unpack_from(raw, at)
        at += _LEN.size
        name = raw[at:at + n_name].decode()
        at += n_name
        if n_value == _NO_VALUE:
            yield name, at, -1
            continue
        yield name, at, n_value
        at += n_value


def split_pairs(pairs: list[tuple[str, bytes | None]], max_bytes: int) -> Iterator[list[tuple[str, bytes | None]]]:
    """``pairs`` in consecutive chunks whose block stays within ``max_bytes`` (a pair larger than that
    alone is a chunk of its own), so no block nears the producer's message limit."""
    chunk: list[tuple[str, bytes | None]] = []
    size = 0
    for name, value in pairs:
        n = pair_size(name, value)
        if chunk and size + n > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, value))
        size += n
    if chunk:
        yield chunk


def encode_block(records: list[tuple[str, Pending]]) -> bytes:
    return encode_pairs((request_id, pending.encode()) for request_id, pending in records)


def decode_block(raw: bytes) -> list[tuple[str, Pending]]:
    return [(rid, Pending.decode(raw[at:at + n])) for rid, at, n in iter_pairs(raw)]


@dataclass(slots=True)
class _Entry:
    pending: Pending
    block: str
    open: bool = True


@dataclass
class PendingBook:
    """Decisions by request id (open, or closed but still in a retained block), deadlines per partition."""

    window_s: float
    max_open: int = 1_000_000
    table: str = SEGMENTS  # where the blocks live, keys ``b:<block key>`` (beside the segment heads)
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _n_open: int = 0
    _deadlines: dict[int, list[tuple[float, str]]] = field(default_factory=dict)
    _block_rids: dict[str, list[str]] = field(default_factory=dict)
    _block_open: dict[str, int] = field(default_factory=dict)
    _block_partition: dict[str, int] = field(default_factory=dict)
    _block_offset: dict[str, int] = field(default_factory=dict)
    _unwritten: list[str] = field(default_factory=list)
    _emptied: set[str] = field(default_factory=set)
    _seq: int = 0

    def __len__(self) -> int:
        return self._n_open

    def known(self, request_id: str) -> Pending | None:
        """The decision of ``request_id`` while its block is retained (open or closed)."""
        entry = self._entries.get(request_id)
        return entry.pending if entry else None

    def get(self, request_id: str) -> Pending | None:
        """The decision of ``request_id`` while its window is open."""
        entry = self._entries.get(request_id)
        return entry.pending if entry is not None and entry.open else None

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
        entry = self._entries.get(request_id)
        return self._close(entry) if entry is not None and entry.open else None

    def due(self, partition: int, watermark: float) -> Iterator[tuple[str, Pending]]:
        """Close the decisions of ``partition`` whose window ended at or before ``watermark``."""
        heap = self._deadlines.get(partition)
        while heap and heap[0][0] <= watermark:
            _, request_id = heapq.heappop(heap)
            entry = self._entries.get(request_id)
            if entry is not None and entry.open:
                yield request_id, self._close(entry)

    def overflow(self) -> Iterator[tuple[str, Pending]]:
        """Close the earliest-deadline decisions while more than ``max_open`` are open.

        Decisions of the same partition sharing that deadline close with it, so that "every window
        ending at or before t is closed" stays true per segment (``SegmentHead.closed_through``).
        """
        while self._n_open > self.max_open:
            deadline, partition = min((h[0][0], p) for p, h in self._deadlines.items() if h)
            yield from self.due(partition, deadline)

    def close_segment_through(self, partition: int, segment: str, deadline: float) -> Iterator[tuple[str, Pending]]:
        """Close early every open decision of ``segment`` whose window ends at or before ``deadline``.

        Scans the partition's deadlines (rare: a segment head over its feedback cap), earliest first, so
        that "every window ending at or before t is closed" stays true for the segment.
        """
        hits = sorted((d, rid) for d, rid in self._deadlines.get(partition, ()) if d <= deadline
                      and (e := self._entries.get(rid)) is not None and e.open and e.pending.segment == segment)
        for _, request_id in hits:
            entry = self._entries[request_id]
            if entry.open:
                yield request_id, self._close(entry)

    def _close(self, entry: _Entry) -> Pending:
        entry.open = False
        self._n_open -= 1
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
        self._n_open = 0
        self._deadlines.clear()
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
        heap = self._deadlines.setdefault(partition, [])
        n_open = 0
        for (request_id, pending), is_open in zip(recs, open_):
            self._entries[request_id] = _Entry(pending, key, is_open)
            if is_open:
                n_open += 1
                heapq.heappush(heap, (pending.decided_t + self.window_s, request_id))
        self._n_open += n_open
        self._block_rids[key] = [rid for rid, _ in recs]
        self._block_open[key] = n_open
        self._block_partition[key] = partition
        self._block_offset[key] = max(p.offset for _, p in recs)
        if not n_open:
            self._emptied.add(key)
