"""The direct data path against the real broker: who owns what, where state lands, where reading starts.

- Faust's assignor gives each worker the ``ads-segments`` changelog partitions (actives) with the same
  numbers as its membership partitions, and the data consumer reads exactly those (two workers);
- a segment's head goes to changelog partition p and RocksDB partition p, p being the partition of the
  segment's requests (the write routing of ``streams.agents.datapath.PartitionEvent``);
- a restarted worker starts every partition at its ledger offset (the committed offsets of
  ``<app>-ledger``), and the Faust data path stays selectable (``ads.data_path="faust"``).
"""

from __future__ import annotations

import json
import re
import time

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from rocksdict import AccessType, Options, Rdict

from streams.agents.datapath import membership_topic_name
from streams.app import topics_for
from streams.kafka_io import make_consumer

from .conftest import Reader, produce, start_worker
from .helpers import counter, latest_stats, mixed_requests

_READING = re.compile(r"reading partitions \[([\d, ]*)\] from the ledger|partitions \[[\d, ]*\] (released)")


def _read_partitions(worker) -> set[int] | None:
    """The partitions the worker's data consumer reads now, as its log says: those of its latest assignment,
    or none after a later release (a revoke releases them before the next assignment is taken)."""
    found = _READING.findall(worker.log_path.read_text(errors="replace"))
    if not found:
        return None
    taken, released = found[-1]
    return set() if released else {int(p) for p in taken.split(",") if p.strip()}


def _members(settings) -> dict[str, dict[str, set[int]]]:
    """The broker's view of the Faust group: member client id -> topic -> assigned partitions."""
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    group = admin.describe_consumer_groups([settings.worker_id])[settings.worker_id].result(timeout=30)
    out: dict[str, dict[str, set[int]]] = {}
    for m in group.members:
        tps = m.assignment.topic_partitions if m.assignment else []
        by_topic: dict[str, set[int]] = {}
        for tp in tps:
            by_topic.setdefault(tp.topic, set()).add(tp.partition)
        out[m.client_id] = by_topic
    return out


def test_two_workers_own_matching_membership_and_changelog_partitions(settings, workers, tmp_path):
    topics = topics_for(settings)
    stats = Reader(settings.kafka, topics.worker_stats.name)
    a = start_worker(workers, settings, "a")
    second = settings.model_copy(deep=True)
    second.store.data_dir = tmp_path / "worker-b"
    b = start_worker(workers, second, "b")
    membership = membership_topic_name(settings.worker_id)
    changelog = f"{settings.worker_id}-ads-segments-changelog"
    parts = set(range(settings.kafka.segment_partitions))
    deadline = time.monotonic() + 120
    members: dict = {}
    while time.monotonic() < deadline:
        # Traffic until both decide: then the rebalance to two members is over and both read.
        produce(settings.kafka, topics.ad_requests.name, mixed_requests(40, f"m{int(time.monotonic())}"))
        stats.poll(0.5)
        busy = [s for s in latest_stats(stats.seen).values() if s["counters"].get("decisions", 0) > 0]
        members = _members(settings)
        if len(busy) == 2 and len(members) == 2 and all(m.get(membership) for m in members.values()):
            break
    else:
        raise AssertionError(f"two deciding members expected; broker says {members}\n{a.log_tail()}\n{b.log_tail()}")
    owned = [m[membership] for m in members.values()]
    assert owned[0].isdisjoint(owned[1]) and owned[0] | owned[1] == parts, members
    for m in members.values():
        assert m[changelog] == m[membership], f"changelog actives differ from membership partitions: {m}"
    # The broker shows the new assignment before each worker's data path took it (after Faust's recovery).
    deadline = time.monotonic() + 60
    while (read := {frozenset(_read_partitions(w) or ()) for w in (a, b)}) != {frozenset(o) for o in owned}:
        if time.monotonic() > deadline:
            raise AssertionError(f"data consumers read {read}, Faust assigned {owned}")
        time.sleep(0.5)


