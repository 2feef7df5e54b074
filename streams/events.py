"""Event contracts: every Kafka payload metacart reads or writes, as pydantic v2 models.

Rules shared by all models (see ``EventModel``): frozen, unknown fields rejected, an explicit
``schema_version`` (currently 1), timezone-aware timestamps, finite floats, bounded sizes. Raw bytes are
validated once at the edge (``streams.edge``); whatever fails goes to the dead-letter topic.

Feedback (impressions, clicks, purchases) shares one topic and is told apart by ``type``; so do the
retention-side session events. ``metacart schema`` writes JSON Schema for all of them. Their msgspec mirrors,
which decode the edge's input and encode the hot path's outputs, are in :mod:`streams.wire`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PrivateAttr

SCHEMA_VERSION = 1

MAX_FEATURES = 64
MAX_CANDIDATES = 50
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
SEGMENT_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"

Id = Annotated[str, Field(pattern=ID_PATTERN)]
Segment = Annotated[str, Field(pattern=SEGMENT_PATTERN)]
Features = Annotated[list[float], Field(min_length=1, max_length=MAX_FEATURES)]
Probability = Annotated[float, Field(gt=0.0, le=1.0)]
Money = Annotated[float, Field(ge=0.0, le=1e7)]

RETENTION_TREATMENTS = ("none", "push", "email", "coupon_5", "coupon_15")
Treatment = Literal["none", "push", "email", "coupon_5", "coupon_15"]


class EventModel(BaseModel):
    """Base of every event: frozen, strict about unknown fields, finite numbers, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, str_max_length=256)

    schema_version: Literal[1] = SCHEMA_VERSION


# --- ad placement --------------------------------------------------------------------------------


class AdCandidate(EventModel):
    """One ad that may fill the slot, with its features (the same layout for every candidate)."""

    ad_id: Id
    features: Features


class AdRequest(EventModel):
    """A slot to fill for a user; keyed by ``segment`` so a segment's traffic shares a partition."""

    request_id: Id
    user_id: Id
    segment: Segment
    slot: Id = "main"
    context: Features
    candidates: Annotated[list[AdCandidate], Field(min_length=1, max_length=MAX_CANDIDATES)]
    event_time: AwareDatetime


class Explanation(EventModel):
    """Where the chosen ad's expected reward came from: ``score = prior_score + evidence_score``.

    Scores are in the head's units (a logit for a click model); ``expected_reward`` is the posterior-mean
    expected reward itself (a click probability for a click model; None from workers before it existed).
    """

    score: float
    prior_score: float
    evidence_score: float
    segment_updates: int = Field(ge=0)
    expected_reward: float | None = None


class AdDecision(EventModel):
    """The ad chosen for a request, with the probability the policy had of choosing it."""

    request_id: Id
    user_id: Id
    segment: Segment
    slot: Id
    ad_id: Id
    position: int = Field(ge=0, lt=MAX_CANDIDATES)
    propensity: Probability
    policy_version: Annotated[str, Field(min_length=1, max_length=64)]
    explanation: Explanation
    request_time: AwareDatetime
    decided_at: AwareDatetime


class Impression(EventModel):
    type: Literal["impression"] = "impression"
    request_id: Id
    segment: Segment
    ad_id: Id
    event_time: AwareDatetime


class Click(EventModel):
    type: Literal["click"] = "click"
    request_id: Id
    segment: Segment
    ad_id: Id
    event_time: AwareDatetime


class Purchase(EventModel):
    type: Literal["purchase"] = "purchase"
    request_id: Id
    segment: Segment
    ad_id: Id
    value: Money
    event_time: AwareDatetime


AdFeedback = Annotated[Union[Impression, Click, Purchase], Field(discriminator="type")]


# --- retention -----------------------------------------------------------------------------------


class SessionEvent(EventModel):
    """User activity; keyed by ``user_id``. ``value`` is the spend of a purchase, else 0."""

    user_id: Id
    segment: Segment
    session_id: Id
    kind: Literal["session_start", "page_view", "add_to_cart", "purchase"]
    value: Money = 0.0
    event_time: AwareDatetime


