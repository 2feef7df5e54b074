"""Bad inputs raise KernelInputError with a message that names the problem; state stays intact."""

import numpy as np
import pytest

from kernels import KernelInputError, decide_many, phi_many, thompson_one, ucb_one, update_many, update_one

from ._data import features, posterior, segments

D, K, N_DRAWS = 4, 3, 8


@pytest.fixture
def one():
    rng = np.random.default_rng(0)
    P, m = posterior(rng, D)
    return {
        "phis": features(rng, (K, D)),
        "P": P,
        "m": m,
        "normals": rng.standard_normal((N_DRAWS, K)),
        "uniforms": np.array([0.5, 0.5]),
        "eps": 0.1,
    }


def _thompson(args, **change):
    a = {**args, **change}
    return thompson_one(a["phis"], a["P"], a["m"], a["normals"], a["uniforms"], a["eps"], a.get("scale", 1.0))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"phis": [[1.0] * D] * K}, "numpy.ndarray"),
        ({"phis": np.ones((K, D), dtype=np.int64)}, "float32 or float64"),
        ({"phis": np.ones(D)}, "2 dimension"),
        ({"phis": np.ones((D, 2 * K))[:, ::2].T}, "C-contiguous"),
        ({"phis": np.ones((0, D))}, "at least one candidate"),
        ({"P": np.eye(D, dtype=np.float32)}, "float64"),
        ({"P": np.eye(D + 1)}, "P must be"),
        ({"m": np.zeros(D + 1)}, "P must be"),
        ({"normals": np.ones((N_DRAWS, K + 1))}, "normals must have shape"),
        ({"normals": np.ones((0, K))}, "normals must have shape"),
        ({"normals": np.full((N_DRAWS, K), np.nan)}, "non-finite"),
        ({"uniforms": np.array([0.5])}, "uniforms"),
        ({"uniforms": np.array([0.5, 1.5])}, r"\[0, 1\]"),
        ({"uniforms": np.array([np.nan, 0.5])}, r"\[0, 1\]"),
        ({"eps": float("nan")}, "eps must be finite"),
        ({"eps": 1.5}, "eps must be in"),
        ({"eps": "a lot"}, "eps must be a real number"),
        ({"scale": -1.0}, "scale must be in"),
    ],
)
def test_thompson_one_rejects(one, change, match):
    with pytest.raises(KernelInputError, match=match):
        _thompson(one, **change)


def test_thompson_one_rejects_nan_state(one):
    m = one["m"].copy()
    m[0] = np.nan
    with pytest.raises(KernelInputError, match="non-finite"):
        _thompson(one, m=m)
    P = one["P"].copy()
    P[1, 1] = np.inf
    with pytest.raises(KernelInputError, match="non-finite"):
        _thompson(one, P=P)


def test_ucb_one_rejects(one):
    args = (one["phis"], one["P"], one["m"])
    with pytest.raises(KernelInputError, match="alpha"):
        ucb_one(*args, -1.0, one["uniforms"], 0.1)
    with pytest.raises(KernelInputError, match="uniforms"):
        ucb_one(*args, 1.0, np.array([2.0, 0.5]), 0.1)
    with pytest.raises(KernelInputError, match="P must be"):
        ucb_one(one["phis"], np.eye(D + 1), one["m"], 1.0, one["uniforms"], 0.1)
    with pytest.raises(KernelInputError, match="non-finite"):
        ucb_one(np.full((K, D), np.nan), one["P"], one["m"], 1.0, one["uniforms"], 0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_var": 0.0}, "noise_var must be in"),
        ({"noise_var": float("inf")}, "noise_var must be finite"),
        ({"forget": 0.0}, "forget must be in"),
        ({"forget": 1.01}, "forget must be in"),
        ({"reward": float("nan")}, "reward must be finite"),
        ({"phi": np.array([np.nan, 0.0, 0.0, 1.0])}, "non-finite"),
        ({"phi": np.ones(D + 1)}, "phi: length"),
        ({"phi": np.ones(D, dtype=np.int32)}, "float32 or float64"),
    ],
)
def test_update_one_rejects_and_leaves_state_intact(kwargs, match):
    P, m = posterior(np.random.default_rng(1), D)
    P0, m0 = P.copy(), m.copy()
    args = {"phi": np.ones(D), "reward": 1.0, "noise_var": 1.0, "forget": 1.0, **kwargs}
    with pytest.raises(KernelInputError, match=match):
        update_one(P, m, args["phi"], args["reward"], args["noise_var"], args["forget"])
    np.testing.assert_array_equal(P, P0)
    np.testing.assert_array_equal(m, m0)


