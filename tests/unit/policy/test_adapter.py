"""Adapter: the online posterior equals the batch closed form, decisions, state bytes, resets, swaps."""

from __future__ import annotations

import numpy as np
import pytest

from policy.adapter import Adapter, StateError, decode_state
from policy.artifact import ArtifactError, PolicyArtifact
from tests.unit.policy.test_artifact import make_artifact

DX, DA, HIDDEN, D, K = 3, 2, 6, 5, 4


@pytest.fixture
def artifact() -> PolicyArtifact:
    return make_artifact(seed=3, dx=DX, da=DA, hidden=HIDDEN, d=D)


def requests(rng: np.random.Generator, n: int, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(n, DX)), rng.normal(size=(n, k, DA))


def batch_posterior(art: PolicyArtifact, phis: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P_n = (Sigma0^-1 + Phi^T Phi / s)^-1,  m_n = P_n (Sigma0^-1 mu0 + Phi^T y / s)."""
    prec0 = np.linalg.inv(art.prior_cov)
    prec = prec0 + phis.T @ phis / art.noise_var
    P = np.linalg.inv(prec)
    return P, P @ (prec0 @ art.prior_mean + phis.T @ y / art.noise_var)


def test_online_posterior_equals_batch_closed_form(artifact: PolicyArtifact) -> None:
    rng = np.random.default_rng(0)
    adapter = Adapter(artifact, eps=0.05, n_draws=16, seed=1)
    segs = np.array(["a", "b"])
    seen: dict[str, tuple[list, list]] = {"a": ([], []), "b": ([], [])}
    for _ in range(60):
        ctx, cand = requests(rng, 2)
        dec = adapter.decide_many(segs, ctx, cand)
        rewards = rng.normal(size=2)
        adapter.learn_many(segs, dec.phis_chosen, rewards)
        for i, s in enumerate(segs):
            seen[s][0].append(dec.phis_chosen[i])
            seen[s][1].append(rewards[i])
    for s, (phis, ys) in seen.items():
        P_batch, m_batch = batch_posterior(artifact, np.array(phis), np.array(ys))
        P, m, n = adapter.posterior(s)
        assert n == 60
        np.testing.assert_allclose(P, P_batch, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(m, m_batch, rtol=1e-7, atol=1e-10)


def test_decisions_are_consistent_with_the_artifact(artifact: PolicyArtifact) -> None:
    rng = np.random.default_rng(1)
    adapter = Adapter(artifact, eps=0.1, n_draws=32, seed=0)
    ctx, cand = requests(rng, 7)
    dec = adapter.decide_many(list(range(7)), ctx, cand)
    phis = artifact.phi_numpy(np.concatenate([np.repeat(ctx, K, 0), cand.reshape(-1, DA)], 1)).reshape(7, K, D)
    np.testing.assert_allclose(dec.phis_chosen, phis[np.arange(7), dec.choices], rtol=1e-12)
    np.testing.assert_allclose(dec.prior_scores, phis @ artifact.prior_mean, rtol=1e-10)
    np.testing.assert_allclose(dec.mean_scores, dec.prior_scores, rtol=1e-10)  # nothing learned yet
    np.testing.assert_allclose(dec.propensities.sum(axis=1), 1.0)
    assert np.all(dec.propensities >= 0.1 / K - 1e-12)
    assert np.all(dec.propensities[np.arange(7), dec.choices] > 0)
    assert dec.version == artifact.version and np.all(dec.n_updates == 0)


def test_padding_is_never_chosen(artifact: PolicyArtifact) -> None:
    rng = np.random.default_rng(2)
    adapter = Adapter(artifact, eps=0.5, seed=0)
    ctx, cand = requests(rng, 200)
    k_valid = rng.integers(1, K + 1, 200)
    dec = adapter.decide_many(np.zeros(200, dtype=np.int64), ctx, cand, k_valid=k_valid)
    assert np.all(dec.choices < k_valid)
    pad = np.arange(K)[None, :] >= k_valid[:, None]
    assert np.all(dec.propensities[pad] == 0.0) and np.all(dec.prior_scores[pad] == 0.0)


def test_same_seed_same_decisions(artifact: PolicyArtifact) -> None:
    ctx, cand = requests(np.random.default_rng(3), 50)
    a = Adapter(artifact, seed=9).decide_many(np.arange(50) % 3, ctx, cand)
    b = Adapter(artifact, seed=9).decide_many(np.arange(50) % 3, ctx, cand)
    np.testing.assert_array_equal(a.choices, b.choices)
    np.testing.assert_array_equal(a.propensities, b.propensities)


def test_segments_are_independent_and_reset_restores_prior(artifact: PolicyArtifact) -> None:
    adapter = Adapter(artifact)
    phi = np.ones((3, D))
    adapter.learn_many(["x", "x", "x"], phi, np.array([1.0, 2.0, 3.0]))
    P_y, m_y, n_y = adapter.posterior("y")  # new segment: the prior
    np.testing.assert_array_equal(P_y, artifact.prior_cov)
    np.testing.assert_array_equal(m_y, artifact.prior_mean)
    assert n_y == 0
    assert adapter.posterior("x")[2] == 3
    adapter.reset("x")
    P_x, m_x, n_x = adapter.posterior("x")
    np.testing.assert_array_equal(P_x, artifact.prior_cov)
    assert n_x == 0
    assert set(adapter.segments) == {"x", "y"}


def test_state_bytes_round_trip(artifact: PolicyArtifact) -> None:
    rng = np.random.default_rng(4)
    src = Adapter(artifact)
    src.learn_many(["s"] * 20, rng.normal(size=(20, D)), rng.normal(size=20))
    data = src.state_bytes("s")
    assert isinstance(data, bytes) and len(data) == 16 + 8 * (D * D + D)
    dst = Adapter(artifact)
    dst.load_state("s", data)
    for got, want in zip(dst.posterior("s"), src.posterior("s")):
        np.testing.assert_array_equal(got, want)
    # learning continues identically after the restore
    phi, r = rng.normal(size=(5, D)), rng.normal(size=5)
    src.learn_many(["s"] * 5, phi, r)
    dst.learn_many(["s"] * 5, phi, r)
    np.testing.assert_array_equal(dst.posterior("s")[1], src.posterior("s")[1])


def test_bad_state_bytes_are_refused(artifact: PolicyArtifact) -> None:
    adapter = Adapter(artifact)
    good = adapter.state_bytes("s")
    with pytest.raises(StateError, match="magic"):
        adapter.load_state("s", b"XXXX" + good[4:])
    with pytest.raises(StateError, match="bytes"):
        adapter.load_state("s", good[:-8])
    with pytest.raises(StateError, match="d="):
        decode_state(good, d=D + 1)
    bad = bytearray(good)
    bad[16:24] = np.array([np.nan]).tobytes()
    with pytest.raises(StateError, match="NaN"):
        adapter.load_state("s", bytes(bad))
    with pytest.raises(StateError):
        adapter.load_state("s", "not bytes")  # type: ignore[arg-type]


def test_swap_artifact_keeps_or_resets_posteriors(artifact: PolicyArtifact) -> None:
    adapter = Adapter(artifact)
    adapter.learn_many(["s"], np.ones((1, D)), np.array([1.0]))
    recalibrated = PolicyArtifact(**{**artifact.arrays(), "noise_var": 0.5, "meta": artifact.meta})
    assert adapter.swap_artifact(recalibrated) is True  # same phi: posteriors kept
    assert adapter.posterior("s")[2] == 1 and adapter.noise_var == 0.5
    other = make_artifact(seed=11, dx=DX, da=DA, hidden=HIDDEN, d=D)
    assert adapter.swap_artifact(other) is False  # new phi: restart from the new prior
    P, m, n = adapter.posterior("s")
    assert n == 0
    np.testing.assert_array_equal(m, other.prior_mean)
    adapter.learn_many(["s"], np.ones((1, D)), np.array([1.0]))
    assert adapter.swap_artifact(artifact, posteriors="keep") is True
    assert adapter.posterior("s")[2] == 1
    assert adapter.swap_artifact(artifact, posteriors="reset") is False
    bigger = make_artifact(seed=1, dx=DX, da=DA, hidden=HIDDEN, d=D + 1)
    with pytest.raises(ArtifactError, match="d changes"):
        adapter.swap_artifact(bigger, posteriors="keep")


def test_wrong_inputs_are_refused(artifact: PolicyArtifact) -> None:
    adapter = Adapter(artifact)
    ctx, cand = requests(np.random.default_rng(5), 3)
    with pytest.raises(ValueError, match="artifact expects"):
        adapter.decide_many([0, 1, 2], ctx[:, :2], cand)
    with pytest.raises(ValueError, match="batch sizes"):
        adapter.decide_many([0, 1], ctx, cand)
    with pytest.raises(ValueError):
        adapter.learn_many([0], np.ones((1, D + 1)), np.ones(1))
    with pytest.raises(ArtifactError):
        Adapter("not an artifact")  # type: ignore[arg-type]


def test_thompson_draws_are_the_generators_standard_normals_then_its_uniforms(artifact: PolicyArtifact) -> None:
    """The draws come from the policy's generator in numpy's order (normals of the whole batch, then its
    uniforms), whether they fill the reused buffer or, past it, an array of their own."""
    from kernels.glm import glm_decide_many
    from policy import segment_bandit as bandit_module

    ctx, cand = requests(np.random.default_rng(5), 9)
    for buffer in (bandit_module.NORMALS_BUFFER, 8):
        saved = bandit_module.NORMALS_BUFFER
        bandit_module.NORMALS_BUFFER = buffer
        try:
            adapter = Adapter(artifact, eps=0.1, n_draws=16, seed=4)
            first = adapter.decide_many(np.arange(9) % 2, ctx, cand)
            second = adapter.decide_many(np.arange(9) % 2, ctx, cand)  # the buffer is reused
        finally:
            bandit_module.NORMALS_BUFFER = saved
        rng = np.random.default_rng(4)
        phis = adapter.phi_many(ctx, cand)
        fresh = Adapter(artifact, eps=0.1, n_draws=16, seed=4)
        slots = fresh._slots_for(np.arange(9) % 2)
        zeros = np.zeros((9, K))
        for got in (first, second):
            normals, uniforms = rng.standard_normal((9, 16, K)), rng.random((9, 2))
            choices, props, _ = glm_decide_many(phis, fresh._P[:2], fresh._m[:2], slots, np.full(9, K),
                                                zeros, zeros, normals, uniforms, 0.1, fresh.scale)
            np.testing.assert_array_equal(got.choices, choices)
            np.testing.assert_array_equal(got.propensities, props)


def test_deciding_through_the_fused_features_is_deciding_on_phi_many(artifact: PolicyArtifact) -> None:
    """``decide_many`` computes features with one fused kernel into a reused buffer; the decisions are those
    of ``decide_phis`` on the public ``phi_many``, and a later call does not change an earlier result."""
    ctx, cand = requests(np.random.default_rng(6), 12)
    fused, general = Adapter(artifact, eps=0.1, n_draws=16, seed=2), Adapter(artifact, eps=0.1, n_draws=16, seed=2)
    segments = np.arange(12) % 3
    first = fused.decide_many(segments, ctx, cand)
    kept = first.phis_chosen.copy()
    for got in (first, fused.decide_many(segments, ctx * 2, cand)):
        want = general.decide_phis(segments, general.phi_many(ctx if got is first else ctx * 2, cand))
        np.testing.assert_array_equal(got.choices, want.choices)
        np.testing.assert_array_equal(got.propensities, want.propensities)
        np.testing.assert_array_equal(got.phis_chosen, want.phis_chosen)
        np.testing.assert_array_equal(got.prior_scores, want.prior_scores)
    np.testing.assert_array_equal(first.phis_chosen, kept)
