"""The logged-bandit layout: round trips, hand-written files, and a LogFormatError for each malformation."""

from pathlib import Path

import numpy as np
import pytest

from policy.exceptions import LogFormatError, PolicyError
from policy.logs import LoggedData, read_logs, write_logs
from policy.simulator import Market, MarketConfig
from policy.simulator.datasets import simulate_logs


@pytest.fixture(scope="module")
def small_market() -> Market:
    return Market(MarketConfig(n_markets=2, n_cohorts=3))


def _arrays(n: int = 6, k: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "schema_version": np.array(1),
        "segment": np.array([0, 1, 0, 1, 1, 0])[:n],
        "segment_names": np.array(["alpha", "beta"]),
        "context": rng.normal(size=(n, 4)),
        "candidates": rng.normal(size=(n, k, 2)),
        "action": np.arange(n) % k,
        "reward": np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])[:n],
        "propensity": np.full(n, 1.0 / k),
        "click": np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])[:n],
        "value": np.zeros(n),
    }


def _write(path: Path, arrays: dict) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _assert_equal(a: LoggedData, b: LoggedData) -> None:
    assert a.segment_names == b.segment_names
    for key in ("segment", "context", "candidates", "action", "reward", "propensity", "click", "value"):
        x, y = getattr(a, key), getattr(b, key)
        if x is None or y is None:
            assert x is None and y is None, key
        else:
            assert x.dtype == y.dtype, key
            np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- round trips


def test_round_trip_simulated(tmp_path: Path, small_market: Market) -> None:
    data = simulate_logs(small_market, np.arange(6), 50, seed=0, value_weight=0.01)
    out = write_logs(tmp_path / "logs.npz", data)
    assert out == tmp_path / "logs.npz"
    _assert_equal(read_logs(out), data)


def test_round_trip_without_optional_columns_and_float32(tmp_path: Path) -> None:
    a = _arrays()
    del a["click"], a["value"]
    a["context"] = a["context"].astype(np.float32)
    a["candidates"] = a["candidates"].astype(np.float32)
    del a["schema_version"]
    a["segment_names"] = ("alpha", "beta")
    data = LoggedData(**a)
    assert data.click is None and data.value is None
    assert data.context.dtype == np.float32 and data.candidates.dtype == np.float32
    back = read_logs(write_logs(tmp_path / "plain", data, compress=True))
    assert (tmp_path / "plain").exists() and not (tmp_path / "plain.npz").exists()
    _assert_equal(back, data)


def test_hand_written_file_in_documented_layout(tmp_path: Path) -> None:
    path = tmp_path / "my_logs.npz"
    np.savez(
        path,
        schema_version=1,
        segment=np.array([0, 1, 0]),
        segment_names=np.array(["mobile-new", "desktop-loyal"]),
        context=np.random.rand(3, 4),
        candidates=np.random.rand(3, 3, 2),
        action=np.array([2, 0, 1]),
        reward=np.array([1, 0, 0]),  # integer rewards are accepted
        propensity=np.full(3, 1 / 3),
    )
    data = read_logs(path)
    assert len(data) == 3 and data.k == 3 and data.dx == 4 and data.da == 2
    assert data.segment_names == ("mobile-new", "desktop-loyal")
    assert data.segment.dtype == np.int64 and data.reward.dtype == np.float64
    np.testing.assert_array_equal(data.reward, [1.0, 0.0, 0.0])


# ---------------------------------------------------------------- simulated logs


def test_simulate_logs_is_uniform_and_deterministic(small_market: Market) -> None:
    a = simulate_logs(small_market, np.array([1, 4]), 3000, seed=7)
    b = simulate_logs(small_market, np.array([1, 4]), 3000, seed=7)
    c = simulate_logs(small_market, np.array([1, 4]), 3000, seed=8)
    _assert_equal(a, b)
    assert not np.array_equal(a.action, c.action)
    assert len(a) == 6000 and a.segment_names == tuple(small_market.segment_names)
    np.testing.assert_array_equal(np.bincount(a.segment, minlength=6), [0, 3000, 0, 0, 3000, 0])
    assert 0 < np.mean(a.segment[1:] != a.segment[:-1])  # interleaved, not grouped
    np.testing.assert_array_equal(a.propensity, 0.1)
    counts = np.bincount(a.action, minlength=10)
    assert np.all(np.abs(counts - 600) < 5 * np.sqrt(600))
    np.testing.assert_array_equal(a.reward, a.click)  # value_weight 0
    # the logged click rate matches the random policy's true click rate
    p = small_market.click_prob(a.segment, a.context, a.candidates)[np.arange(6000), a.action]
    assert abs(a.click.sum() - p.sum()) < 5 * np.sqrt(np.sum(p * (1 - p)))


