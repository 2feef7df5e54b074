"""The demo's on-screen breakdowns add up to their totals, over counters a real engine produced."""

from __future__ import annotations

import re

from metacart.demo import actions_breakdown, updates_breakdown
from tests.unit.streams import test_ads_engine as ads


def numbers(text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)]


def test_updates_breakdown_adds_up_for_click_rewards():
    eng = ads.engine()
    eng.process_many([ads.request(f"r{i}", i, seed=i) for i in range(8)])
    eng.process_many([ads.feedback("click", "r0", 1), ads.feedback("click", "r1", 2), ads.feedback("click", "r1", 3)])
    eng.process_many([ads.request("late", 5000)])  # every earlier window closes
    total, *parts = numbers(updates_breakdown(eng.counters))
    assert total == eng.counters["updates"] == 8 and parts == [2, 6] and sum(parts) == total


def test_updates_breakdown_adds_up_for_value_rewards():
    eng = ads.engine(value_weight=0.1)
    eng.process_many([ads.request(f"r{i}", i, seed=i) for i in range(5)])
    eng.process_many([ads.feedback("click", "r0", 1), ads.feedback("purchase", "r0", 2, value=30.0)])
    eng.process_many([ads.request("late", 5000)])
    total, *parts = numbers(updates_breakdown(eng.counters, value_weight=0.1))
    assert total == eng.counters["updates"] == 5 and sum(parts) == total


def test_actions_breakdown_counts_none_too():
    text = actions_breakdown({"none": 913, "push": 17, "email": 2525, "coupon_5": 385, "coupon_10": 0})
    assert text == "none 913, push 17, email 2,525, coupon_5 385"
    assert sum(numbers(text.replace("coupon_5", "coupon"))) == 3840


def test_replay_reference_gives_both_curves_on_the_same_requests():
    from metacart.demo import replay_reference
    from policy.simulator.market import Market
    from tests.unit.policy.test_artifact import make_artifact

    c = Market().config
    curves = replay_reference(make_artifact(dx=c.dx, da=c.da, d=6), n_per_segment=30)
    assert set(curves) == {"meta", "scratch"}
    assert all(len(v) == 30 and all(0.0 < x < 1.0 for x in v) for v in curves.values())
    assert curves["meta"] != curves["scratch"]  # different priors, different choices
