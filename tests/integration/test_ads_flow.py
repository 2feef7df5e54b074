"""The ad agent against the real broker: delayed-reward semantics, restart recovery, hot-swap.

Rewards are observed two ways: each decision reports how many updates its segment's posterior had
absorbed (``explanation.segment_updates``), and each worker publishes its counters to worker-stats.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np

from policy.segment_state import decode_state
from policy.artifact import PolicyArtifact
from streams.ads_state import SegmentHead
from streams.app import topics_for
from streams.control import publish_policy_update

from .conftest import Reader, json_values, produce, start_worker
from .helpers import click, counter, market, requests_for

SEGMENT = int(market().heldout_segments[0])
NAME = market().segment_names[SEGMENT]


def _decision(reader: Reader, request_id: str, timeout_s: float = 90.0) -> dict:
    reader.wait_for(lambda ms: any(json.loads(m.value())["request_id"] == request_id for m in ms),
                    timeout_s, f"decision for {request_id}")
    return next(d for d in json_values(reader.seen) if d["request_id"] == request_id)


def _wait_counter(stats: Reader, name: str, value: float, timeout_s: float = 30.0) -> None:
    stats.wait_for(lambda ms: counter(ms, name) >= value, timeout_s, f"{name} >= {value}")


def _updates_in_changelog(settings, segment: str) -> int:
    """n_updates of the newest posterior the worker flushed to the table's changelog."""
    log = Reader(settings.kafka, f"{settings.worker_id}-ads-segments-changelog")
    log.poll(2.0)
    log.close()
    values = [m.value() for m in log.seen if m.key() == b"h:" + segment.encode()]
    if not values:
        return -1
    state = SegmentHead.decode(values[-1]).state
    return decode_state(state)[2] if state is not None else 0


def test_click_once_duplicate_ignored_window_zero_update(settings, workers):
    topics = topics_for(settings)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    stats = Reader(settings.kafka, topics.worker_stats.name)
    worker = start_worker(workers, settings)
    rq = lambda t, rid: requests_for(SEGMENT, [t], rid)  # noqa: E731
    try:
        produce(settings.kafka, topics.ad_requests.name, rq(0, "A"))
        a = _decision(decisions, "A-0")
        assert a["explanation"]["segment_updates"] == 0  # a new segment starts from the prior
        assert 0 < a["propensity"] <= 1 and a["policy_version"] == "itest-v1"
        assert abs(a["explanation"]["score"] - a["explanation"]["prior_score"]) < 1e-12

        produce(settings.kafka, topics.ad_feedback.name, [click("A-0", NAME, 1), click("A-0", NAME, 2)])
        _wait_counter(stats, "clicks_duplicate", 1)
        assert counter(stats.seen, "clicks_applied") == 1

        produce(settings.kafka, topics.ad_requests.name, rq(10, "B"))
        assert _decision(decisions, "B-0")["explanation"]["segment_updates"] == 1

        # Event time jumps past both windows (600 s): A was clicked, B closes with a zero update.
        produce(settings.kafka, topics.ad_requests.name, rq(700, "C"))
        _decision(decisions, "C-0")
        _wait_counter(stats, "windows_closed", 2)
        assert counter(stats.seen, "zero_updates") == 1

        produce(settings.kafka, topics.ad_feedback.name, [click("B-0", NAME, 800)])  # too late
        _wait_counter(stats, "clicks_late_or_unknown", 1)
        produce(settings.kafka, topics.ad_requests.name, rq(701, "D"))
        d = _decision(decisions, "D-0")
        assert d["explanation"]["segment_updates"] == 2
        assert abs(d["explanation"]["evidence_score"]) > 0  # the segment's own evidence now counts
        assert counter(stats.seen, "updates") == 2
    except AssertionError:
        print(worker.log_tail())
        raise


def test_killed_worker_recovers_state_from_changelog(settings, workers, tmp_path):
    topics = topics_for(settings)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    first = start_worker(workers, settings, "first")
    times = [0, 1, 2, 3]
    produce(settings.kafka, topics.ad_requests.name, requests_for(SEGMENT, times, "R"))
    for i in range(len(times)):
        _decision(decisions, f"R-{i}")
    produce(settings.kafka, topics.ad_feedback.name, [click("R-0", NAME, 5), click("R-1", NAME, 6)])
    deadline_reader = Reader(settings.kafka, topics.worker_stats.name)
    _wait_counter(deadline_reader, "clicks_applied", 2)
    # Wait until the posterior with both clicks is in the changelog, then kill -9.
    for _ in range(40):
        if _updates_in_changelog(settings, NAME) == 2:
            break
    assert _updates_in_changelog(settings, NAME) == 2
    first.kill()

    # The restarted worker gets an empty data dir: its state can only come from the changelog.
    settings.store.data_dir = tmp_path / "worker-restarted"
    second = start_worker(workers, settings, "second")
    try:
        produce(settings.kafka, topics.ad_requests.name, requests_for(SEGMENT, [10], "S"))
        assert _decision(decisions, "S-0", 120)["explanation"]["segment_updates"] == 2
        # Pending decisions survived too: a click for R-2 (decided before the crash) still applies.
        stats = Reader(settings.kafka, topics.worker_stats.name)
        produce(settings.kafka, topics.ad_feedback.name, [click("R-2", NAME, 12)])
        stats.wait_for(lambda ms: any(s["counters"].get("clicks_applied", 0) >= 1
                                      and s["worker"].endswith(str(second.pid))
                                      for s in json_values(ms)), 60, "click applied after restart")
        produce(settings.kafka, topics.ad_requests.name, requests_for(SEGMENT, [13], "T"))
        assert _decision(decisions, "T-0")["explanation"]["segment_updates"] == 3
    except AssertionError:
        print(second.log_tail())
        raise