def test_simulate_logs_value_weight(small_market: Market) -> None:
    d = simulate_logs(small_market, np.arange(6), 2000, seed=1, value_weight=0.02)
    np.testing.assert_allclose(d.reward, d.click + 0.02 * d.value)
    assert np.all(d.value[d.click == 0] == 0)
    assert d.value.max() > 0
    with pytest.raises(ValueError):
        simulate_logs(small_market, np.arange(6), 10, seed=1, logging="softmax")


def test_subset_take_and_segment_rows() -> None:
    a = _arrays()
    del a["schema_version"]
    data = LoggedData(**a)
    sub = data.subset([1])
    np.testing.assert_array_equal(sub.segment, [1, 1, 1])
    np.testing.assert_array_equal(sub.context, data.context[[1, 3, 4]])
    assert sub.segment_names == data.segment_names
    np.testing.assert_array_equal(data.take(np.array([True, False] * 3)).action, data.action[[0, 2, 4]])
    rows = data.segment_rows()
    np.testing.assert_array_equal(rows[0], [0, 2, 5])
    np.testing.assert_array_equal(rows[1], [1, 3, 4])
    with pytest.raises(LogFormatError, match="segment: the log has no rows"):
        data.subset([7])


# ---------------------------------------------------------------- malformed files


def _drop(key):
    def edit(a):
        del a[key]

    return edit


def _set(key, value):
    def edit(a):
        a[key] = value(a) if callable(value) else value

    return edit


def _nan_at(key, index):
    def edit(a):
        arr = a[key].astype(float)
        arr[index] = np.nan
        a[key] = arr

    return edit


ROW_KEYS = ("segment", "context", "candidates", "action", "reward", "propensity", "click", "value")

