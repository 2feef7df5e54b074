"""Regression tests for the ads engine defects of issue 11: serving failures, event-time skew, bounded memory."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from policy.adapter import Adapter, decode_state
from policy.artifact import ArtifactError
from streams.ads_engine import AdsEngine
from streams.ads_segments import SEGMENTS
from streams.edge import RawMessage
from streams.store import DictStore
from streams.ads_state import SegmentHead
from streams.settings import AdsSettings, StoreSettings
from streams.worker import load_policy
from tests.unit.policy.test_artifact import make_artifact
from tests.unit.streams.test_ads_engine import DA, DX, TOPICS, decisions, feedback, heads, request

ART = make_artifact(dx=DX, da=DA, d=5)


def engine(store: DictStore | None = None, **ads) -> AdsEngine:
    return AdsEngine(Adapter(ART, seed=1), store if store is not None else DictStore(), TOPICS,
                     AdsSettings(**ads), StoreSettings(state_flush_interval_s=0.0))


def letters(out) -> list[dict]:
    return [json.loads(v) for _, v in out.dead_letters]


# --- a serving failure dead-letters, never skips ---------------------------------------------------

def absurd_state() -> bytes:
    """A posterior that loads (finite) but whose scores overflow: mean x 1e308."""
    a = Adapter(ART, seed=0)
    good = a.state_bytes("s")
    _, m, _ = decode_state(good, a.d)
    body = 8 * m.size  # layout 1 ends with the mean, float64 little-endian
    return good[:-body] + np.full(m.size, 1e308, dtype="<f8").tobytes()


def test_a_group_that_fails_in_the_kernel_is_dead_lettered_and_the_rest_of_the_batch_is_decided():
    store = DictStore()
    store.put(SEGMENTS, "h:m09-c09", 0, SegmentHead(ART.version.encode(), 0, state=absurd_state()).encode())
    eng = engine(store)
    batch = [request("ok1", 0, seed=1), request("bad1", 1, segment="m09-c09", seed=2), request("ok2", 2, seed=3),
             request("bad2", 3, segment="m09-c09", seed=4)]
    out = eng.process_many(batch)
    assert sorted(d["request_id"] for d in decisions(out)) == ["ok1", "ok2"]
    dead = letters(out)
    assert [(d["error_type"], d["source_offset"]) for d in dead] == [
        ("serving_failed", batch[1].offset), ("serving_failed", batch[3].offset)]
    assert "KernelInputError" in dead[0]["reason"] and "non-finite" in dead[0]["reason"]
    assert eng.counters["serving_failed"] == 2 and eng.counters["dead_letters"] == 2
    assert eng.pending_count() == 2  # only the decided requests wait for feedback
    # Feedback after the failure still joins, and the engine keeps deciding.
    eng.process_many([feedback("click", "ok1", 5)])
    assert eng.counters["clicks_applied"] == 1
    assert [d["request_id"] for d in decisions(eng.process_many([request("ok3", 6, seed=5)]))] == ["ok3"]


def test_a_policy_whose_every_decision_fails_dead_letters_every_request():
    store = DictStore()
    store.put(SEGMENTS, "h:m09-c09", 0, SegmentHead(ART.version.encode(), 0, state=absurd_state()).encode())
    eng = engine(store)
    batch = [request(f"r{i}", i, segment="m09-c09", seed=i) for i in range(5)]
    out = eng.process_many(batch)
    assert not out.decisions
    assert sorted(d["source_offset"] for d in letters(out)) == [m.offset for m in batch]


# --- event-time skew ------------------------------------------------------------------------------

def future(kind: str, rid: str) -> RawMessage:
    msg = feedback(kind, rid, 0.0)
    body = json.loads(msg.value)
    body["event_time"] = datetime(2100, 1, 1, tzinfo=timezone.utc).isoformat()
    return RawMessage(msg.topic, msg.partition, msg.offset, msg.key, json.dumps(body).encode())


def test_an_impression_dated_2100_closes_no_window_and_later_clicks_still_apply():
    eng = engine()
    eng.process_many([request(f"r{i}", i, seed=i) for i in range(5)])
    out = eng.process_many([future("impression", "r0")])
    assert [d["error_type"] for d in letters(out)] == ["event_time_skew"]
    assert eng.counters["event_time_skew"] == 1
    assert eng.pending_count() == 5 and eng.counters["windows_closed"] == 0 and eng.counters["zero_updates"] == 0
    eng.process_many([feedback("click", "r3", 10)])
    assert eng.counters["clicks_applied"] == 1 and eng.counters["clicks_late_or_unknown"] == 0


def test_a_request_dated_2100_is_dead_lettered_not_decided():
    eng = engine()
    msg = request("far", 0)
    body = json.loads(msg.value)
    body["event_time"] = "2100-01-01T00:00:00+00:00"
    out = eng.process_many([RawMessage(msg.topic, 0, msg.offset, msg.key, json.dumps(body).encode())])
    assert not out.decisions and [d["error_type"] for d in letters(out)] == ["event_time_skew"]


def test_event_time_may_run_ahead_of_the_clock_step_by_step_as_simulations_do():
    """Within the skew of the partition's watermark an event is accepted even far ahead of the wall clock."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    eng = AdsEngine(Adapter(ART, seed=1), DictStore(), TOPICS, AdsSettings(attribution_window_s=600.0),
                    StoreSettings(max_event_time_skew_s=3600.0), clock=lambda: t0)
    steps = [request(f"r{i}", 1800.0 * i, seed=i) for i in range(10)]  # 30 min apart: 4.5 h past the clock
    out = eng.process_many(steps)
    assert len(out.decisions) == 10 and not out.dead_letters
    assert eng.counters["windows_closed"] == 9  # each later request closed the windows before it
    jump = request("jump", 1800.0 * 9 + 7200.0)  # 2 h past the watermark, 1 h allowed
    assert [d["error_type"] for d in letters(eng.process_many([jump]))] == ["event_time_skew"]


