"""Pseudonyms at the edge: keyed, stable, everywhere a user id goes; erasure through the store."""

from __future__ import annotations

import base64
import json
import re

import pytest
from pydantic import SecretStr

from policy.retention.artifacts import RetentionArtifacts
from streams.edge import Source, dead_letter
from streams.events import ID_PATTERN
from streams.pseudonyms import PrivacyConfigError, Pseudonyms, pseudonyms_for, with_run_key
from streams.retention_engine import RetentionEngine
from streams.store import DictStore
from streams.settings import PolicySettings, Settings, StoreSettings
from tests.unit.retention.test_decide import artifact, risk_model
from tests.unit.streams.test_retention_engine import (TOPICS, _raw, actions, outcome, retention, session,
                                                      stored as stored_rows,
                                                      warm)

KEY = b"0123456789abcdef0123456789abcdef"
P = Pseudonyms(KEY, "k1", frozenset({TOPICS.sessions.name}))


def test_keyed_stable_and_a_valid_id():
    a = P.of("alice")
    assert a == Pseudonyms(KEY).of("alice") and a != P.of("bob")
    assert a != Pseudonyms(b"another key of at least 32 bytes!!").of("alice")
    assert re.match(ID_PATTERN, a) and a.startswith("k1.") and len(a) == 35
    assert "alice" not in a


def test_raw_bytes_and_dead_letters_carry_only_pseudonyms():
    raw = b'{"user_id": "alice", "x": 1, "nested": {"user_id":"b\\u006fb"}, broken'
    out = P.raw_one(raw)
    assert b"alice" not in out and b"bob" not in out and b"b\\u006fb" not in out
    assert P.of("alice").encode() in out and P.of("bob").encode() in out
    letter = dead_letter(raw, Source(TOPICS.sessions.name, 0, 7, b"alice"), "not_json", "broken")
    clean = P.letter_one(letter)
    assert base64.b64decode(clean.original_b64) == out
    assert base64.b64decode(clean.original_key_b64) == P.of("alice").encode()
    other = P.letter_one(dead_letter(raw, Source("elsewhere", 0, 7, b"seg-key"), "not_json", "broken"))
    assert base64.b64decode(other.original_key_b64) == b"seg-key"  # not a user-keyed topic


def test_worker_needs_a_key_unless_pseudonymisation_is_off(tmp_path):
    with pytest.raises(PrivacyConfigError, match="no key is set.*PSEUDONYM_KEY_FILE"):
        pseudonyms_for(Settings())
    short = Settings()
    short.privacy.pseudonym_key = SecretStr("too short")
    with pytest.raises(PrivacyConfigError, match="at least 32"):
        pseudonyms_for(short)
    key_file = tmp_path / "key"
    key_file.write_text(KEY.decode() + "\n")
    from_file = Settings()
    from_file.privacy.pseudonym_key_file = key_file
    assert pseudonyms_for(from_file).of("alice") == P.of("alice")
    off = Settings()
    off.privacy.pseudonymise = False
    assert pseudonyms_for(off) is None
    run = with_run_key(Settings())
    assert pseudonyms_for(run) is not None and with_run_key(from_file) is from_file


def _engine(store: DictStore, never=frozenset()) -> RetentionEngine:
    arts = RetentionArtifacts(artifact(0), risk_model(), {})
    return RetentionEngine(arts, store, TOPICS, retention(), StoreSettings(state_flush_interval_s=0.0),
                           PolicySettings(eps=1.0, seed=1), never_contact=frozenset(never), pseudonyms=P)


def test_engine_stores_decides_and_matches_never_contact_in_pseudonym_space():
    store = DictStore()
    eng = _engine(store, never={"u1"})
    users = [f"u{i}" for i in range(4)]
    warm(eng, users)
    got = []
    for day in range(1, 6):
        got += actions(eng.process_many([session(u, day + 0.1) for u in users]))
    assert {a["user_id"] for a in got} == {P.of(u) for u in users}
    assert all(a["action"] == "none" for a in got if a["user_id"] == P.of("u1"))
    dump = json.dumps({t: {k: v.hex() for k, v in rows.items()} for t, rows in store.tables.items()})
    keys = " ".join(k for rows in store.tables.values() for k in rows)
    stored = keys + dump + "".join(v.decode("latin-1") for rows in store.tables.values() for v in rows.values())
    for u in users:
        assert not re.search(rf"\b{u}\b", stored), u


def test_erasure_deletes_the_row_open_actions_and_contacts():
    store = DictStore()
    eng = _engine(store)
    warm(eng, ["u0", "u1"])
    acts = actions(eng.process_many([session("u0", 1.3), session("u1", 1.3)]))
    assert {a["user_id"] for a in acts} == {P.of("u0"), P.of("u1")}
    gone = P.of("u0")
    erase = _raw(TOPICS.erasure_requests.name, 0, "u0",
                 {"request_id": "e1", "user_id": "u0", "requested_at": "2026-01-02T00:00:00+00:00"})
    eng.process_many([erase])
    assert eng.counters["retention_erasures"] == 1
    assert gone not in stored_rows(store, "users") and P.of("u1") in stored_rows(store, "users")
    assert all(gone.encode() not in v for rows in store.tables.values() for v in rows.values())  # blocks too
    assert any(P.of("u1").encode() in v for v in stored_rows(store, "actions").values())
    assert eng.pending_count() == 1
    # its outcome, arriving later, finds nothing to apply
    u0_action = next(a for a in acts if a["user_id"] == gone)
    eng.process_many([outcome(dict(u0_action, user_id="u0"), 2.0, True, 5.0)])
    assert eng.counters["retention_outcomes_applied"] == 0
