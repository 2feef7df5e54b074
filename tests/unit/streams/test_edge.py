"""Edge decoding: every input becomes exactly one event or one dead letter with a useful reason; types are
strict, the Kafka key must be the field the topic is keyed by."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from streams.edge import Decoder, Source, original_bytes
from streams.events import AdRequest, Click, DeadLetter, Purchase, SessionEvent
from streams.wire import AdRequestWire, ClickWire
from streams.topics import Topics

TOPICS = Topics("t")
SRC = Source("t.ad-requests", 3, 42, b"m00-c00")
VALID = {
    "schema_version": 1, "request_id": "r1", "user_id": "u1", "segment": "m00-c00", "slot": "main",
    "context": [0.1, 0.2], "candidates": [{"ad_id": "a1", "features": [1.0, 2.0]}],
    "event_time": "2026-01-01T00:00:00+00:00",
}
SESSION = {"schema_version": 1, "user_id": "alice", "segment": "m00-c00", "session_id": "s1",
           "kind": "session_start", "event_time": "2026-01-01T00:00:00Z"}
FEEDBACK = {"request_id": "r", "segment": "m00-c00", "ad_id": "a", "event_time": "2026-01-01T00:00:00Z"}


def decode(raw: bytes | None, max_bytes: int = 64 * 1024, source: Source = SRC):
    return Decoder(AdRequest, max_bytes).decode_one(raw, source)


def test_valid_request_decodes_to_a_struct_with_the_models_values():
    raw = json.dumps(VALID).encode()
    event = decode(raw)
    assert isinstance(event, AdRequestWire)
    assert event.event_time.utcoffset() is not None
    assert (event.request_id, event.segment, event.candidates[0].features) == ("r1", "m00-c00", [1.0, 2.0])
    model = Decoder(AdRequest, models=True).decode_one(raw, SRC)
    assert isinstance(model, AdRequest)
    assert model == AdRequest.model_validate_json(raw)
    assert model.event_time == event.event_time and model.context == event.context


@pytest.mark.parametrize("raw, error_type, needle", [
    (b"{not json", "not_json", "JSON"),
    (json.dumps({**VALID, "schema_version": 7}).encode(), "unknown_schema_version", "7"),
    (json.dumps({**VALID, "context": "abc"}).encode(), "invalid", "context"),
    (json.dumps({k: v for k, v in VALID.items() if k != "user_id"}).encode(), "invalid", "user_id"),
    (json.dumps({**VALID, "context": [math.nan]}).encode(), "not_json", "JSON"),
    (json.dumps({**VALID, "context": [math.inf]}).encode(), "not_json", "JSON"),
    (json.dumps(VALID).encode().replace(b"[0.1,", b"[1e400,"), "invalid", "out of range"),
    (json.dumps({**VALID, "event_time": "2026-01-01T00:00:00"}).encode(), "invalid", "timezone"),
    (json.dumps({**VALID, "extra": 1}).encode(), "invalid", "extra"),
    (json.dumps({**VALID, "candidates": []}).encode(), "invalid", "candidates"),
    (json.dumps({**VALID, "segment": "Not A Segment!"}).encode(), "invalid", "segment"),
    (json.dumps({**VALID, "request_id": "r1\n"}).encode(), "invalid", "request_id"),
    (json.dumps({**VALID, "candidates": [{"ad_id": "a 1", "features": [1.0]}]}).encode(), "invalid", "ad_id"),
    (json.dumps({**VALID, "context": [0.0] * 65}).encode(), "invalid", "context"),
    (b"[]", "invalid", "object"),
])
def test_malformed_becomes_dead_letter(raw, error_type, needle):
    letter = decode(raw)
    assert isinstance(letter, DeadLetter)
    assert letter.error_type == error_type
    assert needle in letter.reason
    assert original_bytes(letter) == raw and not letter.original_truncated
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("t.ad-requests", 3, 42)


@pytest.mark.parametrize("change, error_type", [
    ({"event_time": 123}, "invalid"),                 # was 1970-01-01T00:02:03Z
    ({"event_time": "1767225600"}, "invalid"),        # a timestamp in a string
    ({"context": ["0.5", 0.2]}, "invalid"),           # a string as a float
    ({"context": [True, 0.2]}, "invalid"),            # a bool as a float
    ({"schema_version": 1.0}, "unknown_schema_version"),  # a float as the int literal
])
def test_no_type_coercion(change, error_type):
    raw = json.dumps({**VALID, **change}).encode()
    AdRequest.model_validate_json(raw)  # the model, lax, accepts it: that is the defect
    letter = decode(raw)
    assert isinstance(letter, DeadLetter) and letter.error_type == error_type, letter


def test_oversize_is_rejected_before_parsing():
    raw = json.dumps(VALID).encode() + b" " * 2000
    letter = decode(raw, max_bytes=1024)
    assert isinstance(letter, DeadLetter) and letter.error_type == "oversize"
    assert original_bytes(letter) == raw


def test_tombstone_is_a_dead_letter():
    letter = decode(None)
    assert isinstance(letter, DeadLetter) and "tombstone" in letter.reason


def test_feedback_union_dispatches_on_type():
    dec = Decoder(TOPICS.ad_feedback.payload)
    assert isinstance(dec.decode_one(json.dumps({**FEEDBACK, "type": "click"}).encode(), SRC), Click)
    buy = dec.decode_one(json.dumps({**FEEDBACK, "type": "purchase", "value": 3.5}).encode(), SRC)
    assert isinstance(buy, Purchase) and buy.value == 3.5
    for bad in ({**FEEDBACK, "type": "refund"}, {**FEEDBACK, "type": "purchase", "value": -1}, FEEDBACK,
                {**FEEDBACK, "type": "click", "value": 1.0}, {**FEEDBACK, "type": "purchase", "value": "3.5"}):
        assert isinstance(dec.decode_one(json.dumps(bad).encode(), SRC), DeadLetter), bad
    wire = Decoder(TOPICS.ad_feedback.payload, models=False).decode_one(
        json.dumps({**FEEDBACK, "type": "click"}).encode(), SRC)
    assert isinstance(wire, ClickWire) and wire.type == "click" and wire.request_id == "r"


def test_unknown_payload_type_is_a_clear_error():
    with pytest.raises(TypeError, match="WIRE"):
        Decoder(DeadLetter)


# --- the key check ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"m01-c00", b"", None, b"M00-C00", b"m00-c00 "])
def test_request_whose_key_is_not_its_segment_is_a_dead_letter(key):
    raw = json.dumps(VALID).encode()
    letter = decode(raw, source=Source("t.ad-requests", 3, 42, key))
    assert isinstance(letter, DeadLetter) and letter.error_type == "key_mismatch", letter
    assert "segment" in letter.reason and original_bytes(letter) == raw


def test_feedback_whose_key_is_not_its_segment_is_a_dead_letter():
    raw = json.dumps({**FEEDBACK, "type": "click"}).encode()
    dec = Decoder(TOPICS.ad_feedback.payload)
    assert isinstance(dec.decode_one(raw, Source("t.ad-feedback", 0, 1, b"m00-c00")), Click)
    letter = dec.decode_one(raw, Source("t.ad-feedback", 0, 1, b"m00-c01"))
    assert isinstance(letter, DeadLetter) and letter.error_type == "key_mismatch"


@pytest.mark.parametrize("payload, body, field", [
    (TOPICS.sessions.payload, SESSION, "user_id"),
    (TOPICS.retention_outcomes.payload, {"decision_id": "d1", "user_id": "alice", "segment": "m00-c00",
                                         "retained": True, "value": 2.0, "event_time": "2026-01-01T00:00:00Z"},
     "user_id"),
    (TOPICS.erasure_requests.payload, {"request_id": "e1", "user_id": "alice",
                                       "requested_at": "2026-01-01T00:00:00Z"}, "user_id"),
])
def test_user_topics_are_keyed_by_user_id_and_the_reason_names_no_user(payload, body, field):
    dec = Decoder(payload)
    raw = json.dumps(body).encode()
    ok = dec.decode_one(raw, Source("t.x", 0, 1, b"alice"))
    assert not isinstance(ok, DeadLetter) and ok.user_id == "alice"
    letter = dec.decode_one(raw, Source("t.x", 0, 1, b"bob"))
    assert isinstance(letter, DeadLetter) and letter.error_type == "key_mismatch" and field in letter.reason
    assert "alice" not in letter.reason and "bob" not in letter.reason  # reasons are not pseudonymised


def test_session_decodes_to_the_model_the_engine_dispatches_on():
    event = Decoder(TOPICS.sessions.payload).decode_one(json.dumps(SESSION).encode(), Source("t", 0, 0, b"alice"))
    assert isinstance(event, SessionEvent) and event.value == 0.0


def test_policy_updates_are_not_key_checked():
    body = {"kind": "ads", "version": "v2", "artifact_uri": "/a", "event_time": "2026-01-01T00:00:00Z"}
    update = Decoder(TOPICS.policy_updates.payload).decode_one(json.dumps(body).encode(), Source("t", 0, 0, None))
    assert not isinstance(update, DeadLetter) and update.version == "v2"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(raw):
    out = decode(raw)
    assert isinstance(out, (AdRequestWire, DeadLetter))
    if isinstance(out, DeadLetter):
        assert original_bytes(out) == raw and out.reason


def test_pseudonyms_replace_the_user_id_of_a_struct_and_of_a_model():
    from streams.pseudonyms import Pseudonyms

    p = Pseudonyms(b"k" * 32)
    raw = json.dumps(VALID).encode()
    struct = p.event_one(decode(raw))
    assert isinstance(struct, AdRequestWire) and struct.user_id == p.of("u1")
    assert struct.candidates == decode(raw).candidates and struct.event_time == decode(raw).event_time
    session = Decoder(TOPICS.sessions.payload).decode_one(json.dumps(SESSION).encode(), Source("t", 0, 0, b"alice"))
    assert p.event_one(session).user_id == p.of("alice") and isinstance(p.event_one(session), SessionEvent)