# --- bounded memory: the segment cache ------------------------------------------------------------

def traffic(n_segments: int, rounds: int) -> list[list[RawMessage]]:
    """Batches of requests over many segments, with clicks on some, event time moving on (windows close)."""
    batches, t, offset = [], 0.0, {"req": 0, "fb": 0}
    for r in range(rounds):
        batch = []
        for s in range(n_segments):
            seg = f"m{s // 10:02d}-c{s % 10:02d}"
            rid = f"r{r}-{s}"
            batch.append(request(rid, t, segment=seg, seed=r * 1000 + s, offset=offset["req"]))
            offset["req"] += 1
            if (r + s) % 3 == 0:
                batch.append(feedback("click", rid, t + 1, segment=seg, offset=offset["fb"]))
                offset["fb"] += 1
            t += 2.0
        batches.append(batch)
    return batches


def run(max_cached: int, batches: list[list[RawMessage]]) -> tuple[AdsEngine, list[bytes], list[int]]:
    eng = engine(attribution_window_s=60.0, max_cached_segments=max_cached)
    sent, cached = [], []
    for batch in batches:
        out = eng.process_many(batch)
        sent += [json.loads(v) for _, v in out.decisions]
        eng.flush()
        cached.append(eng.cached_segments())
        eng.on_committed({(m.topic, m.partition): m.offset + 1 for m in batch})
    for d in sent:
        d.pop("decided_at")
    return eng, sent, cached


def test_the_segment_cache_stays_bounded_and_evicted_segments_decide_and_learn_as_if_never_evicted():
    batches = traffic(n_segments=40, rounds=6)
    small, sent_small, cached = run(8, batches)
    big, sent_big, _ = run(10_000, batches)
    assert max(cached) <= 8 and len(small.adapter.segments) <= 8
    assert small.counters["segments_evicted"] > 100 and big.counters["segments_evicted"] == 0
    assert small.counters["segments_restored"] > 0
    assert sent_small == sent_big  # same ads, propensities, scores and segment update counts
    for key in ("updates", "clicks_applied", "zero_updates", "windows_closed"):
        assert small.counters[key] == big.counters[key] > 0
    for s in range(40):
        seg = f"m{s // 10:02d}-c{s % 10:02d}"
        assert heads(small.store)[seg] == heads(big.store)[seg]  # every posterior and feedback mark
    evicted = next(seg for seg in big.adapter.segments if seg not in small.adapter.segments)
    small.segments.load(evicted, 0)  # back from the table with the same posterior
    for x, y in zip(small.adapter.posterior(evicted), big.adapter.posterior(evicted)):
        np.testing.assert_array_equal(x, y)


