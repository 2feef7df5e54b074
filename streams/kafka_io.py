"""confluent-kafka plumbing shared by the simulator, the benchmarks and the tests.

The Faust worker talks to Kafka through aiokafka; everything else uses confluent-kafka. Both must put a
key on the same partition, so producers here use ``murmur2_random`` (Kafka's Java/aiokafka default).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.connection import librdkafka_config
from streams.exceptions import BrokerRefused, BrokerUnavailable
from streams.settings import KafkaSettings
from streams.structured_logs import RDKAFKA_LOGGER
from streams.topics import TopicSpec


def client_config(kafka: KafkaSettings) -> dict[str, object]:
    """Connection settings common to every client (see ``streams.connection``)."""
    return librdkafka_config(kafka)


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
        # Ad decisions are written in transactions: readers see committed ones only (librdkafka's
        # default too, stated here so no reader of decisions depends on a default).
        "isolation.level": "read_committed",
    }
    return Consumer({"logger": RDKAFKA_LOGGER} | config | overrides)


def wait_for_broker(kafka: KafkaSettings, timeout_s: float = 30.0) -> None:
    """Block until the cluster answers a metadata request, or raise.

    ``BrokerRefused`` (at the first sign, not after ``timeout_s``) when the broker rejects the SASL
    credentials or the TLS handshake fails; ``BrokerUnavailable`` when nothing answers.
    """
    errors: list[KafkaError] = []
    admin = AdminClient(client_config(kafka) | {"error_cb": errors.append, "logger": _QUIET})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=min(2.0, max(deadline - time.monotonic(), 0.1))).brokers:
                return
        except KafkaException as exc:
            last = exc
            errors.append(exc.args[0])
        admin.poll(0)  # serves error_cb
        for err in errors:
            refusal = refusal_of(kafka, err)
            if refusal is not None:
                raise BrokerRefused(refusal)
        time.sleep(0.2)
    reason = last.args[0].str() if last is not None and last.args and hasattr(last.args[0], "str") else last
    raise BrokerUnavailable(
        f"no Kafka broker answered at {kafka.bootstrap} within {timeout_s:g}s ({reason}); start one with "
        "`metacart broker start` or set METACART_KAFKA__BOOTSTRAP")


# librdkafka logs every failed connection attempt (about every 50 ms); wait_for_broker reports once.
_QUIET = logging.getLogger("metacart.librdkafka.probe")
log = logging.getLogger("metacart.kafka")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


def refusal_of(kafka: KafkaSettings, err: KafkaError) -> str | None:
    """One line saying why the broker refused us, or None when ``err`` is not a refusal."""
    text = err.str()
    where = f"Kafka at {kafka.bootstrap}"
    if err.code() == KafkaError._AUTHENTICATION or "authentication" in text.lower():
        return (f"{where} refused the {kafka.sasl_mechanism} credentials of user {kafka.sasl_username!r} "
                f"(check METACART_KAFKA__SASL_USERNAME / _PASSWORD): {_short(text)}")
    if err.code() == KafkaError._SSL or "SSL handshake failed" in text or "certificate" in text:
        return (f"TLS handshake with {where} failed: the broker certificate is not trusted by "
                f"{kafka.ssl_ca_file or 'the system CA store'} or does not name the host "
                f"(METACART_KAFKA__SSL_CA_FILE, _SSL_CHECK_HOSTNAME): {_short(text)}")
    if err.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                      KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED):
        return f"{where}: user {kafka.sasl_username!r} is not allowed to do this (ACL): {_short(text)}"
    return None


def _short(text: str) -> str:
    return " ".join(text.split())[:300]


def ensure_topics(kafka: KafkaSettings, specs: Iterable[TopicSpec], timeout_s: float = 30.0,
                  compacted: bool = False, create: bool | None = None) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    ``compacted`` creates them with ``cleanup.policy=compact`` (table changelogs). Every topic gets
    ``replication_factor`` replicas and ``min.insync.replicas``. With ``create`` false (default:
    ``declare_topics``) a missing topic is an error instead: an administrator creates them.
    """
    specs = list(specs)
    admin = AdminClient(client_config(kafka) | {"logger": RDKAFKA_LOGGER})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return
    if not (kafka.declare_topics if create is None else create):
        raise BrokerRefused(f"topics missing or not visible to user {kafka.sasl_username!r} at "
                            f"{kafka.bootstrap}: {', '.join(s.name for s in missing)} (create them, or "
                            "grant Describe; METACART_KAFKA__DECLARE_TOPICS=true lets metacart create them)")
    config = {"min.insync.replicas": str(kafka.min_insync_replicas)}
    if compacted:
        config["cleanup.policy"] = "compact"
    new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=kafka.replication_factor,
                    config=config) for s in missing]
    for name, future in admin.create_topics(new, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            refusal = refusal_of(kafka, err)
            raise BrokerRefused(refusal or f"cannot create topic {name}: {_short(err.str())}") from None
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


def committed_offsets(kafka: KafkaSettings, group: str, tps: set[tuple[str, int]],
                      timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
    """The offsets ``group`` committed for ``tps`` (partitions without one left out; {} when they cannot be
    read, logged). Reading them does not join the group."""
    consumer = make_consumer(kafka, group, **{"enable.auto.commit": False})
    try:
        got = consumer.committed([TopicPartition(t, p) for t, p in sorted(tps)], timeout=timeout_s)
    except KafkaException as exc:
        log.warning("committed offsets of %s for %s unreadable: %s", sorted(tps), group, exc)
        return {}
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): tp.offset for tp in got if tp.error is None and tp.offset >= 0}


def ledger_offsets(consumer: Consumer, tps: list[tuple[str, int]],
                   timeout_s: float = 60.0) -> dict[tuple[str, int], int]:
    """The offsets ``consumer``'s group committed for ``tps`` (partitions without one left out), read until
    they can be: while a transaction holding offsets for the group is open the broker answers
    ``UNSTABLE_OFFSET_COMMIT``, and a broker away answers nothing. ``RuntimeError`` after ``timeout_s``: a
    data path must never guess where to start."""
    asked = [TopicPartition(t, p) for t, p in tps]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = consumer.committed(asked, timeout=10)
            if not any(tp.error for tp in got):
                return {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}
            error = next(tp.error for tp in got if tp.error)
        except KafkaException as exc:
            error = exc.args[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"committed offsets of {sorted(tps)} unreadable: {error}")
        log.warning("committed offsets not stable yet (%s); retrying", error)
        time.sleep(0.2)
