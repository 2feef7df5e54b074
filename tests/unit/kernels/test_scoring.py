import numpy as np
import pytest

from kernels import decide_many, thompson_one, ucb_one
from kernels import reference as ref

from ._data import features, posterior, segments, uniforms


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [1, 2, 10])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_thompson_one_matches_reference(seed, dtype, k, eps):
    rng = np.random.default_rng(seed)
    d, n_draws = 12, 64
    P, m = posterior(rng, d)
    phis = features(rng, (k, d), dtype)
    normals = rng.standard_normal((n_draws, k)).astype(dtype)
    for u in uniforms(rng, 8):
        choice, prop = thompson_one(phis, P, m, normals, u, eps, 0.7)
        want_choice, want_prop = ref.thompson_one(phis, P, m, normals, u, eps, 0.7)
        assert choice == want_choice
        assert isinstance(choice, int)
        np.testing.assert_allclose(prop, want_prop, rtol=1e-12, atol=1e-15)
        assert prop.sum() == pytest.approx(1.0, abs=1e-12)


def test_thompson_eps_one_is_uniform_and_eps_zero_follows_draw_zero():
    rng = np.random.default_rng(7)
    d, k = 6, 5
    P, m = posterior(rng, d)
    phis = features(rng, (k, d))
    normals = rng.standard_normal((32, k))
    for u1 in (0.0, 0.25, 0.999, 1.0):
        choice, prop = thompson_one(phis, P, m, normals, np.array([0.3, u1]), 1.0)
        assert choice == min(int(u1 * k), k - 1)
        np.testing.assert_allclose(prop, np.full(k, 1 / k))
    choice, prop = thompson_one(phis, P, m, normals, np.array([0.0, 0.9]), 0.0)
    cov = phis @ P @ phis.T
    draw0 = phis @ m + np.linalg.cholesky(cov + 1e-10 * np.trace(cov) / k * np.eye(k)) @ normals[0]
    assert choice == int(np.argmax(draw0))
    assert prop[choice] >= 1 / 32


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_thompson_identical_candidates(eps):
    rng = np.random.default_rng(11)
    d, k = 8, 4
    P, m = posterior(rng, d)
    phis = np.tile(features(rng, (1, d)), (k, 1))  # C has rank 1
    normals = rng.standard_normal((400, k))
    choice, prop = thompson_one(phis, P, m, normals, np.array([0.5, 0.5]), eps)
    want_choice, want_prop = ref.thompson_one(phis, P, m, normals, np.array([0.5, 0.5]), eps)
    assert choice == want_choice
    np.testing.assert_allclose(prop, want_prop, rtol=1e-12)
    assert np.all(np.isfinite(prop))
    # the jitter breaks ties between identical candidates at random: all of them get chosen
    assert np.all(prop > eps / k)
    assert prop.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_thompson_zero_covariance_is_greedy_on_the_mean(eps):
    rng = np.random.default_rng(12)
    d, k = 5, 6
    _, m = posterior(rng, d)
    phis = features(rng, (k, d))
    best = int(np.argmax(phis @ m))
    normals = rng.standard_normal((16, k))
    for P, scale in ((np.zeros((d, d)), 1.0), (posterior(rng, d)[0], 0.0)):
        choice, prop = thompson_one(phis, P, m, normals, np.array([0.9, 0.1]), eps, scale)
        assert choice == best
        want = np.full(k, eps / k)
        want[best] += 1 - eps
        np.testing.assert_allclose(prop, want)
        assert ref.thompson_one(phis, P, m, normals, np.array([0.9, 0.1]), eps, scale)[0] == best


def test_thompson_ties_go_to_the_lowest_index():
    d, k = 3, 4
    phis = np.zeros((k, d))
    choice, prop = thompson_one(phis, np.eye(d), np.ones(d), np.ones((5, k)), np.array([0.5, 0.5]), 0.0)
    assert choice == 0
    np.testing.assert_array_equal(prop, [1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 7])