def test_adapter_evict_keeps_the_other_posteriors():
    a = Adapter(ART, seed=0)
    rng = np.random.default_rng(0)
    for i, seg in enumerate("abcd"):
        a.learn_many([seg] * (i + 1), rng.normal(size=(i + 1, a.d)), rng.normal(size=i + 1))
    before = {s: a.posterior(s) for s in "bcd"}
    assert a.evict("a") and not a.evict("a")
    assert sorted(a.segments) == ["b", "c", "d"]
    for s in "bcd":
        for x, y in zip(a.posterior(s), before[s]):
            np.testing.assert_array_equal(x, y)
    assert a.posterior("a")[2] == 0  # seen again: the prior


# --- bounded memory: one segment's head -----------------------------------------------------------

def test_a_hot_segment_head_stays_under_its_bound_and_closes_its_oldest_windows_first():
    cap = 64
    eng = engine(attribution_window_s=10_000.0, max_head_feedback=cap)
    n = 1000
    for start in range(0, n, 100):
        eng.process_many([request(f"r{i}", float(i), seed=i) for i in range(start, start + 100)])
        eng.process_many([feedback("click", f"r{i}", float(i) + 0.5) for i in range(start, start + 100)])
        eng.flush()
        head = SegmentHead.decode(heads(eng.store)["m00-c00"])
        assert len(head.feedback) <= cap
    # The bound: header and posterior, plus at most `cap` entries of (3 + 8 + 64) bytes.
    assert len(heads(eng.store)["m00-c00"]) <= 1024 + len(eng.adapter.state_bytes("m00-c00")) + cap * 75
    assert eng.counters["windows_forced_by_head"] > n - cap - 1
    assert eng.counters["clicks_applied"] == n and eng.counters["updates"] == n  # no click lost, none twice
    # The open windows are the newest; everything older is closed, as closed_through says.
    head = SegmentHead.decode(heads(eng.store)["m00-c00"])
    assert all(eng.book.get(f"r{i}") is None for i in range(n - cap))
    assert set(head.feedback) == {f"r{i}" for i in range(n) if eng.book.get(f"r{i}") is not None}
    assert head.closed_through < min(float(i) for i in range(n) if eng.book.get(f"r{i}") is not None) + 10_000.0 + \
        datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()


# --- the worker refuses to start on an artifact that does not serve ------------------------------

def test_worker_start_up_scores_the_artifact_before_serving_it(tmp_path):
    good = ART.save(tmp_path / "good")
    assert load_policy(good).version == ART.version
    absurd = dataclasses.replace(ART, w1=ART.w1 * 1e300, b1=ART.b1 * 1e300, w2=ART.w2 * 1e300,
                                 b2=ART.b2 * 1e300, prior_mean=ART.prior_mean * 1e300)
    with pytest.raises(ArtifactError, match="probe"):
        load_policy(absurd.save(tmp_path / "absurd"))


# --- an unreadable stored head restarts its segment, never fails the batch -------------------------

@pytest.mark.parametrize("raw", [b"garbage", SegmentHead(ART.version.encode(), 0).encode()[:7]],
                         ids=["not-a-record", "truncated"])
def test_an_unreadable_segment_head_restarts_that_segment_from_the_prior_and_the_batch_is_decided(raw):
    store = DictStore()
    store.put(SEGMENTS, "h:m09-c09", 0, raw)
    eng = engine(store)
    out = eng.process_many([request("r1", 0, segment="m09-c09", seed=1), request("r2", 1, seed=2)])
    assert sorted(d["request_id"] for d in decisions(out)) == ["r1", "r2"]
    assert not out.dead_letters
    assert eng.counters["segments_unreadable"] == 1
    eng.flush()
    assert SegmentHead.decode(heads(store)["m09-c09"]).epoch == ART.version.encode()  # overwritten, readable
