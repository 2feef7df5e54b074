"""Faust glue for ad placement: topics, RocksDB tables, the agent loop, hot-swap and stats.

One agent reads ad requests and ad feedback (both keyed by segment, co-partitioned) as a single stream,
in batches (``take_events``) bounded in size and wait, and hands each batch to ``AdsEngine``.

Faust routes a table write to the RocksDB partition and changelog partition of the *current event*.
A batch spans partitions, so ``FaustStore`` sets the current event to one from the right partition
before each write; a segment's state therefore always follows its partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import faust
from confluent_kafka import Producer
from faust.exceptions import ProducerSendError
from faust.streams import _current_event
from faust.types import EventT

from policy.adapter import Adapter
from policy.artifact import ArtifactError, PolicyArtifact
from streams.ads_engine import AdsEngine, RawMessage
from streams.agents.lifecycle import install_state_hooks
from streams.app import TABLE_OPTIONS
from streams.edge import Decoder, Source, dead_letter
from streams.events import DeadLetter
from streams.kafka_io import make_consumer, make_producer
from streams.pseudonyms import Pseudonyms
from streams.metrics import WorkerMetrics
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger("metacart.ads")


@dataclass
class FaustStore:
    """``StateStore`` over Faust tables; every read and write happens under an event of the key's partition.

    Faust's RocksDB store reads, tests membership and writes through the partition of the *current event*
    (``faust.streams.current_event``). A batch spans partitions, so each call first makes an event of the
    key's own partition current. With no event of that partition seen yet, reads run with no current
    event, and Faust then searches every assigned partition.
    """

    posteriors: faust.Table
    blocks: faust.Table
    marks: faust.Table
    events: dict[int, EventT] = field(default_factory=dict)
    skipped_deletes: int = 0

    def _within(self, partition: int) -> bool:
        event = self.events.get(partition)
        _current_event.set(weakref.ref(event) if event is not None else None)
        return event is not None

    def get_posterior(self, segment: str, partition: int) -> bytes | None:
        self._within(partition)
        return self.posteriors.get(segment.encode())

    def put_posterior(self, segment: str, partition: int, value: bytes) -> None:
        self._write(self.posteriors, segment.encode(), partition, value)

    def put_block(self, key: str, partition: int, value: bytes) -> None:
        self._write(self.blocks, key.encode(), partition, value)

    def del_block(self, key: str, partition: int) -> None:
        self._delete(self.blocks, key.encode(), partition)

    def iter_blocks(self) -> Iterator[tuple[str, bytes]]:
        return ((k.decode(), v) for k, v in list(self.blocks.items()))

    def get_mark(self, request_id: str, partition: int) -> bytes | None:
        self._within(partition)
        return self.marks.get(request_id.encode())

    def put_mark(self, request_id: str, partition: int, value: bytes) -> None:
        self._write(self.marks, request_id.encode(), partition, value)

    def del_mark(self, request_id: str, partition: int) -> None:
        self._delete(self.marks, request_id.encode(), partition)

    def _write(self, table: faust.Table, key: bytes, partition: int, value: bytes) -> None:
        if not self._within(partition):
            raise RuntimeError(f"no event of partition {partition} to write {table.name} under")
        table[key] = value

    def _delete(self, table: faust.Table, key: bytes, partition: int) -> None:
        # A delete needs an event of the key's partition. Every partition this process wrote to has one;
        # the exception is a block restored after a restart and force-closed by the open-decision cap
        # before any event of its partition arrived: it then stays, and is closed again after a later
        # restart (its zero updates applied twice). Counted as ``deletes_skipped``.
        if not self._within(partition):
            self.skipped_deletes += 1
            return
        if key in table:
            del table[key]


def install(app: faust.App, settings: Settings, topics: Topics, adapter: Adapter,
            pseudonyms: Pseudonyms | None = None, metrics: WorkerMetrics | None = None) -> AdsEngine:
    """Register the ad agent, its tables, the policy watcher and the stats timer on ``app``.

    With ``metrics``, each batch's engine time and each request's latency (record timestamp to
    decision produced) are observed.
    """
    ads = settings.ads
    parts = settings.kafka.segment_partitions
    source = app.topic(topics.ad_requests.name, topics.ad_feedback.name,
                       key_type=bytes, value_type=bytes, partitions=parts)
    dead_letters = app.topic(topics.dead_letters.name, key_type=bytes, value_type=bytes, partitions=1)
    tables = {name: app.Table(f"ads-{name}", partitions=parts, key_type=bytes, value_type=bytes,
                              options=TABLE_OPTIONS)
              for name in ("posteriors", "pending", "marks")}
    store = FaustStore(tables["posteriors"], tables["pending"], tables["marks"])
    engine = AdsEngine(adapter, store, topics, ads, settings.store, pseudonyms)
    # Decisions and dead letters go out through librdkafka (aiokafka's pure-Python producer was the
    # largest cost per request in profiles). They are delivered before the offsets of the requests that
    # produced them are committed: see ``_flush_outputs_before_commit``.
    failed = Counter()

    def on_failed_delivery(err: object, msg: object) -> None:
        failed["n"] += 1
        engine.counters["output_delivery_errors"] += 1
        log.error("output not delivered: %s", err)

    output = make_producer(settings.kafka, **{"linger.ms": 1, "delivery.report.only.error": True,
                                              "on_delivery": on_failed_delivery})
    _flush_outputs_before_commit(app, output, failed)

    @app.agent(source, name="ads")
    async def decide(stream: faust.StreamT) -> None:
        async for events in stream.take_events(ads.batch_max, within=ads.batch_within_s):
            batch = []
            for event in events:
                msg = event.message
                store.events[msg.partition] = event
                batch.append(RawMessage(msg.topic, msg.partition, msg.offset, msg.key, msg.value))
            t0 = time.perf_counter()
            out = engine.process_many(batch)
            for key, value in out.decisions:
                output.produce(topics.ad_decisions.name, key=key, value=value)
            for key, value in out.dead_letters:
                output.produce(topics.dead_letters.name, key=key, value=value)
            output.poll(0)
            elapsed = time.perf_counter() - t0
            counters = engine.counters
            counters["batches"] += 1
            counters["batch_events"] += len(batch)
            counters["engine_s"] += elapsed
            if metrics is not None:
                metrics.observe_batch("ads", elapsed)
                metrics.observe_requests(e.message.timestamp for e in events
                                         if e.message.topic == topics.ad_requests.name)
            counters["deletes_skipped"] = store.skipped_deletes

    install_state_hooks(app, engine, settings.store.state_flush_interval_s)

    @app.task
    async def watch_policy_updates() -> None:
        await _watch_policy_updates(settings, topics, engine, dead_letters)

    return engine


def _flush_outputs_before_commit(app: faust.App, output: Producer, failed: Counter) -> None:
    """Make Faust's pre-commit producer flush also flush (and check) our librdkafka producer.

    Faust acknowledges a batch's events as soon as the agent moves on, and commits acknowledged offsets
    every ``broker_commit_interval`` after ``await app.producer.flush()``. Chaining our flush into that
    call keeps at-least-once delivery without a round trip per batch: an offset is committed only once
    every decision produced before it was delivered. A delivery failure fails the commit, the worker
    crashes, and the uncommitted requests are processed again after the restart.
    """
    producer = app.producer
    faust_flush = producer.flush

    async def flush_both() -> None:
        await faust_flush()
        before = failed["n"]
        left = await asyncio.get_running_loop().run_in_executor(None, output.flush, 30.0)
        if left or failed["n"] != before or failed["n"]:
            raise ProducerSendError(f"{left} outputs undelivered, {failed['n']} failed: not committing")

    producer.flush = flush_both  # type: ignore[method-assign]


async def _watch_policy_updates(settings: Settings, topics: Topics, engine: AdsEngine,
                                dead_letters: faust.TopicT) -> None:
    """Every worker reads every policy update (its own consumer group) and applies the last one.

    A refused artifact is logged and dead-lettered; the current policy keeps serving.
    """
    decoder = Decoder(topics.policy_updates.payload)
    consumer = make_consumer(settings.kafka, f"{settings.worker_id}-policy-{uuid.uuid4().hex[:8]}",
                             **{"enable.auto.commit": False})
    consumer.subscribe([topics.policy_updates.name])
    try:
        while True:
            msg = consumer.poll(0)
            if msg is None:
                await asyncio.sleep(0.2)
                continue
            if msg.error():
                continue
            src = Source(msg.topic(), msg.partition(), msg.offset(), msg.key())
            update = decoder.decode_one(msg.value(), src)
            if isinstance(update, DeadLetter):
                await dead_letters.send(key=src.topic.encode(), value=update.model_dump_json().encode())
                continue
            if update.kind != "ads" or update.version == engine.adapter.version:
                continue
            try:
                artifact = PolicyArtifact.load(update.artifact_uri)
                engine.swap(artifact, update.on_swap)
            except (ArtifactError, OSError, ValueError) as exc:
                reason = f"policy {update.version} at {update.artifact_uri} refused: {exc}"
                log.error(reason)
                engine.counters["policy_refused"] += 1
                letter = dead_letter(msg.value(), src, "policy_refused", reason)
                await dead_letters.send(key=src.topic.encode(), value=letter.model_dump_json().encode())
                continue
            log.warning("policy %s loaded from %s (posteriors: %s)",
                        update.version, update.artifact_uri, update.on_swap)
    finally:
        consumer.close()
