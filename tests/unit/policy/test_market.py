"""The simulated market: determinism, agreement of sampled outcomes with the true parameters, oracle,
segment heterogeneity, drift."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.simulator import Market, MarketConfig, Outcomes, Requests

Z = 5.0  # width of the confidence bounds, in standard errors (false alarm ~1e-6 per check)


@pytest.fixture(scope="module")
def market() -> Market:
    return Market()


def _stream(market: Market, seed: int) -> tuple[Requests, Outcomes]:
    rng = np.random.default_rng(seed)
    segments = rng.integers(0, market.n_segments, 500)
    requests = market.sample_requests(segments, rng)
    outcomes = market.respond(requests, rng.integers(0, market.config.k_candidates, 500), rng)
    return requests, outcomes


def _assert_same(a, b) -> None:
    for f in dataclasses.fields(a):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name))


# ---------------------------------------------------------------- structure


def test_segments_names_and_split(market: Market) -> None:
    assert market.n_segments == 200
    assert market.segment_names[0] == "m00-c00"
    assert market.segment_names[3 * 25 + 11] == "m03-c11"
    assert market.segment_index("m03-c11") == 86
    assert len(set(market.segment_names)) == 200
    train, held = market.train_segments, market.heldout_segments
    assert train.dtype == np.int64 and held.dtype == np.int64
    assert len(held) == 50 and len(train) == 150
    assert not set(train.tolist()) & set(held.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(200))
    # held-out segments come from more than one market and cohort
    assert len(np.unique(market.segment_market[held])) > 1
    assert len(np.unique(market.segment_cohort[held])) > 1


def test_split_is_fixed_by_seed() -> None:
    a, b, c = Market(MarketConfig(seed=3)), Market(MarketConfig(seed=3)), Market(MarketConfig(seed=4))
    np.testing.assert_array_equal(a.heldout_segments, b.heldout_segments)
    assert not np.array_equal(a.heldout_segments, c.heldout_segments)


def test_request_shapes_and_catalogue(market: Market) -> None:
    rng = np.random.default_rng(0)
    seg = np.array([0, 5, 199, 199, 60])
    r = market.sample_requests(seg, rng)
    assert len(r) == 5
    assert r.segment.dtype == np.int64 and r.ad_ids.dtype == np.int64 and r.user_ids.dtype == np.int64
    assert r.context.shape == (5, 8) and r.context.dtype == np.float64
    assert r.candidates.shape == (5, 10, 6) and r.candidates.dtype == np.float64
    np.testing.assert_array_equal(r.segment, seg)
    # candidates are distinct ads of the segment's own market
    for i in range(5):
        assert len(np.unique(r.ad_ids[i])) == 10
    assert np.all(r.ad_ids // 300 == market.segment_market[seg][:, None])
    np.testing.assert_array_equal(r.user_ids // 2000, seg)
    # an ad id always carries the same features
    big = market.sample_requests(np.zeros(2000, dtype=np.int64), rng)
    ids = big.ad_ids.ravel()
    feats = big.candidates.reshape(-1, 6)
    first = {}
    for ad, row in zip(ids.tolist(), feats):
        first.setdefault(ad, row)
        np.testing.assert_array_equal(first[ad], row)
    assert len(first) > 250  # nearly the whole 300-ad catalogue shows up


def test_candidate_sampling_is_uniform(market: Market) -> None:
    r = market.sample_requests(np.zeros(30_000, dtype=np.int64), np.random.default_rng(1))
    counts = np.bincount(r.ad_ids.ravel(), minlength=300)
    expected = 30_000 * 10 / 300
    assert np.all(np.abs(counts - expected) < Z * np.sqrt(expected))
    # every position is equally likely to hold any ad (no ordering by id)
    assert abs(r.ad_ids[:, 0].mean() - r.ad_ids[:, -1].mean()) < Z * 300 / np.sqrt(12 * 30_000) * 1.5


def test_distractor_dimensions_do_not_matter() -> None:
    m = Market(MarketConfig(dx=11, da=9, n_markets=2, n_cohorts=3))
    rng = np.random.default_rng(0)
    r = m.sample_requests(np.arange(6).repeat(20), rng)
    assert r.context.shape == (120, 11) and r.candidates.shape == (120, 10, 9)
    x, a = r.context.copy(), r.candidates.copy()
    x[:, 8:] = rng.normal(size=(120, 3))
    a[:, :, 6:] = rng.normal(size=(120, 10, 3))
    before = m.click_prob(r.segment, r.context, r.candidates)
    np.testing.assert_array_equal(before, m.click_prob(r.segment, x, a))


# ---------------------------------------------------------------- determinism


def test_same_seed_same_stream(market: Market) -> None:
    r1, o1 = _stream(market, 42)
    r2, o2 = _stream(Market(), 42)
    _assert_same(r1, r2)
    _assert_same(o1, o2)


def test_different_seeds_differ(market: Market) -> None:
    r1, o1 = _stream(market, 1)
    r2, o2 = _stream(market, 2)
    assert not np.array_equal(r1.context, r2.context)
    assert not np.array_equal(r1.ad_ids, r2.ad_ids)
    assert not np.array_equal(o1.click, o2.click)


def test_different_world_seeds_differ(market: Market) -> None:
    other = Market(MarketConfig(seed=1))
    r = market.sample_requests(np.arange(200), np.random.default_rng(0))
    p0 = market.click_prob(r.segment, r.context, r.candidates)
    p1 = other.click_prob(r.segment, r.context, r.candidates)
    assert not np.allclose(p0, p1)


# ---------------------------------------------------------------- statistics vs true parameters


@pytest.mark.parametrize("segment", [0, 77, 163])
def test_outcome_statistics_match_true_parameters(market: Market, segment: int) -> None:
    n = 40_000
    rng = np.random.default_rng(segment)
    r = market.sample_requests(np.full(n, segment, dtype=np.int64), rng)
    action = np.full(n, 3, dtype=np.int64)  # a fixed action
    o = market.respond(r, action, rng)
    shown = r.candidates[:, 3:4]
    p_click = market.click_prob(r.segment, r.context, shown)[:, 0]
    p_buy = market.purchase_prob(r.segment, r.context, shown)[:, 0]
    mean_value = market.expected_value(r.segment, r.context, shown)[:, 0]
    cfg = market.config

    # clicks: sum of independent Bernoulli(p_i)
    assert abs(o.click.sum() - p_click.sum()) < Z * np.sqrt(np.sum(p_click * (1 - p_click)))
    # purchases among clicks
    pb = p_buy[o.click]
    assert abs(o.purchase.sum() - pb.sum()) < Z * np.sqrt(np.sum(pb * (1 - pb)) + 1.0)
    assert not np.any(o.purchase & ~o.click)
    # delays: exponential, sd = mean
    n_click, n_buy = int(o.click.sum()), int(o.purchase.sum())
    assert n_click > 500 and n_buy > 20
    cd = o.click_delay_s[o.click]
    assert abs(cd.mean() - cfg.click_delay_mean_s) < Z * cfg.click_delay_mean_s / np.sqrt(n_click)
    pd = o.purchase_delay_s[o.purchase]
    assert abs(pd.mean() - cfg.purchase_delay_mean_s) < Z * cfg.purchase_delay_mean_s / np.sqrt(n_buy)
    assert np.all(cd > 0) and np.all(pd > 0)
    # value / E[value] is lognormal with mean 1, sd sqrt(exp(0.25) - 1)
    ratio = o.value[o.purchase] / mean_value[o.purchase]
    assert abs(ratio.mean() - 1.0) < Z * np.sqrt(np.exp(0.25) - 1) / np.sqrt(n_buy)
    # nothing where nothing happened
    assert np.all(o.click_delay_s[~o.click] == 0)
    assert np.all(o.purchase_delay_s[~o.purchase] == 0)
    assert np.all(o.value[~o.purchase] == 0)


def test_calibration_matches_documented_figures(market: Market) -> None:
    r = market.sample_requests(np.repeat(np.arange(200), 200), np.random.default_rng(5))
    p = market.click_prob(r.segment, r.context, r.candidates)
    random_ctr, best_ctr = p.mean(), p.max(axis=1).mean()
    assert 0.03 <= random_ctr <= 0.06
    assert 2.0 <= best_ctr / random_ctr <= 4.0
    per_segment = p.mean(axis=1).reshape(200, 200).mean(axis=1)
    assert per_segment.max() / per_segment.min() > 1.5  # segments differ in level too
    pp = market.purchase_prob(r.segment, r.context, r.candidates)
    assert 0.03 <= (pp * p).sum() / p.sum() <= 0.15


def test_probabilities_are_valid_and_reward_combines_them(market: Market) -> None:
    r = market.sample_requests(np.arange(200), np.random.default_rng(3))
    args = (r.segment, r.context, r.candidates)
    pc, pb, ev = market.click_prob(*args), market.purchase_prob(*args), market.expected_value(*args)
    assert pc.shape == pb.shape == ev.shape == (200, 10)
    assert np.all((pc > 0) & (pc < 1)) and np.all((pb > 0) & (pb < 1)) and np.all(ev > 0)
    np.testing.assert_array_equal(market.expected_reward(*args), pc)
    np.testing.assert_allclose(market.expected_reward(*args, value_weight=0.01), pc + 0.01 * pc * pb * ev)


# ---------------------------------------------------------------- oracle and heterogeneity


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), value_weight=st.sampled_from([0.0, 0.005, 0.05]))
def test_oracle_beats_every_policy(market: Market, seed: int, value_weight: float) -> None:
    rng = np.random.default_rng(seed)
    r = market.sample_requests(rng.integers(0, 200, 64), rng)
    best = market.oracle_choice(r, value_weight)
    expected = market.expected_reward(r.segment, r.context, r.candidates, value_weight)
    n = np.arange(64)
    for k in range(10):  # every constant policy
        assert np.all(expected[n, best] >= expected[:, k])
    random_choice = rng.integers(0, 10, 64)
    assert np.all(market.regret(r, random_choice, value_weight) >= 0)
    np.testing.assert_array_equal(market.regret(r, best, value_weight), 0.0)


def test_oracle_gets_more_clicks_than_random(market: Market) -> None:
    rng = np.random.default_rng(9)
    r = market.sample_requests(rng.integers(0, 200, 20_000), rng)
    oracle = market.respond(r, market.oracle_choice(r), np.random.default_rng(1)).click.mean()
    random = market.respond(r, rng.integers(0, 10, 20_000), np.random.default_rng(1)).click.mean()
    assert oracle > 2.0 * random


def test_best_ads_differ_across_segments(market: Market) -> None:
    rng = np.random.default_rng(4)
    r = market.sample_requests(np.zeros(300, dtype=np.int64), rng)
    # score the same requests as if they came from each segment
    best = np.stack(
        [market.click_prob(np.full(300, s), r.context, r.candidates).argmax(axis=1) for s in range(200)]
    )
    agree = (best[:, None, :] == best[None, :, :]).mean(axis=2)[np.triu_indices(200, 1)]
    assert agree.mean() < 0.75  # a random pair of segments often disagrees on the best ad
    distinct = np.array([len(np.unique(best[:, i])) for i in range(300)])
    assert np.mean(distinct >= 3) > 0.5
    # and a policy that uses the average theta loses to the per-segment oracle
    pooled = Market()
    avg = market.theta[market.train_segments].mean(axis=0)
    for s in range(200):
        pooled.set_theta(s, avg)
    reqs = market.sample_requests(np.repeat(np.arange(200), 50), rng)
    p = market.click_prob(reqs.segment, reqs.context, reqs.candidates)
    n = np.arange(len(reqs))
    pooled_choice = pooled.oracle_choice(reqs)
    assert p.max(axis=1).mean() > 1.1 * p[n, pooled_choice].mean()


# ---------------------------------------------------------------- drift


def test_no_drift_by_default(market: Market) -> None:
    m = Market()
    r = m.sample_requests(np.arange(200), np.random.default_rng(0))
    before = m.click_prob(r.segment, r.context, r.candidates)
    m.advance(86_400.0)
    assert m.time_s == 86_400.0
    np.testing.assert_array_equal(before, m.click_prob(r.segment, r.context, r.candidates))


def test_drift_moves_theta_deterministically() -> None:
    cfg = MarketConfig(drift_rate=0.2)
    a, b = Market(cfg), Market(cfg)
    theta0 = a.theta
    for m in (a, b):
        for _ in range(10):
            m.advance(3600.0)
    np.testing.assert_array_equal(a.theta, b.theta)
    moved = a.theta - theta0
    # OU step over 10 h: sd = drift_rate * sqrt(tau/2 * (1 - exp(-2 * 10 / 24)))
    expected_sd = 0.2 * np.sqrt(12.0 * (1 - np.exp(-20.0 / 24.0)))
    assert abs(moved.std() - expected_sd) < 0.15 * expected_sd
    with pytest.raises(ValueError):
        a.advance(-1.0)


def test_shift_segment_changes_only_that_segment() -> None:
    m = Market()
    r = m.sample_requests(np.zeros(500, dtype=np.int64), np.random.default_rng(0))
    before = m.oracle_choice(r)
    other = dataclasses.replace(r, segment=np.full(500, 1, dtype=np.int64))
    before_other = m.oracle_choice(other)
    m.shift_segment(0, seed=123)
    assert np.mean(m.oracle_choice(r) != before) > 0.2
    np.testing.assert_array_equal(m.oracle_choice(other), before_other)


# ---------------------------------------------------------------- input checks


def test_bad_inputs_raise(market: Market) -> None:
    r = market.sample_requests(np.arange(3), np.random.default_rng(0))
    with pytest.raises(ValueError):
        market.respond(r, np.array([0, 1, 10]), np.random.default_rng(0))
    with pytest.raises(ValueError):
        market.respond(r, np.array([0.0, 1.0, 2.0]), np.random.default_rng(0))
    with pytest.raises(ValueError):
        market.sample_requests(np.array([200]), np.random.default_rng(0))
    with pytest.raises(ValueError):
        market.click_prob(r.segment, r.context[:, :5], r.candidates)
    with pytest.raises(ValueError):
        Market(MarketConfig(dx=4))
