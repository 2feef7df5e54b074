"""Training that cannot fail silently: the held-out report, the refusal, and settings from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policy.logs import LoggedData, write_logs
from policy.simulator import Market, MarketConfig
from policy.simulator.datasets import simulate_logs
from policy.train import train
from policy.train_config import TrainConfig, TrainingError, config_from_mapping

ROOT = Path(__file__).resolve().parents[3]
QUICK = {"epochs": "4", "steps_per_epoch": "15", "threads": "1", "calibrate_segments": "12"}


def _noise_logs(path: Path) -> Path:
    """Clicks at 3 % that depend on nothing: there is nothing to learn."""
    rng = np.random.default_rng(0)
    n, k = 24000, 5
    click = (rng.random(n) < 0.03).astype(float)
    data = LoggedData(
        segment=rng.integers(0, 24, n), segment_names=tuple(f"s{i}" for i in range(24)),
        context=rng.normal(size=(n, 4)), candidates=rng.normal(size=(n, k, 3)), action=rng.integers(0, k, n),
        reward=click, propensity=np.full(n, 1 / k), click=click, candidate_ids=rng.integers(0, 40, (n, k)),
    )
    return write_logs(path, data)


def _cli(*args: str) -> subprocess.CompletedProcess:
    sets = [a for key, value in QUICK.items() for a in ("--set", f"{key}={value}")]
    return subprocess.run([sys.executable, "-m", "metacart.cli", "train", *args, *sets], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_training_on_pure_noise_refuses_and_writes_nothing(tmp_path: Path) -> None:
    logs = _noise_logs(tmp_path / "noise.npz")
    out = tmp_path / "art"
    done = _cli("--logs", str(logs), "--out", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "did NOT learn" in done.stderr and "--allow-no-gain" in done.stderr
    assert "NOT better than the base rate" in done.stdout
    assert not out.exists()
    forced = _cli("--logs", str(logs), "--out", str(out), "--allow-no-gain")
    assert forced.returncode == 0, forced.stderr
    assert (out / "meta.json").is_file() and "writing it anyway" in forced.stderr


def test_bad_settings_are_one_clear_line(tmp_path: Path) -> None:
    logs = _noise_logs(tmp_path / "noise.npz")
    done = _cli("--logs", str(logs), "--out", str(tmp_path / "x"), "--set", "epoch=3")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "metacart: error: unknown training setting 'epoch' (did you mean epochs?); see `metacart train --help`"]


def test_every_field_is_settable_from_a_mapping() -> None:
    import dataclasses

    for field in dataclasses.fields(TrainConfig):
        value = getattr(TrainConfig(), field.name)
        assert config_from_mapping({field.name: value}) == TrainConfig()
    assert config_from_mapping({"explore_scales": "[1, 0.25]"}).explore_scales == (1.0, 0.25)
    with pytest.raises(TrainingError, match="likelihood"):
        config_from_mapping({"likelihood": "poisson"})


def test_simulator_training_learns_and_reports_it() -> None:
    market = Market(MarketConfig(seed=0))
    logs = simulate_logs(market, market.train_segments, 1000, seed=1)
    config = TrainConfig(threads=1, max_seconds=20, calibrate_segments=12)
    art = train(logs, config)
    report = art.meta.report
    assert art.meta.likelihood == "bernoulli" and art.meta.d_raw == logs.dx + logs.da
    assert report["learned"], report["summary"]
    for name, (lo, _) in report["gain_ci"].items():
        assert lo > 0, name
    # The market's ads act only through their features: empirical Bayes finds no item effects and turns
    # the item terms off (the logs do carry ad ids).
    assert logs.candidate_ids is not None and art.item_prior_var == 0.0 and not art.has_items
    evidence = art.meta.serving.evidence
    assert evidence["reference_scale"] == 1.0 and art.meta.serving.scale in config.explore_scales


def test_item_offsets_by_empirical_bayes_find_real_effects_and_no_spurious_ones() -> None:
    from policy.glm_prior import fit_offsets

    rng = np.random.default_rng(5)
    n, n_items = 60000, 60
    group = rng.integers(0, n_items, n)
    base = np.full(n, -3.0)
    true = rng.normal(0.0, 0.5, n_items)
    y = (rng.random(n) < 1 / (1 + np.exp(-(base + true[group])))).astype(float)
    tau2, gamma = fit_offsets(y, base, group)
    assert 0.1 <= tau2 <= 0.3 + 1e-9  # true variance 0.25, on the grid (0.1, 0.3)
    assert np.corrcoef(gamma, true)[0, 1] > 0.8
    y0 = (rng.random(n) < 1 / (1 + np.exp(-base))).astype(float)
    tau2_none, _ = fit_offsets(y0, base, group)
    assert tau2_none <= 0.003
