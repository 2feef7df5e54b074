"""Budget invariants under arbitrary event orders, duplicates and replays (Hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.retention.budget import Budget
from policy.retention.budget_config import MICRO, BudgetConfig, to_micro_down, to_micro_up
from policy.retention.exceptions import BudgetStateError

USERS = [f"u{i}" for i in range(6)]
SEGMENTS = ["m00-c00", "m00-c01", "m01-c00"]
NEVER = frozenset({"u0", "u3"})

CONFIG = BudgetConfig(
    segment_cap=12.0,
    total_cap=25.0,
    period_days=7.0,
    pacing_lead=0.1,
    contact_window_days=5.0,
    max_contacts=2,
    horizon_periods=3,
    segment_caps={"m01-c00": 4.0},
    never_contact=NEVER,
)

request = st.tuples(
    st.integers(0, 40),  # decision id (small range: collisions = duplicates)
    st.sampled_from(USERS),
    st.sampled_from(SEGMENTS),
    st.sampled_from([0.02, 0.05, 5.0, 15.0, 1.234567, 0.0]),
    st.floats(0.0, 30.0, allow_nan=False, allow_infinity=False),
)


def replay(requests, budget=None, answers=None):
    """Feed requests; returns the budget, the answer per id, and every fresh grant's content."""
    budget = budget or Budget(CONFIG)
    answers = {} if answers is None else dict(answers)
    grants = []
    granted_ids = []
    for did, user, seg, cost, now in requests:
        g = budget.try_spend_one(f"d{did}", user, seg, cost, now)
        if g.duplicate:  # idempotent: a remembered id gets its earlier answer, nothing changes
            assert g[:3] == answers[did][:3] or (not g.granted and g.reason in ("id_conflict", "never_contact"))
        else:
            answers[did] = g
            if g.granted:
                grants.append((user, seg, cost, now))
                granted_ids.append(did)
    replay.granted_ids = granted_ids
    return budget, answers, grants


def check_invariants(budget: Budget, granted: list[tuple[str, str, float, float]]) -> None:
    """``granted``: (user, segment, cost, time) of every grant (first answers only)."""
    cfg = budget.config
    by_period: dict[int, list] = {}
    for user, seg, cost, t in granted:
        assert user not in cfg.never_contact
        by_period.setdefault(math.floor(t / cfg.period_days), []).append((user, seg, cost, t))
    for p, rows in by_period.items():
        start = p * cfg.period_days
        for scope in [*SEGMENTS, None]:
            sel = [r for r in rows if scope is None or r[1] == scope]
            cap = cfg.total_cap if scope is None else cfg.cap_for(scope)
            assert sum(to_micro_up(r[2]) for r in sel) <= to_micro_down(cap)
            for _, _, _, t in sel:  # pacing: spend up to t within the allowance at t
                upto = sum(to_micro_up(r[2]) for r in sel if r[3] <= t)
                frac = min(1.0, (t - start) / cfg.period_days + cfg.pacing_lead)
                assert upto <= to_micro_down(cap * frac)
    for user in USERS:
        times = sorted(t for u, _, _, t in granted if u == user)
        k = cfg.max_contacts
        for i in range(len(times) - k):
            assert times[i + k] - times[i] >= cfg.contact_window_days


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(request, max_size=60), st.randoms(use_true_random=False))
def test_caps_hold_under_any_order_duplicates_and_replays(requests, rnd):
    # replays: the stream shuffled and partly repeated; ids may even collide with different content
    stream = list(requests) + [r for r in requests if rnd.random() < 0.5]
    rnd.shuffle(stream)
    budget, answers, grants = replay(stream)
    check_invariants(budget, grants)
    assert len({(u, t) for u, _, _, t in grants}) == len(grants) or CONFIG.max_contacts > 1


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(st.integers(0, 1000), request.map(lambda r: r[1:]), max_size=40),
    st.randoms(use_true_random=False),
)
def test_replayed_decisions_are_granted_at_most_once(decisions, rnd):
    """Real replays repeat a decision's content: each id is granted at most once, never-contact never."""
    stream = [(d, *c) for d, c in decisions.items()] * 3
    rnd.shuffle(stream)
    budget, answers, grants = replay(stream)
    ids = replay.granted_ids
    assert len(ids) == len(set(ids)) <= len(decisions)  # no decision granted twice
    check_invariants(budget, grants)
    for d, g in answers.items():
        if decisions[d][0] in NEVER:
            assert not g.granted and g.reason in ("never_contact", "expired")


@settings(max_examples=60, deadline=None)
@given(st.lists(request, max_size=40), st.integers(0, 40))
def test_state_bytes_roundtrip_mid_stream(requests, cut):
    """Persisting and restoring the state at any point changes no answer (agent restart)."""
    a, answers_a, _ = replay(requests)
    b, answers_cut, _ = replay(requests[:cut])
    b = Budget.from_bytes(b.to_bytes())
    b, answers_b, _ = replay(requests[cut:], b, answers_cut)
    for did in answers_b:
        assert answers_b[did][:3] == answers_a[did][:3]
    assert a.to_bytes() == b.to_bytes()


