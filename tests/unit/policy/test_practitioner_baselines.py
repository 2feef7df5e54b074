"""The practitioner's baselines: exact propensities, what each one learns, and one contract for all."""

from __future__ import annotations

import numpy as np
import pytest

from policy.baselines import (
    EpsGreedyLogistic,
    Frozen,
    InteractionFeatures,
    InteractionLinearTS,
    MostPopular,
    MostViewed,
    _greedy_propensities,
    fit_pooled_linear,
)

DX, DA, K = 3, 2, 6


def _feats() -> InteractionFeatures:
    return InteractionFeatures(np.zeros(DX), np.ones(DX), np.zeros(DA), np.ones(DA))


def _batch(rng: np.random.Generator, bsz: int):
    k_valid = rng.integers(1, K + 1, bsz)
    valid = np.arange(K)[None, :] < k_valid[:, None]
    cand = np.where(valid[:, :, None], rng.normal(size=(bsz, K, DA)), 0.0)
    items = np.where(valid, rng.integers(0, 50, (bsz, K)), -1)
    return rng.normal(size=(bsz, DX)), cand, items, k_valid, valid


def test_greedy_propensities_are_exact_with_ties_and_exploration() -> None:
    rng = np.random.default_rng(0)
    scores = np.tile(np.array([[1.0, 3.0, 3.0, 0.0, 3.0, 9.0]]), (60_000, 1))
    k_valid = np.full(60_000, 5)  # slot 5 (score 9) is padding: never chosen
    choices, props = _greedy_propensities(scores, k_valid, 0.2, rng)
    expected = np.array([0.04, 0.04 + 0.8 / 3, 0.04 + 0.8 / 3, 0.04, 0.04 + 0.8 / 3, 0.0])
    np.testing.assert_allclose(props[0], expected)
    freq = np.bincount(choices, minlength=K) / choices.size
    np.testing.assert_allclose(freq, expected, atol=0.01)


def test_interaction_features_layout() -> None:
    f = InteractionFeatures(np.array([1.0, 0.0, 0.0]), np.array([2.0, 1.0, 1.0]), np.zeros(DA), np.ones(DA))
    x, a = np.array([[3.0, 1.0, -1.0]]), np.array([[[2.0, 5.0]]])
    out = f(x, a)[0, 0]
    zx = np.array([1.0, 1.0, -1.0])
    np.testing.assert_allclose(out, np.concatenate([zx, a[0, 0], np.outer(zx, a[0, 0]).ravel(), [1.0]]))
    assert f.d == out.shape[0] == DX + DA + DX * DA + 1


