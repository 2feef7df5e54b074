import numpy as np
import pytest

from kernels import update_many, update_one
from kernels import reference as ref

from ._data import features, posterior, segments


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("forget", [1.0, 0.97])
def test_update_one_matches_reference(seed, dtype, forget):
    rng = np.random.default_rng(seed)
    d = 9
    P, m = posterior(rng, d)
    P_ref, m_ref = P.copy(), m.copy()
    for _ in range(25):
        phi = features(rng, (d,), dtype)
        reward = float(rng.normal())
        update_one(P, m, phi, reward, 0.3, forget)
        ref.update_one(P_ref, m_ref, phi, reward, 0.3, forget)
    np.testing.assert_allclose(P, P_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m, m_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(P, P.T)  # exactly symmetric
    assert np.all(np.linalg.eigvalsh(P) > 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_online_updates_equal_batch_closed_form(seed):
    rng = np.random.default_rng(seed)
    d, n, noise_var = 8, 200, 0.25
    sigma0, mu0 = posterior(rng, d)
    phis = features(rng, (n, d))
    rewards = phis @ rng.standard_normal(d) + rng.normal(scale=np.sqrt(noise_var), size=n)
    P, m = sigma0.copy(), mu0.copy()
    for i in range(n):
        update_one(P, m, phis[i], rewards[i], noise_var)
    prec0 = np.linalg.inv(sigma0)
    P_batch = np.linalg.inv(prec0 + phis.T @ phis / noise_var)
    m_batch = P_batch @ (prec0 @ mu0 + phis.T @ rewards / noise_var)
    np.testing.assert_allclose(P, P_batch, rtol=0, atol=1e-8)
    np.testing.assert_allclose(m, m_batch, rtol=0, atol=1e-8)


def test_forgetting_inflates_covariance_before_update():
    rng = np.random.default_rng(5)
    d = 4
    P, m = posterior(rng, d)
    phi = np.zeros(d)  # an observation with no information: only the inflation remains
    P0 = P.copy()
    update_one(P, m, phi, 1.0, 1.0, 0.5)
    np.testing.assert_allclose(P, P0 / 0.5, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("forget", [1.0, 0.9])
def test_update_many_matches_reference_and_update_one(seed, dtype, forget):
    rng = np.random.default_rng(seed)
    n_seg, d, n = 5, 6, 60
    P, m = segments(rng, n_seg, d)
    seg = rng.integers(0, n_seg, size=n)
    phis = features(rng, (n, d), dtype)
    rewards = rng.normal(size=n).astype(dtype)
    P_ref, m_ref = P.copy(), m.copy()
    P_one, m_one = P.copy(), m.copy()
    update_many(P, m, seg, phis, rewards, 0.5, forget)
    ref.update_many(P_ref, m_ref, seg, phis, rewards, 0.5, forget)
    for i in range(n):
        update_one(P_one[seg[i]], m_one[seg[i]], phis[i], float(rewards[i]), 0.5, forget)
    np.testing.assert_allclose(P, P_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m, m_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(P, P_one)
    np.testing.assert_array_equal(m, m_one)


def test_update_many_with_no_rows_changes_nothing():
    rng = np.random.default_rng(0)
    P, m = segments(rng, 3, 4)
    P0, m0 = P.copy(), m.copy()
    update_many(P, m, np.empty(0, np.int64), np.empty((0, 4)), np.empty(0), 1.0, 0.5)
    np.testing.assert_array_equal(P, P0)
    np.testing.assert_array_equal(m, m0)