class RetentionReason(EventModel):
    """Why an intervention was (or was not) chosen."""

    risk: float = Field(ge=0.0, le=1.0)
    expected_uplift: float
    cost: Money
    rule: Annotated[str, Field(max_length=64)] = "bandit"


class RetentionAction(EventModel):
    """An intervention for one user, with its propensity; keyed by ``user_id``."""

    decision_id: Id
    user_id: Id
    segment: Segment
    action: Treatment
    propensity: Probability
    cost: Money
    policy_version: Annotated[str, Field(min_length=1, max_length=64)]
    reason: RetentionReason
    decided_at: AwareDatetime


class RetentionOutcome(EventModel):
    """What happened in the outcome window after a retention action; keyed by ``user_id``."""

    decision_id: Id
    user_id: Id
    segment: Segment
    retained: bool
    value: Money
    event_time: AwareDatetime


class ErasureRequest(EventModel):
    """Forget one user (``metacart forget``); keyed by ``user_id`` like the user's sessions."""

    request_id: Id
    user_id: Id
    requested_at: AwareDatetime


# --- control and errors --------------------------------------------------------------------------


class GateRecord(EventModel):
    """Why a gated publish went out: the off-policy estimate of candidate − serving on a recent log."""

    decision: Literal["passed", "forced"]
    estimator: Annotated[str, Field(max_length=16)]
    margin: float
    difference: float
    lo: float
    hi: float
    candidate_value: float
    serving_value: float
    serving_version: Annotated[str, Field(max_length=64)]
    ess: float = Field(ge=0.0)
    log_rows: int = Field(ge=0)
    log_uri: Annotated[str, Field(max_length=1024)]


class PolicyUpdate(EventModel):
    """Tells every worker to load another policy artifact (rollback = publish the old version).

    ``gate`` records the off-policy check a gated publish passed (or was forced past); None when ungated.
    """

    kind: Literal["ads", "retention"] = "ads"
    version: Annotated[str, Field(min_length=1, max_length=64)]
    artifact_uri: Annotated[str, Field(min_length=1, max_length=1024)]
    on_swap: Literal["keep", "reset"] = "keep"
    event_time: AwareDatetime
    gate: GateRecord | None = None


class DeadLetter(EventModel):
    """A message that could not be processed: the reason and the original bytes.

    The envelope is bounded (``streams.edge.dead_letter``): ``original_b64`` holds the value's first bytes
    only when ``original_truncated``; ``original_size`` and ``original_sha256`` always describe all of it
    (after pseudonymisation when that is on). Likewise for a key longer than 1 KiB.
    """

    reason: Annotated[str, Field(max_length=4096)]
    error_type: Annotated[str, Field(max_length=64)]
    source_topic: Annotated[str, Field(max_length=255)]
    source_partition: int
    source_offset: int
    original_key_b64: Annotated[str, Field(max_length=1 << 20)] | None = None
    original_key_truncated: bool = False
    original_b64: Annotated[str, Field(max_length=1 << 22)]
    original_truncated: bool = False
    original_size: int | None = Field(None, ge=0)
    original_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    failed_at: datetime

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # The untruncated value and key and the envelope bound, for a rebuild after pseudonymisation.
    _raw: bytes | None = PrivateAttr(None)
    _key: bytes | None = PrivateAttr(None)
    _max_bytes: int | None = PrivateAttr(None)


class WorkerStats(EventModel):
    """A worker's running counters (cumulative since it started) and what it serves."""

    worker: Annotated[str, Field(max_length=128)]
    policy_version: Annotated[str, Field(max_length=64)]
    counters: dict[str, float]
    segments_in_memory: int = Field(ge=0)
    pending: int = Field(ge=0)
    event_time: AwareDatetime


ALL_MODELS: dict[str, type[BaseModel]] = {
    model.__name__: model
    for model in (
        AdRequest,
        AdDecision,
        Impression,
        Click,
        Purchase,
        SessionEvent,
        RetentionAction,
        RetentionOutcome,
        ErasureRequest,
        PolicyUpdate,
        DeadLetter,
        WorkerStats,
    )
}
