"""Log format v2: round trip, variable candidate counts, time-versioned items, errors naming the column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from policy.baselines import RandomPolicy
from policy.exceptions import LogFormatError
from policy.logformat.reader import LogReader, open_log
from policy.logformat.simulated import simulate_v2
from policy.logformat.writer import LogWriter, write_items
from policy.logs import LoggedData, write_logs
from policy.ope.evaluate import Target, evaluate_log
from policy.ope.targets import make_target
from policy.simulator.market import Market

ITEMS = np.array([10, 11, 12, 13, 14])
FEATS = np.arange(10, dtype=np.float32).reshape(5, 2)


def small_log(path: Path, **overrides) -> Path:
    rows = dict(
        segment=["a", "b", "a"], context=np.array([[1.0], [2.0], [3.0]]),
        candidate_ids=[np.array([10, 11, 12]), np.array([13, 14]), np.array([12])],
        action_id=np.array([11, 14, 12]), propensity=np.array([1 / 3, 0.5, 1.0]),
        rewards={"click": np.array([1.0, 0.0, 1.0]), "reward_margin": np.array([2.5, 0.0, 1.0])},
        timestamp=np.array(["2026-01-01T00:00:00", "2026-01-01T00:00:01", "2026-01-01T00:00:02"],
                           dtype="datetime64[us]"),
        extra={"position": np.array([1, 2, 3]), "user_id": ["u1", "u2", "u3"]},
    )
    rows.update(overrides)
    with LogWriter(path) as w:
        w.write_many(**rows)
        w.write_items(ITEMS, FEATS)
    return path


def test_round_trip_keeps_rows_ids_features_and_extras(tmp_path):
    log = LogReader(small_log(tmp_path / "log"), reward="reward_margin")
    assert log.n_rows == 3 and log.max_k == 3 and log.segment_names == ("a", "b")
    assert log.extra_columns == ["position", "user_id"] and log.reward_columns == ["click", "reward_margin"]
    data = log.read_all()
    np.testing.assert_array_equal(data.k_valid, [3, 2, 1])
    np.testing.assert_array_equal(data.candidate_ids, [[10, 11, 12], [13, 14, -1], [12, -1, -1]])
    np.testing.assert_array_equal(data.action, [1, 1, 0])
    np.testing.assert_array_equal(data.candidates[1], [[6, 7], [8, 9], [0, 0]])
    np.testing.assert_array_equal(data.reward, [2.5, 0.0, 1.0])
    np.testing.assert_array_equal(data.click, [1.0, 0.0, 1.0])
    assert list(next(log.column("user_id"))) == ["u1", "u2", "u3"]


def test_padded_slots_are_never_offered(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    kv = rng.integers(1, 6, n)
    ids = [rng.choice(ITEMS, size=k, replace=False) for k in kv]
    small_log(tmp_path / "log", segment=["s"] * n, context=rng.normal(size=(n, 1)), candidate_ids=ids,
              action_id=np.array([i[0] for i in ids]), propensity=1.0 / kv,
              rewards={"click": (rng.random(n) < 0.5).astype(float)}, timestamp=None, extra=None)
    log = LogReader(tmp_path / "log")
    data = log.read_all()
    for spec in ("uniform", "scratch_raw"):
        target = make_target(spec, data)
        dec = target.policy.decide_many(["s"] * n, data.context, data.candidates, k_valid=data.valid_k(),
                                        items=data.candidate_ids)
        assert np.all(dec.choices < data.k_valid), spec
        padded = np.arange(data.k)[None, :] >= data.k_valid[:, None]
        assert np.all(dec.propensities[padded] == 0.0), spec
    # Uniform evaluated on its own uniform log: the weights are exactly 1.
    report = evaluate_log(lambda: log.chunks(rows=64), [Target("u", RandomPolicy())], n_rows=n)
    assert report["diagnostics"]["u"]["ess"] == pytest.approx(n)
    assert report["policies"]["u"]["ips"]["value"] == pytest.approx(data.reward.mean())


def test_time_versioned_items(tmp_path):
    path = small_log(tmp_path / "log")
    vf = np.array(["2025-01-01", "2025-01-01", "2025-01-01", "2026-01-01T00:00:02", "2025-01-01",
                   "2025-01-01"], dtype="datetime64[us]")
    write_items(path / "items.parquet", np.array([10, 11, 12, 12, 13, 14]),
                np.array([[0, 0], [1, 1], [2, 2], [9, 9], [3, 3], [4, 4]]), valid_from=vf)
    data = LogReader(path).read_all()
    np.testing.assert_array_equal(data.candidates[0, 2], [2, 2])  # row 0 (t=0 s): the old version of 12
    np.testing.assert_array_equal(data.candidates[2, 0], [9, 9])  # row 2 (t=2 s): the new one


@pytest.mark.parametrize("column, change, message", [
    ("propensity", lambda t: t.set_column(t.schema.get_field_index("propensity"), "propensity",
                                          pa.array([0.5, 0.0, 1.0])), "propensity: must be in"),
    ("action_id", lambda t: t.set_column(t.schema.get_field_index("action_id"), "action_id",
                                         pa.array([11, 10, 12])), "action_id: row 1: 10 is not among"),
    ("candidate_ids", lambda t: t.set_column(t.schema.get_field_index("candidate_ids"), "candidate_ids",
                                             pa.array([[10, 11, 99], [13, 14], [12]])), "candidate_ids: row 0: id 99"),
    ("context", lambda t: t.set_column(t.schema.get_field_index("context"), "context",
                                       pa.array([[1.0], [2.0, 3.0], [3.0]])), "context: row 1"),
    ("segment", lambda t: t.drop_columns(["segment"]), "segment: missing required column"),
    ("click", lambda t: t.set_column(t.schema.get_field_index("click"), "click", pa.array([1.0, 0.5, 1.0])),
     "click: must be 0 or 1"),
])
def test_malformed_file_names_the_column(tmp_path, column, change, message):
    path = small_log(tmp_path / "log")
    (path / "log.json").unlink()
    table = pq.read_table(path / "decisions.parquet")
    pq.write_table(change(table), path / "decisions.parquet")
    with pytest.raises(LogFormatError, match=message) as err:
        list(LogReader(path).chunks())
    assert err.value.field == column


def test_not_parquet_and_missing_items(tmp_path):
    path = small_log(tmp_path / "log")
    (path / "decisions.parquet").write_bytes(b"not parquet")
    with pytest.raises(LogFormatError, match="not a Parquet file"):
        LogReader(path)
    (path / "items.parquet").unlink()
    with pytest.raises(LogFormatError, match="has no items.parquet"):
        LogReader(path)


def test_reads_v1_npz_through_the_same_interface(tmp_path):
    rng = np.random.default_rng(1)
    data = LoggedData(segment=np.zeros(5, dtype=int), segment_names=("s",), context=rng.normal(size=(5, 2)),
                      candidates=rng.normal(size=(5, 3, 2)), action=np.array([0, 1, 2, 0, 1]),
                      reward=np.ones(5), propensity=np.full(5, 1 / 3))
    log = open_log(write_logs(tmp_path / "v1.npz", data))
    chunks = list(log.chunks(rows=2))
    assert [len(c) for c in chunks] == [2, 2, 1]


def test_simulator_writes_v2_with_an_item_table_and_bytes_per_row(tmp_path):
    market = Market()
    path = simulate_v2(market, market.train_segments[:5], 3000, seed=0, out=tmp_path / "sim", chunk_rows=1000)
    log = LogReader(path)
    assert log.n_rows == 3000 and log.max_k == market.config.k_candidates and log.da == market.config.da
    first = next(log.chunks(rows=1000))
    assert first.candidate_ids.min() >= 0 and set(first.segment_names) <= set(market.segment_names)
    # A row holds 8 context floats, 10 ids and a few scalars: bytes, not kilobytes.
    assert (path / "decisions.parquet").stat().st_size / 3000 < 200


def test_read_all_spans_row_groups(tmp_path):
    path = tmp_path / "log"
    with LogWriter(path, row_group_rows=2) as w:
        for seg in ("a", "b", "c"):
            w.write_many(segment=[seg] * 3, context=np.ones((3, 1)), candidate_ids=np.tile(ITEMS[:2], (3, 1)),
                         action_id=np.full(3, ITEMS[1]), propensity=np.full(3, 0.5), rewards={"click": np.ones(3)})
        w.write_items(ITEMS, FEATS)
    log = LogReader(path)
    assert log._file.metadata.num_row_groups > 1
    whole = log.read_all()
    assert len(whole) == 9 and whole.segment_names == ("a", "b", "c")
    assert sum(len(c) for c in log.chunks(rows=4)) == 9
