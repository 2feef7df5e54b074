"""``TrackedTable`` on the real broker: changelog messages leave at ``changelog_acked``, in write order, all
acknowledged when it returns; a message the client refuses fails it."""

from __future__ import annotations

import asyncio
import uuid

import faust
import pytest
from confluent_kafka import TopicPartition

from streams.kafka_io import consume, ensure_topics, make_consumer
from streams.tables import TrackedTable, tracked_table
from streams.topics import TopicSpec


def _end_offsets(broker, topic: str, partitions: int) -> list[int]:
    consumer = make_consumer(broker, f"t-{uuid.uuid4().hex[:6]}")
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        consumer.close()


def test_changelog_messages_leave_at_changelog_acked_in_write_order(broker):
    app_id = f"t-tracked-{uuid.uuid4().hex[:8]}"
    topic = f"{app_id}-t-changelog"
    ensure_topics(broker, [TopicSpec(topic, "key", 2, bytes, "test changelog")], compacted=True, create=True)

    async def main() -> tuple[list[int], list[int]]:
        app = faust.App(app_id, broker=f"kafka://{broker.bootstrap}", store="memory://")
        table = tracked_table(app, "t", partitions=2, key_type=bytes, value_type=bytes)
        assert isinstance(table, TrackedTable) and table.changelog_topic.get_topic_name() == topic
        await app.producer.start()
        try:
            for i in range(300):  # one key per partition, rewritten: the last value must be the last record
                table.send_changelog(i % 2, b"k%d" % (i % 2), b"%d" % i)
            assert table.unacked() == 300
            await asyncio.sleep(0.5)
            before = _end_offsets(broker, topic, 2)  # nothing has left yet
            await table.changelog_acked()
            assert table.unacked() == 0
            after = _end_offsets(broker, topic, 2)  # read right away: acknowledged means written
            table.send_changelog(0, b"big", b"x" * (2 * 1024 * 1024))  # past the client's request size
            with pytest.raises(Exception, match="(?i)too large|size"):
                await table.changelog_acked()
        finally:
            await app.producer.stop()
        return before, after

    before, after = asyncio.run(main())
    assert before == [0, 0]
    assert after == [150, 150]
    records = consume(broker, [topic], f"t-{uuid.uuid4().hex[:6]}", 300, 30, **{"auto.offset.reset": "earliest"})
    by_partition: dict[int, list[int]] = {0: [], 1: []}
    for m in records:
        by_partition[m.partition()].append(int(m.value()))
    assert by_partition[0] == list(range(0, 300, 2)) and by_partition[1] == list(range(1, 300, 2))
