"""Invariants of the decision kernels, checked with Hypothesis over random instances."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import decide_many, thompson_one

from ._data import features, segments, uniforms

FAST = settings(max_examples=60, deadline=None)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 12),
    d=st.integers(1, 10),
    n_draws=st.integers(1, 50),
    bsz=st.integers(1, 20),
    eps=st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)),
    scale=st.one_of(st.just(0.0), st.floats(0.01, 10.0)),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_decide_many_propensities_are_a_distribution(seed, k, d, n_draws, bsz, eps, scale, dtype):
    rng = np.random.default_rng(seed)
    n_seg = 3
    P, m = segments(rng, n_seg, d)
    phis = features(rng, (bsz, k, d), dtype)
    if k > 1:
        phis[0, 1] = phis[0, 0]  # an identical pair of candidates
    seg = rng.integers(0, n_seg, size=bsz)
    k_valid = rng.integers(1, k + 1, size=bsz)
    normals = rng.standard_normal((bsz, n_draws, k)).astype(dtype)
    choices, props, means = decide_many(phis, P, m, seg, k_valid, normals, uniforms(rng, bsz), eps, scale)
    for b in range(bsz):
        kv = k_valid[b]
        valid = props[b, :kv]
        assert 0 <= choices[b] < kv
        assert np.all(valid <= 1.0)
        if eps > 0:
            assert np.all(valid > 0.0)
        else:
            assert np.all(valid >= 0.0)
        assert abs(valid.sum() - 1.0) < 1e-12
        assert np.all(props[b, kv:] == 0.0)
        assert np.all(means[b, kv:] == 0.0)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(2, 6),
    eps=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_monte_carlo_propensity_matches_choice_frequency(seed, k, eps):
    """The propensity from many draws approaches how often fresh decisions pick each candidate."""
    rng = np.random.default_rng(seed)
    d, n = 4, 4000
    P, m = segments(rng, 1, d)
    P *= 4.0  # a wide posterior, so several candidates get real probability
    phis = features(rng, (k, d))
    _, prop = thompson_one(phis, P[0], m[0], rng.standard_normal((n, k)), np.array([0.5, 0.5]), eps)
    # n independent decisions, each with its own draw 0 and its own exploration coin
    batch = np.ascontiguousarray(np.broadcast_to(phis, (n, k, d)))
    choices, _, _ = decide_many(
        batch, P, m, np.zeros(n, np.int64), np.full(n, k, np.int64),
        rng.standard_normal((n, 1, k)), uniforms(rng, n), eps,
    )
    freq = np.bincount(choices, minlength=k) / n
    # both are means of n Bernoulli(p) variables (true p unknown: use the pooled estimate), so the
    # difference has sd sqrt(2 p (1 - p) / n); allow 5 sd plus 3 counts for rare candidates
    pooled = 0.5 * (freq + prop)
    tol = 5.0 * np.sqrt(2.0 * pooled * (1.0 - pooled) / n) + 3.0 / n
    assert np.all(np.abs(freq - prop) <= tol), (freq, prop)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    d=st.integers(1, 12),
    n=st.integers(1, 40),
    noise_var=st.floats(1e-3, 10.0),
    forget=st.one_of(st.just(1.0), st.floats(0.5, 1.0)),
)
def test_updates_keep_the_covariance_symmetric_and_positive_definite(seed, d, n, noise_var, forget):
    from kernels import update_one

    rng = np.random.default_rng(seed)
    P, m = segments(rng, 1, d)
    P, m = P[0], m[0]
    for _ in range(n):
        phi = features(rng, (d,))
        before = phi @ P @ phi / forget
        update_one(P, m, phi, float(rng.normal()), noise_var, forget)
        after = phi @ P @ phi
        # the predictive variance along phi shrinks: after = before * noise_var / (noise_var + before)
        assert after <= before * (1 + 1e-12)
        np.testing.assert_allclose(after, before * noise_var / (noise_var + before), rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(P, P.T)
    assert np.all(np.linalg.eigvalsh(P) > 0)
