"""Exactly-once across a crash: a worker killed mid-stream loses no decision and shows none twice.

Decisions and the input positions commit in one transaction (read_committed readers see committed ones
only), so after kill -9 and a restart every request has exactly one visible decision.
"""

from __future__ import annotations

import json

from streams.app import topics_for

from .conftest import Reader, produce, start_worker
from .helpers import mixed_requests


def test_kill_mid_stream_loses_no_decision_and_shows_none_twice(settings, workers, tmp_path):
    topics = topics_for(settings)
    requests = mixed_requests(12_000, "crash", seed=11)  # the direct data path decides 4,000 in well under a second
    wanted = {json.loads(v)["request_id"] for _, v in requests}
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    first = start_worker(workers, settings, "first")
    produce(settings.kafka, topics.ad_requests.name, requests)
    decisions.wait_for(lambda ms: len(ms) >= 1000, 120, "the first 1000 decisions")
    first.kill()
    before = {json.loads(m.value())["request_id"] for m in decisions.seen}
    assert len(before) < len(wanted), "the worker finished before it was killed; the test proves nothing"

    settings.store.data_dir = tmp_path / "after-crash"
    second = start_worker(workers, settings, "second")
    try:
        decisions.wait_for(lambda ms: {json.loads(m.value())["request_id"] for m in ms} >= wanted, 180,
                           "a decision for every request")
    except AssertionError:
        print(second.log_tail())
        raise
    ids = [json.loads(m.value())["request_id"] for m in decisions.seen]
    assert set(ids) == wanted
    ads: dict[str, set[str]] = {}
    for m in decisions.seen:
        d = json.loads(m.value())
        ads.setdefault(d["request_id"], set()).add(d["ad_id"])
    print(f"kill -9: {len(wanted)} requests, decided before the kill: {len(before)}, none without a decision, "
          f"decided twice: {len(ids) - len(set(ids))}, "
          f"of them with a different ad: {sum(len(v) > 1 for v in ads.values())}")
    assert len(ids) == len(set(ids)), "a request has more than one visible decision"
