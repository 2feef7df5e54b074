"""Valid and malformed events through a real worker: every valid one decided, every malformed one
dead-lettered with its reason and original bytes, and the counts add up exactly; the dead letter of a
message near the producer's size limit arrives too (truncated, with the full size and hash)."""

from __future__ import annotations

import base64
import hashlib
import json

from streams.app import topics_for
from streams.pseudonyms import pseudonyms_for

from .conftest import Reader, json_values, produce, start_worker
from .helpers import mixed_requests


def _malformed(valid: bytes) -> dict[str, bytes]:
    body = json.loads(valid)
    def variant(**changes: object) -> bytes:
        return json.dumps({**body, **changes}).encode()
    missing = dict(body)
    del missing["candidates"]
    return {
        "not_json": b"{this is not json",
        "wrong_type": variant(context="abc"),
        "missing_field": json.dumps(missing).encode(),
        "nan": valid.replace(b'"context":[', b'"context":[NaN,', 1),
        "string_number": variant(context=["0.5"] + body["context"][1:]),
        "int_time": variant(event_time=1767225600),
        "infinity": variant(context=[1e400] + body["context"][1:]),
        "oversize": variant(user_id="u1", slot="main", context=body["context"]) + b" " * (70 * 1024),
        "unknown_version": variant(schema_version=2),
        "naive_time": variant(event_time="2026-01-01T00:00:00"),
        "extra_field": variant(coupon="free"),
        # its own request id: one that was decided already is dead-lettered as duplicate_request
        "wrong_dims": variant(request_id="dims-0", context=body["context"][:3]),
    }


def test_valid_decided_malformed_dead_lettered(settings, workers):
    topics = topics_for(settings)
    valid = mixed_requests(40, "ok", seed=3)
    bad = _malformed(valid[0][1])
    later = mixed_requests(10, "after", seed=4)
    key = valid[0][0]
    other_key = next(k for k, _ in valid if k != key)
    wrong_key = json.dumps(dict(json.loads(valid[0][1]), request_id="wrong-key")).encode()
    bad_feedback = [(key, b'{"type":"click","request_id":"x"}')]
    produce(settings.kafka, topics.ad_requests.name,
            valid[:20] + [(key, v) for v in bad.values()] + [(other_key, wrong_key)] + valid[20:])
    produce(settings.kafka, topics.ad_feedback.name, bad_feedback)

    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    letters = Reader(settings.kafka, topics.dead_letters.name)
    worker = start_worker(workers, settings)
    expected_ids = {json.loads(v)["request_id"] for _, v in valid}
    try:
        decisions.wait_for(lambda m: len(m) >= len(valid), 120, "40 decisions")
        letters.wait_for(lambda m: len(m) >= len(bad) + 2, 30, "14 dead letters")
        # The worker keeps running after bad input: later requests are decided too.
        produce(settings.kafka, topics.ad_requests.name, later)
        decisions.wait_for(lambda m: len(m) >= len(valid) + len(later), 60, "later decisions")
        decisions.poll(2.0)
        letters.poll(1.0)
    except AssertionError:
        print(worker.log_tail())
        raise

    decided = json_values(decisions.seen)
    ids = [d["request_id"] for d in decided]
    assert len(ids) == len(set(ids)) == len(valid) + len(later)
    assert set(ids) == expected_ids | {json.loads(v)["request_id"] for _, v in later}
    for d in decided:
        assert 0.0 < d["propensity"] <= 1.0

    dead = json_values(letters.seen)
    assert len(dead) == len(bad) + 2
    # The original bytes come back as sent, except that user ids are pseudonymised.
    pseudonyms = pseudonyms_for(settings)
    bad = {name: pseudonyms.raw_one(raw) for name, raw in bad.items()}
    assert all(b'"user_id"' not in raw or pseudonyms.key_id.encode() + b"." in raw for raw in bad.values())
    wrong_key = pseudonyms.raw_one(wrong_key)
    originals = {base64.b64decode(d["original_b64"]) for d in dead}
    assert originals == set(bad.values()) | {bad_feedback[0][1], wrong_key}
    by_original = {base64.b64decode(d["original_b64"]): d for d in dead}
    expected_type = {"not_json": "not_json", "oversize": "oversize", "unknown_version": "unknown_schema_version",
                     "nan": "not_json", "infinity": "not_json"}  # NaN and Infinity are not JSON numbers
    for name, raw in bad.items():
        letter = by_original[raw]
        assert letter["error_type"] == expected_type.get(name, "invalid"), (name, letter)
        assert letter["reason"], name
        assert letter["source_topic"] == topics.ad_requests.name
        assert letter["source_offset"] >= 0 and letter["source_partition"] >= 0
    assert "features" in by_original[bad["wrong_dims"]]["reason"]
    assert by_original[wrong_key]["error_type"] == "key_mismatch" and "wrong-key" not in ids
    assert "candidates" in by_original[bad["missing_field"]]["reason"]
    assert by_original[bad_feedback[0][1]]["source_topic"] == topics.ad_feedback.name


def test_the_dead_letter_of_an_800kb_message_arrives(settings, workers):
    """An 800 KB request inside ``max_message_bytes``: its envelope (base64 alone would be 1.07 MB) used to
    exceed the producer's 1 MB limit and was dropped; now it is cut to a prefix with the full size and hash."""
    settings.ads.max_message_bytes = 1_000_000
    topics = topics_for(settings)
    valid = mixed_requests(10, "big", seed=5)
    body = dict(json.loads(valid[0][1]), request_id="huge", user_id="shopper-with-a-raw-id")
    head = json.dumps({**body, "padding": ""}).encode()
    huge = head.replace(b'"padding": ""', b'"padding": "' + b"x" * (800_000 - len(head)) + b'"')
    assert len(huge) == 800_000
    produce(settings.kafka, topics.ad_requests.name, [(valid[0][0], huge)] + valid)

    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    letters = Reader(settings.kafka, topics.dead_letters.name)
    worker = start_worker(workers, settings)
    try:
        decisions.wait_for(lambda m: len(m) >= len(valid), 120, "10 decisions")
        letters.wait_for(lambda m: len(m) >= 1, 30, "the dead letter of the 800 KB request")
        letters.poll(1.0)
    except AssertionError:
        print(worker.log_tail())
        raise
    assert "MSG_SIZE_TOO_LARGE" not in worker.log_tail(400)
    [message] = letters.seen
    assert len(message.value()) <= 256 * 1024
    letter = json.loads(message.value())
    stored = pseudonyms_for(settings).raw_one(huge)
    assert letter["error_type"] == "invalid" and "padding" in letter["reason"]
    assert letter["original_truncated"] is True and letter["original_size"] == len(stored)
    assert letter["original_sha256"] == hashlib.sha256(stored).hexdigest()
    prefix = base64.b64decode(letter["original_b64"])
    assert stored.startswith(prefix) and len(prefix) > 100_000 and b"shopper-with-a-raw-id" not in prefix
    assert {json.loads(m.value())["request_id"] for m in decisions.seen} == {
        json.loads(v)["request_id"] for _, v in valid}
