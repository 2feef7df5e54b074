"""What keeps a soak's memory and state flat: retention segments bounded in memory like the ads engine's
(``streams.segment_lru``: least recently used, only clean ones leave, a paused review keeps its own), evicted
posteriors read back unchanged, and retention blocks compacted when their bytes die, not only their entries."""

from __future__ import annotations

import pytest

from streams.retention_blocks import BlockStore
from streams.retention_engine import Outputs
from streams.segment_lru import CleanLRU
from streams.store import DictStore
from tests.unit.streams.test_retention_engine import actions, engine, outcome, session

SEGMENTS = [f"m00-c{i:02d}" for i in range(8)]


def _user_segment(i: int) -> str:
    """User ``i`` lives on partition ``i % 2``: each partition has users of every segment."""
    return SEGMENTS[(i // 2) % len(SEGMENTS)]


def _days(eng, users: list[str], days: int) -> list[dict]:
    """Every user active each day (two partitions); every action's outcome reported, half retained."""
    sent = []
    for day in range(days):
        acts = actions(eng.process_many([session(u, day + 0.1 + 0.001 * i, partition=i % 2, segment=_user_segment(i))
                                         for i, u in enumerate(users)]))
        sent += acts
        by_user = {u: i for i, u in enumerate(users)}
        eng.process_many([outcome(a, day + 0.5, retained=k % 2 == 0, value=10.0 * (k % 2 == 0),
                                  partition=by_user[a["user_id"]] % 2) for k, a in enumerate(acts)])
    return sent


def _posteriors(eng) -> dict[tuple[int, str], bytes]:
    """Every (partition, segment) posterior and risk offset as the engine would serve it (loaded if evicted)."""
    out = {}
    for partition in (0, 1):
        for segment in SEGMENTS:
            eng._load_segment(partition, segment)
            part = eng._parts[partition]
            out[(partition, segment)] = part.adapter.state_bytes(segment) + part.risk.state_bytes(segment)
    return out


def test_clean_lru_evicts_least_recently_used_clean_unpinned_keys_only():
    lru: CleanLRU[str, int] = CleanLRU(3)
    for k, key in enumerate("abcd"):
        lru.put(key, k, changed=key == "a")
    lru.get("b")  # b is now the most recently used: a, c, d, b
    assert lru.evict(pinned=lambda key: key == "c") == [("d", 3)]  # a changed, c pinned
    assert list(lru) == ["a", "c", "b"]
    lru.put("e", 4, changed=True)
    assert lru.evict() == [("c", 2)]  # a is still changed
    lru.written()
    lru.put("f", 5)
    assert lru.evict() == [("a", 0)] and list(lru) == ["b", "e", "f"]
    with pytest.raises(ValueError):
        CleanLRU(0)


def test_retention_segments_stay_within_the_bound_and_come_back_with_the_same_posterior():
    users = [f"u{i}" for i in range(32)]
    bounded, unbounded = engine(eps=0.5, max_cached_segments=3), engine(eps=0.5)
    sent_bounded, sent_unbounded = _days(bounded, users, 4), _days(unbounded, users, 4)
    # memory: after each batch at most the bound, in the engine's index and in the adapters and risk models
    assert sum(len(p.adapter.segments) for p in bounded._parts.values()) <= 3
    assert len(bounded._segments) <= 3
    assert sum(len(p.loaded) for p in bounded._parts.values()) <= 3
    assert bounded.counters["retention_segments_evicted"] > 0
    assert sum(len(p.adapter.segments) for p in unbounded._parts.values()) == 2 * len(SEGMENTS)
    # evicted segments were read back from the store with the posteriors they left with: the same
    # decisions (Thompson draws do not depend on which segments are in memory) and the same learning
    assert sent_bounded == sent_unbounded and len(sent_bounded) > 50
    assert bounded.counters["retention_updates"] == unbounded.counters["retention_updates"] > 50
    assert _posteriors(bounded) == _posteriors(unbounded)


def test_an_evicted_segment_is_read_back_from_the_store_of_a_new_process():
    store = DictStore()
    users = [f"u{i}" for i in range(32)]
    first = engine(store, eps=0.5, max_cached_segments=2)
    _days(first, users, 3)
    first.flush(force=True)
    expected = _posteriors(engine(store, eps=0.5))  # a restarted worker reads every segment from the store
    assert _posteriors(first) == expected
    assert first.counters["retention_segments_evicted"] > 0 and first.counters["retention_updates"] > 50


def test_a_paused_review_keeps_the_segments_it_decides_with():
    users = [f"u{2 * i}" for i in range(40)]  # all on partition 0
    eng = engine(eps=0.5, max_cached_segments=1, review_step=4)
    reference = engine(eps=0.5, review_step=4)
    for e in (eng, reference):
        e.process_many([session(u, 0.2 + 0.001 * i, segment=_user_segment(2 * i)) for i, u in enumerate(users)])
    out, ref_out = Outputs(), Outputs()
    pauses = 0
    for _ in eng.process_steps([session("u0", 1.2, segment=_user_segment(0))], out):
        part = eng._parts[0]
        if part.reviewing:  # paused between slices: every segment of the review stays meanwhile
            pauses += 1
            assert part.loaded == set(SEGMENTS) and len(eng._segments) == len(SEGMENTS)
    for _ in reference.process_steps([session("u0", 1.2, segment=_user_segment(0))], ref_out):
        pass
    assert pauses >= 5 and actions(out) == actions(ref_out) and len(actions(out)) == len(users)
    assert len(eng._segments) <= 1  # once the review is done the bound holds again


def test_blocks_whose_bytes_died_are_compacted_so_stored_bytes_stay_bounded():
    """A commit that writes one small record that never changes (a budget record) beside a large one that
    every commit rewrites (a segment posterior): half of each block's entries stay live, but almost all of
    its bytes die. Counting entries alone kept every such block and the stored bytes grew with commits."""
    base = DictStore()
    store = BlockStore(base, max_block_bytes=64 * 1024)
    big = 20_000
    for i in range(200):
        store.put("partitions", f"budget:0/{i}", 0, b"r" * 40)
        store.put("segments", "0/seg", 0, bytes([i % 256]) * big)
        store.commit()
    live = 200 * (40 + 12) + big + 16
    stored_bytes = sum(len(v) for v in base.tables["partitions"].values())
    assert stored_bytes < 2 * live + 64 * 1024, stored_bytes  # was ~200 x 20 KB = 4 MB
    size, live_size = store.block_bytes()
    assert live_size * 2 >= size - 64 * 1024
    restored = BlockStore(base)  # and nothing live was lost on the way
    assert restored.get("segments", "0/seg", 0) == bytes([199]) * big
    assert len(dict(restored.items("partitions", "budget:0/"))) == 200
