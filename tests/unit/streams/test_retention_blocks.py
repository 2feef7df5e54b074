"""Retention state in blocks (``streams.retention_blocks``): each changed key once per commit, blocks bounded
below the producer's limit, restores equal to what was committed (deletes included, through compactions), the
format before blocks read and moved, a newer format refused, and a restart in the middle of a review."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from streams.exceptions import StateFormatError
from streams.retention_blocks import BLOCK_PREFIX, BlockStore
from streams.retention_engine import Outputs
from streams.retention_state import TABLES
from streams.store import DictStore
from tests.unit.streams.test_retention_engine import actions, engine, outcome, session, stored, warm


class _CountingDict(DictStore):
    """A ``DictStore`` counting the puts and deletes it receives (each one a changelog record in Faust)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: Counter[str] = Counter()

    def put(self, table, key, partition, value):
        self.writes["put"] += 1
        super().put(table, key, partition, value)

    def delete(self, table, key, partition):
        self.writes["delete"] += 1
        super().delete(table, key, partition)


def test_a_key_changed_many_times_between_commits_is_written_once_in_one_block():
    base = _CountingDict()
    store = BlockStore(base)
    for i in range(10):
        store.put("users", "u1", 0, f"v{i}".encode())
        store.put("actions", f"a{i}", 0, b"x" * 10)
    store.delete("actions", "a3", 0)
    assert base.writes == {}  # nothing before the commit
    assert store.commit() == 1 and base.writes == {"put": 1}
    again = BlockStore(base)
    assert again.get("users", "u1", 0) == b"v9"
    assert sorted(k for k, _ in again.items("actions")) == [f"a{i}" for i in range(10) if i != 3]


def test_blocks_split_below_the_bound_and_one_partition_never_holds_anothers_keys():
    base = DictStore()
    store = BlockStore(base, max_block_bytes=4096)
    for p in range(3):
        for i in range(300):
            store.put("users", f"p{p}-u{i}", p, bytes(40))
    store.commit()
    blocks = base.tables["partitions"]
    assert all(len(v) <= 4096 for v in blocks.values())
    assert len(blocks) >= 3 * (300 * 40 // 4096)
    for key, raw in blocks.items():
        partition = int(key[len(BLOCK_PREFIX):].split("/")[0])
        assert struct.unpack_from("<Bi", raw)[1] == partition
        assert f"p{partition}-u".encode() in raw and all(f"p{q}-u".encode() not in raw for q in range(3) if q != partition)


def test_a_deleted_key_never_comes_back_though_the_block_that_hid_it_is_compacted():
    base = DictStore()
    store = BlockStore(base)
    store.put("users", "gone", 0, b"old")
    store.put("users", "stays", 0, b"s")
    store.commit()  # block 0: gone, stays
    store.delete("users", "gone", 0)
    store.put("users", "churn", 0, b"c0")
    store.commit()  # block 1: tombstone of gone (block 0 still holds a copy), churn
    for i in range(1, 6):  # churn kills block 1's entries, so it is compacted; the tombstone must move
        store.put("users", "churn", 0, f"c{i}".encode())
        store.commit()
    assert BlockStore(base).get("users", "gone", 0) is None
    store.put("users", "stays", 0, b"s2")  # block 0 dies at last: the tombstone may go with it
    store.commit()
    store.put("users", "churn", 0, b"c9")
    store.commit()
    restored = BlockStore(base)
    assert dict(restored.items("users")) == {"stays": b"s2", "churn": b"c9"}
    assert b"old" not in b"".join(base.tables["partitions"].values())  # no dead copy left either


def test_tombstones_that_hide_nothing_leave_the_index_and_their_blocks():
    """Keys written, committed, then deleted (an outbox record, an action closed after a flush): once no block
    holds an older copy, a tombstone hides nothing and must not stay live, or a long run retains one tombstone
    per key it ever deleted (the session-9 soak's retention index grew by 14,500 keys a minute)."""
    base = DictStore()
    store = BlockStore(base, max_block_bytes=4096)
    store.put("users", "stays", 0, b"s")
    for i in range(2000):
        store.put("partitions", f"outbox:0/{i}", 0, bytes(30))
        store.commit()
        store.delete("partitions", f"outbox:0/{i}", 0)
        store.commit()
    assert store.indexed() == 2  # "stays", and the last tombstone: its value's block is compacted next commit
    store.put("users", "next", 0, b"n")
    store.commit()
    assert store.indexed() == 2  # "stays" and "next"
    assert store.blocks() <= 3
    restored = BlockStore(base, max_block_bytes=4096)
    assert dict(restored.items("partitions")) == {} and restored.get("users", "stays", 0) == b"s"
    assert restored.indexed() == 2


_OPS = st.lists(st.tuples(st.sampled_from(["put", "put", "put", "delete", "commit", "reload"]),
                          st.sampled_from(["users", "actions"]), st.integers(0, 7), st.integers(0, 1),
                          st.binary(min_size=0, max_size=60)), max_size=120)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPS)
