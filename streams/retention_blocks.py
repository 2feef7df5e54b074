"""Retention state in blocks: few, bounded changelog records instead of one per key and per change.

:class:`BlockStore` is a :class:`streams.store.PartitionStore` over another one (the Faust tables,
or dicts). The engine still reads and writes one key at a time (``users``, ``segments``, ``partitions``,
``actions``); here those writes are held until :meth:`BlockStore.commit`, which writes what each partition
changed since the last commit as one *block* (split before ``max_block_bytes``): every changed key once, its
latest value or a tombstone, in the codec of :mod:`streams.pairs` (``encode_pairs``). A key changed ten
times between two commits costs nothing more than a key changed once, and a commit of a partition costs one
record, whatever the number of keys.

Blocks are immutable and live in the ``partitions`` table as ``blk/<partition>/<seq>`` (``seq`` grows per
partition). A key's current entry is the one in its newest block; older copies are dead. A block whose live
entries fall below half of its entries, or whose live bytes fall below half of its bytes, is *compacted*: its
live entries move into the commit's new block and the old block is deleted (after the new one, in the same
changelog partition, so the changelog never lacks a live entry). Write amplification is therefore bounded (a
live entry moves when half its block died, by count or by size), and so are the number of blocks and the bytes
they retain: at most about twice the live bytes. (Counting entries alone is not enough: a block that keeps a
few small live records, e.g. budget records, beside many large dead ones, e.g. segment posteriors rewritten
at every flush, was never compacted, and a soak's retained blocks grew without bound.)

A tombstone is kept only while an older block still holds a copy of its key, so a restore never brings a
deleted key back: :meth:`BlockStore.load` applies the blocks of every partition in ``seq`` order, the newest
entry of a key winning. When the last older copy's block is dropped, the tombstone's own entry dies too and
its key leaves the index (``retention_tombstones_released``); its block is then compacted like any other. (A
tombstone counted as a copy of itself was never released: every outbox record written, flushed, then deleted
left one live tombstone for good, and the session-9 soak's retention index grew by 14,500 keys a minute.) A
key's ``copies`` count only blocks from the one that held it when it was last unknown (``born``): an older
block may still hold the dead tombstone of an earlier life of the key, which brings nothing back.

Format, epoch-tagged: a block starts with ``(format version, partition, seq)``; a block of another version
is refused with :class:`streams.exceptions.StateFormatError` (a newer worker's format cannot be guessed).
Records of the previous format (one table key per value, no block) are read: :meth:`load` takes them as
entries, the partition's next commit writes them into a block and deletes the old keys.

Memory: per live key its block, offset and length (not its value); the raw blocks last read are kept in an
LRU of ``cache_blocks``.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from streams.exceptions import StateFormatError
from streams.pairs import encode_pairs, iter_pairs, split_pairs
from streams.retention_state import TABLES
from streams.store import PartitionStore

BLOCK_TABLE = "partitions"
BLOCK_PREFIX = "blk/"
FORMAT_VERSION = 2
"""Version 1 is the format before blocks: one table key per value (read, then moved into blocks)."""
_HEAD = struct.Struct("<BiQ")  # format version, partition, seq
_TABLE_CODE = {t: str(i) for i, t in enumerate(TABLES)}
_CODE_TABLE = {c: t for t, c in _TABLE_CODE.items()}


def _sparse(block: _Block) -> bool:
    """Whether fewer than half of the block's entries, or of its bytes, are live (it is then compacted)."""
    return block.live * 2 < block.entries or block.live_size * 2 < block.size


def block_key(partition: int, seq: int) -> str:
    return f"{BLOCK_PREFIX}{partition}/{seq}"


def legacy_partition(table: str, key: str, value: bytes) -> int:
    """The partition of a record of the format before blocks (from its key, or its value's header)."""
    if table in ("users", "actions"):
        return struct.unpack_from("<Bi", value)[1]  # UserRow / OpenAction: version, partition
    if table == "segments":
        return int(key.split("/", 1)[0])
    head = key.split(":", 1)[1]  # budget:<p>[/record], tick:<p>, watermark:<p>
    return int(head.split("/", 1)[0])


@dataclass(slots=True)
class _Loc:
    """Where a key's current entry is: block ``seq`` of ``partition`` at ``offset`` (``length`` -1: a
    tombstone; ``seq`` -1: a record of the format before blocks, ``value`` held until it moves)."""

    partition: int
    seq: int
    offset: int
    length: int
    copies: int
    """Retained blocks of ``partition`` from ``born`` on holding an entry (live or dead) of this key."""
    born: int = 0
    """The first block counted in ``copies``. Older blocks may still hold a dead tombstone of the key, left
    from before the key was forgotten (a tombstone that hid nothing): such an entry can bring nothing back,
    and dropping its block must not lower ``copies``."""
    value: bytes | None = None


