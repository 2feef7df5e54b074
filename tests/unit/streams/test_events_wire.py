"""The wire structs (msgspec, what the edge decodes with) and the pydantic models (the contract, the JSON
Schema) accept and reject the same messages, except that the structs refuse type coercion.

A corpus of valid events of every input type, and a seeded fuzzer that mutates one field of one of them
(another type, out of range, too long, off pattern, missing, extra), go through both. Every message the
structs accept, the models accept, with the same values; every message only the models accept is a
coercion (a string or bool where a number belongs, a number where a timestamp belongs, ...): today's
decoder took those, the edge now dead-letters them.
"""

from __future__ import annotations

import json
import random
from datetime import datetime

import msgspec
import pytest
from pydantic import TypeAdapter, ValidationError

from streams.edge import Decoder, Source
from streams.events import DeadLetter
from streams.topics import Topics

TOPICS = Topics("t")
T = "2026-01-01T00:00:00+00:00"
CAND = {"ad_id": "ad1", "features": [0.1, -2.0, 3]}
GATE = {"decision": "passed", "estimator": "snips", "margin": 0.0, "difference": 0.01, "lo": -0.1, "hi": 0.2,
        "candidate_value": 0.3, "serving_value": 0.29, "serving_version": "v1", "ess": 120.5, "log_rows": 1000,
        "log_uri": "/logs/x.parquet"}
VALID = {
    TOPICS.ad_requests: [
        {"schema_version": 1, "request_id": "r1", "user_id": "u1", "segment": "m00-c00", "slot": "main",
         "context": [0.5, 1.0], "candidates": [CAND, {**CAND, "ad_id": "ad2"}], "event_time": T},
        {"request_id": "R." + "x" * 61, "user_id": "k1.abc:d-e_f", "segment": "s" * 64, "context": [0] * 64,
         "candidates": [{"ad_id": f"a{i}", "features": [1e300]} for i in range(50)],
         "event_time": "2026-06-30T23:59:59.999999-07:00"},
    ],
    TOPICS.ad_feedback: [
        {"type": "impression", "request_id": "r1", "segment": "m00-c00", "ad_id": "ad1", "event_time": T},
        {"schema_version": 1, "type": "click", "request_id": "r1", "segment": "m00-c00", "ad_id": "ad1",
         "event_time": "2026-01-01T00:00:01Z"},
        {"type": "purchase", "request_id": "r1", "segment": "m00-c00", "ad_id": "ad1", "value": 12.5,
         "event_time": "2026-01-01T00:00:01.5+01:00"},
    ],
    TOPICS.sessions: [
        {"user_id": "alice", "segment": "m00-c00", "session_id": "s1", "kind": "session_start", "event_time": T},
        {"schema_version": 1, "user_id": "bob", "segment": "m00-c01", "session_id": "s2", "kind": "purchase",
         "value": 1e7, "event_time": T},
    ],
    TOPICS.retention_outcomes: [
        {"decision_id": "d1", "user_id": "alice", "segment": "m00-c00", "retained": True, "value": 3,
         "event_time": T},
        {"decision_id": "d2", "user_id": "bob", "segment": "m00-c00", "retained": False, "value": 0.0,
         "event_time": T},
    ],
    TOPICS.erasure_requests: [{"request_id": "e1", "user_id": "alice", "requested_at": T}],
    TOPICS.policy_updates: [
        {"version": "v2", "artifact_uri": "/artifacts/v2", "event_time": T},
        {"kind": "retention", "version": "v" * 64, "artifact_uri": "/a" * 500, "on_swap": "reset",
         "event_time": T, "gate": GATE},
    ],
}
POOL = [None, True, False, 0, 1, -1, 2, 1.0, 0.5, -0.5, 1e7, 10000000.5, 1e308, "", "a", "0.5", "1", "true",
        "x" * 65, "x" * 257, "x" * 1025, "Not Valid!", "r1\n", "\u00fc", "a b", [], [0.1], [0.1] * 65, [[1.0]],
        {}, {"a": 1}, 123, 1767225600, 1767225600.5, "1767225600", "2026-01-01", "2026-01-01T00:00:00",
        "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+05:30", "2026-13-01T00:00:00Z", "click", "purchase",
        "impression", "page_view", "ads", "reset", "forced", [CAND], [CAND] * 51, {**CAND, "x": 1}, GATE,
        {**GATE, "log_rows": 1.0}]
N_FUZZ = 5000


