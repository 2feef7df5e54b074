"""Estimators on a hand-computed example, against vw-estimators, and their diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policy.ope.estimators import DROS_LAMBDAS, LOGGED, estimate_arrays, policy_rows, top_share
from policy.ope.exceptions import OpeError
from policy.ope.moments import Moments, TopWeights

# Four logged rows, two actions. w = pi(a|x) / p = [2, 2, 0, 1.6].
REWARD = np.array([1.0, 0.0, 1.0, 1.0])
PROP = np.array([0.5, 0.25, 0.8, 0.5])
ACTION = np.array([0, 1, 0, 1])
PI = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.2, 0.8]])
Q = np.array([[0.5, 0.2], [0.1, 0.3], [0.6, 0.4], [0.0, 1.0]])


@pytest.fixture
def summary():
    return estimate_arrays(REWARD, PROP, ACTION, {"t": PI}, q=Q)


def test_point_estimates_by_hand(summary):
    # IPS = (2 + 0 + 0 + 1.6) / 4; SNIPS = 3.6 / 5.6; DM = (0.5 + 0.2 + 0.4 + 0.8) / 4;
    # DR terms = DM_i + w_i (r_i - q_i,a) = [1.5, -0.4, 0.4, 0.8].
    assert summary.estimate("t", "ips").value == pytest.approx(0.9)
    assert summary.estimate("t", "snips").value == pytest.approx(3.6 / 5.6)
    assert summary.estimate("t", "dm").value == pytest.approx(0.475)
    assert summary.estimate("t", "dr").value == pytest.approx(0.575)
    assert summary.estimate(LOGGED, "ips").value == pytest.approx(0.75)


def test_standard_errors_and_ess_by_hand(summary):
    ips = summary.estimate("t", "ips")
    # IPS terms [2, 0, 0, 1.6]: sample variance 3.32 / 3.
    assert ips.se == pytest.approx(math.sqrt(3.32 / 3 / 4))
    assert ips.lo == pytest.approx(0.9 - 1.959963984540054 * ips.se)
    # SNIPS influence w (r - V) / mean(w).
    v = 3.6 / 5.6
    psi = np.array([2 * (1 - v), 2 * (0 - v), 0.0, 1.6 * (1 - v)]) / 1.4
    assert summary.estimate("t", "snips").se == pytest.approx(math.sqrt(psi.var(ddof=1) / 4))
    assert ips.ess == pytest.approx(5.6**2 / 10.56)


def test_dr_os_columns_by_hand():
    cols = policy_rows(PI, ACTION, PROP, REWARD, Q)
    j = DROS_LAMBDAS.index(1.0)
    # lam = 1: v = w / (w^2 + 1) = [0.4, 0.4, 0, 1.6 / 3.56]; terms DM_i + v_i * resid_i.
    expected = np.array([0.5 + 0.4 * 0.5, 0.2 - 0.4 * 0.3, 0.4, 0.8])
    np.testing.assert_allclose(cols[:, 4 + j], expected)
    # A huge lam is DR.
    np.testing.assert_allclose(cols[:, 4 + len(DROS_LAMBDAS) - 1], cols[:, 3], rtol=1e-5)


def test_paired_difference_cancels_shared_noise():
    rng = np.random.default_rng(0)
    n, k = 4000, 5
    action = rng.integers(0, k, n)
    reward = (rng.random(n) < 0.3).astype(float)
    pi_a = rng.dirichlet(np.ones(k), n)
    s = estimate_arrays(reward, np.full(n, 1 / k), action, {"a": pi_a, "b": pi_a.copy()})
    d = s.difference("a", "b", "snips")
    assert d.value == pytest.approx(0.0, abs=1e-12) and d.se == pytest.approx(0.0, abs=1e-12)
    # Unpaired, each alone has a wide interval.
    assert s.estimate("a", "snips").se > 0.005


def test_against_vw_estimators_ips_snips_and_gaussian_interval():
    from estimators.bandits import gaussian, ips, snips

    rng = np.random.default_rng(3)
    n, k = 3000, 4
    logging = rng.dirichlet(np.ones(k) * 2, n)
    action = np.array([rng.choice(k, p=p) for p in logging])
    prop = logging[np.arange(n), action]
    reward = (rng.random(n) < 0.2 + 0.1 * action).astype(float)
    pi = rng.dirichlet(np.ones(k), n)
    s = estimate_arrays(reward, prop, action, {"t": pi})
    e_ips, e_snips, e_int = ips.Estimator(), snips.Estimator(), gaussian.Interval()
    for i in range(n):
        p_pred = float(pi[i, action[i]])
        for e in (e_ips, e_snips, e_int):
            e.add_example(float(prop[i]), float(reward[i]), p_pred)
    assert s.estimate("t", "ips").value == pytest.approx(e_ips.get(), rel=1e-12)
    assert s.estimate("t", "snips").value == pytest.approx(e_snips.get(), rel=1e-12)
    lo, hi = e_int.get(0.05)
    got = s.estimate("t", "ips")
    assert (got.lo, got.hi) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))


def test_streamed_chunks_equal_one_pass():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(1000, 3))
    whole, parts = Moments(["a", "b", "c"]), Moments(["a", "b", "c"])
    whole.add_many(z)
    for chunk in np.array_split(z, 7):
        parts.add_many(chunk)
    np.testing.assert_allclose(parts.cov(), whole.cov(), rtol=1e-10)
    np.testing.assert_allclose(parts.cov(), np.cov(z.T), rtol=1e-10)


def test_bootstrap_interval_close_to_asymptotic():
    rng = np.random.default_rng(2)
    n, k = 5000, 3
    action = rng.integers(0, k, n)
    reward = (rng.random(n) < 0.4).astype(float)
    pi = np.tile([0.6, 0.3, 0.1], (n, 1))
    s = estimate_arrays(reward, np.full(n, 1 / k), action, {"t": pi}, n_bootstrap=400, seed=5)
    e = s.estimate("t", "snips")
    assert e.boot_lo == pytest.approx(e.lo, abs=0.25 * (e.hi - e.lo))
    assert e.boot_hi == pytest.approx(e.hi, abs=0.25 * (e.hi - e.lo))


def test_top_weight_share():
    top = TopWeights(3)
    w = np.array([1.0, 9.0, 1.0, 1.0, 8.0, 1.0, 1.0, 1.0, 1.0, 1.0] * 10)
    for part in np.array_split(w, 4):
        top.add_many(part)
    assert top.top_sum(2) == 18.0  # ten rows hold 9
    m = Moments(["t|w"])
    m.add_many(w[:, None])
    assert top_share(top, m, "t") == pytest.approx(9.0 / w.sum())  # ceil(1 % of 100) = 1 row


def test_target_that_never_takes_a_logged_action_is_an_error():
    pi = np.zeros((4, 2))
    pi[:, 1] = 1.0
    s = estimate_arrays(REWARD, PROP, np.zeros(4, dtype=int), {"t": pi})
    with pytest.raises(OpeError, match="never takes a logged action"):
        s.estimate("t", "snips")
    assert s.estimate("t", "ips").value == 0.0


def test_unknown_estimator_is_named():
    s = estimate_arrays(REWARD, PROP, ACTION, {"t": PI})
    with pytest.raises(OpeError, match="unknown estimator 'switch'"):
        s.estimate("t", "switch")
