"""Decisions through the shared Adapter: caps and never-contact hold under replays and any order."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.adapter import Adapter
from policy.artifact import ArtifactMeta, PolicyArtifact, TrainingDataSummary, now_utc
from policy.retention.budget import Budget
from policy.retention.budget_config import BudgetConfig, to_micro_down, to_micro_up
from policy.retention.decide import allocate_many, candidates_for
from policy.retention.features import DX
from policy.retention.policy import RetentionPolicy
from policy.retention.risk import RiskModel
from policy.retention.schema import DA, K, NONE, RESERVE_COST, TREATMENTS

D, H = 6, 8


def artifact(seed=0):
    rng = np.random.default_rng(seed)
    meta = ArtifactMeta(
        version="test-retention", kind="retention", dx=DX, da=DA, d=D, hidden=H, created_at=now_utc(),
        training_data=TrainingDataSummary(
            source="test", n_events=0, n_segments=0, n_train_segments=0, n_heldout_segments=0,
            reward_mean=0.0, reward_std=1.0,
        ),
    )
    return PolicyArtifact(
        w1=rng.normal(size=(DX + DA, H)), b1=rng.normal(size=H), w2=rng.normal(size=(H, D - 1)),
        b2=rng.normal(size=D - 1), prior_mean=rng.normal(size=D), prior_cov=np.eye(D), noise_var=1.0, meta=meta,
    )


def risk_model():
    rng = np.random.default_rng(1)
    return RiskModel(np.zeros(DX), np.ones(DX), rng.normal(size=(DX, 3)), np.zeros(3), rng.normal(size=3), 0.0, 0.3)


USERS = [f"u{i}" for i in range(8)]
NEVER = frozenset({"u1", "u5"})
CFG = BudgetConfig(segment_cap=20.0, total_cap=30.0, pacing_lead=0.2, contact_window_days=3.0,
                   max_contacts=1, horizon_periods=3, never_contact=NEVER)
point = st.tuples(st.integers(0, 30), st.sampled_from(USERS), st.sampled_from(["m00-c00", "m01-c02"]),
                  st.floats(0.0, 20.0, allow_nan=False))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(point, min_size=1, max_size=8), max_size=8), st.integers(0, 3))
def test_decider_respects_caps_under_replays(batches, seed):
    decider = RetentionPolicy(Adapter(artifact(seed), eps=0.3, seed=seed), risk_model(), Budget(CFG))
    x_of = {u: np.random.default_rng(i).normal(size=DX) for i, u in enumerate(USERS)}
    first: dict[int, int] = {}
    grants = []
    for batch in batches + batches[::-1]:  # every batch replayed, in reverse order
        ids = [f"d{b[0]}" for b in batch]
        dec = decider.decide_many(ids, [b[1] for b in batch], [b[2] for b in batch],
                                  np.stack([x_of[b[1]] for b in batch]), np.array([b[3] for b in batch]))
        assert np.all((dec.propensity > 0) & (dec.propensity <= 1))
        assert dec.phis.shape == (len(batch), D)
        rows = list(zip(batch, dec.action, dec.cost, dec.reason))
        for (did, user, seg, now), a, c, why in sorted(rows, key=lambda r: r[3] == "replay"):
            if a != NONE:
                assert user not in NEVER
                assert c == RESERVE_COST[a]
                if why == "replay":
                    assert first[did] == a  # a replayed contact repeats its action
                else:
                    first[did] = a
                    grants.append((user, seg, c, now))
    for scope in ("m00-c00", "m01-c02", None):
        for p in range(4):
            sel = [g for g in grants if (scope is None or g[1] == scope) and int(g[3] // 7) == p]
            cap = CFG.total_cap if scope is None else CFG.cap_for(scope)
            assert sum(to_micro_up(g[2]) for g in sel) <= to_micro_down(cap)
    for u in USERS:
        times = sorted(g[3] for g in grants if g[0] == u)
        assert all(b - a >= CFG.contact_window_days for a, b in zip(times, times[1:]))


def test_learning_moves_the_segment_posterior_only():
    ad = Adapter(artifact(), eps=0.0, seed=0)
    decider = RetentionPolicy(ad, risk_model(), Budget(BudgetConfig(segment_cap=1e6, total_cap=1e6, pacing_lead=1.0)))
    x = np.random.default_rng(0).normal(size=(5, DX))
    dec = decider.decide_many([f"a{i}" for i in range(5)], USERS[:5], ["s"] * 5, x, 1.0)
    before = ad.posterior("t")[1]
    decider.learn_many([f"a{i}" for i in range(5)], ["s"] * 5, dec.action, x, dec.phis,
                       np.ones(5, dtype=bool), np.full(5, 30.0))
    assert ad.posterior("s")[2] == 5
    np.testing.assert_array_equal(ad.posterior("t")[1], before)
    assert candidates_for(3).shape == (3, K, DA)
    assert set(dec.reason) <= {"treat", "no_uplift", "fallback:budget"} | {f"budget:{r}" for r in ["frequency_cap"]}


def test_allocate_serves_priority_first_and_falls_back_to_cheaper():
    b = Budget(BudgetConfig(segment_cap=7.0, total_cap=100.0, pacing_lead=1.0))
    uplift = np.zeros((3, K))
    uplift[:, 2] = 1.0  # email helps everyone a little
    coupon = TREATMENTS.index("coupon_5")
    action, cost, reason = allocate_many(
        b, ["x", "y", "z"], ["u1", "u2", "u3"], ["s"] * 3, np.zeros(3),
        np.array([coupon, coupon, NONE]), np.array([1.0, 2.0, 0.0]), uplift,
    )
    # u2 (higher priority) gets the coupon; u1 cannot afford a second one and falls back to email
    assert action.tolist() == [2, coupon, NONE]
    assert reason == ["fallback:budget", "treat", "no_uplift"]
    assert cost.tolist() == [0.05, 5.0, 0.0]


def test_learning_from_outcomes_sets_rewards_risk_and_budget_in_one_place():
    """Realised cost = fixed + face * retained; reward = value - cost; untreated adapt the risk offset;
    treated settle their reservation."""
    ad = Adapter(artifact(), eps=0.0, seed=0)
    risk = risk_model()
    budget = Budget(BudgetConfig(segment_cap=1e6, total_cap=1e6, pacing_lead=1.0))
    pol = RetentionPolicy(ad, risk, budget)
    coupon, push = TREATMENTS.index("coupon_15"), TREATMENTS.index("push")
    ids = ["c-kept", "c-lost", "p-kept", "n-lost"]
    action = np.array([coupon, coupon, push, NONE])
    for did, a in zip(ids[:3], action[:3]):
        assert budget.try_spend_one(did, did, "s", float(RESERVE_COST[a]), 1.0, TREATMENTS[a]).granted
    x = np.random.default_rng(2).normal(size=(4, DX))
    phis = np.random.default_rng(3).normal(size=(4, D))
    retained = np.array([True, False, True, False])
    value = np.array([40.0, 0.0, 12.0, 0.0])
    twin = Adapter(artifact(), eps=0.0, seed=0)
    realised = pol.learn_many(ids, ["s"] * 4, action, x, phis, retained, value)
    np.testing.assert_allclose(realised, [15.0, 0.0, 0.02, 0.0])
    twin.learn_many(["s"] * 4, phis, value - realised)  # the rewards the policy must have used
    np.testing.assert_allclose(ad.posterior("s")[1], twin.posterior("s")[1])
    assert risk.offset("s")[2] == 1  # only the untreated user adapts the churn offset
    assert risk.offset("s")[0] > 0  # ... and it churned: the offset moves up
    # each reservation now stands at its realised cost (settle_one never raises a charge: it reports it)
    assert [budget.settle_one(d, 1e6) for d in ids[:3]] == [15.0, 0.0, 0.02]
    assert pol.learn_many([], [], np.zeros(0), np.zeros((0, DX)), np.zeros((0, D)), np.zeros(0), np.zeros(0)).size == 0


def test_learning_is_settle_many_plus_the_posterior_update():
    """The one learning step: ``RetentionPolicy.learn_many`` = ``settle_many`` (realised costs, risk
    offsets from the untreated, budget settlement) + the bandit's update; baselines call ``settle_many``."""
    import copy

    from policy.adapter import Adapter
    from policy.retention.policy import RetentionPolicy, settle_many

    rng = np.random.default_rng(5)
    ids = [f"d{i}" for i in range(8)]
    segs = ["m00-c00"] * 4 + ["m01-c02"] * 4
    budget = Budget(CFG)
    policy = RetentionPolicy(Adapter(artifact(0), eps=1.0, seed=3), risk_model(), budget)
    x = rng.normal(size=(8, DX))
    dec = policy.decide_many(ids, USERS, segs, x, np.full(8, 2.0))
    retained = rng.random(8) < 0.5
    value = np.where(retained, 20.0, 0.0)
    twin_risk, twin_budget = copy.deepcopy(policy.risk), copy.deepcopy(budget)
    realised = policy.learn_many(ids, segs, dec.action, x, dec.phis, retained, value)
    np.testing.assert_array_equal(realised, settle_many(twin_risk, twin_budget, ids, segs, dec.action, x, retained))
    assert twin_budget.to_bytes() == budget.to_bytes()
    assert all(twin_risk.offset(s) == policy.risk.offset(s) for s in set(segs))
    assert sum(policy.adapter.posterior(s)[2] for s in set(segs)) == 8