def test_a_restore_reads_back_exactly_what_was_committed(ops):
    """Against a dict model: whatever the order of puts, deletes, commits and restarts (a restart loses what
    was not committed), a fresh store over the same tables holds what was committed, and no block exceeds
    its bound."""
    base = DictStore()
    store = BlockStore(base, max_block_bytes=256)
    committed: dict[tuple[str, str], bytes] = {}
    pending: dict[tuple[str, str, int], bytes | None] = {}
    for op, table, k, partition, value in ops:
        key = f"k{k}-p{partition}"  # a key lives on one partition
        if op == "put":
            store.put(table, key, partition, value)
            pending[(table, key, partition)] = value
        elif op == "delete":
            store.delete(table, key, partition)
            pending[(table, key, partition)] = None
        elif op == "commit":
            store.commit()
            for (t, kk, _), v in pending.items():
                if v is None:
                    committed.pop((t, kk), None)
                else:
                    committed[(t, kk)] = v
            pending.clear()
        else:
            store = BlockStore(base, max_block_bytes=256)
            pending.clear()
        restored = BlockStore(base, max_block_bytes=256)
        for t in TABLES:
            assert dict(restored.items(t)) == {kk: v for (tt, kk), v in committed.items() if tt == t}
        assert all(len(v) <= 256 for v in base.tables["partitions"].values())


def test_records_of_the_format_before_blocks_are_read_then_moved_into_blocks():
    """A worker upgraded over tables written one key per value (format 1) restores everything from them: open
    actions, users, budgets, posteriors; its next commit writes them into blocks and deletes the old keys."""
    current = DictStore()
    first = engine(current, eps=1.0)
    warm(first, [f"u{i}" for i in range(6)])
    acts = actions(first.process_many([session("u0", 1.2)]))
    first.process_many([outcome(acts[0], 1.5, True, 12.0)])
    old = DictStore()  # the same values under the same keys, one record each: the layout of format 1
    for table in TABLES:
        old.tables[table] = stored(current, table)
    assert not any(k.startswith(BLOCK_PREFIX) for k in old.tables["partitions"])

    second = engine(old, eps=1.0)
    second.process_many([outcome(acts[1], 1.6, False, 0.0)])
    assert second.counters["retention_legacy_records_read"] == sum(len(old_t) for old_t in (
        stored(current, t) for t in TABLES))
    assert second.pending_count() == len(acts) - 2 and second.counters["retention_outcomes_applied"] == 1
    assert second._parts[0].adapter.posterior("m00-c00")[2] == 2  # one learnt before the upgrade, one after
    assert all(not rows for t, rows in old.tables.items() if t != "partitions")
    assert all(k.startswith(BLOCK_PREFIX) for k in old.tables["partitions"])  # moved: only blocks are left
    third = engine(old, eps=1.0)  # and a restart reads them back from the blocks
    third.process_many([outcome(acts[2], 1.7, False, 0.0)])
    assert third.counters["retention_outcomes_applied"] == 1 and third.pending_count() == len(acts) - 3


def test_a_block_of_an_unknown_format_version_is_refused_with_a_clear_error():
    base = DictStore()
    base.tables["partitions"]["blk/0/0"] = struct.pack("<BiQ", 9, 0, 0)
    with pytest.raises(StateFormatError, match="format version 9"):
        BlockStore(base).load()


def test_a_restart_in_the_middle_of_a_review_keeps_its_written_slices_and_decides_the_rest_once():
    users = [f"u{i}" for i in range(20)]
    whole = engine(eps=1.0, review_step=5)
    warm(whole, users)
    expected = {a["decision_id"] for a in actions(whole.process_many([session("u0", 1.2)]))}
    store = DictStore()
    first = engine(store, eps=1.0, review_step=5)
    warm(first, users)
    out = Outputs()
    steps = first.process_steps([session("u0", 1.2)], out)
    next(steps)  # paused after 5 actions, their state committed in a block; then the process dies
    sent_before = [a["decision_id"] for a in actions(out)]
    treated_before = [a["decision_id"] for a in actions(out) if a["action"] != "none"]
    assert len(sent_before) == 5

    second = engine(store, eps=1.0, review_step=5)  # restored from the blocks; the batch is replayed
    replayed = [a["decision_id"] for a in actions(second.process_many([session("u0", 1.2)]))]
    assert len(replayed) == 15 and not set(replayed) & set(sent_before)
    assert set(replayed) | set(sent_before) == expected
    assert second.pending_count() == 20
    assert all(second._parts[0].budget.decision(did) for did in treated_before)  # its budget records too


def test_a_review_writes_a_block_per_slice_not_records_per_action():
    base = _CountingDict()
    eng = engine(base, eps=1.0, review_step=64)
    eng.process_many([session(f"u{i}", 0.2 + 0.0001 * i) for i in range(300)])
    base.writes.clear()
    out = eng.process_many([session("u0", 1.2)])
    assert len(out.actions) == 300
    assert base.writes["put"] <= 300 // 64 + 3  # a block per slice (and the review's first flush)
    assert sum(base.writes.values()) / len(out.actions) < 0.05
