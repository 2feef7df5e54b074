"""Segment-level differential privacy of meta-training (policy.dp, the DP path of policy.train_glm)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.artifact import PolicyArtifact
from policy.dp import (DPPlan, PrivacyError, clip_rows, dp_standardisation, noisy_sum, plan_budget, spent_epsilon,
                       stats_releases)
from policy.logs import LoggedData
from policy.train import train
from policy.train_config import TrainConfig, TrainingError, config_from_mapping
from policy.train_glm import DPStep, _Hierarchical


@pytest.mark.parametrize("epsilon,q,steps,releases", [(1.0, 0.25, 400, 5), (4.0, 0.1, 1000, 5), (8.0, 0.5, 50, 0)])
def test_accountant_epsilon_of_the_chosen_noise_is_within_the_target_and_tight(epsilon, q, steps, releases):
    plan = plan_budget(epsilon, 1e-5, q, steps, 1.0, 200, releases, 0.25)
    spent = spent_epsilon(plan, steps)
    assert spent <= epsilon
    assert spent > 0.97 * epsilon  # the budget is used, not wasted on basic composition
    louder = replace(plan, sgd_noise_multiplier=0.9 * plan.sgd_noise_multiplier,
                     stats_noise_multiplier=0.9 * plan.stats_noise_multiplier)
    assert spent_epsilon(louder, steps) > epsilon  # less noise than chosen would break the target
    assert spent_epsilon(plan, steps // 2) < spent  # stopping early spends less


def test_bad_budgets_are_clear_errors():
    with pytest.raises(PrivacyError, match="dp_epsilon must be a positive"):
        plan_budget(0.0, 1e-5, 0.25, 10, 1.0, 10, 5, 0.25)
    with pytest.raises(PrivacyError, match="dp_delta"):
        plan_budget(1.0, 1.5, 0.25, 10, 1.0, 10, 5, 0.25)
    assert isinstance(PrivacyError("x"), TrainingError)  # the CLI turns it into one line
    assert config_from_mapping({"dp_epsilon": "4", "dp_clip": "0.5"}).dp_epsilon == 4.0


def test_gaussian_release_clips_each_segment_then_adds_noise_of_the_stated_scale():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 7)) * 10
    clipped = clip_rows(values, 2.0)
    assert np.all(np.linalg.norm(clipped, axis=1) <= 2.0 + 1e-12)
    draws = np.stack([noisy_sum(values, 2.0, 3.0, rng) for _ in range(4000)])
    assert np.allclose(draws.mean(axis=0), clipped.sum(axis=0), atol=0.5)
    assert abs(draws.std(axis=0).mean() - 6.0) < 0.2


def test_dp_statistics_estimate_the_truth_when_the_noise_is_small_and_standardisation_can_be_off():
    rng = np.random.default_rng(3)
    segment = np.repeat(np.arange(400), 50)
    u = rng.normal(0.5, 2.0, size=(segment.size, 3))
    y = (rng.random(segment.size) < 0.1).astype(float)
    plan = replace(plan_budget(50.0, 1e-5, 0.25, 10, 1.0, 400, 5, 0.25), stats_noise_multiplier=0.5)
    config = TrainConfig(dp_standardise=True, dp_input_clip=4.0)
    mean, sd, rate = dp_standardisation(u, y, segment, np.arange(400), plan, config, rng)
    assert np.allclose(mean, 0.5, atol=0.1) and np.allclose(sd, 2.0, atol=0.2) and abs(rate - 0.1) < 0.02
    off = TrainConfig(dp_standardise=False)
    mean, sd, _ = dp_standardisation(u, y, segment, np.arange(400), plan, off, rng)
    assert np.all(mean == 0.0) and np.all(sd == 1.0)  # no budget spent on it when off
    assert stats_releases(off) == 3 and stats_releases(config) == 5


def _step(clip: float, same_rows_segment: int | None = None) -> DPStep:
    """A DPStep over 6 segments x 40 rows; one segment's rows all equal when asked (their gradients align)."""
    rng = np.random.default_rng(1)
    n_seg, per = 6, 40
    seg_index = np.repeat(np.arange(n_seg), per)
    u = rng.normal(size=(seg_index.size, 5)).astype(np.float32)
    y = (rng.random(seg_index.size) < 0.5).astype(np.float32)
    if same_rows_segment is not None:
        rows = seg_index == same_rows_segment
        u[rows], y[rows] = u[np.flatnonzero(rows)[0]], 1.0
    torch.manual_seed(0)
    model = _Hierarchical(5, 8, 4, False, n_seg, 0.0)
    plan = DPPlan(target_epsilon=1.0, delta=1e-5, sample_rate=1.0, steps=1, clip=clip, sgd_noise_multiplier=1.0,
                  stats_releases=0, stats_noise_multiplier=0.0, stats_share=0.25, n_segments=n_seg)
    return DPStep(model, plan, np.arange(seg_index.size), seg_index, torch.as_tensor(u), torch.as_tensor(y),
                  TrainConfig(rows_per_segment=64), torch.device("cpu"))


