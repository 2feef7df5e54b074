"""``TrackedTable`` on the real broker: changelog messages leave at ``changelog_acked``, in write order, all
acknowledged when it returns; a message the client refuses fails it."""

from __future__ import annotations

import asyncio
import uuid

import faust
import pytest
from confluent_kafka import TopicPartition
from faust.types import TP

from streams.kafka_io import consume, ensure_topics, make_consumer, make_producer
from streams.agents.datapath import PartitionEvent
from streams.store import FaustStore
from streams.tables import ChangelogError, TrackedTable, tracked_table
from streams.topics import TopicSpec


def _end_offsets(broker, topic: str, partitions: int) -> list[int]:
    consumer = make_consumer(broker, f"t-{uuid.uuid4().hex[:6]}")
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        consumer.close()


async def _acknowledged(broker, table: TrackedTable, topic: str, refused: type[Exception]) -> tuple[list, list]:
    """``changelog_acked``, then the end offsets read right away (acknowledged means written) and the persisted
    offsets; then a write past the client's size limit must fail the next ``changelog_acked``."""
    await table.changelog_acked()
    assert table.unacked() == 0
    after = _end_offsets(broker, topic, 2)
    persisted = [table.data.persisted_offset(TP(topic, p)) for p in range(2)]
    table.send_changelog(0, b"big", b"x" * (2 * 1024 * 1024))
    with pytest.raises(refused, match="(?i)too large|size"):
        await table.changelog_acked()
    return after, persisted


def _values_by_partition(broker, topic: str, n: int) -> dict[int, list[bytes | None]]:
    """The first ``n`` records of the two-partition ``topic``: their values, per partition, in log order."""
    by_partition: dict[int, list[bytes | None]] = {0: [], 1: []}
    for m in consume(broker, [topic], f"t-{uuid.uuid4().hex[:6]}", n, 30, **{"auto.offset.reset": "earliest"}):
        by_partition[m.partition()].append(m.value())
    return by_partition


def test_changelog_messages_leave_at_changelog_acked_in_write_order(broker, tmp_path):
    """``faust.changelog_producer = "faust"``: held until ``changelog_acked``, then sent through Faust's producer
    in write order, acknowledged when it returns, each one's offset recorded by Faust's callback as the
    table's persisted offset."""
    app_id = f"t-tracked-{uuid.uuid4().hex[:8]}"
    topic = f"{app_id}-t-changelog"
    ensure_topics(broker, [TopicSpec(topic, "key", 2, bytes, "test changelog")], compacted=True, create=True)

    async def main() -> tuple[list[int], list[int], list[int | None]]:
        app = faust.App(app_id, broker=f"kafka://{broker.bootstrap}", store="rocksdb://", datadir=str(tmp_path))
        table = tracked_table(app, "t", partitions=2, key_type=bytes, value_type=bytes)
        assert isinstance(table, TrackedTable) and table.changelog_topic.get_topic_name() == topic
        await app.producer.start()
        try:
            for i in range(300):  # one key per partition, rewritten: the last value must be the last record
                table.send_changelog(i % 2, b"k%d" % (i % 2), b"%d" % i)
            assert table.unacked() == 300
            await asyncio.sleep(0.5)
            before = _end_offsets(broker, topic, 2)  # nothing has left yet
            after, persisted = await _acknowledged(broker, table, topic, Exception)
        finally:
            await app.producer.stop()
        return before, after, persisted

    before, after, persisted = asyncio.run(main())
    assert before == [0, 0]
    assert after == [150, 150]
    assert persisted == [149, 149]
    by_partition = _values_by_partition(broker, topic, 300)
    assert by_partition[0] == [b"%d" % i for i in range(0, 300, 2)]
    assert by_partition[1] == [b"%d" % i for i in range(1, 300, 2)]


def test_a_librdkafka_changelog_keeps_write_order_and_records_the_persisted_offset(broker, tmp_path):
    """``faust.changelog_producer = "librdkafka"``: writes leave at once through the table's own producer,
    in write order per partition; ``changelog_acked`` returns once all are acknowledged and records each
    partition's last offset as the table's persisted offset (recovery reads the changelog after it); a write
    the client refuses fails it."""
    app_id = f"t-rdk-{uuid.uuid4().hex[:8]}"
    topic = f"{app_id}-t-changelog"
    ensure_topics(broker, [TopicSpec(topic, "key", 2, bytes, "test changelog")], compacted=True, create=True)

    async def main() -> tuple[list[int], list[int | None]]:
        app = faust.App(app_id, broker=f"kafka://{broker.bootstrap}", store="rocksdb://", datadir=str(tmp_path))
        table = tracked_table(app, "t", partitions=2, key_type=bytes, value_type=bytes,
                              changelog_producer=make_producer(broker, **{"linger.ms": 1}))
        store = FaustStore({"t": table}, events={p: PartitionEvent("requests", p) for p in range(2)})
        # Faust checks once that the source topic is co-partitioned, through a consumer this test never
        # starts (the workers' checks pass on the real topics)
        table._verified_source_topics_for_partitions.add("requests")
        for i in range(300):  # through the table, as the engines write (Faust's on_key_set)
            store.put("t", f"k{i % 2}", i % 2, b"%d" % i)
        store.put("t", "gone", 1, b"x")
        store.delete("t", "gone", 1)  # a delete is a tombstone
        assert table.unacked() == 302
        return await _acknowledged(broker, table, topic, ChangelogError)

    after, persisted = asyncio.run(main())
    assert after == [150, 152]
    assert persisted == [149, 151]
    by_partition = _values_by_partition(broker, topic, 302)
    assert by_partition[0] == [b"%d" % i for i in range(0, 300, 2)]
    assert by_partition[1] == [b"%d" % i for i in range(1, 300, 2)] + [b"x", None]
