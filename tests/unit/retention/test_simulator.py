"""The retention world: seeded, closed-form expectations agree with sampling, heterogeneous effects."""

from __future__ import annotations

import numpy as np

from policy.retention.schema import COUPON_FACE, INTERVENTION, K, PURCHASE
from policy.simulator.retention import RetentionWorld, draw_segments, subset_segments


def world(seed=0, users=300):
    names, params = draw_segments(3, 3, seed=7)
    return RetentionWorld(names, params, users, seed=seed)


def test_seeded_and_names():
    a, b = world(), world()
    ra, rb = a.run_window(np.zeros(a.n_users, dtype=np.int64)), b.run_window(np.zeros(b.n_users, dtype=np.int64))
    np.testing.assert_array_equal(ra.value, rb.value)
    assert a.segment_names[5] == "m01-c02"
    names, params = draw_segments(3, 3, seed=7)
    sub = subset_segments(params, np.array([1, 4]))
    assert sub.g_coupon.shape == (2,) and sub.g_coupon[1] == params.g_coupon[4]


def test_expected_reward_matches_sampling():
    w = world(users=2000)
    w.warm_up(2)
    value, cost = w.expected_reward()
    for a in (0, 3):
        w2 = world(users=2000)
        w2.warm_up(2)
        res = w2.run_window(np.full(w2.n_users, a))
        se = res.value.std() / np.sqrt(res.value.size)
        assert abs(res.value.mean() - value[:, a].mean()) < 4 * se
        assert abs(res.cost.mean() - cost[:, a].mean()) < 4 * (COUPON_FACE[a] + 0.01) / np.sqrt(res.value.size)
        if a == 0:
            risk = w.churn_probability()
            assert abs((~res.purchased).mean() - risk.mean()) < 0.03


def test_effects_are_heterogeneous_and_events_consistent():
    w = world(users=1000)
    w.warm_up(3)
    value, cost = w.expected_reward()
    uplift = (value - cost) - (value - cost)[:, :1]
    assert (uplift[:, 1] < 0).mean() > 0.1  # push annoys some users
    assert (uplift[:, 4] < 0).mean() > 0.1  # coupon_15 subsidises some
    risk = w.churn_probability()
    top = risk >= np.quantile(risk, 0.9)
    mid = (risk > np.quantile(risk, 0.3)) & (risk < np.quantile(risk, 0.7))
    # the highest-risk users are the least persuadable (retention futility)
    assert uplift[top].max(axis=1).mean() < 0.5 * uplift[mid].max(axis=1).mean()
    action = np.arange(w.n_users) % K
    res = w.run_window(action)
    ev = res.events
    assert (ev.kind == INTERVENTION).sum() == (action != 0).sum()
    bought = np.zeros(w.n_users)
    np.add.at(bought, ev.user[ev.kind == PURCHASE], ev.value[ev.kind == PURCHASE])
    np.testing.assert_allclose(bought, res.value)
    t = ev.time[ev.kind != INTERVENTION]
    assert np.all(t >= res.decision_time[ev.user[ev.kind != INTERVENTION]])
    assert np.all(t < res.decision_time[ev.user[ev.kind != INTERVENTION]] + w.window_days + 1e-3)
