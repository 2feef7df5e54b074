"""The demo's risk-targeting reference: the round's reserved budget as coupon_5 to the riskiest users."""

from __future__ import annotations

import numpy as np

from policy.retention.schema import NONE, RESERVE_COST, TREATMENTS
from metacart.live.retention import _risk_top_gain
from tests.unit.retention.test_simulator import world

COUPON = TREATMENTS.index("coupon_5")


def test_risk_top_spends_the_budget_on_the_highest_true_risk():
    w = world(users=200)
    w.warm_up(2)
    value, cost = w.expected_reward()
    net = value - cost
    budget = 12 * RESERVE_COST[COUPON] + 1.0  # twelve coupons, and a remainder too small for a thirteenth
    top = np.argsort(-w.churn_probability())[:12]
    expected = float((net[top, COUPON] - net[top, NONE]).sum())
    assert np.isclose(_risk_top_gain(w, net, budget), expected)
    assert _risk_top_gain(w, net, 0.0) == 0.0
    everyone = float((net[:, COUPON] - net[:, NONE]).sum())
    assert np.isclose(_risk_top_gain(w, net, 1e9), everyone)  # never more coupons than users
