"""What keeps the retention engine's work and memory bounded under soak traffic: deadline heaps instead of a
scan of every open action per batch, reviews that read only their partition's users, and a bounded cache of
decoded open actions that reads the others back from the store, with the same decisions and learning."""

from __future__ import annotations

import json

import pytest

from streams.retention_blocks import BlockStore
from streams.retention_engine import Outputs
from streams.retention_state import OpenAction
from streams.store import DictStore
from streams.settings import RetentionSettings
from tests.unit.streams.test_retention_engine import (TOPICS, _raw, actions, engine, iso, outcome, session, stored,
                                                      warm)


class _CountingDict(dict):
    """A dict that counts how often it is iterated whole (``items``, ``values``, ``keys``, ``iter``)."""

    scans = 0

    def items(self):
        type(self).scans += 1
        return super().items()

    def values(self):
        type(self).scans += 1
        return super().values()

    def keys(self):
        type(self).scans += 1
        return super().keys()

    def __iter__(self):
        type(self).scans += 1
        return super().__iter__()


class _CountingStore(BlockStore):
    """The engine's block store over a ``DictStore``, recording which users' rows the engine reads and how
    often it lists a whole table."""

    def __init__(self) -> None:
        super().__init__(DictStore())
        self.listed: dict[str, int] = {}
        self.user_reads: list[tuple[str, int]] = []

    def get(self, table: str, key: str, partition: int) -> bytes | None:
        if table == "users":
            self.user_reads.append((key, partition))
        return super().get(table, key, partition)

    def items(self, table: str, prefix: str = ""):
        self.listed[table] = self.listed.get(table, 0) + 1
        return super().items(table, prefix)


def _traffic(users: list[str], days: int) -> list[list]:
    """Batches: everyone active at day 0, then every day a session of each, outcomes left to expire."""
    batches = [[session(u, 0.2 + 0.001 * i, partition=i % 2) for i, u in enumerate(users)]]
    for day in range(1, days):
        batches.append([session(u, day + 0.1 + 0.001 * i, partition=i % 2) for i, u in enumerate(users)])
    return batches


def test_batches_never_scan_every_open_action():
    eng = engine(eps=1.0)
    users = [f"u{i}" for i in range(20)]
    warm(eng, users)
    eng.process_many([session("u0", 1.2)])  # the review at day 1 opens 20 actions
    assert eng.pending_count() == 20
    eng._book._open = _CountingDict(eng._book._open)
    eng._book._closed = _CountingDict(eng._book._closed)
    _CountingDict.scans = 0
    for k in range(10):  # batches within day 1: no review, no window ends
        eng.process_many([session(f"u{k}", 1.3 + 0.01 * k)])
    eng.process_many([session("u1", 8.5)])  # day 8: windows of day 1 expire through the deadline heap
    assert eng.counters["retention_windows_expired"] == 20
    assert _CountingDict.scans == 0


def test_a_review_reads_only_its_own_partitions_users_and_lists_no_table():
    store = _CountingStore()
    eng = engine(store)
    eng.process_many([session(f"a{i}", 0.2, partition=0) for i in range(30)]
                     + [session(f"b{i}", 0.3, partition=1) for i in range(30)])
    store.listed.clear()
    store.user_reads.clear()
    out = eng.process_many([session("a0", 1.2, partition=0)])  # only partition 0 crosses day 1
    assert len(actions(out)) == 30 and {a["user_id"][0] for a in actions(out)} == {"a"}
    assert store.listed == {}
    assert {p for _, p in store.user_reads} == {0} and all(u.startswith("a") for u, _ in store.user_reads)


def test_the_member_index_is_rebuilt_from_the_store_after_a_restart():
    store = DictStore()
    first = engine(store)
    warm(first, [f"u{i}" for i in range(7)])
    first.flush()
    second = engine(store)  # a new process: it learns its partition's users from the table
    assert len(actions(second.process_many([session("u0", 1.2)]))) == 7


@pytest.mark.parametrize("max_cached", [1, 3])
def test_open_actions_beyond_the_cache_bound_are_read_back_with_identical_results(max_cached):
    users = [f"u{i}" for i in range(24)]
    big, small = engine(eps=0.5), engine(eps=0.5, max_cached_actions=max_cached)
    got = {}
    for name, eng in (("big", big), ("small", small)):
        outs = []
        for batch in _traffic(users, 4):
            outs += [v for _, v in eng.process_many(batch).actions]
            assert len(eng._cached) <= (10_000 if name == "big" else max_cached)
        acts = [json.loads(v) for v in outs]
        # outcomes for half the open actions (read back from the store when evicted), then everyone expires
        done = eng.process_many([outcome(a, 3.5, i % 3 == 0, 7.0 if i % 3 == 0 else 0.0,
                                         partition=int(a["user_id"][1:]) % 2)
                                 for i, a in enumerate(acts[-24:]) if i % 2 == 0])
        eng.process_many([session("u0", 12.2), session("u1", 12.2, partition=1)])
        got[name] = (outs, [v for _, v in done.actions], dict(eng.counters),
                     {p: eng._parts[p].adapter.state_bytes(s) for p in eng._parts for s in eng._parts[p].loaded})
    assert small.counters["retention_actions_evicted"] > 0 and small.counters["retention_actions_read_back"] > 0
    assert got["small"][0] == got["big"][0] and got["small"][1] == got["big"][1]
    assert got["small"][3] == got["big"][3]
    for key in ("retention_outcomes_applied", "retention_windows_expired", "retention_updates", "retention_spend"):
        assert got["small"][2][key] == got["big"][2][key]
    assert got["small"][2]["retention_outcomes_applied"] == 12


