"""Event contracts: frozen, strict, versioned, and JSON Schema for other languages."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from streams.events import ALL_MODELS, Click, PolicyUpdate
from streams.topics import Topics, json_schemas


def test_models_are_frozen_and_forbid_extra():
    click = Click(request_id="r", segment="s", ad_id="a", event_time=datetime.now(timezone.utc))
    with pytest.raises(ValidationError):
        click.request_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Click(request_id="r", segment="s", ad_id="a", event_time=datetime.now(timezone.utc), x=1)


def test_every_model_carries_schema_version_1():
    for name, model in ALL_MODELS.items():
        assert model.model_fields["schema_version"].default == 1, name


def test_policy_update_defaults():
    u = PolicyUpdate(version="v2", artifact_uri="/tmp/a", event_time=datetime.now(timezone.utc))
    assert (u.kind, u.on_swap) == ("ads", "keep")


def test_json_schema_for_every_topic_payload():
    schemas = json_schemas()
    assert {"AdRequest", "AdDecision", "SessionEvent", "RetentionAction", "DeadLetter"} <= set(schemas)
    assert "candidates" in schemas["AdRequest"]["properties"]
    feedback = schemas["ad-feedback"]
    assert "discriminator" in feedback or "oneOf" in feedback


def test_segment_topics_share_partition_count():
    t = Topics(segment_partitions=6)
    assert t.ad_requests.partitions == t.ad_feedback.partitions == t.ad_decisions.partitions == 6
    assert len({s.name for s in t.all()}) == len(t.all())
