"""``bench adapt`` on the world families: the quick run's report, its statistics, the cache, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from metacart.bench.adapt import run
from metacart.bench.worlds import BASELINES, QUICK, artifact_for, make_world, mean_ci, summarise
from metacart.cli import app
from policy.simulator.world import uniform_logs


@pytest.mark.slow
def test_quick_bench_reports_every_world_with_paired_intervals(tmp_path: Path) -> None:
    out = tmp_path / "adapt.json"
    result = run(quick=True, out=out, plot=tmp_path / "adapt.png", cache_dir=tmp_path / "cache")
    assert (tmp_path / "adapt.png").stat().st_size > 0 and (tmp_path / "adapt-worlds.png").stat().st_size > 0
    saved = json.loads(out.read_text())
    for key in ("T", "segments", "regret", "regret_ci", "paired_regret_minus_meta_ci", "ratios", "training"):
        assert key in saved  # today's keys are kept
    assert set(saved["worlds"]) == {"market", "recsys", "logistic"}
    for name, rec in saved["worlds"].items():
        assert {"lift", "lift_ci", "paired_vs_best_baseline", "adapt_minus_frozen", "windows",
                "exploration_cost"} <= set(rec)
        expected = {"ours", "ours_frozen", "ours_greedy", *BASELINES} - ({"most_viewed"} if name != "recsys" else set())
        assert set(rec["lift"]) == expected
        for policy, (lo, hi) in rec["lift_ci"].items():
            assert lo <= rec["lift"][policy] <= hi
        assert rec["best_baseline"] in BASELINES
        assert rec["bad_propensities"] == dict.fromkeys(rec["lift"], 0)
        assert rec["ctr"]["oracle"] > rec["ctr"]["random"]
        assert set(rec["windows"]["lift"]) == expected
        assert len(rec["windows"]["lift"]["ours"]) == QUICK[name].windows
        assert rec["tasks"] == QUICK[name].tasks and rec["horizon"] == QUICK[name].horizon
    assert result["worlds"]["market"]["training"]["version"] == saved["training"]["version"]


def test_trained_artifacts_are_cached_by_world_sizes_and_seed(tmp_path: Path) -> None:
    world = make_world("logistic", seed=0)
    spec = QUICK["logistic"]
    logs = uniform_logs(world, world.train_tasks[:20], 60, seed=1)
    art, info = artifact_for(world, logs, spec, 0, tmp_path)
    assert info["cached"] is None
    again, info2 = artifact_for(world, logs, spec, 0, tmp_path)
    assert info2["cached"] is not None and again.version == art.version
    _, info3 = artifact_for(world, logs, spec, 1, tmp_path)  # another seed: trained afresh
    assert info3["cached"] is None


def test_mean_ci_is_the_t_interval() -> None:
    v = np.array([0.1, 0.3, 0.2, 0.4, 0.0])
    mean, lo, hi = mean_ci(v)
    half = 2.776 * v.std(ddof=1) / np.sqrt(5)
    np.testing.assert_allclose([mean, lo, hi], [0.2, 0.2 - half, 0.2 + half])


def _sums(rng: np.random.Generator, n_tasks: int = 12, n_win: int = 4) -> dict[str, np.ndarray]:
    random = rng.uniform(1.0, 2.0, (n_tasks, n_win))
    oracle = random + rng.uniform(2.0, 3.0, (n_tasks, n_win))
    gap = oracle - random
    frac = {"most_popular": 0.2, "pooled_frozen": 0.5, "pooled_warm": 0.55, "egreedy_logistic": 0.3,
            "scratch": 0.4, "ours": 0.6, "ours_frozen": 0.45, "ours_greedy": 0.62}
    sums = {"oracle": oracle, "random": random}
    for name, f in frac.items():
        sums[name] = random + (f + rng.normal(0.0, 0.01, (n_tasks, n_win))) * gap
    return sums


def test_summary_lifts_paired_differences_and_late_crossover() -> None:
    rng = np.random.default_rng(0)
    sums = _sums(rng)
    played = {"sums": sums, "edges": np.array([0, 10, 20, 30, 40]), "seconds": {}, "bad_propensities": {}}
    rec = summarise(make_world("logistic"), played, 40)
    assert abs(rec["lift"]["ours"] - 0.6) < 0.01 and abs(rec["lift"]["scratch"] - 0.4) < 0.01
    assert rec["best_baseline"] == "pooled_warm"
    lo, hi = rec["paired_vs_best_baseline"]
    assert 0.03 < lo < 0.05 < hi < 0.07
    assert rec["adapt_minus_frozen"][0] > 0.1
    assert rec["exploration_cost"]["greedy_minus_ours_lift"] == pytest.approx(0.02, abs=0.01)
    assert not rec["windows"]["late_crossover"]
    # scratch overtakes ours in the last window: reported as a late crossover
    gap = sums["oracle"][:, 3] - sums["random"][:, 3]
    sums["scratch"][:, 3] = sums["random"][:, 3] + 0.7 * gap
    rec = summarise(make_world("logistic"), played, 40)
    assert rec["windows"]["late_crossover"]
    assert rec["windows"]["ours_minus_scratch_ci"][3][1] < 0


def test_cli_rejects_an_unknown_world_in_one_line() -> None:
    result = CliRunner().invoke(app, ["bench", "adapt", "--worlds", "market,moon"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown world 'moon'; choose from market, recsys, logistic or none"]


class _PaddingPolicy:
    """Deliberately wrong: uniform over all K slots, padding included in the propensities."""

    def decide_many(self, segments, context, candidates, k_valid=None, items=None):
        from policy.baselines import RandomPolicy

        dec = RandomPolicy(seed=0).decide_many(segments, context, candidates, k_valid=k_valid, items=items)
        kk = candidates.shape[1]
        return dec.__class__(**{**dec.__dict__, "propensities": np.full((len(segments), kk), 1.0 / kk)})

    def learn_many(self, segments, phis, rewards, items=None):
        return None


def test_play_world_counts_invalid_propensities_and_pairs_outcomes() -> None:
    from metacart.bench.worlds import play_world
    from policy.baselines import MostViewed

    world = make_world("recsys", seed=0)  # 10-20 products: padding in most rows
    tasks = world.heldout_tasks[:6]
    played = play_world(world, {"bad": _PaddingPolicy(), "mv": MostViewed(world.views_column, seed=0),
                                "mv2": MostViewed(world.views_column, seed=0)}, tasks, 20, seed=0, windows=2)
    padded = int((world.n_products[tasks] < 20).sum())
    assert played["bad_propensities"]["bad"] == 20 * padded > 0
    assert played["bad_propensities"]["mv"] == 0
    np.testing.assert_array_equal(played["sums"]["mv"], played["sums"]["mv2"])  # same requests for everyone
