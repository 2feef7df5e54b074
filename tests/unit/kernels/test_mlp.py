import numpy as np
import pytest

from kernels import phi_many
from kernels import reference as ref


def _weights(rng, d_in, hidden, d_out, dtype):
    return (
        (rng.standard_normal((d_in, hidden)) / np.sqrt(d_in)).astype(dtype),
        rng.standard_normal(hidden).astype(dtype),
        (rng.standard_normal((hidden, d_out)) / np.sqrt(hidden)).astype(dtype),
        rng.standard_normal(d_out).astype(dtype),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [0, 1, 37])
def test_phi_many_matches_reference(seed, dtype, n):
    rng = np.random.default_rng(seed)
    d_in, hidden, d_out = 7, 16, 5
    u = rng.standard_normal((n, d_in)).astype(dtype)
    w = _weights(rng, d_in, hidden, d_out, dtype)
    got = phi_many(u, *w)
    want = ref.phi_many(u, *w)
    assert got.dtype == np.float64
    assert got.shape == (n, d_out + 1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got[:, -1], 1.0)


def test_phi_many_mixed_dtypes_and_all_negative_hidden():
    rng = np.random.default_rng(3)
    u = rng.standard_normal((4, 3)).astype(np.float32)
    w1, b1, w2, b2 = _weights(rng, 3, 6, 2, np.float64)
    b1 = np.full(6, -1e3)  # relu kills every hidden unit: z = tanh(b2)
    got = phi_many(u, w1, b1, w2, b2)
    np.testing.assert_allclose(got, ref.phi_many(u, w1, b1, w2, b2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[:, :2], np.tile(np.tanh(b2), (4, 1)))


def test_tanh_is_accurate_over_its_whole_range():
    from kernels.mlp import _tanh

    x = np.concatenate([np.linspace(-30, 30, 20001), np.geomspace(1e-300, 1.0, 2000), [0.0, 0.125, -0.125]])
    got = np.array([_tanh(v) for v in x])
    want = np.tanh(x)
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=4e-16)
    assert np.all(np.abs(got) <= 1.0)
    np.testing.assert_array_equal(np.sign(got), np.sign(want))


@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("bsz, kk", [(0, 3), (1, 1), (23, 7)])
def test_features_into_is_phi_many_with_the_raw_skip_to_the_last_bit(raw, bsz, kk):
    from kernels.mlp import features_into
    from policy.features import build_inputs, raw_features

    rng = np.random.default_rng(bsz + kk)
    dx, da, hidden, d_out = 4, 3, 16, 5
    context, candidates = rng.standard_normal((bsz, dx)), rng.standard_normal((bsz, kk, da))
    w = _weights(rng, dx + da, hidden, d_out, np.float64)
    mean, sd = (rng.standard_normal(dx + da), rng.uniform(0.5, 2, dx + da)) if raw else (np.empty(0), np.empty(0))
    u = build_inputs(context, candidates)
    phi = phi_many(u, *w)
    parts = [phi[:, :-1]] + ([raw_features(u, dx, mean, sd, False)] if raw else []) + [phi[:, -1:]]
    want = np.concatenate(parts, axis=1).reshape(bsz, kk, d_out + (dx + da if raw else 0) + 1)
    out = np.full(want.shape, np.nan)
    got = features_into(context, candidates, *w, mean, sd, out)
    assert got is out
    np.testing.assert_array_equal(got, want)


def test_features_into_refuses_what_does_not_fit():
    from kernels import KernelInputError
    from kernels.mlp import features_into

    rng = np.random.default_rng(0)
    w = _weights(rng, 5, 4, 3, np.float64)
    ctx, cand, none = np.ones((2, 2)), np.ones((2, 3, 3)), np.empty(0)
    with pytest.raises(KernelInputError, match="out must have shape"):
        features_into(ctx, cand, *w, none, none, np.empty((2, 3, 5)))
    with pytest.raises(KernelInputError, match="rows"):
        features_into(np.ones((3, 2)), cand, *w, none, none, np.empty((2, 3, 4)))
    with pytest.raises(KernelInputError, match="raw_mean and raw_sd"):
        features_into(ctx, cand, *w, np.ones(4), np.ones(4), np.empty((2, 3, 8)))
    with pytest.raises(KernelInputError, match="float64"):
        features_into(ctx.astype(np.float32), cand, *w, none, none, np.empty((2, 3, 4)))