@settings(max_examples=40, deadline=None)
@given(st.lists(request, min_size=1, max_size=40), st.lists(st.floats(0, 20, allow_nan=False), max_size=40))
def test_settle_never_raises_spend_and_is_idempotent(requests, actuals):
    budget, answers, _ = replay(requests)
    before = {p: budget.spent(None, p) for p in range(6)}
    for (did, g), actual in zip(answers.items(), actuals):
        once = budget.settle_one(f"d{did}", actual)
        twice = budget.settle_one(f"d{did}", actual)
        assert once == twice
        assert once <= g.cost + 1e-12
    for p in range(6):
        assert budget.spent(None, p) <= before[p] + 1e-12
        assert budget.spent(None, p) >= 0


def test_pacing_blocks_spending_the_cap_in_the_first_hour():
    cfg = BudgetConfig(segment_cap=70.0, total_cap=1000.0, period_days=7.0, pacing_lead=0.0)
    b = Budget(cfg)
    hour = 1 / 24
    granted = sum(b.try_spend_one(f"d{i}", f"u{i}", "s", 5.0, 0.5 * hour).granted for i in range(20))
    # allowance after half an hour: 70 * (0.5 h / 168 h) = 0.21 -> no coupon
    assert granted == 0
    assert b.try_spend_one("late", "v", "s", 5.0, 3.5).reason == "granted"  # half the period: 35 available
    assert b.available("s", 3.5) == pytest.approx(30.0)


def test_late_decision_cannot_break_pacing_of_later_times():
    cfg = BudgetConfig(segment_cap=10.0, total_cap=100.0, period_days=10.0, pacing_lead=0.0)
    b = Budget(cfg)
    assert b.try_spend_one("a", "u1", "s", 5.0, 5.0).granted  # allowance(5) = 5
    # a late decision at t=2 (allowance 2) for 2.0 would make spend(<=5) = 7 > 5
    assert b.try_spend_one("b", "u2", "s", 2.0, 2.0).reason == "segment_pacing"
    assert b.try_spend_one("c", "u3", "s", 1.0, 9.0).granted


def test_frequency_cap_and_never_contact_and_expiry():
    cfg = BudgetConfig(segment_cap=1e6, total_cap=1e6, pacing_lead=1.0, contact_window_days=14.0, horizon_periods=2)
    b = Budget(cfg)
    assert b.try_spend_one("1", "u", "s", 0.02, 10.0).granted
    assert b.try_spend_one("2", "u", "s", 0.02, 20.0).reason == "frequency_cap"
    assert b.try_spend_one("3", "u", "s", 0.02, 0.0).reason == "frequency_cap"  # out of order, too close
    assert b.try_spend_one("4", "u", "s", 0.02, 24.5).granted
    b.add_never_contact("u")
    assert b.try_spend_one("5", "u", "s", 0.02, 27.0).reason == "never_contact"
    assert b.try_spend_one("1", "u", "s", 0.02, 10.0).duplicate
    assert b.try_spend_one("6", "w", "s", 0.02, 100.0).granted  # moves the horizon
    assert b.try_spend_one("1", "u", "s", 0.02, 10.0).reason == "expired"  # evicted: never granted twice
    assert b.contacts_of("u") == []


def test_invalid_inputs():
    b = Budget(BudgetConfig(segment_cap=1.0, total_cap=1.0))
    assert b.try_spend_one("x", "u", "s", float("nan"), 1.0).reason == "invalid_cost"
    assert b.try_spend_one("y", "u", "s", -1.0, 1.0).reason == "invalid_cost"
    with pytest.raises(BudgetStateError):
        b.try_spend_one("z", "u", "s", 1.0, float("inf"))
    with pytest.raises(BudgetStateError):
        Budget.from_bytes(b"{not json")
    with pytest.raises(BudgetStateError):
        BudgetConfig(segment_cap=-1.0, total_cap=1.0)
    assert MICRO == 1_000_000


def _apply(store: dict[str, bytes], budget: Budget) -> None:
    puts, deletes = budget.drain_changes()
    store.update(puts)
    for key in deletes:
        store.pop(key, None)


@settings(max_examples=60, deadline=None)
@given(st.lists(request, max_size=60), st.integers(0, 60), st.lists(st.sampled_from(USERS), max_size=2))
def test_records_written_from_drained_changes_restore_the_state_mid_stream(requests, cut, opted_out):
    """The changed records, applied to a store after every request (settles, opt-outs, erasures and
    evictions included), always rebuild the state in memory, and every record stays small."""
    store: dict[str, bytes] = {}
    a = Budget(CONFIG)
    for user in opted_out:
        a.add_never_contact(user)
    for i, (d, user, seg, cost, now) in enumerate(requests):
        a.try_spend_one(f"d{d}", user, seg, cost, now)
        if i % 3 == 0:
            a.settle_one(f"d{d}", cost / 2)
        if i == cut:
            a.forget_user(user)
        _apply(store, a)
        b = Budget.from_records(CONFIG, store.items())
        assert b.to_bytes() == a.to_bytes()
    assert all(len(v) < 1024 for v in store.values())


def test_a_malformed_record_is_a_budget_state_error():
    with pytest.raises(BudgetStateError):
        Budget.from_records(CONFIG, [("d/x", b"{not json")])
    with pytest.raises(BudgetStateError):
        Budget.from_records(CONFIG, [("q/x", b"1")])
