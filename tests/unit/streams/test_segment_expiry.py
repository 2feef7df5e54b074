"""Segments expire in event time (``streams.segment_expiry``) in both engines: idle ones lose their stored
state, come back from the prior, and the rule survives a reload; busy and recent ones stay."""

from __future__ import annotations

from streams.settings import AdsSettings, StoreSettings
from streams.store import DictStore
from streams.ads_engine import AdsEngine
from policy.adapter import Adapter
from tests.unit.policy.test_artifact import make_artifact
from tests.unit.streams.test_ads_engine import DA, DX, TOPICS, decisions, heads, request

DAY = 86400.0
WINDOW = 600.0
TTL = 3600.0


# --- the ads engine ------------------------------------------------------------------------------

def ads_engine(store: DictStore, ttl: float = TTL) -> AdsEngine:
    ads = AdsSettings(attribution_window_s=WINDOW, segment_idle_ttl_s=ttl)
    return AdsEngine(Adapter(make_artifact(dx=DX, da=DA, d=5), seed=1), store, TOPICS, ads,
                     StoreSettings(state_flush_interval_s=0.0))


def commit(eng: AdsEngine) -> None:
    """What the glue does at a commit: flush the state, then record the positions as committed."""
    eng.flush()
    eng.on_committed(eng.commit_positions())


def learnt(eng: AdsEngine, store: DictStore, segment: str, t0: float) -> None:
    """Decisions of ``segment`` at ``t0`` whose windows then close (zero updates), committed twice (the
    second commit deletes the blocks the first one's positions passed)."""
    eng.process_many([request(f"{segment}-{i}", t0 + i, segment=segment, seed=i) for i in range(3)])
    commit(eng)
    eng.process_many([request("tick-a", t0 + WINDOW + 10, segment="m09-c09")])
    commit(eng)
    commit(eng)


def test_an_idle_segment_expires_at_the_flush_and_comes_back_from_the_prior():
    store = DictStore()
    eng = ads_engine(store)
    learnt(eng, store, "m00-c00", 0.0)
    assert "m00-c00" in heads(store) and eng.adapter.posterior("m00-c00")[2] == 3
    eng.process_many([request("tick-b", TTL + 100, segment="m09-c09")])  # the watermark passes its TTL
    commit(eng)
    assert "m00-c00" not in heads(store)  # a delete: a tombstone in the changelog
    assert "m09-c09" in heads(store)  # seen at TTL + 100: not idle
    assert eng.counters["segments_expired"] == 1
    d = decisions(eng.process_many([request("again", TTL + 200, segment="m00-c00")]))[0]
    assert d["explanation"]["segment_updates"] == 0  # from the prior, like a new segment
    assert abs(d["explanation"]["evidence_score"]) < 1e-12
    assert eng.counters["segments_new"] == 3  # m00-c00, m09-c09, m00-c00 again


def test_a_segment_seen_recently_does_not_expire():
    store = DictStore()
    eng = ads_engine(store)
    learnt(eng, store, "m00-c00", 0.0)
    eng.process_many([request("late-a", TTL - 100, segment="m00-c00")])
    eng.process_many([request("tick-b", TTL + 100, segment="m09-c09")])
    commit(eng)
    assert "m00-c00" in heads(store) and eng.counters["segments_expired"] == 0


def test_a_segment_whose_block_a_replay_could_need_does_not_expire():
    store = DictStore()
    eng = ads_engine(store)
    eng.process_many([request("r0", 0.0)])
    eng.flush()  # written, never committed: a replay of r0 must find its decision
    # the window closes and the TTL passes in event time, still without a commit
    eng.process_many([request("tick", TTL + 100, segment="m09-c09")])
    eng.flush()
    assert "m00-c00" in heads(store) and eng.book.known("r0") is not None
    assert eng.counters["segments_expired"] == 0
    eng.on_committed(eng.commit_positions())
    eng.flush()  # the block goes, then the segment (it was held)
    assert eng.book.known("r0") is None and "m00-c00" not in heads(store)
    assert eng.counters["segments_expired"] == 1


def test_a_request_after_the_ttl_starts_from_the_prior_whether_or_not_a_flush_ran_between():
    def run(flush_between: bool) -> dict:
        store = DictStore()
        eng = ads_engine(store)
        learnt(eng, store, "m00-c00", 0.0)
        eng.process_many([request("tick-b", TTL + 100, segment="m09-c09")])
        if flush_between:
            commit(eng)
        return decisions(eng.process_many([request("again", TTL + 200, segment="m00-c00", seed=7)]))[0]

    with_flush, without = run(True), run(False)
    assert with_flush["explanation"]["segment_updates"] == without["explanation"]["segment_updates"] == 0
    assert with_flush["propensity"] == without["propensity"] and with_flush["ad_id"] == without["ad_id"]


