import numpy as np
import pytest

from policy.features import build_inputs


def test_rows_pair_each_request_with_each_candidate() -> None:
    rng = np.random.default_rng(0)
    context = rng.normal(size=(4, 3))
    candidates = rng.normal(size=(4, 5, 2))
    u = build_inputs(context, candidates)
    assert u.shape == (20, 5)
    assert u.flags.c_contiguous
    for i in range(4):
        for k in range(5):
            np.testing.assert_array_equal(u[i * 5 + k], np.concatenate([context[i], candidates[i, k]]))


@pytest.mark.parametrize(
    ("cdtype", "adtype", "expected"),
    [
        (np.float32, np.float32, np.float32),
        (np.float64, np.float64, np.float64),
        (np.float32, np.float64, np.float64),
        (np.int64, np.float32, np.float64),
    ],
)
def test_dtype_is_preserved_or_promoted(cdtype, adtype, expected) -> None:
    u = build_inputs(np.ones((2, 3), dtype=cdtype), np.ones((2, 4, 2), dtype=adtype))
    assert u.dtype == expected


def test_empty_batch() -> None:
    assert build_inputs(np.zeros((0, 3)), np.zeros((0, 4, 2))).shape == (0, 5)


@pytest.mark.parametrize(
    ("context", "candidates"),
    [
        (np.zeros(3), np.zeros((1, 4, 2))),
        (np.zeros((1, 3)), np.zeros((1, 4))),
        (np.zeros((2, 3)), np.zeros((1, 4, 2))),
    ],
)
def test_bad_shapes_raise(context, candidates) -> None:
    with pytest.raises(ValueError):
        build_inputs(context, candidates)
