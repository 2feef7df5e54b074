"""Where the retention data path starts each input partition, on the real broker: the retention ledger group's
committed offset; for a partition that group never committed, the offset the app's Faust group had committed
(the place an upgrade from the Faust data path left it); else the beginning (left out of the answer)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

from confluent_kafka import TopicPartition

from streams.agents.datapath import data_consumer
from streams.agents.delivery import retrying
from streams.agents.retention import RetentionWork, retention_ledger_group
from streams.agents.stall import StallWatch
from streams.app import topics_for
from streams.kafka_io import committed_offsets, make_consumer


def _commit(settings, group: str, topic: str, partition: int, offset: int) -> None:
    committer = make_consumer(settings.kafka, group, **{"enable.auto.commit": False})
    # retried: right after the broker starts a new group's coordinator may still be loading
    retrying(lambda: committer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False))
    committer.close()


def test_a_partition_starts_at_the_ledger_else_at_the_faust_groups_offset_else_at_the_beginning(settings):
    topics = topics_for(settings)
    sessions, outcomes = topics.sessions.name, topics.retention_outcomes.name
    ledger = retention_ledger_group(settings)
    _commit(settings, ledger, sessions, 0, 7)
    _commit(settings, settings.worker_id, sessions, 0, 3)  # older than the ledger: not used
    _commit(settings, settings.worker_id, outcomes, 0, 5)  # never in the ledger: the upgrade's start
    consumer = data_consumer(settings.kafka, ledger, 16)
    engine = SimpleNamespace(counters=Counter())
    app = SimpleNamespace(conf=SimpleNamespace(id=settings.worker_id), rebalancing=False)
    watch = StallWatch(app, settings.kafka, "retention", stall_s=60)
    work = RetentionWork(app, settings, topics, engine, store=None, tables={}, output=None, consumer=consumer,
                         watch=watch, metrics=None)
    try:
        starts = asyncio.run(work.prepare({0, 1}))
    finally:
        consumer.close()
    assert dict(starts) == {(sessions, 0): 7, (outcomes, 0): 5}  # partition 1 and erasures/0: the beginning
    assert work.positions == work.committed == dict(starts)
    assert engine.counters["retention_ledger_reads"] == 1
    erasures = topics.erasure_requests.name
    assert watch._expected == {**{(t, p): 0 for t in (sessions, outcomes, erasures) for p in (0, 1)}, **starts}


def test_committed_offsets_of_an_unreachable_broker_are_empty_not_an_error(settings):
    unreachable = settings.kafka.model_copy(update={"bootstrap": "127.0.0.1:1"})
    assert committed_offsets(unreachable, settings.worker_id, {("nothing", 0)}, timeout_s=1.0) == {}