MALFORMED = {
    "missing segment": ("segment", "missing", _drop("segment")),
    "missing segment_names": ("segment_names", "missing", _drop("segment_names")),
    "missing context": ("context", "missing", _drop("context")),
    "missing candidates": ("candidates", "missing", _drop("candidates")),
    "missing action": ("action", "missing", _drop("action")),
    "missing reward": ("reward", "missing", _drop("reward")),
    "missing propensity": ("propensity", "missing", _drop("propensity")),
    "missing schema_version": ("schema_version", "missing", _drop("schema_version")),
    "unknown schema_version": ("schema_version", "unknown version 2", _set("schema_version", np.array(2))),
    "schema_version not scalar": ("schema_version", "scalar", _set("schema_version", np.array([1]))),
    "misspelt optional key": ("clicks", "unknown key", _set("clicks", np.zeros(6))),
    "context 1-D": ("context", "shape", _set("context", np.zeros(6))),
    "context wrong N": ("context", "shape", _set("context", np.zeros((5, 4)))),
    "candidates 2-D": ("candidates", "shape", _set("candidates", np.zeros((6, 3)))),
    "action wrong N": ("action", "shape", _set("action", np.zeros(5, dtype=np.int64))),
    "reward 2-D": ("reward", "shape", _set("reward", np.zeros((6, 1)))),
    "propensity wrong N": ("propensity", "shape", _set("propensity", np.full(7, 0.5))),
    "value wrong N": ("value", "shape", _set("value", np.zeros(3))),
    "action float": ("action", "integer dtype", _set("action", np.zeros(6))),
    "segment float": ("segment", "integer dtype", _set("segment", np.zeros(6))),
    "context strings": ("context", "float dtype", _set("context", np.full((6, 4), "x"))),
    "reward complex": ("reward", "float dtype", _set("reward", np.zeros(6, dtype=complex))),
    "segment_names ints": ("segment_names", "unicode", _set("segment_names", np.array([1, 2]))),
    "segment_names duplicate": ("segment_names", "distinct", _set("segment_names", np.array(["a", "a"]))),
    "segment_names empty name": ("segment_names", "non-empty", _set("segment_names", np.array(["a", ""]))),
    "NaN reward": ("reward", "non-finite", _nan_at("reward", 2)),
    "NaN context": ("context", "non-finite", _nan_at("context", (4, 1))),
    "inf candidates": ("candidates", "non-finite", _set("candidates", lambda a: np.full((6, 3, 2), np.inf))),
    "NaN propensity": ("propensity", "non-finite", _nan_at("propensity", 0)),
    "NaN value": ("value", "non-finite", _nan_at("value", 5)),
    "propensity zero": ("propensity", "row 5 has 0.0", _set("propensity", lambda a: np.r_[a["propensity"][:5], 0.0])),
    "propensity above one": ("propensity", "(0, 1]", _set("propensity", np.full(6, 1.5))),
    "propensity negative": ("propensity", "(0, 1]", _set("propensity", np.full(6, -0.2))),
    "action negative": ("action", "row 0 has -1", _set("action", np.array([-1, 0, 0, 0, 0, 0]))),
    "action equals K": ("action", "[0, K=3)", _set("action", np.array([0, 0, 3, 0, 0, 0]))),
    "segment out of range": ("segment", "[0, 2)", _set("segment", np.array([0, 1, 2, 0, 0, 0]))),
    "segment negative": ("segment", "[0, 2)", _set("segment", np.array([0, -1, 0, 0, 0, 0]))),
    "click not binary": ("click", "0 or 1", _set("click", np.full(6, 0.5))),
    "no rows": ("segment", "no rows", lambda a: a.update({k: a[k][:0] for k in ROW_KEYS})),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_naming_field(tmp_path: Path, case: str) -> None:
    field, words, edit = MALFORMED[case]
    arrays = _arrays()
    edit(arrays)
    path = _write(tmp_path / "bad.npz", arrays)
    with pytest.raises(LogFormatError) as info:
        read_logs(path)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert words in str(info.value)


def test_malformed_in_memory_raises_too() -> None:
    a = _arrays()
    del a["schema_version"]
    a["propensity"] = np.zeros(6)
    with pytest.raises(LogFormatError, match="propensity"):
        LoggedData(**a)


def test_not_npz(tmp_path: Path) -> None:
    text = tmp_path / "logs.npz"
    text.write_text("segment,action,reward\n0,1,0\n")
    with pytest.raises(LogFormatError, match="file: .*not an .npz archive"):
        read_logs(text)
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(LogFormatError, match="single array"):
        read_logs(npy)
    truncated = tmp_path / "cut.npz"
    good = _write(tmp_path / "good.npz", _arrays()).read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(LogFormatError):
        read_logs(truncated)


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["segment_names"] = np.array(["alpha", "beta"], dtype=object)
    path = _write(tmp_path / "obj.npz", arrays)
    with pytest.raises(LogFormatError, match="segment_names"):
        read_logs(path)


def test_missing_file_is_not_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_logs(tmp_path / "absent.npz")


def test_error_hierarchy() -> None:
    err = LogFormatError("reward", "has NaN")
    assert isinstance(err, PolicyError) and isinstance(err, ValueError)
    assert str(err) == "reward: has NaN"


def test_candidate_ids_and_k_valid_round_trip(tmp_path: Path) -> None:
    arrays = _arrays(n=6, k=3)
    arrays["k_valid"] = np.array([3, 2, 1, 3, 2, 2])
    arrays["action"] = np.array([2, 1, 0, 0, 1, 0])
    arrays["candidate_ids"] = np.array([[5, 6, 7], [5, 8, -1], [9, -1, -1], [1, 2, 3], [4, 5, -1], [6, 7, -1]])
    data = read_logs(_write(tmp_path / "ids.npz", arrays))
    assert data.k_valid.tolist() == [3, 2, 1, 3, 2, 2]
    assert data.candidate_ids.dtype == np.int64 and data.candidate_ids[2].tolist() == [9, -1, -1]
    back = read_logs(write_logs(tmp_path / "back.npz", data))
    assert np.array_equal(back.candidate_ids, data.candidate_ids) and np.array_equal(back.k_valid, data.k_valid)
    assert data.take([0, 2]).k_valid.tolist() == [3, 1]
    assert read_logs(_write(tmp_path / "plain.npz", _arrays())).valid_k().tolist() == [3] * 6


def test_action_in_a_padding_slot_is_refused(tmp_path: Path) -> None:
    arrays = _arrays(n=6, k=3)
    arrays["k_valid"] = np.array([3, 2, 1, 3, 2, 2])
    arrays["action"] = np.array([2, 2, 0, 0, 1, 0])  # row 1 offers 2 candidates but "chose" slot 2
    with pytest.raises(LogFormatError, match="action.*padding"):
        read_logs(_write(tmp_path / "pad.npz", arrays))
    arrays["action"] = np.array([2, 1, 0, 0, 1, 0])
    arrays["k_valid"] = np.array([3, 2, 0, 3, 2, 2])
    with pytest.raises(LogFormatError, match="k_valid"):
        read_logs(_write(tmp_path / "zero.npz", arrays))