def test_expiry_survives_a_store_reload():
    store = DictStore()
    eng = ads_engine(store)
    learnt(eng, store, "m00-c00", 0.0)
    assert "m00-c00" in heads(store)
    # a new worker on the same state: the head's last-seen time is read back at the rebuild
    eng2 = ads_engine(store)
    eng2.process_many([request("tick-b", TTL + 100, segment="m09-c09")])
    commit(eng2)
    assert "m00-c00" not in heads(store) and eng2.counters["segments_expired"] == 1


def test_without_a_ttl_every_segment_keeps_its_head():
    store = DictStore()
    eng = ads_engine(store, ttl=0.0)
    learnt(eng, store, "m00-c00", 0.0)
    eng.process_many([request("tick-b", 365 * DAY, segment="m09-c09")])
    commit(eng)
    assert "m00-c00" in heads(store) and eng.counters["segments_expired"] == 0


# --- the retention engine ------------------------------------------------------------------------

A, B = "m00-c00", "m00-c01"


def _retention(store: DictStore):
    from tests.unit.streams.test_retention_engine import engine as retention_engine

    return retention_engine(store, eps=0.5, idle_horizon_s=2 * DAY, segment_idle_ttl_s=8 * DAY)


def _tick_days(eng, store: DictStore, days: range) -> list[tuple[float, bool, float | None]]:
    """A user of segment B every day (reviews run, the watermark moves); per day: the watermark, whether
    A's record is stored, A's last-seen time."""
    from tests.unit.streams.test_retention_engine import session, stored

    seen = []
    for day in days:
        eng.process_many([session("ticker", day + 0.2, segment=B)])
        seen.append((day + 0.2, "0/" + A in stored(store, "segments"), eng._idle.last_seen((0, A))))
    return seen


def _users_of_a(eng) -> None:
    """Users of A, reviewed at day 1 (a decision each), their outcomes at day 1.5 (A learns), then erased at
    day 1.6: nothing uses A after 1.5."""
    from tests.unit.streams.test_retention_engine import TOPICS, _raw, actions, iso, outcome, session

    users = [f"a{i}" for i in range(6)]
    eng.process_many([session(u, 0.2 + 0.01 * i, segment=A) for i, u in enumerate(users)])
    acts = [a for a in actions(eng.process_many([session("ticker", 1.2, segment=B)])) if a["segment"] == A]
    assert len(acts) == len(users)
    eng.process_many([outcome(a, 1.5, retained=True, value=5.0) for a in acts])
    eng.process_many([_raw(TOPICS.erasure_requests.name, 0, u, {"request_id": f"e-{u}", "user_id": u,
                                                               "requested_at": iso(1.6)}) for u in users])


def test_an_idle_retention_segment_has_its_record_deleted_after_the_ttl_and_restarts_from_the_prior():
    from tests.unit.streams.test_retention_engine import T0, session, stored

    store = DictStore()
    eng = _retention(store)
    _users_of_a(eng)
    days = _tick_days(eng, store, range(2, 40))
    last = max(t for _, _, t in days if t is not None) - T0  # days since the start
    assert last == 1.5  # the outcomes: nothing used A since
    for day, stored_a, _ in days:  # stored until the TTL (8 days) passed in event time, deleted from then on
        assert stored_a == (day < last + 8), (day, stored_a, last)
    assert eng.counters["retention_segments_expired"] == 1
    assert "0/" + B in stored(store, "segments")  # in use every day
    new_before = eng.counters["retention_segments_new"]
    eng.process_many([session("back", 40.2, segment=A)])
    eng.process_many([session("back", 41.2, segment=A)])  # reviewed: A is used again, from the prior
    assert eng.counters["retention_segments_new"] == new_before + 1
    assert eng._parts[0].adapter.posterior(A)[2] == 0


def test_retention_expiry_survives_a_store_reload():
    store = DictStore()
    first = _retention(store)
    _users_of_a(first)
    days = _tick_days(first, store, range(2, 9))
    assert all(stored_a for _, stored_a, _ in days)  # not idle long enough yet
    first.flush(force=True)
    second = _retention(store)  # a new process: A's last-seen time comes from its record
    days = _tick_days(second, store, range(9, 20))
    assert not days[-1][1] and second.counters["retention_segments_expired"] == 1


# --- records written before last-seen times ------------------------------------------------------

def test_records_of_the_layouts_before_last_seen_are_still_read():
    import math
    import struct

    from streams.ads_state import SegmentHead
    from streams.retention_partitions import split_last_seen

    v1 = struct.pack("<BiIIIdHII", 1, 3, 7, 2, 5, 1234.5, 2, 0, 0) + b"v1"
    head = SegmentHead.decode(v1)
    assert (head.partition, head.n_updates, head.closed_through, head.epoch) == (3, 7, 1234.5, b"v1")
    assert head.last_seen == 1234.5 == SegmentHead.last_seen_of(v1)[1]  # later than any decision it closed
    again = SegmentHead.decode(head.encode())
    assert again == head
    old = bytes([2]) + b"v1" + (0).to_bytes(4, "little")  # epoch length, epoch, posterior size, ...
    assert split_last_seen(old) == (-math.inf, old)
    assert split_last_seen(b"\x00" + struct.pack("<d", 20_000.5) + old) == (20_000.5, old)
