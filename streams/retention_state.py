"""What the retention agent keeps: per-user rows, open actions, partition budgets, and the store.

Records are fixed ``struct`` headers + little-endian float64 arrays + UTF-8 strings (no pickle), so a
restarted worker reads them back exactly from the RocksDB tables (and their changelogs).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from policy.retention.budget_config import MICRO, BudgetConfig
from policy.retention.features import DX, N_STATE
from streams.settings import RetentionSettings

DAY_S = 86400.0
TABLES = ("users", "segments", "partitions", "actions")


# --- records ---------------------------------------------------------------------------------------

_USER = struct.Struct("<BidH")  # version, partition, last decision time (days, NaN: never), |segment|
_ACTION = struct.Struct("<BidBddHHH")  # version, partition, decided_t, action, cost, propensity, |u|, |s|, d
TICK = struct.Struct("<d")
_RECORD_VERSION = 1


@dataclass
class UserRow:
    """One user's engagement state and bookkeeping."""

    state: np.ndarray
    segment: str
    partition: int
    last_decision_t: float = math.nan

    def encode(self) -> bytes:
        seg = self.segment.encode()
        return (_USER.pack(_RECORD_VERSION, self.partition, self.last_decision_t, len(seg))
                + np.ascontiguousarray(self.state, dtype="<f8").tobytes() + seg)

    @staticmethod
    def partition_of(raw: bytes) -> int:
        """The partition of an encoded row, without decoding the rest."""
        return _USER.unpack_from(raw)[1]

    @classmethod
    def decode(cls, raw: bytes) -> "UserRow":
        version, partition, last_t, n_seg = _USER.unpack_from(raw)
        if version != _RECORD_VERSION:
            raise ValueError(f"user record version {version} is not {_RECORD_VERSION}")
        at = _USER.size
        state = np.frombuffer(raw, dtype="<f8", count=N_STATE, offset=at).astype(np.float64)
        segment = raw[at + 8 * N_STATE:at + 8 * N_STATE + n_seg].decode()
        return cls(state, segment, partition, last_t)


@dataclass(frozen=True)
class OpenAction:
    """A decision waiting for its outcome: what learning needs once it arrives."""

    user: str
    segment: str
    partition: int
    decided_t: float
    """Event time of the decision (days)."""
    action: int
    cost: float
    """Reserved (worst-case) cost."""
    propensity: float
    x: np.ndarray
    """Engagement features at the decision (risk adaptation)."""
    phi: np.ndarray
    """Features of the action under the policy that chose it (posterior update)."""

    def encode(self) -> bytes:
        u, s = self.user.encode(), self.segment.encode()
        phi = np.ascontiguousarray(self.phi, dtype="<f8")
        return (_ACTION.pack(_RECORD_VERSION, self.partition, self.decided_t, self.action, self.cost,
                             self.propensity, len(u), len(s), phi.shape[0])
                + u + s + np.ascontiguousarray(self.x, dtype="<f8").tobytes() + phi.tobytes())

    @classmethod
    def decode(cls, raw: bytes) -> "OpenAction":
        version, partition, t, action, cost, prop, n_u, n_s, d = _ACTION.unpack_from(raw)
        if version != _RECORD_VERSION:
            raise ValueError(f"action record version {version} is not {_RECORD_VERSION}")
        at = _ACTION.size
        user = raw[at:at + n_u].decode()
        at += n_u
        segment = raw[at:at + n_s].decode()
        at += n_s
        x = np.frombuffer(raw, dtype="<f8", count=DX, offset=at).copy()
        phi = np.frombuffer(raw, dtype="<f8", count=d, offset=at + 8 * DX).copy()
        return cls(user, segment, partition, t, action, cost, prop, x, phi)


def to_days(t: datetime) -> float:
    """A timestamp as days since the Unix epoch (the time scale of :mod:`policy.retention`)."""
    return t.timestamp() / DAY_S


def from_days(days: float) -> datetime:
    return datetime.fromtimestamp(days * DAY_S, timezone.utc)


def budget_key(partition: int, record: str | None = None) -> str:
    """Key of one budget record of ``partition`` in the ``partitions`` table (``None``: the single value
    that held a whole budget before records)."""
    return f"budget:{partition}" if record is None else f"budget:{partition}/{record}"


def decision_id(user: str, t: float) -> str:
    """Deterministic id of the decision for ``user`` at review time ``t`` (days)."""
    return "r" + hashlib.blake2b(f"{user}|{t!r}".encode(), digest_size=10).hexdigest()


def partition_budget_config(settings: RetentionSettings, partitions: int,
                            never_contact: frozenset[str] = frozenset()) -> BudgetConfig:
    """The budget of one user partition: every cap divided by the partition count (rounded down).

    The budget horizon keeps each decision until its outcome window (plus grace) has certainly closed,
    so ``settle_one`` always finds it.
    """
    share = lambda cap: math.floor(cap * MICRO / partitions) / MICRO  # noqa: E731
    period = settings.period_s
    horizon = math.ceil((settings.outcome_window_s + settings.outcome_grace_s) / period) + 1
    return BudgetConfig(
        segment_cap=share(settings.segment_budget_per_period),
        total_cap=share(settings.budget_per_period),
        period_days=period / DAY_S,
        pacing_lead=settings.pacing_lead,
        contact_window_days=period / DAY_S,
        max_contacts=settings.max_contacts_per_user,
        horizon_periods=max(1, horizon),
        never_contact=never_contact,
    )


def read_never_contact(path: Path | None) -> frozenset[str]:
    """User ids, one per line (blank lines and ``#`` comments ignored); empty when ``path`` is None."""
    if path is None:
        return frozenset()
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return frozenset(s.strip() for s in lines if s.strip() and not s.strip().startswith("#"))
