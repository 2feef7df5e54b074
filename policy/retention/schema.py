"""Shared vocabulary of the retention problem: treatments, their costs, and engagement event batches.

Treatments (index = action id, K = 5)::

    0 none        cost 0
    1 push        cost 0.02 per message
    2 email       cost 0.05 per message
    3 coupon_5    5 currency units, paid only when redeemed (face value reserved against the budget)
    4 coupon_15   15 currency units, paid only when redeemed

Event kinds in an :class:`EventBatch`: ``SESSION`` (a visit), ``PURCHASE`` (``value`` = basket value),
``INTERVENTION`` (``value`` = treatment id). Times are event time in days (float64) since an epoch the
caller chooses; the stream layer converts tz-aware timestamps to this scale at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TREATMENTS: tuple[str, ...] = ("none", "push", "email", "coupon_5", "coupon_15")
K = len(TREATMENTS)
NONE = 0
FIXED_COST = np.array([0.0, 0.02, 0.05, 0.0, 0.0])
"""Cost paid whenever the treatment is sent."""
COUPON_FACE = np.array([0.0, 0.0, 0.0, 5.0, 15.0])
"""Cost paid only when the coupon is redeemed."""
RESERVE_COST = FIXED_COST + COUPON_FACE
"""The worst-case cost of a treatment: what the budget reserves when it is sent."""

SESSION = 0
PURCHASE = 1
INTERVENTION = 2
EVENT_KINDS = (SESSION, PURCHASE, INTERVENTION)


def treatment_encoding() -> np.ndarray:
    """The candidate encoding ``a`` of every treatment: one-hot (5) plus the reserved cost / 15.

    Returns
    -------
    numpy.ndarray
        float64[K, 6]; row ``k`` encodes treatment ``k``.
    """
    enc = np.zeros((K, K + 1))
    enc[np.arange(K), np.arange(K)] = 1.0
    enc[:, K] = RESERVE_COST / 15.0
    return enc


DA = K + 1


@dataclass(frozen=True)
class EventBatch:
    """A batch of engagement events, column-wise (all arrays have length n).

    Attributes
    ----------
    user : int64[n]      user index (row of the caller's state table)
    time : float64[n]    event time in days
    kind : int64[n]      SESSION, PURCHASE or INTERVENTION
    value : float64[n]   basket value for PURCHASE, treatment id for INTERVENTION, 0 for SESSION
    """

    user: np.ndarray
    time: np.ndarray
    kind: np.ndarray
    value: np.ndarray

    def __post_init__(self) -> None:
        user = np.ascontiguousarray(self.user, dtype=np.int64).reshape(-1)
        time = np.ascontiguousarray(self.time, dtype=np.float64).reshape(-1)
        kind = np.ascontiguousarray(self.kind, dtype=np.int64).reshape(-1)
        value = np.ascontiguousarray(self.value, dtype=np.float64).reshape(-1)
        n = user.shape[0]
        if not (time.shape[0] == kind.shape[0] == value.shape[0] == n):
            raise ValueError("EventBatch columns must have equal lengths")
        if n and (not np.all(np.isfinite(time)) or not np.all(np.isfinite(value))):
            raise ValueError("EventBatch times and values must be finite")
        if n and not np.all(np.isin(kind, EVENT_KINDS)):
            raise ValueError(f"EventBatch kinds must be in {EVENT_KINDS}")
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "time", time)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "value", value)

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @staticmethod
    def empty() -> "EventBatch":
        z = np.zeros(0)
        return EventBatch(z.astype(np.int64), z, z.astype(np.int64), z)

    @staticmethod
    def concat(batches: "list[EventBatch]") -> "EventBatch":
        if not batches:
            return EventBatch.empty()
        return EventBatch(
            np.concatenate([b.user for b in batches]),
            np.concatenate([b.time for b in batches]),
            np.concatenate([b.kind for b in batches]),
            np.concatenate([b.value for b in batches]),
        )

    def take(self, index: np.ndarray) -> "EventBatch":
        return EventBatch(self.user[index], self.time[index], self.kind[index], self.value[index])
