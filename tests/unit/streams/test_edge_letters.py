"""Dead-letter envelopes always fit one Kafka message: big originals are kept as a prefix with their full
size and SHA-256, and pseudonymisation keeps both the bound and the privacy of user ids."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given, settings, strategies as st

from streams.edge import (DEAD_LETTER_MAX_BYTES, KEY_PREFIX_BYTES, MIN_LETTER_BYTES, Decoder, Source,
                          dead_letter, original_bytes)
from streams.events import AdRequest, DeadLetter
from streams.pseudonyms import Pseudonyms
from streams.topics import Topics

TOPICS = Topics("t")
SRC = Source(TOPICS.ad_requests.name, 0, 5, b"m00-c00")
LIBRDKAFKA_MESSAGE_MAX = 1_000_000  # librdkafka's default message.max.bytes: what the producer refuses above
P = Pseudonyms(b"k" * 32, "k1", frozenset({TOPICS.sessions.name}))


def _request_of(size: int) -> bytes:
    body = {"schema_version": 1, "request_id": "big", "user_id": "alice", "segment": "m00-c00",
            "context": [0.5] * 8, "candidates": [{"ad_id": "a1", "features": [1.0]}],
            "event_time": "2026-01-01T00:00:00Z", "padding": ""}
    raw = json.dumps(body).encode()
    return raw.replace(b'"padding": ""', b'"padding": "' + b"x" * (size - len(raw)) + b'"')


def test_the_letter_of_an_800kb_message_fits_the_producer_limit():
    raw = _request_of(800_000)
    assert len(raw) == 800_000
    letter = Decoder(AdRequest, max_bytes=1_000_000).decode_one(raw, SRC)
    assert isinstance(letter, DeadLetter) and letter.error_type == "invalid"  # "padding" is not a field
    wire = letter.model_dump_json().encode()
    assert len(wire) <= DEAD_LETTER_MAX_BYTES < LIBRDKAFKA_MESSAGE_MAX
    back = DeadLetter.model_validate_json(wire)
    assert back.original_truncated and back.original_size == len(raw)
    assert back.original_sha256 == hashlib.sha256(raw).hexdigest()
    prefix = original_bytes(back)
    assert raw.startswith(prefix) and len(prefix) > DEAD_LETTER_MAX_BYTES // 2


def test_oversize_letter_fits_too():
    raw = _request_of(900_000)
    letter = Decoder(AdRequest).decode_one(raw, SRC)  # 64 KiB limit: oversize
    assert letter.error_type == "oversize" and letter.original_truncated
    assert len(letter.model_dump_json().encode()) <= DEAD_LETTER_MAX_BYTES


def test_small_letters_keep_every_byte_with_size_and_hash():
    raw = b"{not json"
    letter = dead_letter(raw, SRC, "not_json", "broken")
    assert not letter.original_truncated and original_bytes(letter) == raw
    assert letter.original_size == len(raw) and letter.original_sha256 == hashlib.sha256(raw).hexdigest()


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 400_000), bound=st.integers(MIN_LETTER_BYTES, 300_000),
       reason=st.text(max_size=5000), key_size=st.integers(0, 3000))
def test_envelope_never_exceeds_its_bound(size, bound, reason, key_size):
    raw = bytes(range(256)) * (size // 256) + b"\x00" * (size % 256)
    letter = dead_letter(raw, Source("t.topic", 1, 2, b"\xff" * key_size), "invalid", reason, bound)
    wire = letter.model_dump_json().encode()
    assert len(wire) <= bound
    back = DeadLetter.model_validate_json(wire)
    assert back.original_size == size and raw.startswith(original_bytes(back))
    assert back.original_truncated == (len(original_bytes(back)) < size)
    assert back.original_key_truncated == (key_size > KEY_PREFIX_BYTES)
    assert base64.b64decode(back.original_key_b64) == b"\xff" * min(key_size, KEY_PREFIX_BYTES)
    if back.original_truncated:  # cut only as much as needed: the prefix fills the room (base64: 4 bytes)
        assert len(wire) > bound - 5


def test_a_bound_below_the_minimum_is_a_clear_error():
    with pytest.raises(ValueError, match="minimum"):
        dead_letter(b"x", SRC, "invalid", "r", MIN_LETTER_BYTES - 1)


# --- pseudonymised envelopes -------------------------------------------------------------------------


def test_pseudonymised_letter_is_rebuilt_from_the_whole_value_and_still_fits():
    # Many short user ids: pseudonymisation triples the bytes, so a letter that fitted no longer does.
    raw = b"[" + b",".join(b'{"user_id": "u%d"}' % i for i in range(6000)) + b"]"
    src = Source(TOPICS.sessions.name, 0, 1, b"u1")
    letter = dead_letter(raw, src, "invalid", "not an object", 200_000)
    assert not letter.original_truncated
    out = P.letter_one(letter)
    wire = out.model_dump_json().encode()
    assert len(wire) <= 200_000 and out.original_truncated
    full = P.raw_one(raw)
    assert out.original_size == len(full) and out.original_sha256 == hashlib.sha256(full).hexdigest()
    assert full.startswith(original_bytes(out))
    assert b'"u1"' not in original_bytes(out) and base64.b64decode(out.original_key_b64) == P.of("u1").encode()


def test_a_letter_read_back_never_leaks_a_user_id_cut_by_truncation():
    raw = b'{"a": "' + b"x" * 40 + b'", "user_id": "alice-the-shopper"}'
    cut = raw[: raw.index(b"alice") + 5]  # the prefix ends inside the user id
    held = dead_letter(raw, SRC, "invalid", "r").model_copy(update={
        "original_b64": base64.b64encode(cut).decode(), "original_truncated": True})
    read_back = DeadLetter.model_validate_json(held.model_dump_json())  # no full value on it any more
    out = P.letter_one(read_back)
    assert b"alice" not in original_bytes(out) and original_bytes(out) == raw[: raw.index(b'"user_id"')]
    assert out.original_size is None and out.original_sha256 is None  # they described the raw bytes


@pytest.mark.parametrize("reason", ["\x01" * 4096, "\u00e9\U0001f600" * 2048])
def test_a_long_escaped_reason_is_cut_to_fit_the_smallest_bound(reason):
    letter = dead_letter(b"x" * 100_000, SRC, "invalid", reason, MIN_LETTER_BYTES)
    assert len(letter.model_dump_json().encode()) <= MIN_LETTER_BYTES
    assert letter.reason and reason.startswith(letter.reason) and letter.original_truncated
