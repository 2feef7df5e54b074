"""The retention engine without Kafka: reviews, outcomes exactly once, windows, caps, eviction, restarts."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from policy.retention.artifacts import RetentionArtifacts
from policy.retention.budget_config import MICRO, to_micro_down, to_micro_up
from policy.retention.schema import RESERVE_COST, TREATMENTS
from streams.edge import RawMessage
from streams.events import RetentionAction
from streams.retention_blocks import BlockStore
from streams.retention_engine import RetentionEngine
from streams.retention_state import decision_id, partition_budget_config
from streams.store import DictStore
from streams.settings import PolicySettings, RetentionSettings, StoreSettings
from streams.topics import Topics
from tests.unit.retention.test_decide import artifact, risk_model

TOPICS = Topics("u", user_partitions=2)
DAY = 86400.0
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() / DAY  # an integer number of days
SEG = "m00-c00"
_offsets = defaultdict(int)


def iso(day: float) -> str:
    return datetime.fromtimestamp((T0 + day) * DAY, timezone.utc).isoformat()


def _raw(topic: str, partition: int, key: str, body: dict) -> RawMessage:
    _offsets[(topic, partition)] += 1
    return RawMessage(topic, partition, _offsets[(topic, partition)], key.encode(), json.dumps(body).encode())


def session(user: str, day: float, partition: int = 0, kind: str = "session_start", value: float = 0.0,
            segment: str = SEG) -> RawMessage:
    body = {"user_id": user, "segment": segment, "session_id": f"s-{user}-{day}", "kind": kind,
            "value": value, "event_time": iso(day)}
    return _raw(TOPICS.sessions.name, partition, user, body)


def outcome(action: dict, day: float, retained: bool, value: float, partition: int = 0) -> RawMessage:
    body = {"decision_id": action["decision_id"], "user_id": action["user_id"], "segment": action["segment"],
            "retained": retained, "value": value, "event_time": iso(day)}
    return _raw(TOPICS.retention_outcomes.name, partition, action["user_id"], body)


def retention(**changes) -> RetentionSettings:
    base = dict(risk_threshold=0.0, outcome_window_s=7 * DAY, outcome_grace_s=0.0, review_interval_s=DAY,
                period_s=DAY, idle_horizon_s=30 * DAY, budget_per_period=1000.0,
                segment_budget_per_period=1000.0, max_contacts_per_user=1, pacing_lead=1.0)
    return RetentionSettings(**{**base, **changes})


def engine(store: DictStore | None = None, eps: float = 0.3, never=frozenset(), seed: int = 1,
           **changes) -> RetentionEngine:
    arts = RetentionArtifacts(artifact(0), risk_model(), {})
    return RetentionEngine(arts, store if store is not None else DictStore(), TOPICS, retention(**changes),
                           StoreSettings(state_flush_interval_s=0.0), PolicySettings(eps=eps, seed=seed),
                           never_contact=frozenset(never))


def stored(store: DictStore, table: str) -> dict[str, bytes]:
    """What ``store`` holds for ``table``, read from its blocks as a restarted worker would."""
    return dict(BlockStore(store).items(table))


def actions(out) -> list[dict]:
    return [json.loads(v) for _, v in out.actions]


def warm(eng: RetentionEngine, users: list[str], day: float = 0.2, partition: int = 0) -> None:
    eng.process_many([session(u, day + 0.01 * i, partition) for i, u in enumerate(users)])


def test_review_at_tick_decides_every_risky_user_once_with_valid_actions():
    eng = engine()
    users = [f"u{i}" for i in range(5)]
    warm(eng, users)
    assert eng.counters["retention_actions"] == 0  # no review before a tick is crossed
    out = eng.process_many([session("u0", 1.3)])  # crosses the tick at day 1
    acts = actions(out)
    assert sorted(a["user_id"] for a in acts) == users
    for a in acts:
        RetentionAction.model_validate(a)
        assert a["decision_id"] == decision_id(a["user_id"], T0 + 1.0)
        assert datetime.fromisoformat(a["decided_at"]).timestamp() == (T0 + 1.0) * DAY
        assert 0 < a["propensity"] <= 1 and a["policy_version"] == "test-retention"
        assert a["cost"] == RESERVE_COST[TREATMENTS.index(a["action"])]
        assert 0 <= a["reason"]["risk"] <= 1
    assert eng.pending_count() == 5 and eng.counters["retention_actions"] == 5
    # the same period never decides a user twice; the next tick (a new period) may
    assert not actions(eng.process_many([session("u1", 1.5)]))
    assert len(actions(eng.process_many([session("u1", 2.1)]))) == 5


def test_risk_threshold_selects_decision_points():
    eng = engine(risk_threshold=1.0)  # risk is a probability < 1: nobody qualifies
    warm(eng, ["a", "b"])
    assert not actions(eng.process_many([session("a", 1.2)]))
    assert eng.counters["retention_reviews"] == 1 and eng.counters["retention_decision_points"] == 0


def test_outcome_applies_once_and_duplicates_are_counted():
    eng = engine()
    warm(eng, ["a", "b"])
    acts = actions(eng.process_many([session("a", 1.2)]))
    first = acts[0]
    eng.process_many([outcome(first, 3.0, True, 20.0), outcome(first, 3.1, True, 20.0)])
    eng.process_many([outcome(first, 3.2, True, 20.0)])
    c = eng.counters
    assert c["retention_outcomes_applied"] == 1 and c["retention_outcomes_duplicate"] == 2
    assert c["retention_retained_value"] == 20.0 and c["retention_updates"] == 1
    assert eng._parts[0].adapter.posterior(SEG)[2] == 1
    unknown = dict(first, decision_id="rnope")
    eng.process_many([outcome(unknown, 3.3, True, 5.0)])
    assert c["retention_outcomes_late_or_unknown"] == 1 and c["retention_outcomes_applied"] == 1


def test_expired_window_is_not_retained_and_late_outcome_is_not_applied():
    eng = engine(eps=1.0)
    users = [f"u{i}" for i in range(6)]
    warm(eng, users)
    acts = actions(eng.process_many([session("u0", 1.2)]))
    assert len(acts) == 6
    eng.process_many([outcome(acts[0], 1.5, False, 0.0)])  # within day 1: no new review
    # day 8.5: the review at day 8 decides everyone again, then the watermark passes 1 + 7
    again = actions(eng.process_many([session("u1", 8.5)]))
    c = eng.counters
    assert len(again) == 6 and c["retention_windows_expired"] == 5
    assert c["retention_updates"] == 6 and eng._parts[0].adapter.posterior(SEG)[2] == 6
    assert eng.pending_count() == 6  # the actions of day 8
    for a in acts[1:]:
        if a["action"] != "none":  # settled at the realised cost of "not retained": no coupon redeemed
            fixed = {"push": 0.02, "email": 0.05}.get(a["action"], 0.0)
            assert eng._parts[0].budget.decision(a["decision_id"])["charged"] == to_micro_up(fixed)
    eng.process_many([outcome(acts[1], 8.0, True, 9.0)])  # its window closed at day 8 without an outcome
    assert c["retention_outcomes_late_or_unknown"] == 1 and c["retention_outcomes_applied"] == 1
    assert c["retention_outcomes_duplicate"] == 0


def test_malformed_and_inconsistent_events_are_dead_lettered():
    eng = engine()
    warm(eng, ["a"])
    acts = actions(eng.process_many([session("a", 1.2)]))
    bad = [
        RawMessage(TOPICS.sessions.name, 0, 90, b"a", b"{nope"),
        session("a", 1.3, kind="page_view", value=3.0),
        outcome(acts[0], 1.6, False, 5.0),
        outcome(dict(acts[0], user_id="other"), 1.6, True, 5.0),
        RawMessage(TOPICS.retention_outcomes.name, 0, 91, b"a", b'{"decision_id": "x"}'),
    ]
    out = eng.process_many(bad)
    letters = [json.loads(v) for _, v in out.dead_letters]
    assert [d["error_type"] for d in letters] == ["not_json", "invalid", "invalid", "invalid", "invalid"]
    assert "carries no value" in letters[1]["reason"] and "retained is false" in letters[2]["reason"]
    assert "the decision was for a" in letters[3]["reason"]
    assert eng.counters["retention_dead_letters"] == 5 and eng.counters["retention_outcomes_applied"] == 0
    assert eng.pending_count() == 1  # the open action is untouched by the bad outcomes


def test_never_contact_users_are_never_treated():
    eng = engine(eps=1.0, never={"u1", "u3"})
    users = [f"u{i}" for i in range(6)]
    warm(eng, users)
    got = []
    for day in range(1, 12):
        got += actions(eng.process_many([session(u, day + 0.1) for u in users]))
    assert {a["user_id"] for a in got} == set(users)
    assert all(a["action"] == "none" for a in got if a["user_id"] in {"u1", "u3"})
    assert any(a["action"] != "none" for a in got if a["user_id"] not in {"u1", "u3"})


def test_idle_users_are_evicted_and_the_table_stays_bounded():
    store = DictStore()
    eng = engine(store, idle_horizon_s=3 * DAY)
    warm(eng, [f"old{i}" for i in range(20)])
    assert len(stored(store, "users")) == 20 and eng.counters["retention_users"] == 20
    eng.process_many([session("new", 5.2)])  # review at day 5: the old users were last seen at day 0
    eng.process_many([session("new", 6.2)])
    assert eng.counters["retention_users_evicted"] == 20
    assert set(stored(store, "users")) == {"new"} and eng.counters["retention_users"] == 1


def test_restart_restores_open_actions_budget_and_posteriors_from_the_store():
    store = DictStore()
    first = engine(store, eps=1.0)
    warm(first, [f"u{i}" for i in range(8)])
    acts = actions(first.process_many([session("u0", 1.2)]))
    first.process_many([outcome(acts[0], 1.5, True, 12.0)])
    spent = first._parts[0].budget.spent(None, first._parts[0].budget.period_of(T0 + 1.0))
    assert stored(store, "actions") and stored(store, "segments") and stored(store, "partitions")

    second = engine(store, eps=1.0)  # a new process: empty memory, same tables
    second.process_many([outcome(acts[1], 1.6, False, 0.0)])
    assert second.counters["retention_outcomes_applied"] == 1
    assert second._parts[0].adapter.posterior(SEG)[2] == 2  # one from the first process, one now
    face = {"coupon_5": 5.0, "coupon_15": 15.0}.get(acts[1]["action"], 0.0)  # not redeemed: released
    budget = second._parts[0].budget
    assert budget.spent(None, budget.period_of(T0 + 1.0)) == pytest.approx(spent - face, abs=1e-6)
    # replaying the batch that crossed the tick decides nobody again
    assert not actions(second.process_many([session("u0", 1.2)]))
    assert second.pending_count() == len(acts) - 2


def test_partition_shares_add_up_to_at_most_the_caps():
    s = retention(budget_per_period=100.0, segment_budget_per_period=10.0)
    for parts in (1, 3, 7, 8):
        cfg = partition_budget_config(s, parts)
        assert parts * to_micro_down(cfg.total_cap) <= 100 * MICRO
        assert parts * to_micro_down(cfg.segment_cap) <= 10 * MICRO


USERS = [f"u{i}" for i in range(10)]
NEVER = {"u4"}
SEG_CAP, TOTAL_CAP = 12.0, 20.0
op = st.one_of(
    st.tuples(st.just("sessions"), st.lists(st.sampled_from(USERS), min_size=1, max_size=6, unique=True),
              st.floats(0.0, 1.4)),
    st.tuples(st.just("outcomes"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("crash"), st.sets(st.sampled_from(["users", "segments", "partitions", "actions"])),
              st.just(0.0)),
)


def _by_partition(user: str) -> int:
    return int(user[1:]) % TOPICS.user_partitions


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=3, max_size=25), st.integers(0, 3))
def test_caps_hold_and_contacts_never_repeat_under_replays_crashes_and_duplicates(script, seed):
    """Whatever the order, duplicates and crashes (each table independently persisted or not), the
    actions sent never exceed a segment or total cap in any period, a decision id is sent with one
    treatment only, and the never-contact user is never treated."""
    settings = dict(budget_per_period=TOTAL_CAP, segment_budget_per_period=SEG_CAP, max_contacts_per_user=2,
                    pacing_lead=1.0)
    store = DictStore()
    eng = engine(store, eps=1.0, never=NEVER, seed=seed, **settings)
    sent: list[dict] = []
    day = 0.0
    for kind, arg, extra in script:
        if kind == "sessions":
            day += extra
            batch = [session(u, day, _by_partition(u), segment=f"m0{int(u[1:]) % 2}-c00") for u in arg]
        elif kind == "outcomes":
            if not sent:
                continue
            a = sent[arg % len(sent)]
            batch = [outcome(a, day, extra, 10.0 if extra else 0.0, _by_partition(a["user_id"]))] * 2
        else:
            # a crash during the next batch: each table independently persisted or lost, then replay
            before = copy.deepcopy(store.tables)
            day += 1.0
            batch = [session(u, day, _by_partition(u), segment=f"m0{int(u[1:]) % 2}-c00") for u in USERS[:5]]
            eng.process_many(batch)  # its outputs are never sent: the process died before sending
            for table in ("users", "segments", "partitions", "actions"):
                if table not in arg:
                    store.tables[table] = before[table]
            eng = engine(store, eps=1.0, never=NEVER, seed=seed + 1, **settings)
        sent += actions(eng.process_many(batch))
    first: dict[str, str] = {}
    spend: dict[tuple, int] = defaultdict(int)
    for a in sent:
        assert first.setdefault(a["decision_id"], a["action"]) == a["action"]
        if a["action"] == "none":
            continue
        assert a["user_id"] not in NEVER
    unique = {a["decision_id"]: a for a in sent}.values()
    for a in unique:
        if a["action"] != "none":
            period = int(datetime.fromisoformat(a["decided_at"]).timestamp() // DAY)
            spend[(period, a["segment"])] += to_micro_up(a["cost"])
            spend[(period, None)] += to_micro_up(a["cost"])
    assert spend or not any(a["action"] != "none" for a in sent)
    for (period, seg), micro in spend.items():
        assert micro <= to_micro_down(TOTAL_CAP if seg is None else SEG_CAP)
    for user in USERS:  # frequency cap: at most 2 contacts in any one-day window
        times = sorted(datetime.fromisoformat(a["decided_at"]).timestamp() / DAY for a in unique
                       if a["user_id"] == user and a["action"] != "none")
        assert all(b - a >= 1.0 for a, b in zip(times, times[2:]))


STATE_VALUE_BOUND = 16 * 1024  # bytes; the producer's limit is 1 MB, and no value may grow with the users


def test_no_state_value_grows_with_new_users_and_caps_hold_exactly():
    """Regression: a partition's budget was one value that grew with every decision (past the producer's
    1 MB limit in production). Many new users across several periods, a restart in the middle: every
    stored value stays small, and the spend of every period stays within its caps exactly."""
    store = DictStore()
    caps = dict(budget_per_period=60.0, segment_budget_per_period=40.0, max_contacts_per_user=1,
                max_block_bytes=STATE_VALUE_BOUND)  # blocks split at the bound
    eng = engine(store, eps=1.0, **caps)
    sent: list[dict] = []
    biggest = 0
    for day in range(6):
        if day == 3:
            eng = engine(store, eps=1.0, **caps)  # a new process on the same tables
        users = [f"d{day}-u{i}" for i in range(250)]  # new users every day
        segs = [f"m0{i % 3}-c00" for i in range(len(users))]
        for start in range(0, len(users), 50):
            batch = [session(u, day + 0.2 + 0.001 * (start + i), 0, segment=s)
                     for i, (u, s) in enumerate(zip(users[start:start + 50], segs[start:start + 50]))]
            sent += actions(eng.process_many(batch))
        biggest = max(biggest, max(len(v) for t in store.tables.values() for v in t.values()))
    eng.flush()
    assert len(sent) > 1000  # the decisions whose records used to pile up in one value
    assert biggest <= STATE_VALUE_BOUND, f"a state value of {biggest} bytes"
    treated = [a for a in {a["decision_id"]: a for a in sent}.values() if a["action"] != "none"]
    assert treated
    cfg = partition_budget_config(retention(**caps), TOPICS.user_partitions)
    spend: dict[tuple, int] = defaultdict(int)
    for a in treated:
        period = int(datetime.fromisoformat(a["decided_at"]).timestamp() // DAY)
        spend[(period, a["segment"])] += to_micro_up(a["cost"])
        spend[(period, None)] += to_micro_up(a["cost"])
    for (period, seg), micro in spend.items():
        assert micro <= to_micro_down(cfg.total_cap if seg is None else cfg.segment_cap)
    # the caps bind: some period spent its total share to within the dearest treatment
    assert max(m for (_, seg), m in spend.items() if seg is None) > to_micro_down(cfg.total_cap - max(RESERVE_COST))
    # the budget restored from its records is the one in memory
    restored = engine(store, eps=1.0, **caps)._load_budget(0)
    assert restored.to_bytes() == eng._parts[0].budget.to_bytes()


def _versioned(seed: int, version: str, d: int | None = None) -> RetentionArtifacts:
    import dataclasses

    import numpy as np

    art = artifact(seed)
    if d is not None:  # another feature dimension: posteriors cannot be kept
        rng = np.random.default_rng(seed)
        art = dataclasses.replace(art, w2=rng.normal(size=(art.w2.shape[0], d - 1)), b2=rng.normal(size=d - 1),
                                  prior_mean=rng.normal(size=d), prior_cov=np.eye(d),
                                  meta=art.meta.model_copy(update={"d": d}))
    art = dataclasses.replace(art, meta=art.meta.model_copy(update={"version": version}))
    return RetentionArtifacts(art, risk_model(), {})


@pytest.mark.parametrize("on_swap", ["keep", "reset"])
def test_swap_serves_the_new_version_from_the_next_review(on_swap):
    store = DictStore()
    eng = engine(store)
    users = [f"u{i}" for i in range(4)]
    warm(eng, users)
    first = actions(eng.process_many([session("u0", 1.3)]))
    eng.process_many([outcome(first[0], 1.5, True, 10.0)])
    n_before = eng._parts[0].adapter.posterior(SEG)[2]
    assert n_before == 1 and {a["policy_version"] for a in first} == {"test-retention"}
    eng.swap(_versioned(2, "test-retention-v2"), on_swap)
    assert eng.version == "test-retention-v2" and eng.counters["retention_policy_swaps"] == 1
    second = actions(eng.process_many([session("u1", 2.2)]))
    assert len(second) == 4 and {a["policy_version"] for a in second} == {"test-retention-v2"}
    # "keep" carries the segment's posterior over; "reset" starts it from the new prior, also after a restart
    kept = eng._parts[0].adapter.posterior(SEG)[2]
    assert kept == (n_before if on_swap == "keep" else 0)
    restarted = engine(store)
    restarted.swap(_versioned(2, "test-retention-v2"), on_swap)
    restarted.process_many([session("u2", 2.3)])
    restarted._load_segment(0, SEG)
    assert restarted._parts[0].adapter.posterior(SEG)[2] == (n_before if on_swap == "keep" else 0)


def test_swap_that_cannot_keep_posteriors_changes_nothing():
    from policy.artifact import ArtifactError

    eng = engine()
    warm(eng, ["u0", "u1"])
    eng.process_many([session("u0", 1.3)])
    with pytest.raises(ArtifactError, match="keep"):
        eng.swap(_versioned(3, "other-d", d=5), "keep")
    assert eng.version == "test-retention" and eng._parts[0].adapter.version == "test-retention"
    assert {a["policy_version"] for a in actions(eng.process_many([session("u1", 2.2)]))} == {"test-retention"}


def test_an_event_far_in_the_future_is_dead_lettered_and_moves_no_watermark():
    """Regression: one valid event dated 2100 moved the partition's watermark and closed every open
    window with a zero reward; later outcomes were then rejected as late."""
    eng = engine()
    users = [f"u{i}" for i in range(5)]
    warm(eng, users)
    acts = actions(eng.process_many([session("u0", 1.3)]))
    assert eng.pending_count() == 5
    far = datetime(2100, 1, 1, tzinfo=timezone.utc).timestamp() / DAY - T0
    out = eng.process_many([session("u1", far), outcome(acts[0], far, True, 5.0)])
    assert not out.actions
    letters = [json.loads(v) for _, v in out.dead_letters]
    assert [d["error_type"] for d in letters] == ["event_time_skew"] * 2
    assert "2100-01-01" in letters[0]["reason"] and "ahead" in letters[0]["reason"]
    assert eng.counters["retention_event_time_skew"] == 2
    assert eng.pending_count() == 5 and eng.counters["retention_windows_expired"] == 0
    eng.process_many([outcome(acts[1], 2.0, True, 12.0)])  # inside its window: applied, not late
    assert eng.counters["retention_outcomes_applied"] == 1
    assert eng.counters["retention_outcomes_late_or_unknown"] == 0


def test_event_time_ahead_of_the_wall_clock_is_accepted_in_steps_and_after_a_restart():
    """A simulation that starts at the wall clock and runs ahead of it: steps under the skew are accepted
    (days ahead of the wall clock), a jump beyond it is not, and the partition's reference survives a
    restart (it is persisted). With no reference yet, the wall clock is the reference."""
    store = DictStore()
    wall = lambda: (T0 - 0.5) * DAY  # noqa: E731  the wall clock stays at day -0.5

    def fresh() -> RetentionEngine:
        return RetentionEngine(RetentionArtifacts(artifact(0), risk_model(), {}), store, TOPICS, retention(),
                               StoreSettings(state_flush_interval_s=0.0), PolicySettings(eps=0.3), clock=wall)

    eng = fresh()
    assert eng.process_many([session("u1", 3.0, partition=1)]).dead_letters  # 3.5 days ahead, no reference
    for k in range(8):  # half-day steps, up to 4 days ahead of the wall clock
        assert not eng.process_many([session("u0", 0.5 * k)]).dead_letters
    assert eng.process_many([session("u0", 3.5 + 1.5)]).dead_letters  # 1.5 days ahead: refused
    again = fresh()
    assert not again.process_many([session("u0", 4.2)]).dead_letters
    assert again.process_many([session("u0", 6.0)]).dead_letters
    # a quiet partition in real time: its next event, days later, is not ahead of the wall clock
    assert not engine().process_many([session("u0", 0.0), session("u0", 20.0)]).dead_letters