def test_update_one_rejects_read_only_or_wrongly_typed_state():
    P, m = posterior(np.random.default_rng(1), D)
    P.flags.writeable = False
    with pytest.raises(KernelInputError, match="writeable"):
        update_one(P, m, np.ones(D), 1.0, 1.0)
    with pytest.raises(KernelInputError, match="float64"):
        update_one(P.astype(np.float32), m, np.ones(D), 1.0, 1.0)
    with pytest.raises(KernelInputError, match="not positive"):
        update_one(-np.eye(D) * 10, m.copy(), np.ones(D), 1.0, 1.0)


def test_update_many_rejects_bad_segments_before_changing_anything():
    rng = np.random.default_rng(2)
    P, m = segments(rng, 3, D)
    P0, m0 = P.copy(), m.copy()
    phis, rewards = features(rng, (4, D)), np.ones(4)
    with pytest.raises(KernelInputError, match="row 2: segment index out of range"):
        update_many(P, m, np.array([0, 1, 3, 0]), phis, rewards, 1.0)
    with pytest.raises(KernelInputError, match="row 0: segment index"):
        update_many(P, m, np.array([-1, 1, 2, 0]), phis, rewards, 1.0)
    np.testing.assert_array_equal(P, P0)
    np.testing.assert_array_equal(m, m0)
    with pytest.raises(KernelInputError, match="int64"):
        update_many(P, m, np.array([0, 1, 2, 0], dtype=np.int32), phis, rewards, 1.0)
    with pytest.raises(KernelInputError, match="rewards: length"):
        update_many(P, m, np.array([0, 1, 2, 0]), phis, np.ones(3), 1.0)
    with pytest.raises(KernelInputError, match="P must have shape"):
        update_many(P[:2], m, np.array([0, 1, 2, 0]), phis, rewards, 1.0)
    with pytest.raises(KernelInputError, match="row 1: non-finite"):
        update_many(P, m, np.array([0, 1, 2, 0]), phis, np.array([1.0, np.nan, 1.0, 1.0]), 1.0)


def test_decide_many_rejects():
    rng = np.random.default_rng(3)
    bsz, n_seg = 5, 2
    P, m = segments(rng, n_seg, D)
    args = {
        "phis": features(rng, (bsz, K, D)),
        "P": P,
        "m": m,
        "seg": np.zeros(bsz, np.int64),
        "k_valid": np.full(bsz, K, np.int64),
        "normals": rng.standard_normal((bsz, N_DRAWS, K)),
        "uniforms": np.full((bsz, 2), 0.5),
        "eps": 0.1,
    }

    def call(**change):
        a = {**args, **change}
        return decide_many(a["phis"], a["P"], a["m"], a["seg"], a["k_valid"], a["normals"], a["uniforms"], a["eps"])

    call()
    for change, match in [
        ({"seg": np.array([0, 0, 2, 0, 0])}, "row 2: segment index out of range"),
        ({"k_valid": np.array([K, 0, K, K, K])}, "row 1: k_valid must be in"),
        ({"k_valid": np.array([K, K, K, K, K + 1])}, "row 4: k_valid must be in"),
        ({"k_valid": np.full(bsz + 1, K, np.int64)}, "k_valid: length"),
        ({"normals": rng.standard_normal((bsz, N_DRAWS, K + 1))}, "normals must have shape"),
        ({"uniforms": np.full((bsz, 3), 0.5)}, "uniforms must have shape"),
        ({"uniforms": np.full((bsz, 2), -0.5)}, r"row 0: uniforms must lie in \[0, 1\]"),
        ({"m": np.zeros((n_seg, D + 1))}, "P must be"),
        ({"phis": np.ones((bsz, 0, D))}, "at least one candidate"),
        ({"eps": -0.1}, "eps must be in"),
    ]:
        with pytest.raises(KernelInputError, match=match):
            call(**change)


def test_phi_many_rejects():
    rng = np.random.default_rng(4)
    u = rng.standard_normal((5, 3))
    w1, b1, w2, b2 = np.ones((3, 4)), np.zeros(4), np.ones((4, 2)), np.zeros(2)
    phi_many(u, w1, b1, w2, b2)
    with pytest.raises(KernelInputError, match="w1: rows"):
        phi_many(u, np.ones((2, 4)), b1, w2, b2)
    with pytest.raises(KernelInputError, match="b1: length"):
        phi_many(u, w1, np.zeros(5), w2, b2)
    with pytest.raises(KernelInputError, match="w2: rows"):
        phi_many(u, w1, b1, np.ones((3, 2)), b2)
    with pytest.raises(KernelInputError, match="b2: length"):
        phi_many(u, w1, b1, w2, np.zeros(3))
    with pytest.raises(KernelInputError, match="float32 or float64"):
        phi_many(u.astype(np.int64), w1, b1, w2, b2)
    with pytest.raises(KernelInputError, match="C-contiguous"):
        phi_many(np.asfortranarray(u), w1, b1, w2, b2)


def test_kernel_input_error_is_a_value_error():
    assert issubclass(KernelInputError, ValueError)
