"""What the chaos bench reads back from Kafka once a fault is over: committed positions against the ends of a
topic, the newest value of every key of a changelog, and whether a group's committed offsets ever moved back
(read from ``__consumer_offsets``). Each read has its own throwaway consumer group."""

from __future__ import annotations

import struct
import time
import uuid

from confluent_kafka import TopicPartition

from streams.ads_state import SegmentHead
from streams.kafka_io import committed_offsets, make_consumer
from streams.settings import KafkaSettings


def offsets_done(kafka: KafkaSettings, group: str, topic: str, partitions: int) -> bool:
    """Whether ``group`` committed the end of every partition of ``topic``."""
    return not lagging(kafka, group, topic, partitions)



def lagging(kafka: KafkaSettings, group: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    """``{partition: (committed offset, end offset)}`` for the partitions of ``topic`` whose end ``group`` has
    not committed (a negative offset: nothing committed)."""
    committed = committed_offsets(kafka, group, {(topic, p) for p in range(partitions)})
    c = make_consumer(kafka, group, **{"enable.auto.commit": False})
    try:
        behind = {}
        for p in range(partitions):
            _, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            at = committed.get((topic, p), -1)
            if high > 0 and at < high:
                behind[p] = (at, high)
        return behind
    finally:
        c.close()



def latest_values(kafka: KafkaSettings, topic: str, timeout_s: float = 120.0) -> dict[bytes, bytes | None]:
    """The newest value of every key in ``topic`` (None: deleted), read from the beginning to its end."""
    c = make_consumer(kafka, f"chaos-state-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=30).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    latest: dict[bytes, bytes | None] = {}
    pos = {p: 0 for p in parts}
    deadline = time.monotonic() + timeout_s
    try:
        while any(pos[p] < ends[p] for p in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end within {timeout_s:g}s")
            for msg in c.consume(num_messages=5000, timeout=0.5):
                if msg.error():
                    continue
                pos[msg.partition()] = msg.offset() + 1
                latest[msg.key()] = msg.value()
    finally:
        c.close()
    return latest



def segment_heads(kafka: KafkaSettings, topic: str) -> dict[str, SegmentHead]:
    """The newest head record of every segment in the table changelog."""
    return {k[2:].decode(): SegmentHead.decode(v) for k, v in latest_values(kafka, topic).items()
            if k.startswith(b"h:") and v is not None}



def ledger_moves_back(kafka: KafkaSettings, group: str, timeout_s: float = 60.0) -> int:
    """How often a committed offset of ``group`` went below the one committed before it (read_committed).

    Reads ``__consumer_offsets`` (offset-commit records: key version 0/1 = group, topic, partition; value =
    version, offset). The ledger must only move forward: a move back makes the next worker re-emit
    decisions that are already visible.
    """
    c = make_consumer(kafka, f"chaos-ledger-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})
    topic = "__consumer_offsets"
    tps = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=30).topics[topic].partitions]
    ends = [c.get_watermark_offsets(tp, timeout=30)[1] for tp in tps]
    c.assign([TopicPartition(topic, tp.partition, 0) for tp in tps])
    last: dict[tuple[str, int], int] = {}
    back = 0
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = c.consume(num_messages=5000, timeout=0.5)
            for msg in batch:
                key, value = msg.key(), msg.value()
                if msg.error() or key is None or value is None or struct.unpack_from(">h", key)[0] > 1:
                    continue
                name, i = _short_string(key, 2)
                if name != group:
                    continue
                tp_topic, i = _short_string(key, i)
                tp = (tp_topic, struct.unpack_from(">i", key, i)[0])
                offset = struct.unpack_from(">q", value, 2)[0]
                if tp in last and offset < last[tp]:
                    back += 1
                last[tp] = offset
            # Transaction markers are never delivered, so the position (past them) tells the end.
            if not batch and all(tp.offset >= end for tp, end in zip(c.position(tps), ends) if end > 0):
                break
        else:
            raise TimeoutError(f"{topic} not read to its end within {timeout_s:g}s")
    finally:
        c.close()
    if not last:
        raise RuntimeError(f"no committed offsets of group {group} found in {topic}")
    return back



def _short_string(buf: bytes, i: int) -> tuple[str, int]:
    n = struct.unpack_from(">h", buf, i)[0]
    return buf[i + 2:i + 2 + n].decode(), i + 2 + n