def _paths(value, prefix=()):
    """Every (path, leaf value) of a JSON document, objects and lists included."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list) and value:
        yield from _paths(value[0], prefix + (0,))


def _set(doc, path, value):
    doc = json.loads(json.dumps(doc))
    target = doc
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()
_TIME_FIELDS = {"event_time", "requested_at"}
_DEFAULTS = {"value": 0.0, "gate": GATE}


def _coercion(path, original, value) -> bool:
    """Whether ``value`` in place of ``original`` is a type coercion (the strict rules of the edge)."""
    if isinstance(original, dict) and isinstance(value, dict):
        return any(_coercion(path + (k,), original[k], v) for k, v in value.items() if k in original)
    if isinstance(original, list) and isinstance(value, list) and original and value:
        return any(_coercion(path + (0,), original[0], v) for v in value)
    if path and path[-1] in _TIME_FIELDS:
        if isinstance(value, (int, float)):
            return True
        try:
            float(value)
            return True  # a number in a string
        except (TypeError, ValueError):
            return False
    if isinstance(original, bool):
        return not isinstance(value, bool)
    if path and path[-1] in ("schema_version", "log_rows"):  # ints
        return isinstance(value, (bool, float, str))
    if isinstance(original, (int, float)):
        return isinstance(value, (bool, str))
    return False


def fuzz_cases(seed: int = 11, n: int = N_FUZZ):
    rng = random.Random(seed)
    bases = [(spec, doc) for spec, docs in VALID.items() for doc in docs]
    for _ in range(n):
        spec, doc = rng.choice(bases)
        path, original = rng.choice([p for p in _paths(doc) if p[0]])
        roll = rng.random()
        if roll < 0.08 and isinstance(path[-1], str):
            yield spec, _set(doc, path, _DELETE), False
        elif roll < 0.14:
            field, value = rng.choice(["extra", "type", "value", "gate"]), rng.choice(POOL)
            original = doc.get(field, _DEFAULTS.get(field))  # a field left at its default, or an extra one
            yield spec, {**doc, field: value}, _coercion((field,), original, value)
        else:
            value = rng.choice(POOL)
            yield spec, _set(doc, path, value), _coercion(path, original, value)


def _key_of(spec, doc) -> bytes | None:
    value = doc.get(spec.key) if isinstance(doc, dict) else None
    return value.encode() if isinstance(value, str) else None


def _both(spec, doc):
    raw = json.dumps(doc).encode()
    out = Decoder(spec.payload, max_bytes=1 << 20, models=False).decode_one(raw, Source(spec.name, 0, 0, _key_of(spec, doc)))
    try:
        model = TypeAdapter(spec.payload).validate_json(raw)
    except ValidationError:
        model = None
    return out, model


def _same_values(struct, model) -> bool:
    return msgspec.to_builtins(struct, builtin_types=(datetime,)) == model.model_dump()


@pytest.mark.parametrize("spec, doc", [(s, d) for s, docs in VALID.items() for d in docs],
                         ids=lambda v: getattr(v, "name", None) or "")
def test_valid_corpus_is_accepted_by_both_with_the_same_values(spec, doc):
    out, model = _both(spec, doc)
    assert model is not None and not isinstance(out, DeadLetter), out
    assert _same_values(out, model), (msgspec.to_builtins(out), model.model_dump())


def test_fuzzed_messages_are_judged_alike_except_coercions():
    lax_only_coercions, both, neither, drift = [], 0, 0, []
    for spec, doc, coercion in fuzz_cases():
        out, model = _both(spec, doc)
        wire_ok = not isinstance(out, DeadLetter)
        if wire_ok and model is not None:
            both += 1
            assert _same_values(out, model), doc
        elif not wire_ok and model is None:
            neither += 1
        elif model is not None and coercion:
            lax_only_coercions.append(doc)
        else:
            drift.append((spec.name, doc, out.reason if not wire_ok else "accepted by the struct only"))
    print(f"fuzzed {N_FUZZ}: both accept {both}, both reject {neither}, "
          f"coercions only the models accept {len(lax_only_coercions)}")
    assert not drift, "\n".join(map(str, drift[:20]))
    assert len(lax_only_coercions) > 20  # today's decoder accepted these; the edge refuses every one
    assert both > 200 and neither > 2000  # the corpus exercises both sides


@pytest.mark.parametrize("stamp", ["2026-01-01T00:00Z", "2026-01-01T00:00:00,5Z"])
def test_timestamps_outside_rfc3339_are_refused(stamp):
    """The models' parser also takes timestamps without seconds or with a decimal comma; the published
    JSON Schema says ``format: date-time`` (RFC 3339), and the structs hold producers to it."""
    doc = {**VALID[TOPICS.sessions][0], "event_time": stamp}
    out, model = _both(TOPICS.sessions, doc)
    assert model is not None and isinstance(out, DeadLetter) and "datetime" in out.reason


def test_sub_microsecond_digits_round_where_the_models_truncate():
    doc = {**VALID[TOPICS.sessions][0], "event_time": "2026-01-01T00:00:00.123456789Z"}
    out, model = _both(TOPICS.sessions, doc)
    assert (out.event_time.microsecond, model.event_time.microsecond) == (123457, 123456)


def test_each_wire_struct_checks_the_key_its_topic_is_keyed_by():
    from typing import get_args

    from streams.wire import WIRE

    for spec in VALID:
        wire = next(w for p, w in WIRE.items() if p is spec.payload)
        for member in get_args(wire) or (wire,):
            assert member.KEY_FIELD == (None if spec == TOPICS.policy_updates else spec.key), spec.name