def test_an_erased_user_loses_open_actions_that_were_evicted_from_memory():
    store = DictStore()
    eng = engine(store, max_cached_actions=1)
    warm(eng, ["a", "b", "c"])
    eng.process_many([session("a", 1.2)])
    assert eng.pending_count() == 3 and len(eng._cached) == 1
    erase = _raw(TOPICS.erasure_requests.name, 0, "b",
                 {"request_id": "e1", "user_id": "b", "requested_at": iso(1.3)})
    eng.process_many([erase])
    assert eng.pending_count() == 2 and eng.counters["retention_erasures"] == 1
    assert {OpenAction.decode(v).user for v in stored(store, "actions").values()} == {"a", "c"}


def test_max_cached_actions_is_a_setting_with_a_sane_default():
    assert RetentionSettings().max_cached_actions == 4096
    with pytest.raises(ValueError):
        RetentionSettings(max_cached_actions=0)


def test_a_review_pauses_every_review_step_actions_with_the_same_outputs():
    users = [f"u{i}" for i in range(40)]
    whole, stepped = engine(eps=0.5), engine(eps=0.5, review_step=7)
    for eng in (whole, stepped):
        warm(eng, users)
    expected = whole.process_many([session("u0", 1.2)])
    out = Outputs()
    pauses = sum(1 for _ in stepped.process_steps([session("u0", 1.2)], out))
    assert pauses == (40 - 1) // 7 + 1  # after actions 7, 14, ..., 35, and after the review
    assert out.actions == expected.actions and len(out.actions) == 40
    assert stepped._parts[0].adapter.state_bytes("m00-c00") == whole._parts[0].adapter.state_bytes("m00-c00")


def test_a_paused_review_has_written_its_slice_and_a_rebalance_finishes_it_first():
    store = DictStore()
    eng = engine(store, review_step=5)
    warm(eng, [f"u{i}" for i in range(20)])
    out = Outputs()
    steps = eng.process_steps([session("u0", 1.2)], out)
    next(steps)  # paused inside the review: 5 actions so far, their state written before the pause
    assert len(out.actions) == 5 and len(stored(store, "actions")) == 5
    eng.flush(force=False)  # the state timer writes nothing of the half-done review meanwhile
    assert len(stored(store, "actions")) == 5
    eng.on_rebalance()  # runs the rest of the review, then saves and forgets
    assert len(out.actions) == 20 and len(stored(store, "actions")) == 20
    assert list(steps) == []  # the caller finds the batch done


def test_review_step_is_a_setting_with_a_sane_default():
    assert RetentionSettings().review_step == 64
    with pytest.raises(ValueError):
        RetentionSettings(review_step=0)


def test_windows_that_end_together_close_in_slices_with_the_same_learning():
    users = [f"u{i}" for i in range(20)]
    whole, stepped = engine(eps=0.5, review_step=1000), engine(eps=0.5, review_step=3)
    for eng in (whole, stepped):
        warm(eng, users)
        eng.process_many([session("u0", 1.2)])  # 20 actions at day 1; their windows end at day 8
    expected = whole.process_many([session("u1", 8.05)])  # the review at day 8, then the day-1 windows end
    out = Outputs()
    pauses = sum(1 for _ in stepped.process_steps([session("u1", 8.05)], out))
    assert pauses == ((20 - 1) // 3 + 1) + (20 - 1) // 3  # the review's slices, then the closes' slices
    assert out.actions == expected.actions and len(out.actions) == 20
    for eng in (whole, stepped):
        assert eng.counters["retention_windows_expired"] == 20 and eng.pending_count() == 20
    assert stepped._parts[0].adapter.state_bytes("m00-c00") == whole._parts[0].adapter.state_bytes("m00-c00")
    assert stepped._parts[0].risk.state_bytes("m00-c00") == whole._parts[0].risk.state_bytes("m00-c00")


def test_rocksdb_memory_is_read_per_table_from_each_partition_database(tmp_path):
    from types import SimpleNamespace

    import rocksdict

    from streams.agents.retention import rocksdb_memory

    dbs = {p: rocksdict.Rdict(str(tmp_path / f"p{p}"), options=rocksdict.Options(raw_mode=True)) for p in (0, 1)}
    try:
        for p, db in dbs.items():
            for i in range(2000):
                db[f"k{i}".encode()] = b"x" * 100
        tables = {"retention-users": SimpleNamespace(data=SimpleNamespace(_dbs=dbs)),
                  "ads-segments": SimpleNamespace(data=SimpleNamespace(_dbs={}))}
        got = rocksdb_memory(SimpleNamespace(tables=tables))
        one = dbs[0].property_int_value("rocksdb.cur-size-all-mem-tables")
        assert got["retention_rocksdb_databases:retention-users"] == 2
        assert got["retention_rocksdb_memtables_bytes:retention-users"] == one + dbs[1].property_int_value(
            "rocksdb.cur-size-all-mem-tables") > 2 * 2000 * 100
        assert got["retention_rocksdb_databases:ads-segments"] == 0
        assert got["retention_rocksdb_memtables_bytes:ads-segments"] == 0
    finally:
        for db in dbs.values():
            db.close()


def test_heap_growth_logs_the_sites_that_grew(caplog):
    import tracemalloc

    from streams.agents.retention import heap_growth

    tracemalloc.start()
    try:
        previous: list = []
        heap_growth(previous)
        grown = [bytes(1000) + bytes([i % 256]) for i in range(2000)]  # ~2 MB from one line
        caplog.clear()
        with caplog.at_level("WARNING", logger="metacart.retention"):
            heap_growth(previous)
    finally:
        tracemalloc.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("heap: ") and "test_retention_bounds.py" in lines[1] and len(grown) == 2000