def _norm(total: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(t.pow(2).sum() for t in total.values())))


def test_one_segment_moves_the_clipped_sum_by_at_most_the_clip():
    """Per-segment, not per-row: 40 identical rows would move a per-row-clipped sum by 40 C."""
    clip = 1e-3
    step = _step(clip, same_rows_segment=2)
    rng = np.random.default_rng(0)
    alone, _, _ = step.clipped_sum(np.array([2]), rng)
    assert clip * 0.999 <= _norm(alone) <= clip * (1 + 1e-5)  # the bound is reached, and held
    every, _, _ = step.clipped_sum(np.arange(6), rng)
    without, _, _ = step.clipped_sum(np.array([0, 1, 3, 4, 5]), rng)
    moved = _norm({k: every[k] - without[k] for k in every})
    assert moved <= clip * (1 + 1e-4)


def test_unclipped_per_segment_gradient_is_the_segment_mean_loss_gradient():
    step = _step(1e9)
    model = step.model
    total, g_delta, _ = step.clipped_sum(np.array([3]), np.random.default_rng(0))
    rows = torch.as_tensor(np.arange(120, 160))
    model.zero_grad()
    nll = torch.nn.functional.binary_cross_entropy_with_logits(
        model.logits(step.u_t[rows], torch.full((40,), 3)), step.y_t[rows])
    nll.backward()
    for name, p in model.named_parameters():
        if name != "delta":
            assert torch.allclose(total[name], p.grad, atol=1e-6), name
    assert torch.allclose(g_delta[0], model.delta.grad[3], atol=1e-6)  # penalty 0 at delta = 0


def _easy_logs(n_seg: int = 300, per: int = 80, seed: int = 0) -> LoggedData:
    """Clicks driven by one context x candidate product shared by every segment (plus small segment shifts)."""
    rng = np.random.default_rng(seed)
    n, k = n_seg * per, 4
    segment = np.repeat(np.arange(n_seg), per)
    context = rng.normal(size=(n, 3))
    candidates = rng.normal(size=(n, k, 2))
    action = rng.integers(0, k, n)
    shift = rng.normal(0, 0.2, n_seg)[segment]
    logit = -1.5 + 2.5 * context[:, 0] * candidates[np.arange(n), action, 0] + shift
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return LoggedData(segment=segment, segment_names=tuple(f"s{i}" for i in range(n_seg)), context=context,
                      candidates=candidates, action=action, reward=click, propensity=np.full(n, 1 / k), click=click)


@pytest.fixture(scope="module")
def dp_artifact() -> PolicyArtifact:
    config = TrainConfig(dp_epsilon=8.0, dp_steps=200, dp_sample_rate=0.3, d=8, hidden=16, threads=1, seed=0,
                         calibrate_segments=10, calibrate_max_events=100, steps_per_epoch=50)
    return train(_easy_logs(), config)


def test_dp_training_beats_the_base_rate_on_an_easy_world(dp_artifact: PolicyArtifact):
    report = dp_artifact.meta.report
    assert report["gain_ci"]["base_rate"][0] > 0, report["summary"]
    dp = dp_artifact.meta.dp
    assert dp is not None and dp.epsilon <= 8.0 and dp.steps_run == 200 and dp.unit == "segment"
    assert dp_artifact.meta.serving.scale == TrainConfig().dp_explore_scale  # a setting, not chosen on data
    assert "differential privacy" in dp_artifact.meta.serving.evidence["rule"]
    assert dp_artifact.item_ids is None  # no pooled item offsets are released under DP


def test_dp_metadata_round_trips_and_plain_artifacts_carry_none(dp_artifact: PolicyArtifact, tmp_path: Path):
    dp_artifact.save(tmp_path / "dp")
    loaded = PolicyArtifact.load(tmp_path / "dp")
    assert loaded.meta.dp == dp_artifact.meta.dp
    assert loaded.meta.metrics["dp_epsilon"] == dp_artifact.meta.dp.epsilon
    plain = PolicyArtifact(meta=dp_artifact.meta.model_copy(update={"dp": None}), **dp_artifact.arrays())
    plain.save(tmp_path / "plain")
    assert "dp" not in json.loads((tmp_path / "plain" / "meta.json").read_text())  # schema-2 readers unchanged
    assert PolicyArtifact.load(tmp_path / "plain").meta.dp is None


def test_gaussian_head_refuses_dp_with_a_reason():
    logs = _easy_logs(n_seg=10, per=20)
    values = replace(logs, reward=logs.reward + 0.5)
    with pytest.raises(TrainingError, match="bernoulli head only"):
        train(values, TrainConfig(dp_epsilon=4.0, epochs=1, steps_per_epoch=1))
