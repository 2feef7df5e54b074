"""The wire: msgspec mirrors of the event contracts in :mod:`streams.events`.

Input structs decode the edge's JSON strictly (``streams.edge``, through :data:`WIRE`); output records are what
the hot path encodes (``streams.edge.encode_one``) and validate as their pydantic models.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, ClassVar, Literal, Union

import msgspec
from msgspec import Meta

from streams.events import (ID_PATTERN, MAX_CANDIDATES, MAX_FEATURES, SCHEMA_VERSION, SEGMENT_PATTERN, AdFeedback,
                            AdRequest, Click, ErasureRequest, Impression, PolicyUpdate, Purchase, RetentionOutcome,
                            SessionEvent)


# --- the wire: msgspec mirrors of the input events, decoded strictly at the edge -------------------
#
# The pydantic models in streams.events are the contract (JSON Schema for producers comes from them); the structs
# below decode the same JSON faster (an ad request in half the time: ``metacart bench edge``) and
# stricter: no type coercion (``"0.5"`` or ``true`` is
# not a float, ``123`` is not a timestamp, ``1.0`` is not an int). Lengths and ranges are msgspec ``Meta``
# constraints; id patterns are checked in ``__post_init__`` with precompiled regexes (``fullmatch``, so a
# trailing newline is rejected as pydantic's regex engine does). tests/unit/streams/test_events_wire.py
# checks on a fuzzed corpus that both accept and reject the same messages, apart from coercions.
#
# A struct has its model's attributes, not its pydantic methods (pydantic 2.14 does not let a struct pass
# ``isinstance`` for a model: code that dispatches on model classes gets models, see ``streams.edge``).

_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
_SEGMENT = re.compile(SEGMENT_PATTERN.removeprefix("^").removesuffix("$"))
_ID_MATCH = _ID.fullmatch
_SEGMENT_MATCH = _SEGMENT.fullmatch

WireId = Annotated[str, Meta(min_length=1, max_length=64)]
WireFeatures = Annotated[list[float], Meta(min_length=1, max_length=MAX_FEATURES)]
WireMoney = Annotated[float, Meta(ge=0.0, le=1e7)]
WireTime = Annotated[datetime, Meta(tz=True)]
WireVersion = Annotated[str, Meta(min_length=1, max_length=64)]


def _ids(struct: msgspec.Struct, *fields: str) -> None:
    """Raise unless every named field matches ``ID_PATTERN`` (the message names the field, never the value:
    dead-letter reasons are not pseudonymised). The hot paths match inline first and call this to fail."""
    for name in fields:
        if _ID.fullmatch(getattr(struct, name)) is None:
            raise ValueError(f"{name} does not match {ID_PATTERN}")


def _segment(value: str) -> None:
    if _SEGMENT.fullmatch(value) is None:
        raise ValueError(f"segment does not match {SEGMENT_PATTERN}")


class _Wire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the wire structs: frozen, unknown fields rejected, versioned like ``EventModel``.

    ``KEY_FIELD`` names the payload field the Kafka key must equal (None: the key is not checked).
    """

    KEY_FIELD: ClassVar[str | None] = None

    schema_version: Literal[1] = SCHEMA_VERSION


