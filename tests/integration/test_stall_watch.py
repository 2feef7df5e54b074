"""``StallWatch`` against the real broker: a quiet agent behind real input exits; one that is caught up, one
behind a transaction marker only, and one quiet for less than ``stall_s`` do not. A group whose committed offset
stays behind what the agent processed for ``stall_s`` exits too (``check_commits``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace

from confluent_kafka import TopicPartition

from streams.agents.stall import STALLED_INPUT_EXIT, STUCK_COMMIT_EXIT, StallWatch
from streams.kafka_io import ensure_topics, make_consumer, make_producer
from streams.topics import TopicSpec


@dataclass
class AppState:
    """What the watch reads of the Faust app: whether a rebalance is under way, and its group (``conf.id``)."""

    rebalancing: bool = False
    conf: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(id=f"t-stall-{uuid.uuid4().hex[:8]}"))


def _topic(broker, name: str) -> str:
    topic = f"t-stall-{name}-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker, [TopicSpec(topic, "key", 1, bytes, "stall watch test")], create=True)
    return topic


def _check(broker, expected: dict, stall_s: float = 0.2, quiet_s: float = 0.3, rebalancing: bool = False) -> list:
    exits: list[int] = []
    watch = StallWatch(AppState(rebalancing), broker, "test", stall_s, exit=exits.append)
    watch.progressed(expected)
    time.sleep(quiet_s)
    assert asyncio.run(watch.check()) == bool(exits)
    return exits


def test_a_quiet_agent_behind_real_input_exits_and_a_caught_up_one_does_not(broker):
    topic = _topic(broker, "plain")
    producer = make_producer(broker)
    for i in range(5):
        producer.produce(topic, key=b"k", value=b"%d" % i, partition=0)
    assert producer.flush(30) == 0
    assert _check(broker, {(topic, 0): 3}) == [STALLED_INPUT_EXIT]  # offsets 3 and 4 wait
    assert _check(broker, {(topic, 0): 5}) == []  # caught up: idle, not stalled
    assert _check(broker, {(topic, 0): 3}, stall_s=30.0) == []  # not quiet for long enough
    assert _check(broker, {(topic, 0): 3}, rebalancing=True) == []  # a rebalance is under way


def test_a_transaction_marker_alone_is_not_input(broker):
    topic = _topic(broker, "txn")
    producer = make_producer(broker, **{"transactional.id": f"t-stall-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=b"k", value=b"%d" % i, partition=0)
    producer.commit_transaction(30)  # offsets 0-2, then the commit marker at 3
    assert _check(broker, {(topic, 0): 3}) == []
    assert _check(broker, {(topic, 0): 2}) == [STALLED_INPUT_EXIT]


def test_a_commit_that_stays_behind_the_processed_input_for_stall_s_exits(broker):
    topic = _topic(broker, "commit")
    app = AppState()
    committer = make_consumer(broker, app.conf.id, **{"enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    committer.close()
    exits: list[int] = []
    watch = StallWatch(app, broker, "test", 0.3, exit=exits.append)
    watch.progressed({(topic, 0): 5})  # processed 2..4, Faust committed 2
    t0 = time.monotonic()
    assert not asyncio.run(watch.check_commits())  # first seen behind (or the group's offsets not readable yet)
    while not exits and time.monotonic() - t0 < 20:  # a new group's coordinator may still be loading
        time.sleep(0.1)
        asyncio.run(watch.check_commits())
    assert exits == [STUCK_COMMIT_EXIT]
    assert time.monotonic() - t0 >= 0.3  # not before stall_s
    watch.progressed({(topic, 0): 2})  # caught up with the commit
    time.sleep(0.4)
    assert not asyncio.run(watch.check_commits())
    watch.progressed({(topic, 0): 5})
    app.rebalancing = True
    time.sleep(0.4)
    assert not asyncio.run(watch.check_commits()) and not asyncio.run(watch.check_commits())
    assert exits == [STUCK_COMMIT_EXIT]
