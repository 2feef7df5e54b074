"""Open decisions, waiting for their attribution window to close: in memory, persisted in blocks.

Writing one table key per decision costs two changelog messages per request (put, then delete). The
book instead writes the decisions of one batch and one partition as a single *block*, and only the
records that feedback changed (clicks, purchases) as small per-request *marks*. A block is deleted when
its last window closes. After a restart or rebalance, ``rebuild`` reads blocks and marks back.

Memory is bounded: beyond ``max_open`` open decisions the oldest windows are closed early (their
zero-reward update applied, counted as ``windows_forced``).
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from streams.ads_state import Pending

_LEN = struct.Struct("<HI")  # request-id length, record length


class BookStore(Protocol):
    """Persistence of blocks and marks (Faust tables in production, dicts in tests)."""

    def put_block(self, key: str, partition: int, value: bytes) -> None: ...
    def del_block(self, key: str, partition: int) -> None: ...
    def iter_blocks(self) -> Iterator[tuple[str, bytes]]: ...
    def get_mark(self, request_id: str, partition: int) -> bytes | None: ...
    def put_mark(self, request_id: str, partition: int, value: bytes) -> None: ...
    def del_mark(self, request_id: str, partition: int) -> None: ...


def encode_block(records: list[tuple[str, Pending]]) -> bytes:
    parts = []
    for request_id, pending in records:
        rid = request_id.encode()
        rec = pending.encode()
        parts.append(_LEN.pack(len(rid), len(rec)) + rid + rec)
    return b"".join(parts)


def decode_block(raw: bytes) -> list[tuple[str, Pending]]:
    out = []
    at = 0
    while at < len(raw):
        n_rid, n_rec = _LEN.unpack_from(raw, at)
        at += _LEN.size
        rid = raw[at:at + n_rid].decode()
        at += n_rid
        out.append((rid, Pending.decode(raw[at:at + n_rec])))
        at += n_rec
    return out


@dataclass(slots=True)
class _Open:
    pending: Pending
    block: str
    marked: bool = False


@dataclass
class PendingBook:
    """Open decisions by request id, with their event-time deadlines per partition."""

    store: BookStore
    window_s: float
    max_open: int = 1_000_000
    _open: dict[str, _Open] = field(default_factory=dict)
    _deadlines: dict[int, list[tuple[float, str]]] = field(default_factory=dict)
    _block_open: dict[str, int] = field(default_factory=dict)
    _block_partition: dict[str, int] = field(default_factory=dict)
    _deletes: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, key, partition)
    _seq: int = 0

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._open

    def add_many(self, records: list[tuple[str, Pending]], tag: str) -> int:
        """Open new decisions (one block per partition); returns how many were already open."""
        by_partition: dict[int, list[tuple[str, Pending]]] = {}
        seen: set[str] = set()
        duplicates = 0
        for request_id, pending in records:
            if request_id in self._open or request_id in seen:
                duplicates += 1  # a replayed request: the first decision stays the one rewarded
                continue
            seen.add(request_id)
            by_partition.setdefault(pending.partition, []).append((request_id, pending))
        for partition, recs in by_partition.items():
            self._seq += 1
            key = f"{partition}:{tag}:{self._seq}"
            self.store.put_block(key, partition, encode_block(recs))
            self._index(key, partition, recs)
        return duplicates

    def get(self, request_id: str) -> Pending | None:
        entry = self._open.get(request_id)
        return entry.pending if entry else None

    def update(self, request_id: str, pending: Pending) -> None:
        """Record what feedback changed (persisted as a mark)."""
        entry = self._open[request_id]
        entry.pending = pending
        entry.marked = True
        self.store.put_mark(request_id, pending.partition, pending.encode())

    def due(self, partition: int, watermark: float) -> Iterator[tuple[str, Pending]]:
        """Pop the decisions of ``partition`` whose window ended at or before ``watermark``."""
        heap = self._deadlines.get(partition)
        while heap and heap[0][0] <= watermark:
            _, request_id = heapq.heappop(heap)
            entry = self._open.get(request_id)
            if entry is not None:
                yield request_id, self._close(request_id, entry)

    def overflow(self) -> Iterator[tuple[str, Pending]]:
        """Pop the earliest-deadline decisions while more than ``max_open`` are open."""
        while len(self._open) > self.max_open:
            partition = min((h[0][0], p) for p, h in self._deadlines.items() if h)[1]
            _, request_id = heapq.heappop(self._deadlines[partition])
            entry = self._open.get(request_id)
            if entry is not None:
                yield request_id, self._close(request_id, entry)

    def _close(self, request_id: str, entry: _Open) -> Pending:
        del self._open[request_id]
        p = entry.pending.partition
        if entry.marked:
            self._deletes.append(("mark", request_id, p))
        left = self._block_open[entry.block] - 1
        if left:
            self._block_open[entry.block] = left
        else:
            del self._block_open[entry.block]
            self._deletes.append(("block", entry.block, self._block_partition.pop(entry.block)))
        return entry.pending

    def flush_deletes(self) -> None:
        """Delete closed marks and emptied blocks (after the posteriors they fed are saved)."""
        for kind, key, partition in self._deletes:
            if kind == "mark":
                self.store.del_mark(key, partition)
            else:
                self.store.del_block(key, partition)
        self._deletes.clear()

    def clear(self) -> None:
        self._open.clear()
        self._deadlines.clear()
        self._block_open.clear()
        self._block_partition.clear()
        self._deletes.clear()

    def rebuild(self) -> None:
        """Reload every open decision from the store (after a restart or a rebalance)."""
        self.clear()
        for key, raw in self.store.iter_blocks():
            recs = [(rid, p) for rid, p in decode_block(raw) if rid not in self._open]
            if not recs:
                self._deletes.append(("block", key, int(key.split(":", 1)[0])))
                continue
            self._index(key, recs[0][1].partition, recs)
            for rid, _ in recs:
                mark = self.store.get_mark(rid, self._open[rid].pending.partition)
                if mark is not None:
                    self._open[rid].pending = Pending.decode(mark)
                    self._open[rid].marked = True

    def _index(self, key: str, partition: int, recs: list[tuple[str, Pending]]) -> None:
        heap = self._deadlines.setdefault(partition, [])
        for request_id, pending in recs:
            self._open[request_id] = _Open(pending, key)
            heapq.heappush(heap, (pending.decided_t + self.window_s, request_id))
        self._block_open[key] = len(recs)
        self._block_partition[key] = partition
