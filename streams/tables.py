"""Faust tables whose changelog writes a commit sends and waits for itself.

A table write in Faust puts its changelog message into the app producer's buffer (``send_soon``), which a
background task hands to the Kafka client one message per event-loop turn; and ``app.producer.flush()`` is not
a barrier for that buffer: ``ProducerBuffer.flush_atmost`` returns as soon as handing one message over takes
longer than 0.1 s (faust-streaming 0.15.3), leaving the rest unsent. A commit that trusted it could record input
offsets whose state changes never reached the changelog, and a crash then loses them (seen as clicks lost under
kill -9 on a loaded machine). It is also slow inside a commit: in ``bench stream``'s latency run (1,000
requests/s, load average 2.6) draining a commit's changelog messages (34 median) through that buffer took
19.7 ms median, 117.6 ms p99, each hand-over waiting for an event-loop turn shared with the batches being
decided.

``TrackedTable.send_changelog`` (the method Faust's own ``on_key_set`` / ``on_key_del`` call, so it sees every
write and delete) builds the same message Faust would, with the same callback (which records the persisted
changelog offset), and holds it. ``changelog_acked`` hands every held message to the Kafka client in write
order, in one coroutine, then returns once the broker acknowledged all of them (or raises the first failure).
Every commit calls it (``streams.agents.delivery``, ``streams.agents.retention``), so a write leaves at the
next commit; ``tests/integration/test_tables.py`` checks the order and the barrier on the real broker.

With a ``ChangelogProducer`` (``faust.changelog_producer = "librdkafka"``, the default) the table's writes
bypass Faust's producer and aiokafka altogether: each write is serialized as Faust would and handed to a
librdkafka idempotent producer of its own at once (per-partition order is the producer's; its I/O runs in
librdkafka's threads, not in the event loop the agent keeps busy), and ``changelog_acked`` waits for that
producer's flush, then records, per changelog partition, the offset of the last acknowledged write as the
table's persisted offset (what Faust's ``_on_changelog_sent`` records per message; recovery reads the
changelog after it). In ``bench stream``'s commit-phase figures the aiokafka path took 17–40 ms per commit to
be acknowledged on a loaded 2-core box (README, "Stream").
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from confluent_kafka import KafkaError, KafkaException, Producer
from faust.types import TP, CodecArg, FutureMessage

from streams.kafka_io import make_producer
from streams.settings import Settings


class ChangelogError(RuntimeError):
    """A changelog write was refused or not acknowledged."""


class ChangelogProducer:
    """The librdkafka producer of one table's changelog writes, and the offsets it had acknowledged.

    ``produce`` may be called from the event loop while ``acked`` flushes in an executor thread (the
    delivery callbacks run in that thread; they only record offsets and errors)."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._acked: dict[tuple[str, int], int] = {}
        self._errors: list[str] = []

    def produce(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Hand one write to the client; a write it refuses at once (too large) fails the next ``acked``."""
        while True:
            try:
                self._producer.produce(topic, value, key, partition=partition, on_delivery=self._on_delivery)
                return
            except BufferError:  # the client's queue is full: let it deliver some first
                self._producer.poll(0.05)
            except KafkaException as exc:
                self._errors.append(f"{topic}/{partition}: {exc.args[0].str() if exc.args else exc}")
                return

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))
            return
        tp = (msg.topic(), msg.partition())
        if msg.offset() > self._acked.get(tp, -1):
            self._acked[tp] = msg.offset()

    async def acked(self, timeout_s: float = 60.0) -> dict[tuple[str, int], int]:
        """Wait until every write produced so far is acknowledged; the last acknowledged offset per
        (topic, partition) since the previous call. Raises ``ChangelogError`` on any refused write."""
        left = await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, timeout_s)
        errors, self._errors = self._errors, []
        if errors:
            raise ChangelogError(f"{len(errors)} changelog writes failed, first: {errors[0]}")
        if left:
            raise ChangelogError(f"{left} changelog writes not acknowledged within {timeout_s:.0f}s")
        acked, self._acked = self._acked, {}
        return acked


class _Sent:
    """What Faust's ``on_key_set`` / ``on_key_del`` read from ``send_changelog``'s result: ``message.partition``."""

    __slots__ = ("message", "partition")

    def __init__(self, partition: int) -> None:
        self.message = self
        self.partition = partition


class TrackedTable(faust.Table):
    """A ``faust.Table`` whose changelog messages are sent, in order, and acknowledged at ``changelog_acked``."""

    def __init__(self, app: faust.App, changelog_producer: ChangelogProducer | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._unsent: list[FutureMessage] = []
        self._unacked: list[asyncio.Future] = []
        self._producer = changelog_producer
        self._produced = 0
        self._sent: dict[int, _Sent] = {}

    def send_changelog(self, partition: int | None, key: Any, value: Any,
                       key_serializer: CodecArg | None = None,
                       value_serializer: CodecArg | None = None) -> FutureMessage | _Sent:
        """The message Faust's ``send_changelog`` builds (same serializers, partition and callback), held
        for ``changelog_acked`` instead of the app producer's buffer; with a ``ChangelogProducer``, the same
        bytes handed to it at once."""
        if self._producer is not None:
            topic = self.changelog_topic
            key_bytes, _ = topic.prepare_key(key, self.key_serializer if key_serializer is None else key_serializer)
            value_bytes = None if value is None else topic.prepare_value(
                value, self.value_serializer if value_serializer is None else value_serializer)[0]
            if partition is None:
                raise ChangelogError(f"table {self.name}: a changelog write needs its partition")
            self._producer.produce(topic.get_topic_name(), partition, key_bytes, value_bytes)
            self._produced += 1
            sent = self._sent.get(partition)
            if sent is None:
                sent = self._sent[partition] = _Sent(partition)
            return sent
        fut = self.changelog_topic.as_future_message(
            key=key, value=value, partition=partition,
            key_serializer=self.key_serializer if key_serializer is None else key_serializer,
            value_serializer=self.value_serializer if value_serializer is None else value_serializer,
            callback=self._on_changelog_sent, eager_partitioning=True)
        self._unsent.append(fut)
        self._unacked.append(fut)
        return fut

    def unacked(self) -> int:
        """Changelog messages written since the last ``changelog_acked``."""
        return self._produced if self._producer is not None else len(self._unacked)

    async def changelog_acked(self) -> None:
        """Hand every changelog message written so far to the Kafka client, in write order, then return once
        the broker acknowledged all of them (or raise the first failure)."""
        if self._producer is not None:
            self._produced = 0
            for (topic, partition), offset in (await self._producer.acked()).items():
                self.data.set_persisted_offset(TP(topic, partition), offset)
            return
        unsent, self._unsent = self._unsent, []
        topic = self.changelog_topic
        for fut in unsent:
            await topic.publish_message(fut, wait=False)
        pending, self._unacked = self._unacked, []
        if pending:
            await asyncio.gather(*pending)


def changelog_producer(settings: Settings) -> Producer | None:
    """A librdkafka producer for one table's changelog (``faust.changelog_producer = "librdkafka"``), else
    None (Faust's producer sends it). Idempotent, so a retried batch neither duplicates nor reorders."""
    if settings.faust.changelog_producer != "librdkafka":
        return None
    return make_producer(settings.kafka, **{"linger.ms": 1, "acks": "all", "enable.idempotence": True,
                                            "delivery.report.only.error": False})


def tracked_table(app: faust.App, name: str, changelog_producer: Producer | None = None,
                  **kwargs: Any) -> TrackedTable:
    """``app.Table(name, **kwargs)``, as a ``TrackedTable``; with ``changelog_producer`` (a librdkafka
    producer of its own), its changelog writes go through it."""
    writer = None if changelog_producer is None else ChangelogProducer(changelog_producer)
    return app.tables.add(TrackedTable(app, name=name, beacon=app.tables.beacon, changelog_producer=writer,
                                       **kwargs))
