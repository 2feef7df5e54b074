"""The fast decision encoder: ``encode_one(AdDecisionRecord(...))`` writes JSON that validates as an
``AdDecision`` and is the same document ``AdDecision(...).model_dump_json()`` writes."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from streams.edge import encode_one
from streams.events import AdDecision, Explanation
from streams.wire import AdDecisionRecord, ExplanationRecord

T = datetime(2026, 1, 1, 12, 30, 5, 123456, tzinfo=timezone.utc)


def _fields(**changes):
    base = dict(request_id="r-1", user_id="k1.0123456789abcdef0123456789abcdef", segment="m00-c00", slot="main",
                ad_id="ad7", position=3, propensity=0.25, policy_version="v2026.01",
                request_time=T, decided_at=T + timedelta(milliseconds=3))
    expl = dict(score=-1.5, prior_score=-2.0, evidence_score=0.5, segment_updates=12, expected_reward=0.18)
    base.update(changes)
    return base, expl


def _both(**changes):
    base, expl = _fields(**changes)
    record = AdDecisionRecord(**base, explanation=ExplanationRecord(**expl))
    model = AdDecision(**base, explanation=Explanation(**expl))
    return encode_one(record), model


def test_record_json_validates_as_the_model_and_matches_its_json():
    raw, model = _both()
    assert AdDecision.model_validate_json(raw) == model
    assert json.loads(raw) == json.loads(model.model_dump_json())


@settings(max_examples=200, deadline=None)
@given(propensity=st.floats(min_value=1e-12, max_value=1.0),
       score=st.floats(allow_nan=False, allow_infinity=False),
       expected=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
       updates=st.integers(0, 2**40), position=st.integers(0, 49),
       offset_min=st.integers(-14 * 60, 14 * 60), micro=st.integers(0, 999_999))
def test_same_document_for_any_values(propensity, score, expected, updates, position, offset_min, micro):
    when = datetime(2026, 3, 1, 1, 2, 3, micro, tzinfo=timezone(timedelta(minutes=offset_min)))
    base, expl = _fields(propensity=propensity, position=position, request_time=when, decided_at=when)
    expl.update(score=score, prior_score=score / 2, evidence_score=score / 2, segment_updates=updates,
                expected_reward=expected)
    raw = encode_one(AdDecisionRecord(**base, explanation=ExplanationRecord(**expl)))
    model = AdDecision(**base, explanation=Explanation(**expl))
    assert AdDecision.model_validate_json(raw) == model
    assert json.loads(raw) == json.loads(model.model_dump_json())


@pytest.mark.parametrize("propensity", [0.0, -0.1, 1.5, math.nan])
def test_a_propensity_outside_0_1_is_refused(propensity):
    base, expl = _fields(propensity=propensity)
    with pytest.raises(ValueError, match="propensity"):
        AdDecisionRecord(**base, explanation=ExplanationRecord(**expl))


@pytest.mark.parametrize("field", ["score", "prior_score", "evidence_score", "expected_reward"])
def test_non_finite_scores_are_refused(field):
    base, expl = _fields()
    with pytest.raises(ValueError, match=field):
        ExplanationRecord(**{**expl, field: math.inf})