def test_heads_land_in_the_partition_of_their_segment_and_restarts_start_at_the_ledger(settings, workers, tmp_path):
    topics = topics_for(settings)
    settings.ads.attribution_window_s = 10.0  # windows close (one request per event-time second): heads change
    requests = mixed_requests(600, "route", seed=5)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    worker = start_worker(workers, settings, "a")
    produce(settings.kafka, topics.ad_requests.name, requests)
    decisions.wait_for(lambda ms: len(ms) >= len(requests), 120, "every decision")
    worker.stop()  # SIGTERM: revoke order (commit, then release), then close
    assert not worker.alive()

    # The partition of each segment's requests, as the producer's partitioner put them.
    where: dict[str, int] = {}
    reader = Reader(settings.kafka, topics.ad_requests.name)
    reader.wait_for(lambda ms: len(ms) >= len(requests), 60, "the requests back")
    for m in reader.seen:
        where[json.loads(m.value())["segment"]] = m.partition()
    changelog = Reader(settings.kafka, f"{settings.worker_id}-ads-segments-changelog")
    changelog.wait_for(lambda ms: {m.key()[2:].decode() for m in ms if m.key().startswith(b"h:")} >= set(where),
                       60, "a head for every segment")
    for m in changelog.seen:
        key = m.key().decode()
        if key.startswith("h:"):
            assert m.partition() == where[key[2:]], f"head {key} in changelog partition {m.partition()}"
        else:  # a pending block b:<partition>:<tag>:<seq> (or its deletion)
            assert m.partition() == int(key.split(":")[1]), f"block {key} in changelog partition {m.partition()}"
    tables = settings.store.data_dir / "v1" / "tables"
    for segment, p in where.items():
        for q in range(settings.kafka.segment_partitions):
            db = Rdict(str(tables / f"ads-segments-{q}.db"), options=Options(raw_mode=True),
                       access_type=AccessType.read_only())
            try:
                present = db.get(b"h:" + segment.encode()) is not None
            finally:
                db.close()
            assert present == (p == q), f"head of {segment} (partition {p}) in RocksDB partition {q}: {present}"

    # Restart: every partition starts at the ledger, which covers every request: no decision again.
    ledger = make_consumer(settings.kafka, f"{settings.worker_id}-ledger", **{"enable.auto.commit": False})
    committed = ledger.committed([TopicPartition(topics.ad_requests.name, p)
                                  for p in range(settings.kafka.segment_partitions)], timeout=30)
    ledger.close()
    ends = {p: n for p, n in _counts(reader.seen).items()}
    assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == ends
    again = start_worker(workers, settings, "again")
    more = mixed_requests(50, "after", seed=6)
    produce(settings.kafka, topics.ad_requests.name, more)
    decisions.wait_for(lambda ms: len(ms) >= len(requests) + len(more), 120, "decisions after the restart")
    time.sleep(2.0)
    decisions.poll(1.0)
    ids = [json.loads(m.value())["request_id"] for m in decisions.seen]
    assert len(ids) == len(set(ids)) == len(requests) + len(more), "a request decided again after the restart"
    starts = {(t, int(p), int(o)) for t, p, o in re.findall(r"\('([\w-]+)', (\d+), (-?\d+)\)", _last_reading(again))}
    assert {(p, o) for t, p, o in starts if t == "ad-requests" and o >= 0} == set(ends.items())


def test_a_quiet_worker_stops_committing_and_commits_again_when_traffic_returns(settings, workers):
    """Commits follow traffic: every 10 ms while requests come, none while nothing was produced and no input
    position moved (before session 14 a quiet ad worker began a commit on each of two 10 ms timers)."""
    topics = topics_for(settings)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    stats = Reader(settings.kafka, topics.worker_stats.name)
    start_worker(workers, settings, "quiet")
    first = mixed_requests(100, "busy", seed=8)
    produce(settings.kafka, topics.ad_requests.name, first)
    decisions.wait_for(lambda ms: len(ms) >= len(first), 120, "the first decisions")
    time.sleep(3.0)  # the last commit and a stats report after it
    stats.poll(1.0)
    quiet_from = counter(stats.seen, "commits")
    time.sleep(5.0)  # about 500 commit intervals of nothing
    stats.wait_for(lambda ms: len(ms) > 0, 10, "a stats report")
    stats.poll(1.5)
    quiet_to = counter(stats.seen, "commits")
    assert quiet_from > 0, "the worker never committed"
    assert quiet_to - quiet_from <= 2, f"{quiet_to - quiet_from:g} commits in 5 s with nothing to commit"
    more = mixed_requests(50, "back", seed=9)
    produce(settings.kafka, topics.ad_requests.name, more)
    decisions.wait_for(lambda ms: len(ms) >= len(first) + len(more), 60, "decisions after the quiet spell")
    stats.wait_for(lambda ms: counter(ms, "commits") > quiet_to, 30, "a commit of the new traffic")


def test_the_faust_data_path_stays_selectable(settings, workers):
    settings.ads.data_path = "faust"
    topics = topics_for(settings)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    worker = start_worker(workers, settings, "faust")
    requests = mixed_requests(200, "fp", seed=7)
    produce(settings.kafka, topics.ad_requests.name, requests)
    decisions.wait_for(lambda ms: len(ms) >= len(requests), 120, "every decision on the Faust path")
    assert _read_partitions(worker) is None  # the direct data path did not run


def _counts(msgs: list) -> dict[int, int]:
    out: dict[int, int] = {}
    for m in msgs:
        out[m.partition()] = max(out.get(m.partition(), 0), m.offset() + 1)
    return out


def _last_reading(worker) -> str:
    lines = [line for line in worker.log_path.read_text(errors="replace").splitlines() if "reading partitions" in line]
    assert lines, "the restarted worker never took its partitions"
    return lines[-1]
