"""The pieces of a check of where a partition starts after an assignment, on the real broker: the group's
committed offsets (``streams.kafka_io.committed_offsets``, also the chaos bench's lag check) and the agent's
order check and hole reader (faust-streaming/faust#596: Faust can drop the first messages it fetched while its
tables recover, and then never commits that partition). The agent does not make this check yet (see
``streams.agents.retention.in_order``)."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from streams.agents.retention import in_order, messages_between
from streams.app import topics_for
from streams.kafka_io import committed_offsets, make_consumer, make_producer


def test_a_start_above_the_committed_offset_is_a_hole_holding_the_messages_skipped(settings):
    topic = topics_for(settings).sessions.name
    producer = make_producer(settings.kafka)
    for i in range(10):
        producer.produce(topic, key=b"u%d" % i, value=b"{}", partition=0)
    producer.flush(10)
    group = settings.worker_id
    committer = make_consumer(settings.kafka, group, **{"enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
    committer.close()

    start = committed_offsets(settings.kafka, group, {(topic, 0), (topic, 1)})
    assert start == {(topic, 0): 7}  # partition 1 has no committed offset: left out, its first message taken

    next_offset = dict(start)
    counters = {"retention_offset_gaps": 0, "retention_offset_repeats": 0}
    assert in_order(next_offset, topic, 0, 9, counters) == 7  # Faust delivered 9 first: 7 and 8 never came
    assert counters["retention_offset_gaps"] == 1
    assert messages_between(settings.kafka, [(topic, 0, 7, 9)]) == 2  # real messages: the agent exits to replay
    assert in_order(next_offset, topic, 1, 0, counters) is None


def test_committed_offsets_of_an_unreachable_broker_are_empty_not_an_error(settings):
    unreachable = settings.kafka.model_copy(update={"bootstrap": "127.0.0.1:1"})
    assert committed_offsets(unreachable, settings.worker_id, {("nothing", 0)}, timeout_s=1.0) == {}
