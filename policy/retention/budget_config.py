"""The budget's settings and answers (``policy.retention.budget``): caps, pacing, frequency cap, horizon,
never-contact list; money in integer micro-units; the ``Grant`` a spend request gets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from policy.retention.exceptions import BudgetStateError


MICRO = 1_000_000



def to_micro_up(x: float) -> int:
    """Cost in micro-units, rounded up."""
    return int(math.ceil(round(x * MICRO, 6)))



def to_micro_down(x: float) -> int:
    """Cap or allowance in micro-units, rounded down."""
    return int(math.floor(round(x * MICRO, 6)))



@dataclass(frozen=True)
class BudgetConfig:
    """Caps and limits of the intervention budget.

    Attributes
    ----------
    segment_cap : float
        Spend cap per segment per period (currency units), unless ``segment_caps`` names the segment.
    total_cap : float
        Spend cap over all segments per period.
    period_days : float
        Period length in days.
    pacing_lead : float
        Fraction of a cap available at the start of a period; the allowance grows linearly to the full
        cap at the end of the period (0 <= lead <= 1; 1 disables pacing).
    contact_window_days : float
        Frequency-cap window.
    max_contacts : int
        Contacts allowed per user in any such window (0: nobody is ever contacted).
    horizon_periods : int
        Periods of state kept behind the latest period seen.
    segment_caps : dict[str, float]
        Per-segment overrides of ``segment_cap``.
    never_contact : frozenset[str]
        Users never to contact.
    """

    segment_cap: float
    total_cap: float
    period_days: float = 7.0
    pacing_lead: float = 0.05
    contact_window_days: float = 14.0
    max_contacts: int = 1
    horizon_periods: int = 4
    segment_caps: dict[str, float] = field(default_factory=dict)
    never_contact: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        caps = [self.segment_cap, self.total_cap, *self.segment_caps.values()]
        if not all(math.isfinite(c) and c >= 0 for c in caps):
            raise BudgetStateError("caps must be finite and >= 0")
        if not (math.isfinite(self.period_days) and self.period_days > 0):
            raise BudgetStateError("period_days must be > 0")
        if not (0.0 <= self.pacing_lead <= 1.0):
            raise BudgetStateError("pacing_lead must be in [0, 1]")
        if not (math.isfinite(self.contact_window_days) and self.contact_window_days >= 0):
            raise BudgetStateError("contact_window_days must be >= 0")
        if self.max_contacts < 0:
            raise BudgetStateError("max_contacts must be >= 0")
        if self.horizon_periods < 1:
            raise BudgetStateError("horizon_periods must be >= 1")
        object.__setattr__(self, "never_contact", frozenset(self.never_contact))
        object.__setattr__(self, "segment_caps", dict(self.segment_caps))

    def cap_for(self, segment: str) -> float:
        return self.segment_caps.get(segment, self.segment_cap)

    def to_dict(self) -> dict:
        return {
            "segment_cap": self.segment_cap,
            "total_cap": self.total_cap,
            "period_days": self.period_days,
            "pacing_lead": self.pacing_lead,
            "contact_window_days": self.contact_window_days,
            "max_contacts": self.max_contacts,
            "horizon_periods": self.horizon_periods,
            "segment_caps": dict(sorted(self.segment_caps.items())),
            "never_contact": sorted(self.never_contact),
        }

    @staticmethod
    def from_dict(raw: dict) -> "BudgetConfig":
        raw = dict(raw)
        raw["never_contact"] = frozenset(raw.get("never_contact", ()))
        return BudgetConfig(**raw)



class Grant(NamedTuple):
    """The answer to a spend request."""

    granted: bool
    reason: str
    """``granted``, ``never_contact``, ``frequency_cap``, ``segment_cap``, ``segment_pacing``,
    ``total_cap``, ``total_pacing``, ``invalid_cost``, ``expired`` or ``id_conflict``."""
    cost: float
    """Reserved cost (0 when denied)."""
    duplicate: bool = False
    """True when the decision id was seen before (the answer is the first one)."""
    tag: str = ""
    """The caller's tag of the first request (e.g. the treatment), so a replay can repeat the action."""
