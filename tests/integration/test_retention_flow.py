"""The retention agent against the real broker and a real worker process: sessions -> reviews -> actions
-> outcomes -> updates, dead letters with reasons, and budget caps that hold per partition and in total.

Event time: the review interval and the budget period are 7 days; 2026-01-01 is a multiple of 7 days
since the epoch, so reviews fall at days 7 and 14 after it. Outcomes are stamped at day 13.5 (inside the
window [7, 14), before the next review), and sessions at day 14.5 make the day-7 windows without an
outcome expire.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone

import pytest

from policy.retention.budget_config import to_micro_down, to_micro_up
from streams.app import topics_for
from streams.pseudonyms import pseudonyms_for
from streams.retention_state import partition_budget_config

from .conftest import Reader, json_values, produce, start_worker
from .helpers import counter

DAY = 86400.0
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
USERS = [f"user{i}" for i in range(24)]
SEGMENTS = ("m00-c01", "m01-c02")


def _iso(day: float) -> str:
    return datetime.fromtimestamp(T0 + day * DAY, timezone.utc).isoformat()


def _day(iso: str) -> float:
    return (datetime.fromisoformat(iso).timestamp() - T0) / DAY


def _session(user: str, day: float, kind: str = "session_start", value: float = 0.0) -> tuple[bytes, bytes]:
    seg = SEGMENTS[int(user[4:]) % 2]
    body = {"schema_version": 1, "user_id": user, "segment": seg, "session_id": f"s{user}-{day}",
            "kind": kind, "value": value, "event_time": _iso(day)}
    return user.encode(), json.dumps(body).encode()


def _outcome(action: dict, day: float, retained: bool, value: float) -> tuple[bytes, bytes]:
    body = {"schema_version": 1, "decision_id": action["decision_id"], "user_id": action["user_id"],
            "segment": action["segment"], "retained": retained, "value": value, "event_time": _iso(day)}
    return action["user_id"].encode(), json.dumps(body).encode()


def _shop_view(actions: list[dict], settings) -> list[dict]:
    """Actions as the shop reads them: it holds the key, so it maps each pseudonym back to its user."""
    pseudonyms = pseudonyms_for(settings)
    users = {pseudonyms.of(u): u for u in USERS}
    assert all(a["user_id"] in users for a in actions), "an action names something else than a pseudonym"
    return [dict(a, user_id=users[a["user_id"]]) for a in actions]


def _caps_hold(msgs: list, settings) -> dict:
    """Reserved cost of the actions sent, per (review, partition), (review, segment) and review."""
    share = partition_budget_config(settings.retention, settings.kafka.user_partitions)
    spend: dict[tuple, int] = defaultdict(int)
    for m in msgs:
        a = json.loads(m.value())
        if a["action"] == "none":
            continue
        t = a["decided_at"]
        micro = to_micro_up(a["cost"])
        spend[(t, "partition", m.partition())] += micro
        spend[(t, "partition-segment", m.partition(), a["segment"])] += micro
        spend[(t, "segment", a["segment"])] += micro
        spend[(t, "total")] += micro
    r = settings.retention
    for key, micro in spend.items():
        cap = {"partition": share.total_cap, "partition-segment": share.segment_cap,
               "segment": r.segment_budget_per_period, "total": r.budget_per_period}[key[1]]
        assert micro <= to_micro_down(cap), (key, micro)
    return spend


def test_sessions_actions_outcomes_updates_dead_letters_and_caps(settings, workers, retention_artifact):
    s = settings
    s.retention.artifact = retention_artifact
    s.retention.risk_threshold = 0.0  # every user is a decision point at each review
    s.retention.review_interval_s = s.retention.period_s = s.retention.outcome_window_s = 7 * DAY
    s.retention.outcome_grace_s = 0.0
    s.retention.budget_per_period = 40.0  # 10 per partition: at most two coupon_5 per partition and review
    s.retention.segment_budget_per_period = 24.0  # 6 per partition and segment: one coupon_5
    s.retention.max_contacts_per_user = 1
    s.retention.batch_within_s = 0.02
    s.policy.eps = 0.5  # explore treatments, so that the caps bind
    topics = topics_for(s)
    actions = Reader(s.kafka, topics.retention_actions.name)
    stats = Reader(s.kafka, topics.worker_stats.name)
    letters = Reader(s.kafka, topics.dead_letters.name)

    # A week of history, then one session each at day 7.5: every partition crosses the review at day 7.
    history = [_session(u, 0.2 + 0.25 * k + 0.01 * i) for i, u in enumerate(USERS) for k in range(i % 4 + 1)]
    history += [_session(u, 3.0 + 0.01 * i, "purchase", 25.0) for i, u in enumerate(USERS) if i % 3 == 0]
    produce(s.kafka, topics.sessions.name, history + [_session(u, 7.5) for u in USERS])
    worker = start_worker(workers, s)
    try:
        actions.wait_for(lambda ms: len(ms) >= len(USERS), 90, "one action per user at the day-7 review")
        first = _shop_view(json_values(actions.seen), s)
        assert sorted(a["user_id"] for a in first) == sorted(USERS)
        for a in first:
            assert _day(a["decided_at"]) == 7.0
            assert 0 < a["propensity"] <= 1 and a["policy_version"].startswith("retention-")
            assert 0 <= a["reason"]["risk"] <= 1 and a["reason"]["cost"] == a["cost"]
        for m in actions.seen:
            assert m.key() == json.loads(m.value())["user_id"].encode()
        _caps_hold(actions.seen, s)

        # Outcomes for half the actions (one duplicated), malformed input on both topics.
        answered = first[: len(first) // 2]
        outcomes = [_outcome(a, 13.5, i % 2 == 0, 30.0 if i % 2 == 0 else 0.0) for i, a in enumerate(answered)]
        bad_sessions = [(b"user0", b"{not json"), _session("user1", 13.6, "page_view", 5.0)]
        bad_outcomes = [_outcome(first[-1], 13.6, False, 9.0), (b"user2", b'{"decision_id": "x"}')]
        produce(s.kafka, topics.retention_outcomes.name, outcomes + [outcomes[0]] + bad_outcomes)
        produce(s.kafka, topics.sessions.name, bad_sessions)
        stats.wait_for(lambda ms: counter(ms, "retention_outcomes_applied") >= len(answered)
                       and counter(ms, "retention_dead_letters") >= 4, 30, "outcomes applied")
        assert counter(stats.seen, "retention_outcomes_duplicate") == 1
        retained_value = sum(30.0 for i in range(len(answered)) if i % 2 == 0)
        assert counter(stats.seen, "retention_retained_value") == pytest.approx(retained_value)

        # Day 14.5: the day-14 review decides everyone again; the unanswered day-7 windows expire.
        produce(s.kafka, topics.sessions.name, [_session(u, 14.5) for u in USERS])
        actions.wait_for(lambda ms: len(ms) >= 2 * len(USERS), 60, "the day-14 review")
        stats.wait_for(lambda ms: counter(ms, "retention_updates") >= len(USERS), 30, "every window closed")
        assert counter(stats.seen, "retention_windows_expired") == len(USERS) - len(answered)
        assert counter(stats.seen, "retention_outcomes_applied") == len(answered)
        assert counter(stats.seen, "retention_users") == len(USERS)
        assert counter(stats.seen, "retention_budget") == 40.0
        second = json_values(actions.seen)[len(USERS):]
        assert {_day(a["decided_at"]) for a in second} == {14.0}
        ids = [a["decision_id"] for a in json_values(actions.seen)]
        assert len(ids) == len(set(ids)) == 2 * len(USERS)
        spend = _caps_hold(actions.seen, s)
        assert spend, "no treatment at all: the caps were never exercised"

        letters.wait_for(lambda ms: len(ms) >= 4, 30, "4 dead letters")
        dead = json_values(letters.seen)
        by_topic = defaultdict(list)
        for d in dead:
            by_topic[d["source_topic"]].append(d)
        assert sorted(d["error_type"] for d in by_topic[topics.sessions.name]) == ["invalid", "not_json"]
        assert sorted(d["error_type"] for d in by_topic[topics.retention_outcomes.name]) == ["invalid", "invalid"]
        reasons = " | ".join(d["reason"] for d in dead)
        assert "carries no value" in reasons and "retained is false" in reasons and "user_id" in reasons
    except AssertionError:
        print(worker.log_tail())
        raise


def _retention_copy(source, target, version: str, scale: float = 1.0):
    """The retention artifact at ``source`` as a new one at ``target``: same risk model, uplift version
    ``version``, every uplift array multiplied by ``scale`` (finite: the loader accepts it)."""
    from dataclasses import replace

    from policy.retention.artifacts import load_artifacts, save_artifacts

    arts = load_artifacts(source)
    u = arts.uplift
    uplift = replace(u, w1=u.w1 * scale, b1=u.b1 * scale, w2=u.w2 * scale, b2=u.b2 * scale,
                     prior_mean=u.prior_mean * scale, meta=u.meta.model_copy(update={"version": version}))
    manifest = {k: v for k, v in arts.manifest.items() if k not in ("format", "version")}
    return save_artifacts(target, uplift, arts.risk, manifest)


def test_retention_worker_hot_swaps_and_refuses_an_absurd_artifact(settings, workers, retention_artifact,
                                                                   tmp_path):
    """A published retention artifact serves from the next review (actions carry its version); a finite
    but absurd one (arrays x 1e300) is refused with a dead letter and the serving one keeps deciding."""
    from streams.control import publish_policy_update

    s = settings
    s.retention.artifact = retention_artifact
    s.retention.risk_threshold = 0.0
    s.retention.review_interval_s = s.retention.period_s = s.retention.outcome_window_s = 7 * DAY
    s.retention.batch_within_s = 0.02
    topics = topics_for(s)
    actions = Reader(s.kafka, topics.retention_actions.name)
    stats = Reader(s.kafka, topics.worker_stats.name)
    letters = Reader(s.kafka, topics.dead_letters.name)
    users = USERS[:8]
    v2 = _retention_copy(retention_artifact, tmp_path / "v2", "itest-retention-v2")
    absurd = _retention_copy(retention_artifact, tmp_path / "absurd", "itest-retention-absurd", scale=1e300)

    produce(s.kafka, topics.sessions.name, [_session(u, 0.5 + 0.01 * i) for i, u in enumerate(users)]
            + [_session(u, 7.5) for u in users])
    worker = start_worker(workers, s)
    try:
        actions.wait_for(lambda ms: len(ms) >= len(users), 90, "the day-7 review")
        v1 = {a["policy_version"] for a in json_values(actions.seen)}
        assert len(v1) == 1 and v1 != {"itest-retention-v2"}

        publish_policy_update(s, v2, on_swap="keep", kind="retention")
        stats.wait_for(lambda ms: counter(ms, "retention_policy_swaps") == 1, 60, "the swap")
        produce(s.kafka, topics.sessions.name, [_session(u, 14.5) for u in users])
        actions.wait_for(lambda ms: len(ms) >= 2 * len(users), 60, "the day-14 review")
        assert {a["policy_version"] for a in json_values(actions.seen[len(users):])} == {"itest-retention-v2"}

        publish_policy_update(s, absurd, version="itest-retention-absurd", on_swap="reset", kind="retention",
                              check=False)
        letters.wait_for(lambda ms: any(d["error_type"] == "policy_refused" for d in json_values(ms)),
                         60, "the refusal")
        refusal = next(d for d in json_values(letters.seen) if d["error_type"] == "policy_refused")
        assert "itest-retention-absurd" in refusal["reason"] and "probe" in refusal["reason"]
        assert refusal["source_topic"] == topics.policy_updates.name
        produce(s.kafka, topics.sessions.name, [_session(u, 21.5) for u in users])
        actions.wait_for(lambda ms: len(ms) >= 3 * len(users), 60, "the day-21 review")
        assert {a["policy_version"] for a in json_values(actions.seen[2 * len(users):])} == {"itest-retention-v2"}
        stats.wait_for(lambda ms: counter(ms, "retention_policy_refused") == 1, 30, "the refusal counted")
        assert counter(stats.seen, "retention_policy_swaps") == 1
    except AssertionError:
        print(worker.log_tail())
        raise
