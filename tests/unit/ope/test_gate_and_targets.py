"""Artifacts as targets (frozen and replay), the paired gate rule, and target specs' errors."""

from __future__ import annotations

import pytest

from metacart.gate import gate_check
from metacart.evaluate import run_evaluation
from policy.logformat.simulated import simulate_v2
from policy.ope.exceptions import OpeError
from policy.simulator.market import Market
from tests.unit.policy.test_artifact import make_artifact


@pytest.fixture(scope="module")
def sim_log(tmp_path_factory):
    market = Market()
    return simulate_v2(market, market.heldout_segments[:3], 3000, seed=4,
                       out=tmp_path_factory.mktemp("ope") / "log", chunk_rows=1000)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("arts")
    a = make_artifact(seed=1, dx=8, da=6).save(root / "a")
    b = make_artifact(seed=2, dx=8, da=6).save(root / "b")
    return a, b


def test_artifact_frozen_and_replay_targets(sim_log, artifacts):
    a, _ = artifacts
    report = run_evaluation(sim_log, ["uniform", f"frozen={a}", f"replay={a}@replay"], chunk_rows=700)
    assert report["targets"]["replay"]["adapting"] and not report["targets"]["frozen"]["adapting"]
    for name in ("frozen", "replay"):
        snips = report["policies"][name]["snips"]
        assert snips["lo"] <= snips["value"] <= snips["hi"] and snips["ess"] > 100
    # Uniform on its own uniform log is the logged mean exactly.
    assert report["policies"]["uniform"]["ips"]["value"] == pytest.approx(report["logging_policy_value"]["value"])
    assert set(report["differences"]) == {"frozen - uniform", "replay - uniform", "uniform - logged",
                                          "frozen - logged", "replay - logged"}


def test_gate_rule_lower_bound_against_margin(sim_log, artifacts):
    a, b = artifacts
    same = gate_check(sim_log, a, a, margin=-0.01)
    assert same.passed and same.difference["value"] == 0.0  # same policy, same seed: identical pi
    assert not gate_check(sim_log, a, a, margin=0.0).passed  # no evidence of being better
    assert not gate_check(sim_log, a, a, margin=-0.01, min_ess=1e9).passed  # too few effective rows
    other = gate_check(sim_log, b, a, margin=-1.0)
    assert other.passed == (other.difference["lo"] > -1.0)
    assert other.difference["lo"] < other.difference["value"] < other.difference["hi"]


def test_bad_specs_are_named(sim_log, tmp_path):
    with pytest.raises(OpeError, match="unknown policy 'nope'"):
        run_evaluation(sim_log, ["nope"])
    wrong = make_artifact(seed=3, dx=3, da=2).save(tmp_path / "wrong")
    with pytest.raises(OpeError, match="expects dx=3, da=2; the log has dx=8, da=6"):
        run_evaluation(sim_log, [str(wrong)])
    with pytest.raises(OpeError, match="distinct"):
        run_evaluation(sim_log, ["uniform", "uniform"])