@dataclass(slots=True)
class _Block:
    entries: int
    live: int
    size: int = 0
    """Bytes of its entries (keys and values)."""
    live_size: int = 0


def _counted(loc: _Loc | None, partition: int, seq: int) -> bool:
    """Whether block ``seq`` of ``partition`` is one of the copies counted in ``loc`` (a key's location)."""
    return loc is not None and loc.partition == partition and seq >= loc.born


def _entry_size(name_length: int, value_length: int) -> int:
    return name_length + max(value_length, 0)


class BlockStore:
    """A ``PartitionStore`` that keeps every key in per-partition blocks of ``base`` (see the module docstring)."""

    def __init__(self, base: PartitionStore, max_block_bytes: int = 256 * 1024, cache_blocks: int = 64) -> None:
        self.base = base
        self.max_block_bytes = max_block_bytes
        self.cache_blocks = cache_blocks
        self.counters: Counter[str] = Counter()
        self._index: dict[str, dict[str, _Loc]] = {t: {} for t in TABLES}
        self._blocks: dict[int, dict[int, _Block]] = {}  # partition -> seq -> sizes
        self._next: dict[int, int] = {}
        self._pending: dict[int, dict[tuple[str, str], bytes | None]] = {}
        self._legacy: dict[int, list[tuple[str, str]]] = {}  # old-format keys to delete once in a block
        self._sparse: set[tuple[int, int]] = set()  # blocks whose live entries fell below half
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self.loaded = False

    # --- the PartitionStore protocol ---------------------------------------------------------------

    def get(self, table: str, key: str, partition: int) -> bytes | None:
        pending = self._pending.get(partition)
        if pending is not None and (table, key) in pending:
            return pending[(table, key)]
        if not self.loaded:
            self.load()
        loc = self._index[table].get(key)
        if loc is None or loc.length < 0:
            return None
        if loc.seq < 0:
            return loc.value
        raw = self._raw(loc.partition, loc.seq)
        return raw[loc.offset:loc.offset + loc.length]

    def put(self, table: str, key: str, partition: int, value: bytes) -> None:
        self._pending.setdefault(partition, {})[(table, key)] = value

    def delete(self, table: str, key: str, partition: int) -> None:
        self._pending.setdefault(partition, {})[(table, key)] = None

    def items(self, table: str, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        """Every live key of ``table`` that starts with ``prefix``, with its value (uncommitted writes
        included), read block by block."""
        if not self.loaded:
            self.load()
        out: dict[str, bytes | None] = {}
        located = sorted(((loc.partition, loc.seq, key) for key, loc in self._index[table].items()
                          if key.startswith(prefix) and loc.length >= 0))
        for partition, _, key in located:
            out[key] = self.get(table, key, partition)
        for pending in self._pending.values():
            for (t, key), value in pending.items():
                if t == table and key.startswith(prefix):
                    out[key] = value
        return iter([(k, v) for k, v in out.items() if v is not None])

    # --- commit ----------------------------------------------------------------------------------

    def drain_counters(self) -> Counter[str]:
        """Counts since the last call (blocks written, deleted, read; entries moved; legacy records)."""
        out, self.counters = self.counters, Counter()
        return out

    def blocks(self) -> int:
        """Blocks retained."""
        return sum(len(b) for b in self._blocks.values())

    def indexed(self) -> int:
        """Keys the index holds (live ones, tombstones that still hide an older copy, records before blocks)."""
        return sum(len(keys) for keys in self._index.values())

    def block_bytes(self) -> tuple[int, int]:
        """Bytes of the entries of the retained blocks, and of their live entries (the rest is garbage
        awaiting compaction)."""
        blocks = [b for of in self._blocks.values() for b in of.values()]
        return sum(b.size for b in blocks), sum(b.live_size for b in blocks)

    def invalidate(self) -> None:
        """Forget the index (partitions moved): the next access reloads it from ``base``."""
        self.loaded = False

    def commit(self) -> int:
        """Write each partition's changes as blocks, compact its sparse blocks; returns the blocks written."""
        if not self.loaded:
            self.load()  # the next block numbers and the entries this commit replaces
        written = 0
        for partition in sorted(self._pending):
            written += self._commit_one(partition, self._pending.pop(partition))
        return written

    def _commit_one(self, partition: int, changes: dict[tuple[str, str], bytes | None]) -> int:
        entries: dict[tuple[str, str], bytes | None] = dict(changes)
        for table, key in self._legacy.get(partition, ()):  # old-format records move into this block
            loc = self._index[table].get(key)
            if (table, key) not in entries and loc is not None and loc.seq < 0:
                entries[(table, key)] = loc.value
        compact = sorted(seq for p, seq in self._sparse if p == partition)
        decoded = {seq: self._entries_of(partition, seq) for seq in compact}
        inside = Counter(name for seq, block_entries in decoded.items() for name, _, _ in block_entries
                         if _counted(self._index[name[0]].get(name[1]), partition, seq))
        for block_entries in decoded.values():
            for name, value, is_live in block_entries:
                if not is_live or name in entries:
                    continue
                if value is None and self._index[name[0]][name[1]].copies - inside[name] <= 0:
                    continue  # a tombstone that hides nothing once these blocks are gone
                entries[name] = value
                self.counters["retention_block_entries_moved"] += 1
        pairs = []
        for (table, key), value in entries.items():
            loc = self._index[table].get(key)
            if value is None and (loc is None or loc.copies == 0):
                self._forget(table, key)  # in no block: nothing to hide
                continue
            pairs.append((_TABLE_CODE[table] + key, value))
        written = 0
        for chunk in split_pairs(pairs, self.max_block_bytes - _HEAD.size):
            written += self._write_block(partition, chunk)
        for table, key in self._legacy.pop(partition, ()):
            self.base.delete(table, key, partition)
            self.counters["retention_legacy_records_moved"] += 1
        for seq in compact:
            self._drop_block(partition, seq, [name for name, _, _ in decoded[seq]])
        return written

    def _write_block(self, partition: int, chunk: list[tuple[str, bytes | None]]) -> int:
        seq = self._next.get(partition, 0)
        self._next[partition] = seq + 1
        body = encode_pairs(chunk)
        raw = _HEAD.pack(FORMAT_VERSION, partition, seq) + body
        self.base.put(BLOCK_TABLE, block_key(partition, seq), partition, raw)
        self._remember(partition, seq, raw)
        block = self._blocks.setdefault(partition, {})[seq] = _Block(0, 0)
        for name, at, n in iter_pairs(raw, _HEAD.size):
            self._place(name[0], name[1:], partition, seq, at, n, block, len(name))
        self.counters["retention_blocks_written"] += 1
        self.counters["retention_block_bytes_written"] += len(raw)
        return 1

    def _place(self, code: str, key: str, partition: int, seq: int, offset: int, length: int, block: _Block,
               name_length: int) -> None:
        """Make block ``seq``'s entry the key's current one (the previous one, if any, dies)."""
        table = _CODE_TABLE[code]
        loc = self._index[table].get(key)
        if loc is not None and loc.seq >= 0:
            self._kill(loc.partition, loc.seq, _entry_size(name_length, loc.length))
        if loc is None or loc.copies == 0:  # in no block yet (new, or a record of the format before blocks)
            self._index[table][key] = _Loc(partition, seq, offset, length, 1, born=seq)
        else:
            self._index[table][key] = _Loc(partition, seq, offset, length, loc.copies + 1, born=loc.born)
        size = _entry_size(name_length, length)
        block.entries += 1
        block.live += 1
        block.size += size
        block.live_size += size

    def _kill(self, partition: int, seq: int, size: int) -> None:
        block = self._blocks[partition][seq]
        block.live -= 1
        block.live_size -= size
        if _sparse(block):
            self._sparse.add((partition, seq))

    def _drop_block(self, partition: int, seq: int, keys: list[tuple[str, str]]) -> None:
        """Delete block ``seq`` (its live entries have moved); its keys lose a copy."""
        if self._blocks.get(partition, {}).pop(seq, None) is None:
            return
        self._sparse.discard((partition, seq))
        self._cache.pop((partition, seq), None)
        for table, key in keys:
            loc = self._index[table].get(key)
            if not _counted(loc, partition, seq):
                continue
            loc.copies -= 1
            if loc.seq == seq and loc.partition == partition:
                if loc.length >= 0:
                    raise StateFormatError(f"block {block_key(partition, seq)} dropped with the live entry "
                                           f"{table}/{key}")
                loc.seq = -2  # a tombstone that hid nothing more
            if loc.length < 0:
                if loc.copies <= 0:
                    self._forget(table, key)
                else:
                    self._release_if_idle(table, key, loc)
        self.base.delete(BLOCK_TABLE, block_key(partition, seq), partition)
        self.counters["retention_blocks_deleted"] += 1

    def _forget(self, table: str, key: str) -> None:
        self._index[table].pop(key, None)

    def _release_if_idle(self, table: str, key: str, loc: _Loc) -> None:
        """A tombstone whose own block is the last one holding its key hides nothing: its entry dies (so that
        block can be compacted like any other) and the key leaves the index."""
        if loc.length < 0 and loc.seq >= 0 and loc.copies == 1:
            self._kill(loc.partition, loc.seq, _entry_size(1 + len(key), loc.length))
            self._forget(table, key)
            self.counters["retention_tombstones_released"] += 1

    def _entries_of(self, partition: int, seq: int) -> list[tuple[tuple[str, str], bytes | None, bool]]:
        """Block ``seq``'s entries as ``((table, key), value, live)``."""
        raw = self._raw(partition, seq)
        out = []
        for name, at, n in iter_pairs(raw, _HEAD.size):
            table, key = _CODE_TABLE[name[0]], name[1:]
            loc = self._index[table].get(key)
            live = loc is not None and loc.partition == partition and loc.seq == seq
            value = None if n < 0 else raw[at:at + n]
            out.append(((table, key), value, live))
        return out

    # --- reading blocks --------------------------------------------------------------------------

    def _raw(self, partition: int, seq: int) -> bytes:
        raw = self._cache.get((partition, seq))
        if raw is not None:
            self._cache.move_to_end((partition, seq))
            return raw
        raw = self.base.get(BLOCK_TABLE, block_key(partition, seq), partition)
        if raw is None:
            raise StateFormatError(f"retention block {block_key(partition, seq)} is indexed but not in the store")
        self.counters["retention_blocks_read"] += 1
        self._remember(partition, seq, raw)
        return raw

    def _remember(self, partition: int, seq: int, raw: bytes) -> None:
        self._cache[(partition, seq)] = raw
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)

    def load(self, keep: Callable[[int], bool] = lambda p: True) -> None:
        """Rebuild the index from ``base`` (start, rebalance): blocks in ``seq`` order per partition, and
        records of the format before blocks (an entry of a block wins over them). Uncommitted writes stay
        uncommitted (they are newer than anything stored)."""
        self._index = {t: {} for t in TABLES}
        self._blocks.clear()
        self._next.clear()
        self._legacy.clear()
        self._sparse.clear()
        self._cache.clear()
        blocks: list[tuple[int, int, bytes]] = []
        for table in TABLES:
            for key, value in self.base.items(table):
                if table == BLOCK_TABLE and key.startswith(BLOCK_PREFIX):
                    version, partition, seq = _HEAD.unpack_from(value)
                    if version != FORMAT_VERSION:
                        raise StateFormatError(
                            f"retention block {key} has format version {version}; this worker reads "
                            f"{FORMAT_VERSION} (and the per-key records of version 1): run the worker version "
                            "that wrote it")
                    blocks.append((partition, seq, value))
                    continue
                partition = legacy_partition(table, key, value)
                self._index[table][key] = _Loc(partition, -1, 0, len(value), 0, value=value)
                self._legacy.setdefault(partition, []).append((table, key))
                self.counters["retention_legacy_records_read"] += 1
        for partition, seq, raw in sorted(blocks, key=lambda b: (b[0], b[1])):
            block = self._blocks.setdefault(partition, {})[seq] = _Block(0, 0)
            self._next[partition] = max(self._next.get(partition, 0), seq + 1)
            for name, at, n in iter_pairs(raw, _HEAD.size):
                table, key = _CODE_TABLE[name[0]], name[1:]
                legacy = self._index[table].get(key)
                if legacy is not None and legacy.seq < 0:
                    del self._index[table][key]  # the block's entry is newer than an old-format record
                self._place(name[0], key, partition, seq, at, n, block, len(name))
        for table, keys in self._index.items():
            for key, loc in list(keys.items()):
                self._release_if_idle(table, key, loc)
        for partition, blocks_of in self._blocks.items():
            for seq, block in blocks_of.items():
                if _sparse(block):
                    self._sparse.add((partition, seq))
        self.loaded = True

    def purge(self, partition: int, needle: bytes) -> None:
        """Rewrite every block of ``partition`` whose bytes hold ``needle`` (an erased user id) without its
        dead entries, and drop tombstones whose key holds it, so no copy of an erased user's records stays
        in the table. Commits first."""
        self.commit()
        hit = [seq for seq in list(self._blocks.get(partition, {}))
               if needle in self._raw(partition, seq)[_HEAD.size:]]
        if not hit:
            return
        entries: dict[tuple[str, str], bytes | None] = {}
        dropped: list[tuple[str, str]] = []
        for seq in hit:
            for (table, key), value, live in self._entries_of(partition, seq):
                if not live:
                    continue
                if value is None and needle in key.encode():
                    dropped.append((table, key))
                    continue
                entries[(table, key)] = value
        pairs = [(_TABLE_CODE[t] + k, v) for (t, k), v in entries.items()]
        for chunk in split_pairs(pairs, self.max_block_bytes - _HEAD.size):
            self._write_block(partition, chunk)
        for seq in hit:
            self._drop_block(partition, seq, [name for name, _, _ in self._entries_of(partition, seq)])
        for table, key in dropped:
            self._forget(table, key)
        self.counters["retention_block_purges"] += 1
