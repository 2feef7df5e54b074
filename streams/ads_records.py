"""The records the ad engine (``streams.ads_engine``) writes about a request: its decision's JSON, and the
reason a request of the wrong shape goes to the dead letters."""

from __future__ import annotations

from datetime import datetime, timezone

from streams.ads_state import Pending
from streams.edge import encode_one
from streams.events import AdRequest
from streams.wire import AdDecisionRecord, ExplanationRecord


def decision_bytes(req: AdRequest, p: Pending) -> bytes:
    """The decision's JSON, written by the edge's msgspec encoder (the same document as
    ``AdDecision(...).model_dump_json()``, ``tests/unit/streams/test_edge_encode.py``; ~7 % of a
    worker's samples went to the pydantic model here)."""
    return encode_one(AdDecisionRecord(
        request_id=req.request_id, user_id=req.user_id, segment=req.segment, slot=req.slot,
        ad_id=p.ad_id, position=p.position, propensity=p.propensity, policy_version=p.policy_version,
        explanation=ExplanationRecord(score=p.score, prior_score=p.prior_score,
                                      evidence_score=p.score - p.prior_score,
                                      segment_updates=p.segment_updates, expected_reward=p.expected),
        request_time=req.event_time, decided_at=datetime.fromtimestamp(p.decided_at, timezone.utc),
    ))


def shape_problem(req: AdRequest, dx: int, da: int) -> str:
    """Why a request does not fit the policy's feature sizes (``dx`` context, ``da`` per candidate)."""
    if len(req.context) != dx:
        return f"context has {len(req.context)} features; the policy expects {dx}"
    bad = next(c for c in req.candidates if len(c.features) != da)
    return f"candidate {bad.ad_id} has {len(bad.features)} features; the policy expects {da}"
