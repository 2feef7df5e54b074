"""``metacart bench stream``'s transaction floor on the real broker: a plain transactional producer at the
worker's commit cadence, read back with ``read_committed`` (``metacart.bench.stream._transaction_floor``)."""

from __future__ import annotations

import uuid

from metacart.bench.stream import _transaction_floor


def test_the_floor_reads_back_every_committed_message_and_times_its_commits(settings):
    floor = _transaction_floor(settings, f"floor-{uuid.uuid4().hex[:6]}", rate=200.0, seconds=2.0)
    assert floor["messages"] == 400
    assert floor["visible"] == 400  # nothing lost or left in an open transaction
    assert floor["commits"] >= 20  # one per commit interval (10 ms) at most, so 2 s hold well over 20
    assert 0 < floor["commit_p50_ms"] <= floor["commit_p99_ms"]
    assert 0 < floor["p50_ms"] <= floor["p99_ms"]