class AdCandidateWire(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Decoded only inside an ``AdRequestWire``, which checks the ``ad_id`` pattern of every candidate
    (one Python call per request instead of one per candidate)."""

    ad_id: WireId
    features: WireFeatures


class AdRequestWire(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    KEY_FIELD: ClassVar[str | None] = "segment"

    request_id: WireId
    user_id: WireId
    segment: WireId
    slot: WireId = "main"
    context: WireFeatures
    candidates: Annotated[list[AdCandidateWire], Meta(min_length=1, max_length=MAX_CANDIDATES)]
    event_time: WireTime

    def __post_init__(self) -> None:
        match = _ID_MATCH
        if match(self.request_id) is None or match(self.user_id) is None or match(self.slot) is None:
            _ids(self, "request_id", "user_id", "slot")
        if _SEGMENT_MATCH(self.segment) is None:
            _segment(self.segment)
        for i, c in enumerate(self.candidates):
            a = c.ad_id  # an ASCII alphanumeric id matches the pattern: two C calls instead of a regex
            if not (a.isalnum() and a.isascii()) and match(a) is None:
                raise ValueError(f"candidates[{i}].ad_id does not match {ID_PATTERN}")


class _FeedbackWire(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    KEY_FIELD: ClassVar[str | None] = "segment"

    request_id: WireId
    segment: WireId
    ad_id: WireId
    event_time: WireTime

    @property
    def type(self) -> str:
        """The feedback kind (the union's tag, as ``Impression.type`` and friends)."""
        return self.__struct_config__.tag

    def __post_init__(self) -> None:
        if _ID_MATCH(self.request_id) is None or _ID_MATCH(self.ad_id) is None:
            _ids(self, "request_id", "ad_id")
        if _SEGMENT_MATCH(self.segment) is None:
            _segment(self.segment)


class ImpressionWire(_FeedbackWire, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="impression"):
    pass


class ClickWire(_FeedbackWire, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="click"):
    pass


class PurchaseWire(_FeedbackWire, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="purchase"):
    value: WireMoney


class SessionEventWire(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    KEY_FIELD: ClassVar[str | None] = "user_id"

    user_id: WireId
    segment: WireId
    session_id: WireId
    kind: Literal["session_start", "page_view", "add_to_cart", "purchase"]
    value: WireMoney = 0.0
    event_time: WireTime

    def __post_init__(self) -> None:
        if _ID_MATCH(self.user_id) is None or _ID_MATCH(self.session_id) is None:
            _ids(self, "user_id", "session_id")
        if _SEGMENT_MATCH(self.segment) is None:
            _segment(self.segment)


class RetentionOutcomeWire(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    KEY_FIELD: ClassVar[str | None] = "user_id"

    decision_id: WireId
    user_id: WireId
    segment: WireId
    retained: bool
    value: WireMoney
    event_time: WireTime

    def __post_init__(self) -> None:
        if _ID_MATCH(self.decision_id) is None or _ID_MATCH(self.user_id) is None:
            _ids(self, "decision_id", "user_id")
        if _SEGMENT_MATCH(self.segment) is None:
            _segment(self.segment)


class ErasureRequestWire(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    KEY_FIELD: ClassVar[str | None] = "user_id"

    request_id: WireId
    user_id: WireId
    requested_at: WireTime

    def __post_init__(self) -> None:
        _ids(self, "request_id", "user_id")


class GateRecordWire(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    decision: Literal["passed", "forced"]
    estimator: Annotated[str, Meta(max_length=16)]
    margin: float
    difference: float
    lo: float
    hi: float
    candidate_value: float
    serving_value: float
    serving_version: Annotated[str, Meta(max_length=64)]
    ess: Annotated[float, Meta(ge=0.0)]
    log_rows: Annotated[int, Meta(ge=0)]
    log_uri: Annotated[str, Meta(max_length=1024)]


class PolicyUpdateWire(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["ads", "retention"] = "ads"
    version: WireVersion
    artifact_uri: Annotated[str, Meta(min_length=1, max_length=1024)]
    on_swap: Literal["keep", "reset"] = "keep"
    event_time: WireTime
    gate: GateRecordWire | None = None


AdFeedbackWire = Union[ImpressionWire, ClickWire, PurchaseWire]

WIRE: dict[object, object] = {
    AdRequest: AdRequestWire,
    AdFeedback: AdFeedbackWire,
    Impression: ImpressionWire,
    Click: ClickWire,
    Purchase: PurchaseWire,
    SessionEvent: SessionEventWire,
    RetentionOutcome: RetentionOutcomeWire,
    ErasureRequest: ErasureRequestWire,
    PolicyUpdate: PolicyUpdateWire,
}
"""The wire struct (or union of structs) that decodes each input payload type of ``streams.topics``."""


# --- output records: msgspec mirrors of the hot-path outputs, encoded by ``streams.edge.encode_one`` ---


def _finite(struct: msgspec.Struct, *fields: str) -> None:
    for name in fields:
        value = getattr(struct, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")


class ExplanationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """``Explanation`` as an output record (same fields, same JSON)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    score: float
    prior_score: float
    evidence_score: float
    segment_updates: int
    expected_reward: float | None = None

    def __post_init__(self) -> None:
        _finite(self, "score", "prior_score", "evidence_score", "expected_reward")


class AdDecisionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """``AdDecision`` as an output record: the JSON ``encode_one`` writes validates as an ``AdDecision``.

    Built by the engine from values it computed, so only what the kernels could get wrong is checked on
    construction (finite numbers, a propensity in (0, 1]); ids come from a validated request.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: str
    user_id: str
    segment: str
    slot: str
    ad_id: str
    position: int
    propensity: float
    policy_version: str
    explanation: ExplanationRecord
    request_time: datetime
    decided_at: datetime

    def __post_init__(self) -> None:
        if not 0.0 < self.propensity <= 1.0:
            raise ValueError(f"propensity must be in (0, 1], got {self.propensity}")
