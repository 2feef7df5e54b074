"""Edge validation: every input becomes exactly one event or one dead letter with a useful reason."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from streams.edge import Decoder, Source, original_bytes
from streams.events import AdRequest, DeadLetter
from streams.topics import Topics

SRC = Source("t.ad-requests", 3, 42, b"m00-c00")
VALID = {
    "schema_version": 1, "request_id": "r1", "user_id": "u1", "segment": "m00-c00", "slot": "main",
    "context": [0.1, 0.2], "candidates": [{"ad_id": "a1", "features": [1.0, 2.0]}],
    "event_time": "2026-01-01T00:00:00+00:00",
}


def decode(raw: bytes, max_bytes: int = 64 * 1024):
    return Decoder(AdRequest, max_bytes).decode_one(raw, SRC)


def test_valid_request_decodes():
    event = decode(json.dumps(VALID).encode())
    assert isinstance(event, AdRequest)
    assert event.event_time.utcoffset() is not None


@pytest.mark.parametrize("raw, error_type, needle", [
    (b"{not json", "not_json", "JSON"),
    (json.dumps({**VALID, "schema_version": 7}).encode(), "unknown_schema_version", "7"),
    (json.dumps({**VALID, "context": "abc"}).encode(), "invalid", "context"),
    (json.dumps({k: v for k, v in VALID.items() if k != "user_id"}).encode(), "invalid", "user_id"),
    (json.dumps({**VALID, "context": [math.nan]}).encode(), "invalid", "finite"),
    (json.dumps({**VALID, "context": [math.inf]}).encode(), "invalid", "finite"),
    (json.dumps({**VALID, "event_time": "2026-01-01T00:00:00"}).encode(), "invalid", "timezone"),
    (json.dumps({**VALID, "extra": 1}).encode(), "invalid", "extra"),
    (json.dumps({**VALID, "candidates": []}).encode(), "invalid", "candidates"),
    (json.dumps({**VALID, "segment": "Not A Segment!"}).encode(), "invalid", "segment"),
    (json.dumps({**VALID, "context": [0.0] * 65}).encode(), "invalid", "context"),
    (b"[]", "invalid", ""),
])
def test_malformed_becomes_dead_letter(raw, error_type, needle):
    letter = decode(raw)
    assert isinstance(letter, DeadLetter)
    assert letter.error_type == error_type
    assert needle in letter.reason
    assert original_bytes(letter) == raw
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("t.ad-requests", 3, 42)


def test_oversize_is_rejected_before_parsing():
    raw = json.dumps(VALID).encode() + b" " * 2000
    letter = decode(raw, max_bytes=1024)
    assert isinstance(letter, DeadLetter) and letter.error_type == "oversize"
    assert original_bytes(letter) == raw


def test_tombstone_is_a_dead_letter():
    letter = decode(None)
    assert isinstance(letter, DeadLetter) and "tombstone" in letter.reason


def test_feedback_union_dispatches_on_type():
    dec = Decoder(Topics().ad_feedback.payload)
    base = {"request_id": "r", "segment": "s", "ad_id": "a", "event_time": "2026-01-01T00:00:00Z"}
    assert type(dec.decode_one(json.dumps({**base, "type": "click"}).encode(), SRC)).__name__ == "Click"
    buy = dec.decode_one(json.dumps({**base, "type": "purchase", "value": 3.5}).encode(), SRC)
    assert type(buy).__name__ == "Purchase" and buy.value == 3.5
    assert isinstance(dec.decode_one(json.dumps({**base, "type": "refund"}).encode(), SRC), DeadLetter)
    assert isinstance(dec.decode_one(json.dumps({**base, "type": "purchase", "value": -1}).encode(), SRC),
                      DeadLetter)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(raw):
    out = decode(raw)
    assert isinstance(out, (AdRequest, DeadLetter))
    if isinstance(out, DeadLetter):
        assert original_bytes(out) == raw and out.reason
