"""World families: determinism by seed, calibration within stated ranges, oracle beats random, uniform logs."""

from __future__ import annotations

import numpy as np
import pytest

from policy.simulator.logistic_worlds import LogisticConfig, LogisticWorld
from policy.simulator.logistic_worlds import calibration as logistic_calibration
from policy.simulator.market import MarketConfig
from policy.simulator.recsys import RecsysConfig, RecsysWorld
from policy.simulator.recsys import calibration as recsys_calibration
from policy.simulator.world import MarketWorld, respond, uniform_logs

SMALL = {
    "market": lambda seed: MarketWorld(MarketConfig(seed=seed, n_markets=2, n_cohorts=5, n_ads=40)),
    "recsys": lambda seed: RecsysWorld(RecsysConfig(seed=seed, n_tasks=30, n_heldout=5, users_per_task=50)),
    "logistic": lambda seed: LogisticWorld(LogisticConfig(seed=seed, n_tasks=30, n_heldout=5)),
}


def _requests(world, seed: int, n_per_task: int = 20):
    tasks = np.repeat(np.arange(len(world.segment_names)), n_per_task)
    return world.sample_requests(tasks, np.random.default_rng(seed), np.arange(tasks.size))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_world_other_seed_other_world(name: str) -> None:
    a, b, c = SMALL[name](3), SMALL[name](3), SMALL[name](4)
    ra, rb, rc = _requests(a, 7), _requests(b, 7), _requests(c, 7)
    for field in ("context", "candidates", "items", "k_valid"):
        np.testing.assert_array_equal(getattr(ra, field), getattr(rb, field))
    np.testing.assert_array_equal(a.click_prob(ra), b.click_prob(rb))
    np.testing.assert_array_equal(a.train_tasks, b.train_tasks)
    assert not np.array_equal(a.click_prob(ra), c.click_prob(rc))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_requests_are_well_formed(name: str) -> None:
    world = SMALL[name](0)
    req = _requests(world, 1)
    valid = req.valid_mask()
    p = world.click_prob(req)
    assert set(world.train_tasks.tolist()).isdisjoint(world.heldout_tasks.tolist())
    assert world.train_tasks.size + world.heldout_tasks.size == len(world.segment_names)
    assert np.all((req.k_valid >= 1) & (req.k_valid <= req.candidates.shape[1]))
    assert np.all(req.items[~valid] == -1) and np.all(req.items[valid] >= 0)
    assert np.all(req.candidates[~valid] == 0.0) and np.all(p[~valid] == 0.0)
    assert np.all((p[valid] > 0.0) & (p[valid] < 1.0))
    for row in range(0, len(req), 37):  # a candidate's identity is unique within a request
        ids = req.items[row][valid[row]]
        assert np.unique(ids).size == ids.size


def test_recsys_has_10_to_20_products_views_and_misleading_products() -> None:
    world = RecsysWorld(RecsysConfig(n_tasks=60, n_heldout=10, users_per_task=100))
    assert world.n_products.min() >= 10 and world.n_products.max() <= 20
    req = _requests(world, 2)
    n_views = np.expm1(req.context[:, 0]).round().astype(np.int64)
    np.testing.assert_array_equal(req.views.sum(axis=1), n_views)
    np.testing.assert_allclose(np.log1p(req.views), req.candidates[:, :, world.views_column])
    share = world.misleading.sum() / world.n_products.sum()
    assert 0.15 < share < 0.35


def test_recsys_interests_drift_in_rounds_the_same_for_everyone() -> None:
    world = RecsysWorld(RecsysConfig(n_tasks=10, n_heldout=2, users_per_task=20))
    tasks, users = np.zeros(20, dtype=np.int64), np.arange(20)
    z0 = world.interests(tasks, users, np.zeros(20, dtype=np.int64))
    np.testing.assert_array_equal(z0, world.interests(tasks, users, np.zeros(20, dtype=np.int64)))
    half_period = int(np.pi / world._omega[0])
    moved = np.linalg.norm(world.interests(tasks, users, np.full(20, half_period)) - z0, axis=1)
    assert moved.mean() > 0.5  # drift amplitude 0.5 per coordinate, L = 4


def test_recsys_calibration_within_stated_ranges() -> None:
    cal = recsys_calibration(RecsysWorld(), per_task=100)
    assert 0.01 <= cal["random_ctr"] <= 0.03, cal
    assert cal["oracle_ctr"] > 3.0 * cal["random_ctr"], cal
    assert cal["random_ctr"] < cal["most_viewed_ctr"] < cal["oracle_ctr"], cal


def test_logistic_calibration_within_stated_ranges() -> None:
    cal = logistic_calibration(LogisticWorld(), per_task=100)
    assert 0.03 <= cal["random_ctr"] <= 0.08, cal
    assert cal["oracle_ctr"] > 3.0 * cal["random_ctr"], cal


@pytest.mark.parametrize("name", sorted(SMALL))
def test_oracle_clicks_beat_random_clicks(name: str) -> None:
    world = SMALL[name](0)
    req = _requests(world, 3, n_per_task=200)
    p = world.click_prob(req)
    oracle = np.argmax(p, axis=1)
    rnd = np.floor(np.random.default_rng(4).random(len(req)) * req.k_valid).astype(np.int64)
    clicks_oracle = respond(world, req, oracle, np.random.default_rng(5)).mean()
    clicks_random = respond(world, req, rnd, np.random.default_rng(5)).mean()
    assert clicks_oracle > 2.0 * clicks_random, (clicks_oracle, clicks_random)


def test_respond_rejects_padding_choices() -> None:
    world = SMALL["recsys"](0)
    req = _requests(world, 1)
    with pytest.raises(ValueError, match="valid candidates"):
        respond(world, req, req.k_valid, np.random.default_rng(0))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_uniform_logs_have_identities_padding_and_exact_propensities(name: str) -> None:
    world = SMALL[name](1)
    logs = uniform_logs(world, world.train_tasks, 30, seed=2)
    again = uniform_logs(world, world.train_tasks, 30, seed=2)
    assert len(logs) == 30 * world.train_tasks.size
    np.testing.assert_array_equal(logs.action, again.action)
    np.testing.assert_array_equal(logs.reward, again.reward)
    assert logs.candidate_ids is not None and logs.k_valid is not None
    np.testing.assert_allclose(logs.propensity, 1.0 / logs.k_valid)
    assert np.all(logs.action < logs.k_valid)
    assert np.all(logs.candidate_ids[np.arange(len(logs)), logs.action] >= 0)
    assert set(np.unique(logs.segment).tolist()) == set(world.train_tasks.tolist())
    assert 0.0 < logs.reward.mean() < 0.3
