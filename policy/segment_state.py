"""Segment state bytes: one segment's posterior (and per-item terms) as it is stored in a table (no pickle).

Layout, little endian: ``b"MCPS"``, uint16 layout version (1 or 2), uint16 ``d``, int64 ``n_updates``,
float64 ``P[d, d]`` (row-major), float64 ``m[d]``; layout 2 then has uint16 ``n`` stored item terms and
int64 ``ids[n]``, float64 ``mean[n]``, float64 ``var[n]``, int64 ``tick[n]``. Layout 1 is written when the
segment has no item terms (and read as a segment without any). :meth:`policy.segment_bandit.SegmentBandit.state_bytes`
writes it through :func:`encode_state`; readers that hold no policy (``metacart status``, the chaos accounting)
call :func:`decode_state`.
"""

from __future__ import annotations

import struct

import numpy as np

from policy.exceptions import PolicyError

STATE_MAGIC = b"MCPS"
STATE_LAYOUT = 2
_HEADER = struct.Struct("<4sHHq")
_ITEMS = struct.Struct("<H")


class StateError(PolicyError, ValueError):
    """Serialised segment state that cannot be loaded (wrong magic, size, dimension or values)."""


def encode_state(n_updates: int, P: np.ndarray, m: np.ndarray, ids: np.ndarray, mean: np.ndarray,
                 var: np.ndarray, tick: np.ndarray) -> bytes:
    """One segment's ``(P, m, n_updates)`` and its stored item terms as state bytes (layout 1 without items)."""
    d = m.shape[0]
    layout = 2 if ids.size else 1
    body = _HEADER.pack(STATE_MAGIC, layout, d, int(n_updates)) + P.astype("<f8").tobytes() + m.astype("<f8").tobytes()
    if layout == 1:
        return body
    return (body + _ITEMS.pack(ids.size) + ids.astype("<i8").tobytes() + mean.astype("<f8").tobytes()
            + var.astype("<f8").tobytes() + tick.astype("<i8").tobytes())


def decode_state(data: bytes, d: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse :func:`encode_state` output into ``(P, m, n_updates)``; raises :class:`StateError`."""
    P, m, n, _ = decode_state_items(data, d)
    return P, m, n


def decode_state_items(
    data: bytes, d: int | None = None
) -> tuple[np.ndarray, np.ndarray, int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Parse state bytes into ``(P, m, n_updates, (item ids, means, variances, ticks))``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StateError(f"state must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise StateError(f"state too short: {len(data)} bytes")
    magic, layout, dim, n = _HEADER.unpack_from(data)
    if magic != STATE_MAGIC:
        raise StateError(f"bad magic {magic!r}")
    if layout not in (1, 2):
        raise StateError(f"unsupported state layout {layout}")
    if d is not None and dim != d:
        raise StateError(f"state has d={dim}, the policy has d={d}")
    core = _HEADER.size + 8 * (dim * dim + dim)
    if (layout == 1 and len(data) != core) or (layout == 2 and len(data) < core + _ITEMS.size):
        raise StateError(f"state of d={dim}, layout {layout} has the wrong size ({len(data)} bytes)")
    if n < 0:
        raise StateError(f"negative n_updates {n}")
    body = np.frombuffer(data, dtype="<f8", count=dim * dim + dim, offset=_HEADER.size)
    P = body[: dim * dim].reshape(dim, dim).astype(np.float64)
    m = body[dim * dim :].astype(np.float64)
    if not (np.all(np.isfinite(P)) and np.all(np.isfinite(m))):
        raise StateError("state contains NaN or inf")
    if np.any(np.diag(P) <= 0) or not np.allclose(P, P.T, rtol=1e-6, atol=1e-12 * max(np.abs(P).max(), 1e-300)):
        raise StateError("state covariance is not symmetric with a positive diagonal")
    if layout == 1:
        empty = np.empty(0, dtype=np.int64)
        return P, m, int(n), (empty, np.empty(0), np.empty(0), empty)
    (count,) = _ITEMS.unpack_from(data, core)
    at = core + _ITEMS.size
    if len(data) != at + 32 * count:
        raise StateError(f"state says {count} item terms but has {len(data) - at} bytes for them")
    ids = np.frombuffer(data, dtype="<i8", count=count, offset=at).astype(np.int64)
    mean = np.frombuffer(data, dtype="<f8", count=count, offset=at + 8 * count).astype(np.float64)
    var = np.frombuffer(data, dtype="<f8", count=count, offset=at + 16 * count).astype(np.float64)
    tick = np.frombuffer(data, dtype="<i8", count=count, offset=at + 24 * count).astype(np.int64)
    if np.any(ids < 0) or np.unique(ids).size != count:
        raise StateError("item ids must be distinct and >= 0")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var)) and np.all(var >= 0)):
        raise StateError("item terms must be finite with variances >= 0")
    return P, m, int(n), (ids, mean, var, tick)
