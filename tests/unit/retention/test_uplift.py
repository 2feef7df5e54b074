"""The uplift head: its artifact MLP computes the documented features, the EM prior recovers a known one."""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from policy.adapter import Adapter
from policy.features import build_inputs
from policy.logs import LoggedData
from policy.retention.decide import candidates_for
from policy.retention.features import DX
from policy.retention.schema import DA, K, treatment_encoding
from policy.retention.uplift import (D_LINEAR, N_TREATED, EffectNet, UpliftFitConfig, dimension, em_prior,
                                     features_reference, fit_uplift_prior, network)


def effect_net(rng, hidden=5, baseline=True):
    base = (rng.normal(size=(DX, 7)), rng.normal(size=7), rng.normal(size=7), 2.0) if baseline else None
    return EffectNet(rng.normal(size=(N_TREATED, DX, hidden)), rng.normal(size=(N_TREATED, hidden)),
                     rng.normal(size=(N_TREATED, hidden)), rng.normal(size=N_TREATED), 0.3, base, 0.2)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_effects", [False, "effects", "effects+baseline", "all+shared"])
def test_artifact_network_equals_the_reference_features(seed, dtype, with_effects):
    rng = np.random.default_rng(seed)
    mean, sd = rng.normal(size=DX), rng.uniform(0.5, 3.0, DX)
    x = mean + sd * rng.normal(size=(40, DX)) * 3.0  # up to ~10 standard deviations out
    x[0] = mean  # edge: z = 0 exactly
    action = rng.integers(0, K, 40)
    eff = effect_net(rng, baseline=with_effects != "effects") if with_effects else None
    shared = None
    if with_effects == "all+shared":
        shared = {"w1": rng.normal(size=(DX + DA, 9)), "b1": rng.normal(size=9), "w2": rng.normal(size=(9, 4)),
                  "b2": rng.normal(size=4)}
    net = network(mean, sd, UpliftFitConfig(), eff, shared)
    u = build_inputs(x.astype(dtype), treatment_encoding()[action][:, None, :].astype(dtype))
    # artifacts store float64 weights; the inputs come in either dtype
    phi = kernels.phi_many(u, *(net[k] for k in ("w1", "b1", "w2", "b2")))
    ref = features_reference(x.astype(dtype).astype(np.float64), action, mean, sd, UpliftFitConfig(), eff, shared)
    assert phi.shape == ref.shape == (40, dimension(eff, shared))
    tol = 1e-5 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(phi, ref, atol=tol)


def test_uplift_of_none_is_zero_and_baseline_cancels():
    rng = np.random.default_rng(3)
    mean, sd = np.zeros(DX), np.ones(DX)
    x = rng.normal(size=(6, DX))
    eff = effect_net(rng)
    phis = np.stack([features_reference(x, np.full(6, a), mean, sd, effects=eff) for a in range(K)], axis=1)
    # the baseline block, the baseline feature and the bias are the same for every treatment; the effect
    # blocks are zero for none
    effect_cols = np.arange(DX, D_LINEAR - 1 + N_TREATED)
    shared = np.setdiff1d(np.arange(phis.shape[2]), effect_cols)
    np.testing.assert_array_equal(phis[:, :, shared], np.broadcast_to(phis[:, :1, shared], (6, K, shared.size)))
    np.testing.assert_array_equal(phis[:, 0, effect_cols], 0.0)
    assert np.all(phis[:, 1:, effect_cols].any(axis=2))
    w = rng.normal(size=dimension(eff))
    w_shift = w.copy()
    w_shift[shared] += 5.0
    up = phis @ w - (phis @ w)[:, :1]
    np.testing.assert_allclose(phis @ w_shift - (phis @ w_shift)[:, :1], up, atol=1e-12)


def test_em_prior_recovers_a_known_random_effects_model():
    rng = np.random.default_rng(4)
    d, n_seg, rows = 4, 400, 60
    mu0 = np.array([1.0, -2.0, 0.5, 0.0])
    var = np.array([0.5, 0.1, 0.0, 1.0])
    noise = 0.7
    phi, reward, seg = [], [], []
    for s in range(n_seg):
        w = mu0 + np.sqrt(var) * rng.normal(size=d)
        p = rng.normal(size=(rows, d))
        phi.append(p)
        reward.append(p @ w + np.sqrt(noise) * rng.normal(size=rows))
        seg.append(np.full(rows, s))
    fit = em_prior(np.concatenate(phi), np.concatenate(reward), np.concatenate(seg),
                   UpliftFitConfig(em_iterations=500, tol=1e-10))
    # standard errors with 400 segments: mean ~ sqrt(var / 400) <= 0.05; variance ~ var * sqrt(2 / 400) <= 0.07
    np.testing.assert_allclose(fit.prior_mean, mu0, atol=0.15)
    np.testing.assert_allclose(fit.prior_var, var, atol=0.2)
    assert fit.prior_var[2] < 0.02  # a coefficient that does not vary is shrunk towards the floor
    assert abs(fit.noise_var - noise) < 0.05


def synthetic_logs(rng, n_seg=12, rows=400, effect=3.0):
    """Randomised logs where coupon_5 (action 3) adds ``effect`` to users with x0 > 0, nothing otherwise."""
    n = n_seg * rows
    x = rng.normal(size=(n, DX))
    action = rng.integers(0, K, n)
    base = 10.0 + 2.0 * x[:, 1]
    reward = base + effect * (action == 3) * (x[:, 0] > 0) + rng.normal(size=n)
    return LoggedData(segment=np.repeat(np.arange(n_seg), rows), segment_names=tuple(f"s{i}" for i in range(n_seg)),
                      context=x, candidates=np.broadcast_to(treatment_encoding(), (n, K, K + 1)).copy(),
                      action=action, reward=reward, propensity=np.full(n, 1.0 / K))


def test_fitted_head_ranks_the_treatment_where_it_works():
    rng = np.random.default_rng(5)
    logs = synthetic_logs(rng)
    art = fit_uplift_prior(logs)
    assert art.meta.kind == "retention" and art.d == D_LINEAR
    adapter = Adapter(art, eps=0.05, scale=0.0)
    x = rng.normal(size=(200, DX))
    dec = adapter.decide_many(["new"] * 200, x, candidates_for(200))
    uplift = dec.mean_scores - dec.mean_scores[:, :1]
    on = x[:, 0] > 0.5
    off = x[:, 0] < -0.5
    assert uplift[on, 3].mean() > 2.0
    assert abs(uplift[off, 3].mean()) < 1.0
    assert np.all(np.abs(uplift[:, 0]) == 0.0)
    assert np.all((dec.propensities > 0) & (dec.propensities <= 1))
    np.testing.assert_allclose(dec.propensities.sum(axis=1), 1.0)