def test_hot_swap_changes_version_and_bad_artifact_is_refused(settings, workers, tmp_path):
    topics = topics_for(settings)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    letters = Reader(settings.kafka, topics.dead_letters.name)
    worker = start_worker(workers, settings)
    v1 = PolicyArtifact.load(settings.policy.artifact)
    v2 = replace(v1, meta=v1.meta.model_copy(update={"version": "itest-v2"}))
    v2_dir = v2.save(tmp_path / "v2")
    bad_dir = tmp_path / "bad"
    shutil.copytree(settings.policy.artifact, bad_dir)
    arrays = dict(np.load(bad_dir / "arrays.npz"))
    arrays["prior_cov"] = -np.eye(arrays["prior_cov"].shape[0])  # not positive definite
    np.savez(bad_dir / "arrays.npz", **arrays)

    sent = 0
    def send(n: int) -> None:
        nonlocal sent
        produce(settings.kafka, topics.ad_requests.name,
                requests_for(SEGMENT, list(range(sent, sent + n)), f"H{sent}"))
        sent += n

    try:
        send(5)
        decisions.wait_for(lambda ms: len(ms) >= 5, 90, "first decisions")
        publish_policy_update(settings, v2_dir, on_swap="keep")
        for _ in range(30):
            send(5)
            decisions.poll(0.5)
            if any(d["policy_version"] == "itest-v2" for d in json_values(decisions.seen)):
                break
        versions = [d["policy_version"] for d in json_values(decisions.seen)]
        assert "itest-v2" in versions
        first_v2 = versions.index("itest-v2")
        assert set(versions[:first_v2]) == {"itest-v1"} and set(versions[first_v2:]) == {"itest-v2"}

        publish_policy_update(settings, bad_dir, version="itest-bad", on_swap="reset", check=False)
        letters.wait_for(lambda ms: any(d["error_type"] == "policy_refused" for d in json_values(ms)),
                         30, "refusal")
        refusal = next(d for d in json_values(letters.seen) if d["error_type"] == "policy_refused")
        assert "itest-bad" in refusal["reason"] and "prior_cov" in refusal["reason"]
        before = len(decisions.seen)
        send(5)
        decisions.wait_for(lambda ms: len(ms) >= before + 5, 30, "decisions after refusal")
        assert {d["policy_version"] for d in json_values(decisions.seen[before:])} == {"itest-v2"}

        # No failed request: every request sent got exactly one decision.
        decisions.wait_for(lambda ms: len(ms) >= sent, 30, "all decisions")
        ids = [d["request_id"] for d in json_values(decisions.seen)]
        assert len(ids) == len(set(ids)) == sent

        # Rollback is publishing the old version again.
        publish_policy_update(settings, settings.policy.artifact, on_swap="keep")
        for _ in range(30):
            send(5)
            decisions.poll(0.5)
            if json_values(decisions.seen)[-1]["policy_version"] == "itest-v1":
                break
        assert json_values(decisions.seen)[-1]["policy_version"] == "itest-v1"
    except AssertionError:
        print(worker.log_tail())
        raise


def test_restart_restores_every_segment_whatever_partition_the_batch_starts_on(settings, workers, tmp_path):
    """Segments on different partitions, restored in one mixed batch after a crash: none falls back to the prior.

    Faust reads a RocksDB table through the partition of the *current* event; the worker must route each
    lookup to its segment's own partition.
    """
    topics = topics_for(settings)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    segments = [int(s) for s in market().heldout_segments[:12]]
    names = [market().segment_names[s] for s in segments]
    first = start_worker(workers, settings, "first")
    for i, seg in enumerate(segments):
        produce(settings.kafka, topics.ad_requests.name, requests_for(seg, [0], f"P{i}", seed=i))
    for i in range(len(segments)):
        _decision(decisions, f"P{i}-0")
    produce(settings.kafka, topics.ad_feedback.name, [click(f"P{i}-0", name, 1) for i, name in enumerate(names)])
    _wait_counter(Reader(settings.kafka, topics.worker_stats.name), "clicks_applied", len(segments))
    for _ in range(40):
        if all(_updates_in_changelog(settings, name) == 1 for name in names):
            break
    assert all(_updates_in_changelog(settings, name) == 1 for name in names)
    first.kill()

    settings.store.data_dir = tmp_path / "worker-restarted"
    second = start_worker(workers, settings, "second")
    try:
        mixed = [item for i, seg in enumerate(segments) for item in requests_for(seg, [10], f"Q{i}", seed=i)]
        produce(settings.kafka, topics.ad_requests.name, mixed)
        updates = {names[i]: _decision(decisions, f"Q{i}-0", 120)["explanation"]["segment_updates"]
                   for i in range(len(segments))}
    except AssertionError:
        print(second.log_tail())
        raise
    assert updates == {name: 1 for name in names}
