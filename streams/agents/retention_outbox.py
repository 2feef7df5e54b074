"""Retention actions decided before a crash and never delivered, sent again once.

The retention engine keeps every action it decides in its state's outbox until the agent has delivered it
(:mod:`streams.retention_book`, "Outbox"). A restored worker finds there the actions whose delivery was never
confirmed: some reached ``retention-actions`` before the crash, some did not. :func:`resend_unsent` reads
each partition of the topic (``read_committed``) from its first message at or after the earliest of those
decisions (by timestamp, less a second) to its end, and sends only the ones it does not find, to their
user's partition. The actions of a worker that was killed are all in the topic or never will be; a worker that
is still sending for a partition it lost (a zombie) is not fenced here.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence

from confluent_kafka import Producer, TopicPartition

from streams.kafka_io import make_consumer
from streams.retention_book import Unsent
from streams.settings import KafkaSettings


def held_ids(kafka: KafkaSettings, topic: str, since_ms: dict[int, int], timeout_s: float = 30.0) -> set[str]:
    """Decision ids of the actions in ``topic`` partition p from time ``since_ms[p]`` to its current end."""
    consumer = make_consumer(kafka, f"retention-outbox-{uuid.uuid4().hex[:8]}",
                             **{"enable.auto.commit": False, "isolation.level": "read_committed"})
    held: set[str] = set()
    try:
        starts = consumer.offsets_for_times([TopicPartition(topic, p, max(ms, 0)) for p, ms in since_ms.items()],
                                            timeout=timeout_s)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in since_ms}
        todo = [tp for tp in starts if 0 <= tp.offset < ends[tp.partition]]  # -1: nothing at or after that time
        if not todo:
            return held
        consumer.assign(todo)
        pos = {tp.partition: tp.offset for tp in todo}
        deadline = time.monotonic() + timeout_s
        while any(pos[p] < ends[p] for p in pos):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end within {timeout_s:g}s")
            for msg in consumer.consume(num_messages=2000, timeout=0.5):
                if msg.error() is None:
                    pos[msg.partition()] = msg.offset() + 1
                    held.add(json.loads(msg.value())["decision_id"])
    finally:
        consumer.close()
    return held


def resend_unsent(kafka: KafkaSettings, producer: Producer, topic: str, unsent: Sequence[Unsent],
                  timeout_s: float = 30.0) -> tuple[int, int]:
    """Send each action of ``unsent`` that ``topic`` does not hold yet and wait for it; returns (found, sent)."""
    since: dict[int, int] = defaultdict(lambda: 2**62)
    for u in unsent:
        since[u.partition] = min(since[u.partition], u.decided_ms - 1000)
    held = held_ids(kafka, topic, dict(since), timeout_s)
    missing = [u for u in unsent if u.decision_id not in held]
    for u in missing:
        producer.produce(topic, key=u.key, value=u.value, partition=u.partition)
    left = producer.flush(timeout_s)
    if left:
        raise RuntimeError(f"{left} retention actions not delivered again in {timeout_s:g} s")
    return len(unsent) - len(missing), len(missing)
