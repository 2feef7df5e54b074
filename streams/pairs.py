"""The pair codec of stored blocks: named byte values and tombstones in one bytes value, split in chunks
below a size bound. Ad pending blocks (``streams.pending``) and retention state blocks
(``streams.retention_blocks``) are both written in it.

Layout, per pair: ``<HI`` (name length, value length), the UTF-8 name, the value. A value of ``None`` (a
tombstone) is written as length ``0xFFFFFFFF`` and no bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

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
