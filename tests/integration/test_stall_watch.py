"""``StallWatch`` against the real broker: a quiet agent behind real input exits; one that is caught up, one
behind a transaction marker only, and one quiet for less than ``stall_s`` do not."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace


from streams.agents.stall import STALLED_INPUT_EXIT, StallWatch
from streams.kafka_io import ensure_topics, make_producer
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
