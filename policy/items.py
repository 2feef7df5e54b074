"""Candidate identities as the integers the per-item terms are keyed by (torch-free).

A stream names ads by strings (``ad_id``); the kernels key per-item terms by non-negative int64. The map
is the first 8 bytes of BLAKE2b of the UTF-8 id with the top bit cleared: stable across processes and
versions (unlike Python's ``hash``), so a segment's stored item terms and an artifact's pooled offsets
mean the same ad after a restart. Two distinct ids collide with probability about ``n^2 / 2^64``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

_MASK = (1 << 63) - 1


@lru_cache(maxsize=65536)  # the hot path keys every candidate of every request; catalogues repeat
def item_key(item_id: str) -> int:
    """Stable non-negative int64 key of one string id."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK


def item_keys(item_ids: Iterable[str]) -> np.ndarray:
    """int64 keys of many string ids (see :func:`item_key`)."""
    return np.fromiter((item_key(i) for i in item_ids), dtype=np.int64)
