"""Baselines of the adaptation benchmark, and the closed loop: meta beats scratch_raw on a fixed seed."""

from __future__ import annotations

import numpy as np
import pytest

from metacart.bench.adapt import play
from policy.adapter import Adapter
from policy.baselines import OraclePolicy, RandomPolicy, RawLinearTS, pooled, scratch_phi
from policy.simulator.datasets import simulate_logs
from policy.simulator.market import Market, MarketConfig
from policy.train import TrainConfig, train
from tests.unit.policy.test_artifact import make_artifact

DX, DA, K = 3, 2, 4


def test_random_policy_is_uniform_over_valid_candidates() -> None:
    rng = np.random.default_rng(0)
    policy = RandomPolicy(seed=1)
    k_valid = rng.integers(1, K + 1, 4000)
    dec = policy.decide_many(np.zeros(4000, dtype=np.int64), rng.normal(size=(4000, DX)),
                             rng.normal(size=(4000, K, DA)), k_valid=k_valid)
    assert np.all(dec.choices < k_valid)
    np.testing.assert_allclose(dec.propensities.sum(axis=1), 1.0)
    full = k_valid == K
    counts = np.bincount(dec.choices[full], minlength=K) / full.sum()
    np.testing.assert_allclose(counts, 1.0 / K, atol=0.04)


def test_oracle_picks_the_best_expected_reward() -> None:
    market = Market(MarketConfig(seed=3, n_markets=2, n_cohorts=3, n_ads=40))
    segs = np.arange(6, dtype=np.int64)
    req = market.sample_requests(segs, np.random.default_rng(0))
    dec = OraclePolicy(market).decide_many(segs, req.context, req.candidates)
    np.testing.assert_array_equal(dec.choices, market.oracle_choice(req))
    assert np.all(market.regret(req, dec.choices) == 0.0)


def test_raw_ts_features_and_posterior() -> None:
    rng = np.random.default_rng(1)
    u_mean, u_sd = rng.normal(size=DX + DA), rng.uniform(0.5, 2.0, DX + DA)
    policy = RawLinearTS(u_mean, u_sd, noise_var=0.5, prior_var=2.0, seed=0)
    ctx, cand = rng.normal(size=(5, DX)), rng.normal(size=(5, K, DA))
    dec = policy.decide_many(np.arange(5), ctx, cand)
    chosen = cand[np.arange(5), dec.choices]
    expected = np.concatenate([(np.concatenate([ctx, chosen], 1) - u_mean) / u_sd, np.ones((5, 1))], 1)
    np.testing.assert_allclose(dec.phis_chosen, expected)
    policy.learn_many(np.zeros(5, dtype=np.int64), dec.phis_chosen, np.arange(5.0))
    P, m, n = policy.posterior(0)
    prec = np.eye(DX + DA + 1) / 2.0 + expected.T @ expected / 0.5
    np.testing.assert_allclose(P, np.linalg.inv(prec), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(m, np.linalg.solve(prec, expected.T @ np.arange(5.0) / 0.5), rtol=1e-8)


def test_scratch_phi_has_vague_prior_and_pooled_shares_one_posterior() -> None:
    art = make_artifact(seed=0, dx=DX, da=DA, hidden=5, d=4)
    sp = scratch_phi(art, prior_var=3.0)
    P, m, _ = sp.posterior("any")
    np.testing.assert_array_equal(P, 3.0 * np.eye(4))
    np.testing.assert_array_equal(m, np.zeros(4))
    pool = pooled(art)
    pool.learn_many(["a", "b"], np.ones((2, 4)), np.array([1.0, 0.0]))
    assert pool.posterior("c")[2] == 2  # every segment sees the same, shared posterior
    meta = Adapter(art)
    meta.learn_many(["a", "b"], np.ones((2, 4)), np.array([1.0, 0.0]))
    assert meta.posterior("c")[2] == 0


@pytest.mark.slow
def test_meta_beats_scratch_raw_on_held_out_segments() -> None:
    """Closed loop on the simulator, fixed seed: meta-learned prior vs per-segment TS on raw features."""
    market = Market(MarketConfig(seed=0))
    logs = simulate_logs(market, market.train_segments, 400, seed=1)
    art = train(logs, TrainConfig(seed=0, epochs=12, steps_per_epoch=25, threads=1,
                                  calibrate_max_events=400, calibrate_segments=40))
    segs = market.heldout_segments[:16].astype(np.int64)
    req = market.sample_requests(np.repeat(market.train_segments, 10), np.random.default_rng(9))
    u = np.concatenate([np.repeat(req.context, req.candidates.shape[1], 0),
                        req.candidates.reshape(-1, req.candidates.shape[2])], 1)
    raw = RawLinearTS(u.mean(0), u.std(0), art.noise_var, 1.0, eps=0.01, seed=5)
    meta = Adapter(art, eps=0.01, seed=5)
    regret_meta = play(meta, market, segs, 300, seed=0)["regret"].sum(axis=1).mean()
    regret_raw = play(raw, market, segs, 300, seed=0)["regret"].sum(axis=1).mean()
    print(f"meta {regret_meta:.2f} scratch_raw {regret_raw:.2f}")
    assert regret_meta < 0.9 * regret_raw, (regret_meta, regret_raw)
