"""standard_normals: numpy's own draws, generator left in the same state, bad inputs refused."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import KernelInputError
from kernels.rng import standard_normals


@pytest.mark.parametrize("n", [0, 1, 7, 640, 100_000])
def test_the_draws_and_the_state_after_are_numpys(n: int) -> None:
    ours, theirs = np.random.default_rng(11), np.random.default_rng(11)
    got = standard_normals(ours, np.empty(n))
    np.testing.assert_array_equal(got, theirs.standard_normal(n))
    np.testing.assert_array_equal(ours.random(5), theirs.random(5))  # the same state afterwards


def test_it_fills_the_buffer_it_is_given() -> None:
    buf = np.full(10, np.nan)
    out = standard_normals(np.random.default_rng(0), buf[:6])
    assert np.shares_memory(out, buf) and np.all(np.isfinite(buf[:6])) and np.all(np.isnan(buf[6:]))


@pytest.mark.parametrize("rng, out, what", [
    (np.random.RandomState(0), np.empty(3), "numpy.random.Generator"),
    (np.random.default_rng(0), np.empty(3, dtype=np.float32), "float64"),
    (np.random.default_rng(0), np.empty((2, 3)), "1-D"),
    (np.random.default_rng(0), np.empty(6)[::2], "C-contiguous"),
    (np.random.default_rng(0), [0.0, 0.0], "float64"),
])
def test_bad_inputs_are_refused(rng: object, out: object, what: str) -> None:
    with pytest.raises(KernelInputError, match=what):
        standard_normals(rng, out)  # type: ignore[arg-type]


def test_a_read_only_buffer_is_refused() -> None:
    out = np.empty(3)
    out.flags.writeable = False
    with pytest.raises(KernelInputError, match="writeable"):
        standard_normals(np.random.default_rng(0), out)