def test_pooled_fit_is_the_bayesian_linear_posterior_and_recovers_the_truth() -> None:
    rng = np.random.default_rng(1)
    feats = _feats()
    n = 20_000
    x, a = rng.normal(size=(n, DX)), rng.normal(size=(n, DA))
    f = feats(x, a[:, None, :])[:, 0, :]
    w_true = rng.normal(size=feats.d) * 0.3
    y = f @ w_true + rng.normal(0.0, 0.5, n)
    mean, cov, noise = fit_pooled_linear(feats, x, a, y, prior_var=2.0, chunk=3000)
    assert abs(noise - 0.25) < 0.02
    prec = np.eye(feats.d) / 2.0 + f.T @ f / noise
    np.testing.assert_allclose(mean, np.linalg.solve(prec, f.T @ y / noise), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(cov, np.linalg.inv(prec), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(mean, w_true, atol=0.03)


def test_most_popular_follows_clicks_per_segment_and_needs_items() -> None:
    policy = MostPopular(eps=0.1, seed=0)
    x, cand = np.zeros((2, DX)), np.zeros((2, 3, DA))
    items = np.array([[7, 8, 9], [7, 8, 9]])
    policy.learn_many(np.array([0, 0]), np.zeros((2, 1)), np.array([1.0, 1.0]), items=np.array([8, 8]))
    policy.learn_many(np.array([1]), np.zeros((1, 1)), np.array([1.0]), items=np.array([9]))
    dec = policy.decide_many(np.array([0, 1]), x, cand, items=items)
    np.testing.assert_allclose(dec.propensities, [[0.1 / 3, 0.9 + 0.1 / 3, 0.1 / 3], [0.1 / 3, 0.1 / 3, 0.9 + 0.1 / 3]])
    np.testing.assert_array_equal(dec.items_chosen, items[[0, 1], dec.choices])
    with pytest.raises(ValueError, match="items"):
        policy.decide_many(np.array([0]), x[:1], cand[:1])
    with pytest.raises(ValueError, match="eps"):
        MostPopular(eps=0.0)


def test_most_viewed_shows_the_most_viewed_candidate() -> None:
    cand = np.zeros((2, 4, DA))
    cand[0, :, 1] = [0.0, 2.0, 1.0, 0.0]
    cand[1, :, 1] = [1.0, 1.0, 0.0, 5.0]  # slot 3 is padding
    dec = MostViewed(view_column=1, seed=0).decide_many([0, 1], np.zeros((2, DX)), cand, k_valid=np.array([4, 3]))
    np.testing.assert_allclose(dec.propensities, [[0, 1, 0, 0], [0.5, 0.5, 0, 0]])
    assert dec.choices[0] == 1 and dec.choices[1] in (0, 1)


def test_egreedy_logistic_learns_which_candidate_clicks_per_segment() -> None:
    rng = np.random.default_rng(2)
    feats = _feats()
    policy = EpsGreedyLogistic(feats, base_rate=0.1, eps=0.05, lr=0.1, seed=0)
    arms = np.array([[[1.0, 0.0], [-1.0, 0.0]]])
    best = {0: 0, 1: 1}  # segment 0 clicks arm 0, segment 1 clicks arm 1
    for _ in range(1500):
        seg = rng.integers(0, 2, 1)
        x = rng.normal(size=(1, DX))
        dec = policy.decide_many(seg, x, arms)
        p = 0.3 if dec.choices[0] == best[int(seg[0])] else 0.02
        policy.learn_many(seg, dec.phis_chosen, np.array([float(rng.random() < p)]))
    dec = policy.decide_many(np.array([0, 1]), np.zeros((2, DX)), np.repeat(arms, 2, axis=0))
    np.testing.assert_allclose(dec.propensities, [[0.975, 0.025], [0.025, 0.975]])


def test_frozen_never_learns_and_pooled_shares_one_posterior() -> None:
    feats = _feats()
    pooled = InteractionLinearTS(feats, np.zeros(feats.d), np.eye(feats.d), 0.1, shared=True)
    frozen = Frozen(InteractionLinearTS(feats, np.zeros(feats.d), np.eye(feats.d), 0.1), "frozen")
    phis = np.ones((3, feats.d))
    pooled.learn_many([0, 1, 2], phis, np.ones(3))
    frozen.learn_many([0, 1, 2], phis, np.ones(3))
    assert pooled.posterior(5)[2] == 3
    assert frozen.policy.posterior(0)[2] == 0
    dec = frozen.decide_many([0], np.zeros((1, DX)), np.zeros((1, 2, DA)))
    assert dec.version == "frozen"


POLICIES = {
    "most_popular": lambda: MostPopular(eps=0.05, seed=1),
    "most_viewed": lambda: MostViewed(view_column=0, seed=1),
    "most_viewed_eps": lambda: MostViewed(view_column=0, eps=0.1, seed=1),
    "egreedy_logistic": lambda: EpsGreedyLogistic(_feats(), 0.05, seed=1),
    "linear_ts": lambda: InteractionLinearTS(_feats(), np.zeros(_feats().d), 0.1 * np.eye(_feats().d), 0.05, seed=1),
    "pooled_frozen": lambda: Frozen(InteractionLinearTS(_feats(), np.zeros(_feats().d), np.eye(_feats().d), 0.05,
                                                        shared=True, seed=1)),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_baseline_keeps_the_policy_contract(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    policy = POLICIES[name]()
    for _ in range(30):
        x, cand, items, k_valid, valid = _batch(rng, 16)
        segs = rng.integers(0, 4, 16)
        dec = policy.decide_many(segs, x, cand, k_valid=k_valid, items=items)
        rows = np.arange(16)
        assert np.all(dec.choices < k_valid)
        chosen = dec.propensities[rows, dec.choices]
        assert np.all((chosen > 0) & (chosen <= 1))
        np.testing.assert_allclose(dec.propensities.sum(axis=1), 1.0)
        assert np.all(dec.propensities[~valid] == 0)
        np.testing.assert_array_equal(dec.items_chosen, items[rows, dec.choices])
        policy.learn_many(segs, dec.phis_chosen, (rng.random(16) < 0.2).astype(float), items=dec.items_chosen)
