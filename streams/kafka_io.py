"""confluent-kafka plumbing shared by the simulator, the benchmarks and the tests.

The Faust worker talks to Kafka through aiokafka; everything else uses confluent-kafka. Both must put a
key on the same partition, so producers here use ``murmur2_random`` (Kafka's Java/aiokafka default).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.exceptions import BrokerUnavailable
from streams.settings import KafkaSettings
from streams.structured_logs import RDKAFKA_LOGGER
from streams.topics import TopicSpec


def client_config(kafka: KafkaSettings) -> dict[str, object]:
    """Connection settings common to every client."""
    config: dict[str, object] = {"bootstrap.servers": kafka.bootstrap}
    if kafka.sasl_username:
        config.update({
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": kafka.sasl_username,
            "sasl.password": kafka.sasl_password.get_secret_value() if kafka.sasl_password else "",
        })
    return config


def make_producer(kafka: KafkaSettings, **overrides: object) -> Producer:
    config = client_config(kafka) | {
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        "enable.idempotence": True,
        "queue.buffering.max.messages": 1_000_000,
    }
    return Producer({"logger": RDKAFKA_LOGGER} | config | overrides)


def make_consumer(kafka: KafkaSettings, group_id: str, **overrides: object) -> Consumer:
    config = client_config(kafka) | {
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
    }
    return Consumer({"logger": RDKAFKA_LOGGER} | config | overrides)


def wait_for_broker(kafka: KafkaSettings, timeout_s: float = 30.0) -> None:
    """Block until the cluster answers a metadata request, or raise ``BrokerUnavailable``.

    librdkafka's own log is silenced here (``log_level`` 0): with no broker it writes a
    "Connection refused" line about every 50 ms, and the one error raised says it all.
    """
    admin = AdminClient(client_config(kafka) | {"log_level": 0})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=min(2.0, max(deadline - time.monotonic(), 0.1))).brokers:
                return
        except KafkaException as exc:
            last = exc
        time.sleep(0.2)
    reason = last.args[0].str() if last is not None and last.args and hasattr(last.args[0], "str") else last
    raise BrokerUnavailable(
        f"no Kafka broker answered at {kafka.bootstrap} within {timeout_s:g}s ({reason}); start one with "
        "`metacart broker start` or set METACART_KAFKA__BOOTSTRAP")


def ensure_topics(kafka: KafkaSettings, specs: Iterable[TopicSpec], timeout_s: float = 30.0,
                  compacted: bool = False) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    ``compacted`` creates them with ``cleanup.policy=compact`` (table changelogs).
    """
    admin = AdminClient(client_config(kafka) | {"logger": RDKAFKA_LOGGER})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    config = {"cleanup.policy": "compact"} if compacted else {}
    new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=config)
           for s in specs if s.name not in existing]
    if not new:
        return
    for name, future in admin.create_topics(new, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    wait_for_leaders(admin, {t.topic for t in new}, timeout_s)


def wait_for_leaders(admin: AdminClient, names: set[str], timeout_s: float = 30.0) -> None:
    """Block until every partition of ``names`` has a leader.

    A topic just created answers ``NOT_LEADER_FOR_PARTITION`` to producers for a moment; waiting
    here keeps that out of the first requests.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        missing = [n for n in names if n not in topics or topics[n].error is not None
                   or not topics[n].partitions or any(p.leader < 0 for p in topics[n].partitions.values())]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"topics without a partition leader after {timeout_s:g}s: {sorted(missing)}")
        time.sleep(0.1)

def consume(kafka: KafkaSettings, topics: list[str], group_id: str, count: int,
            timeout_s: float, **overrides: object) -> list[Message]:
    """Read up to ``count`` messages (or until ``timeout_s``) from the start of ``topics``."""
    consumer = make_consumer(kafka, group_id, **overrides)
    consumer.subscribe(topics)
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=min(1000, count - len(out)), timeout=0.2):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(msg.error())
                out.append(msg)
    finally:
        consumer.close()
    return out


def tail_consumer(kafka: KafkaSettings, topic: str, **overrides: object) -> Consumer:
    """A consumer positioned at the current end of every partition of ``topic``.

    ``auto.offset.reset=latest`` resolves the start offset lazily after the assignment, so messages
    produced in between are skipped; pinning the end offsets first makes "everything from now on" exact.
    """
    consumer = make_consumer(kafka, f"tail-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False} | overrides)
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    tps = []
    for p in partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        tps.append(TopicPartition(topic, p, high))
    consumer.assign(tps)
    return consumer