@pytest.mark.parametrize("eps", [0.0, 0.05, 1.0])
def test_ucb_one_matches_reference(seed, dtype, k, eps):
    rng = np.random.default_rng(seed)
    d = 10
    P, m = posterior(rng, d)
    phis = features(rng, (k, d), dtype)
    for alpha in (0.0, 0.5, 3.0):
        for u in uniforms(rng, 4):
            choice, prop = ucb_one(phis, P, m, alpha, u, eps)
            want_choice, want_prop = ref.ucb_one(phis, P, m, alpha, u, eps)
            assert choice == want_choice
            np.testing.assert_allclose(prop, want_prop, rtol=1e-14)


def test_ucb_zero_covariance_and_identical_candidates():
    rng = np.random.default_rng(4)
    d, k = 5, 3
    phis = np.tile(features(rng, (1, d)), (k, 1))
    P, m = posterior(rng, d)
    choice, prop = ucb_one(phis, P, m, 2.0, np.array([0.5, 0.5]), 0.3)
    assert choice == 0
    np.testing.assert_allclose(prop, [0.8, 0.1, 0.1])
    distinct = features(rng, (k, d))
    choice, prop = ucb_one(distinct, np.zeros((d, d)), m, 2.0, np.array([0.5, 0.5]), 0.0)
    assert choice == int(np.argmax(distinct @ m))  # no uncertainty: greedy on the mean
    assert prop[choice] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_decide_many_matches_reference_and_thompson_one(seed, dtype, eps):
    rng = np.random.default_rng(seed)
    bsz, k, d, n_seg, n_draws = 40, 6, 7, 5, 32
    P, m = segments(rng, n_seg, d)
    phis = features(rng, (bsz, k, d), dtype)
    seg = rng.integers(0, n_seg, size=bsz)
    k_valid = rng.integers(1, k + 1, size=bsz)
    k_valid[:3] = (1, k, 2)
    normals = rng.standard_normal((bsz, n_draws, k)).astype(dtype)
    unif = uniforms(rng, bsz)
    choices, props, means = decide_many(phis, P, m, seg, k_valid, normals, unif, eps, 1.3)
    want = ref.decide_many(phis, P, m, seg, k_valid, normals, unif, eps, 1.3)
    np.testing.assert_array_equal(choices, want[0])
    np.testing.assert_allclose(props, want[1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(means, want[2], rtol=1e-12, atol=1e-12)
    assert choices.dtype == np.int64 and props.dtype == np.float64 and means.dtype == np.float64
    for b in range(bsz):
        kv = k_valid[b]
        one = thompson_one(
            np.ascontiguousarray(phis[b, :kv]), P[seg[b]], m[seg[b]],
            np.ascontiguousarray(normals[b, :, :kv]), unif[b], eps, 1.3,
        )
        assert choices[b] == one[0] < kv
        np.testing.assert_array_equal(props[b, :kv], one[1])
        np.testing.assert_array_equal(props[b, kv:], 0.0)
        np.testing.assert_array_equal(means[b, kv:], 0.0)
        assert props[b].sum() == pytest.approx(1.0, abs=1e-12)


def test_decide_many_empty_batch():
    rng = np.random.default_rng(0)
    P, m = segments(rng, 2, 3)
    choices, props, means = decide_many(
        np.empty((0, 4, 3)), P, m, np.empty(0, np.int64), np.empty(0, np.int64),
        np.empty((0, 8, 4)), np.empty((0, 2)), 0.1,
    )
    assert choices.shape == (0,) and props.shape == (0, 4) and means.shape == (0, 4)


def test_decisions_do_not_modify_their_inputs():
    rng = np.random.default_rng(21)
    P, m = segments(rng, 3, 5)
    phis = features(rng, (4, 6, 5))
    normals = rng.standard_normal((4, 16, 6))
    unif = uniforms(rng, 4)
    seg, k_valid = np.array([0, 2, 1, 2]), np.array([6, 3, 1, 6])
    copies = [a.copy() for a in (P, m, phis, normals, unif, seg, k_valid)]
    decide_many(phis, P, m, seg, k_valid, normals, unif, 0.1)
    thompson_one(phis[0], P[0], m[0], normals[0], unif[0], 0.1)
    ucb_one(phis[0], P[0], m[0], 1.0, unif[0], 0.1)
    for before, after in zip(copies, (P, m, phis, normals, unif, seg, k_valid), strict=True):
        np.testing.assert_array_equal(before, after)
