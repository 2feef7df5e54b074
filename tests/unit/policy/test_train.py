"""Meta-training: the closed-form objectives, learning on a hand-made log file, serving the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from policy.adapter import Adapter
from policy.artifact import PolicyArtifact
from policy.meta_model import MetaModel, marginal_nll, predictive_nll
from policy.train import TrainConfig, TrainingError, train

DX, DA, K = 3, 2, 4


def write_hand_made_logs(path: Path, n_segments: int = 24, n_per: int = 150, seed: int = 0) -> Path:
    """A logged-bandit file built with plain numpy in the documented layout (policy/logs.py).

    Reward model: segment s has a head ``w_s = w0 + 0.5 * delta_s`` on the nonlinear features
    ``g(x, a) = [tanh(x0 * a0), tanh(x1 * a1), x2 * a0, 1]`` plus Gaussian noise; actions are uniform.
    """
    rng = np.random.default_rng(seed)
    n = n_segments * n_per
    segment = np.repeat(np.arange(n_segments), n_per)
    context = rng.normal(size=(n, DX))
    candidates = rng.normal(size=(n, K, DA))
    action = rng.integers(0, K, n)
    a = candidates[np.arange(n), action]
    g = np.stack([np.tanh(context[:, 0] * a[:, 0]), np.tanh(context[:, 1] * a[:, 1]),
                  0.5 * context[:, 2] * a[:, 0], np.ones(n)], axis=1)
    heads = np.array([0.4, -0.2, 0.3, 0.1]) + 0.5 * rng.normal(size=(n_segments, 4))
    reward = (g * heads[segment]).sum(axis=1) + 0.3 * rng.normal(size=n)
    np.savez(
        path,
        schema_version=1,
        segment=segment,
        segment_names=np.array([f"seg-{i}" for i in range(n_segments)]),
        context=context,
        candidates=candidates,
        action=action,
        reward=reward,
        propensity=np.full(n, 1.0 / K),
    )
    return path


TINY = dict(d=8, hidden=16, segments_per_batch=8, rows_per_segment=64, steps_per_epoch=15, epochs=8,
            patience=8, eval_rows_per_segment=128, threads=1, lr=1e-2)


def test_trains_from_hand_made_file_and_serves(tmp_path: Path) -> None:
    logs = write_hand_made_logs(tmp_path / "logs.npz")
    seen: list[dict] = []
    art = train(logs, TrainConfig(seed=1, **TINY), out_dir=tmp_path / "art", progress=seen.append)
    assert len(seen) == art.meta.metrics["epochs_run"] and seen[-1]["epoch"] >= 1
    curves = art.meta.curves
    assert len(curves["heldout_nll"]) == len(curves["train_nll"]) + 1  # + the untrained model
    # training lowers the held-out segments' NLL
    assert art.meta.metrics["heldout_nll"] < art.meta.metrics["heldout_nll_initial"] - 0.02
    assert art.meta.training_data.n_events == 24 * 150
    assert art.meta.training_data.source == str(tmp_path / "logs.npz")

    loaded = PolicyArtifact.load(tmp_path / "art")
    assert (loaded.meta.dx, loaded.meta.da, loaded.meta.d) == (DX, DA, 8)
    adapter = Adapter(loaded, eps=0.05, n_draws=16, seed=0)
    rng = np.random.default_rng(5)
    ctx, cand = rng.normal(size=(6, DX)), rng.normal(size=(6, K, DA))
    segs = ["seg-0", "seg-1", "seg-0", "new-segment", "seg-1", "seg-0"]
    dec = adapter.decide_many(segs, ctx, cand)
    assert dec.choices.shape == (6,) and dec.phis_chosen.shape == (6, 8)
    np.testing.assert_allclose(dec.propensities.sum(axis=1), 1.0)
    adapter.learn_many(segs, dec.phis_chosen, rng.normal(size=6))
    assert adapter.posterior("seg-0")[2] == 3


def test_standardisation_is_folded_into_the_first_layer(tmp_path: Path) -> None:
    """The exported numpy phi on raw inputs equals the torch model on standardised inputs."""
    logs = write_hand_made_logs(tmp_path / "logs.npz", n_segments=6, n_per=40)
    cfg = TrainConfig(seed=0, **{**TINY, "epochs": 1, "steps_per_epoch": 2})
    art = train(logs, cfg)
    from policy.logs import read_logs

    data = read_logs(logs)
    u = np.concatenate([data.context[:5], data.candidates[:5, 0]], axis=1)
    phi = art.phi_numpy(u)
    assert phi.shape == (5, 8) and np.all(phi[:, -1] == 1.0)
    # a constant shift of an input column must change phi only through w1 (checks the fold is affine)
    shifted = u.copy()
    shifted[:, 0] += 1.0
    expected = np.tanh(np.maximum(shifted @ art.w1 + art.b1, 0) @ art.w2 + art.b2)
    np.testing.assert_allclose(art.phi_numpy(shifted)[:, :-1], expected)


def test_same_seed_same_artifact(tmp_path: Path) -> None:
    logs = write_hand_made_logs(tmp_path / "logs.npz", n_segments=8, n_per=50)
    cfg = TrainConfig(seed=3, device="cpu", **{**TINY, "epochs": 2})
    a, b = train(logs, cfg), train(logs, cfg)
    for name, arr in a.arrays().items():
        np.testing.assert_array_equal(arr, b.arrays()[name])


def _model(d: int = 4, seed: int = 0) -> MetaModel:
    torch.manual_seed(seed)
    cfg = TrainConfig(d=d, hidden=5, init_prior_std=0.7, init_noise_var=0.3)
    model = MetaModel(3, 5, d, cfg).double()
    with torch.no_grad():
        model.l_offdiag.normal_(0.0, 0.3)
        model.mu0.normal_(0.0, 0.5)
    return model


def test_marginal_objective_equals_dense_gaussian_likelihood() -> None:
    """Woodbury / determinant-lemma form == log N(y; Phi mu0, Phi Sigma0 Phi^T + s I) with n x n matrices."""
    model = _model()
    rng = np.random.default_rng(0)
    phi = model.phi(torch.as_tensor(rng.normal(size=(2, 9, 3))))
    y = torch.as_tensor(rng.normal(size=(2, 9)))
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False  # padding rows are ignored
    with torch.no_grad():
        total, count = marginal_nll(model, phi, y, valid)
        L = model.chol_prior()
        sigma0, s, mu0 = L @ L.T, model.noise_var(), model.mu0
        expected = 0.0
        for b, n in ((0, 9), (1, 6)):
            F = phi[b, :n]
            cov = F @ sigma0 @ F.T + s * torch.eye(n, dtype=F.dtype)
            dist = torch.distributions.MultivariateNormal(F @ mu0, covariance_matrix=cov)
            expected -= float(dist.log_prob(y[b, :n]))
    assert float(count) == 15
    assert float(total) == pytest.approx(expected, rel=1e-10)


def test_predictive_objective_equals_explicit_posterior_predictive() -> None:
    model = _model(seed=1)
    rng = np.random.default_rng(1)
    phi = model.phi(torch.as_tensor(rng.normal(size=(1, 8, 3))))
    y = torch.as_tensor(rng.normal(size=(1, 8)))
    ctx = torch.zeros(1, 8, dtype=torch.bool)
    ctx[0, :5] = True
    with torch.no_grad():
        total, count = predictive_nll(model, phi, y, ctx, ~ctx)
        L = model.chol_prior()
        sigma0, s, mu0 = L @ L.T, model.noise_var(), model.mu0
        F, yy = phi[0], y[0]
        P = torch.linalg.inv(torch.linalg.inv(sigma0) + F[:5].T @ F[:5] / s)
        m = P @ (torch.linalg.solve(sigma0, mu0) + F[:5].T @ yy[:5] / s)
        expected = 0.0
        for i in range(5, 8):
            var = s + F[i] @ P @ F[i]
            expected -= float(torch.distributions.Normal(F[i] @ m, var.sqrt()).log_prob(yy[i]))
    assert float(count) == 3
    assert float(total) == pytest.approx(expected, rel=1e-9)


def test_marginal_objective_trains_too(tmp_path: Path) -> None:
    logs = write_hand_made_logs(tmp_path / "logs.npz")
    art = train(logs, TrainConfig(seed=1, objective="marginal", **TINY))
    assert art.meta.metrics["heldout_nll"] < art.meta.metrics["heldout_nll_initial"] - 0.02


def test_bad_inputs_raise_training_error(tmp_path: Path) -> None:
    logs = write_hand_made_logs(tmp_path / "logs.npz", n_segments=1, n_per=30)
    with pytest.raises(TrainingError, match="two segments"):
        train(logs, TrainConfig(**TINY))
    logs = write_hand_made_logs(tmp_path / "logs2.npz", n_segments=3, n_per=30)
    with pytest.raises(TrainingError, match="click"):
        train(logs, TrainConfig(reward="mix", value_weight=0.1, **TINY))


def test_prior_scale_calibration_is_folded_into_the_prior(tmp_path: Path) -> None:
    logs = write_hand_made_logs(tmp_path / "logs.npz", n_segments=10, n_per=80)
    base = {**TINY, "epochs": 2, "calibrate_max_events": 80}
    plain = train(logs, TrainConfig(seed=2, calibrate_prior_scales=(), **base))
    scaled = train(logs, TrainConfig(seed=2, calibrate_prior_scales=(0.25,), **base))
    assert "prior_scale" not in plain.meta.metrics
    assert scaled.meta.metrics["prior_scale"] == 0.25
    np.testing.assert_allclose(scaled.prior_cov, 0.25 * plain.prior_cov, rtol=1e-12)
    np.testing.assert_array_equal(scaled.w1, plain.w1)
    both = train(logs, TrainConfig(seed=2, calibrate_prior_scales=(1.0, 0.25), **base))
    scores = {c: both.meta.metrics[f"replay_reward_prior_scale_{c:g}"] for c in (1.0, 0.25)}
    best = max(scores.values())
    se = both.meta.metrics["replay_reward_se"]
    assert se > 0
    # the widest prior whose replayed reward is within one standard error of the best
    assert both.meta.metrics["prior_scale"] == max(c for c, v in scores.items() if v >= best - se)
    rewards = np.load(logs)["reward"]
    assert all(rewards.min() <= v <= rewards.max() for v in scores.values())
