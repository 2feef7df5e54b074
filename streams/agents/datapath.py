"""The direct data path of an agent: Faust keeps membership, tables, changelogs and recovery; a librdkafka
consumer reads the agent's input. One mechanism for the ad agent (``ads.data_path="direct"``) and the retention
agent; what each does with a batch, and how it commits, is its :class:`Work`.

Faust still decides which worker owns which partition: the agent subscribes to a *membership* topic
(``<app id>-<agent>-membership``) that nobody writes, with as many partitions as the agent's tables. Faust's
assignor puts every subscribed topic with the same partition count into one co-partitioned group, so a
worker assigned membership partition ``p`` is also assigned the agent's changelog partitions ``p`` as active
(``tests/integration/test_datapath.py`` checks it with two workers on a real broker).

The data itself is read by one confluent-kafka ``Consumer`` of the agent's *ledger* group, used with
``assign()`` only (no group membership of its own, no auto commit, ``read_committed``). Every assigned
partition starts exactly at the offset :meth:`Work.prepare` returns, its ledger (the beginning when there is
none), and the work commits its positions to that group itself after the state they cover is in the
changelogs (ads: inside a transaction with its outputs, ``streams.agents.delivery``; retention: a synchronous
offset commit, ``streams.agents.retention``). Faust's consumer offsets, its seek to committed offsets and its
read-offset gap logic are not in the data path: those dropped and repeated retention input under rebalances
(docs/ARCHITECTURE.md, "Input order").

Rebalance order:

- Faust's ``on_partitions_revoked`` (before the partitions go): the fetch loop stops (the step in flight
  finishes: a consumed batch is always processed in the same step, so nothing waits in Python), then
  :meth:`Work.revoke` commits and forgets the partitions, and the consumer is unassigned;
- Faust's ``on_partitions_assigned`` names the new partitions; nothing is read until Faust's table
  recovery for them finished (its ``on_rebalance_complete`` signal after this rebalance's revoke, and
  ``app.rebalancing`` false). Then the ledger is read (``read_committed``: waits while a dead worker's
  transaction is open) and the consumer is assigned at those offsets;
- shutdown (SIGTERM): the same as a revoke (Faust's ``on_before_shutdown``), then the consumer closes.

Table writes without Faust events: Faust's RocksDB table routes a read or write to the partition of the
*current event* (``faust.streams._current_event``), from which it reads ``message.topic`` and
``message.partition`` only. ``PartitionEvent`` is that much of an event; ``FaustStore`` makes the one of
the key's partition current (``tests/unit/streams/test_datapath_routing.py`` pins this against the
installed Faust version).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import faust
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.ads_engine import AdsEngine
from streams.agents.delivery import Delivery
from streams.edge import RawMessage
from streams.kafka_io import ensure_topics, make_consumer
from streams.metrics import WorkerMetrics
from streams.settings import KafkaSettings
from streams.topics import Topics, TopicSpec

log = logging.getLogger("metacart.datapath")


def membership_topic_name(app_id: str, agent: str = "ads") -> str:
    """The never-written topic whose partitions Faust assigns to ``agent``: ``<app id>-<agent>-membership``."""
    return f"{app_id}-{agent}-membership"


def data_consumer(kafka: KafkaSettings, group: str, batch_max: int) -> Consumer:
    """The consumer of a data path: ``group`` is its ledger group (assign only, no auto commit)."""
    return make_consumer(kafka, group, **{
        "enable.auto.commit": False, "enable.auto.offset.store": False,
        "isolation.level": "read_committed", "fetch.wait.max.ms": 5,
        # A small prefetch: the consumer queue is first in, first out across partitions, so megabytes of
        # prefetched requests (a backlog after a restart) would hold the feedback fetched behind them
        # until event time had closed its windows (clicks rejected as late).
        # Past these bounds librdkafka postpones the partition's next fetch by fetch.queue.backoff.ms
        # (1 s by default, which capped a worker near 2,500 decisions/s): 5 ms.
        "queued.min.messages": batch_max, "queued.max.messages.kbytes": 4096,
        "max.partition.fetch.bytes": 256 * 1024, "fetch.queue.backoff.ms": 5})


@dataclass(frozen=True)
class _Where:
    topic: str
    partition: int


class PartitionEvent:
    """The part of a Faust event that routes a table read or write: ``message.topic``, ``message.partition``.

    Faust holds the current event through a weak reference, so the store keeps these alive.
    """

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Where(topic, partition)


class Work(Protocol):
    """What one agent's data path does with its input. Every call but ``position`` runs under the data
    path's step lock: never during another step, a rebalance action or another call."""

    inputs: tuple[str, ...]
    """The topics read; each has the agent's partition count, partition ``p`` owned with membership ``p``."""

    async def prepare(self, partitions: set[int]) -> Mapping[tuple[str, int], int]:
        """Before the first read of newly assigned ``partitions``: the offset of each input partition to
        start from (left out: from the beginning)."""

    async def process(self, messages: list[Message]) -> None:
        """One fetched batch (no errors in it), in offset order within each partition."""

    async def after_step(self) -> None:
        """After each step, and on the idle timer: commit when due."""

    async def revoke(self, forget: Callable[[], None]) -> None:
        """Commit what was processed, forget the partitions, then call ``forget`` (the consumer lets them go)."""

    def position(self, topic: str, partition: int) -> int:
        """The next offset to process (for lag)."""


class DataPath:
    """The fetch loop, its consumer, and its part in rebalances and shutdown (see the module docstring)."""

    def __init__(self, app: faust.App, kafka: KafkaSettings, agent: str, partitions: int, consumer: Consumer,
                 work: Work, events: dict, *, batch_max: int, within_s: float, idle_s: float,
                 metrics: WorkerMetrics | None = None) -> None:
        """``events``: the store's current-event map (partition -> event), filled on assignment; ``idle_s``:
        how often :meth:`Work.after_step` runs when no batch comes."""
        self.app = app
        self.agent = agent
        self.work = work
        self.events = events
        self.metrics = metrics
        self.consumer = consumer
        self.batch_max = batch_max
        self.within_s = within_s
        self.idle_s = idle_s
        self.membership = membership_topic_name(app.conf.id, agent)
        self.partitions = partitions
        self._kafka = kafka
        self._wanted: set[int] | None = None  # assigned by Faust, not yet read
        self._held: set[int] = set()  # partitions the consumer reads
        self._generation = 0  # rebalances seen (revokes)
        self._recovered = False  # Faust's recovery finished after the last revoke
        self._stopped = False
        self._step = asyncio.Lock()  # one fetch-and-process step, or one rebalance action, at a time
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{agent}-fetch")

    # --- wiring ----------------------------------------------------------------------------------

    def install(self) -> None:
        """The membership agent, the rebalance and shutdown hooks, the fetch loop and the idle timer."""
        app = self.app
        ensure_topics(self._kafka, [TopicSpec(self.membership, "none", self.partitions, bytes,
                                              f"never written: its partitions are the {self.agent} agent's "
                                              "assignment")],
                      create=True)  # an internal topic of the app, like its changelogs
        membership = app.topic(self.membership, key_type=bytes, value_type=bytes, partitions=self.partitions)
        state = getattr(self.metrics, "consumer_state", None)
        if state is not None and hasattr(state, "hidden"):
            state.data_paths.append(self)
            state.hidden.add(self.membership)

        @app.agent(membership, name=self.agent)
        async def members(stream: faust.StreamT) -> None:
            async for _ in stream:  # nothing is ever written here
                log.warning("message on the membership topic %s ignored", self.membership)

        @app.on_partitions_revoked.connect
        async def _revoked(app_: faust.App, revoked: set, **kwargs: object) -> None:
            self._generation += 1
            self._recovered = False
            self._wanted = None
            async with self._step:
                await self.work.revoke(self._forget)

        @app.on_partitions_assigned.connect
        async def _assigned(app_: faust.App, assigned: set, **kwargs: object) -> None:
            self._wanted = {tp.partition for tp in assigned if tp.topic == self.membership}

        @app.on_rebalance_complete.connect
        async def _recovered(app_: faust.App, **kwargs: object) -> None:
            self._recovered = True

        @app.on_before_shutdown.connect
        async def _shutdown(app_: faust.App, **kwargs: object) -> None:
            self._stopped = True
            async with self._step:
                await self.work.revoke(self._forget)
            self.consumer.close()
            self._executor.shutdown(wait=False)

        @app.timer(interval=self.idle_s)
        async def idle_commit() -> None:
            if self._held and not self._stopped and not self._step.locked():
                async with self._step:
                    if self._held and not self._stopped:
                        await self.work.after_step()

        @app.task
        async def fetch() -> None:
            try:
                await self.run()
            except Exception as exc:  # the worker stops; what was not committed is read again after a restart
                log.exception("%s data path failed", self.agent)
                await app.crash(exc)
                raise

    # --- what /metrics and /readyz show (streams.web.FaustConsumerState asks) ----------------------

    def assigned(self) -> int:
        """Input partitions the data consumer reads."""
        return len(self.work.inputs) * len(self._held)

    def lag(self) -> dict[tuple[str, int], int]:
        """End offset (librdkafka's cached high watermark) minus the next offset to process."""
        out: dict[tuple[str, int], int] = {}
        for p in sorted(self._held):
            for t in self.work.inputs:
                try:
                    _, high = self.consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
                except KafkaException:
                    continue
                if high < 0:
                    continue
                out[(t, p)] = max(high - self.work.position(t, p), 0)
        return out

    def _forget(self) -> None:
        """After the revoke commit: no partition is read, no table write is routed."""
        self.events.clear()
        if self._held:
            self.consumer.unassign()
            log.info("%s partitions %s released", self.agent, sorted(self._held))
            self._held = set()

    # --- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Take assigned partitions once recovered, then fetch, process and commit, until stopped."""
        while not self._stopped:
            if self._wanted is not None and self._recovered and not self.app.rebalancing:
                await self._take()
                continue
            if not self._held:
                await asyncio.sleep(0.01)
                continue
            async with self._step:
                if self._held and not self._stopped:
                    await self._step_once()
                    await self.work.after_step()

    async def _take(self) -> None:
        """Ask the work for the start of each assigned partition and start each one exactly there."""
        async with self._step:
            wanted, generation = self._wanted, self._generation
            if wanted is None or self._stopped:
                return
            starts = await self.work.prepare(wanted) if wanted else {}
            if generation != self._generation:  # revoked meanwhile (cannot happen under the step lock)
                return
            tps = [TopicPartition(t, p, starts.get((t, p), OFFSET_BEGINNING))
                   for t in self.work.inputs for p in sorted(wanted)]
            for p in wanted:
                self.events[p] = PartitionEvent(self.membership, p)
            if tps:
                self.consumer.assign(tps)
            self._held, self._wanted = set(wanted), None
            log.info("%s: reading partitions %s from the ledger: %s", self.agent, sorted(wanted),
                     [(tp.topic.rsplit(".", 1)[-1], tp.partition, tp.offset) for tp in tps])

    async def _step_once(self) -> None:
        loop = asyncio.get_running_loop()
        messages = await loop.run_in_executor(self._executor, self._fetch)
        good = []
        for m in messages:
            if m.error() is not None:
                _check(m)
                continue
            good.append(m)
        if good:
            await self.work.process(good)

    def _fetch(self) -> list[Message]:
        """What the consumer holds now, up to ``batch_max``, without waiting; when it holds nothing, the first
        message to arrive within ``batch_within_s`` and whatever came with it. Under load the consumer's
        queue (``queued.min.messages`` = ``batch_max``) fills batches; at low load a message is handled as
        soon as it is fetched instead of waiting out the window."""
        messages = self.consumer.consume(self.batch_max, 0)
        if messages:
            return messages
        first = self.consumer.poll(self.within_s)
        if first is None:
            return []
        return [first, *self.consumer.consume(self.batch_max - 1, 0)]


def raw(m: Message) -> RawMessage:
    return RawMessage(m.topic(), m.partition(), m.offset(), m.key(), m.value())


# --- the ad agent's work ---------------------------------------------------------------------------


def process_batch(engine: AdsEngine, delivery: Delivery, batch: list[RawMessage],
                  metrics: WorkerMetrics | None, request_times_s: Iterable[float]) -> None:
    """Decide ``batch``, hand its outputs to ``delivery`` and count it (both ad data paths)."""
    t0 = time.perf_counter()
    out = engine.process_many(batch)
    delivery.produce(out)
    elapsed = time.perf_counter() - t0
    counters = engine.counters
    counters["batches"] += 1
    counters["batch_events"] += len(batch)
    counters["engine_s"] += elapsed
    if metrics is not None:
        metrics.observe_batch("ads", elapsed)
        metrics.observe_requests(request_times_s)
    deletes = getattr(engine.store, "skipped_deletes", None)
    if deletes is not None:
        counters["deletes_skipped"] = deletes


class AdsWork:
    """The ad agent on the direct path: decide each batch, commit outputs and ledger in one transaction
    (``streams.agents.delivery``). Its commits are started in the background: their broker round trips
    overlap the next batches, whose outputs wait for the next transaction and whose positions stay out of
    this one (``Delivery._commit_locked``). The data path's idle timer commits when traffic is quiet; a
    worker with nothing produced and no position moved does not commit."""

    def __init__(self, engine: AdsEngine, delivery: Delivery, topics: Topics, metrics: WorkerMetrics | None) -> None:
        self.engine = engine
        self.delivery = delivery
        self.metrics = metrics
        self.requests = topics.ad_requests.name
        self.inputs = (topics.ad_requests.name, topics.ad_feedback.name)
        self._commit: asyncio.Future | None = None  # the commit in flight, started after a step

    async def prepare(self, partitions: set[int]) -> Mapping[tuple[str, int], int]:
        await self.delivery.prepare(partitions)
        return self.engine.ledger

    async def process(self, messages: list[Message]) -> None:
        batch = [raw(m) for m in messages]
        times = ([m.timestamp()[1] / 1e3 for m in messages if m.topic() == self.requests]
                 if self.metrics is not None else ())
        process_batch(self.engine, self.delivery, batch, self.metrics, times)

    async def after_step(self) -> None:
        if self.delivery.due() and self.delivery.has_work():
            self._start_commit()

    def _start_commit(self) -> None:
        """Start a commit unless one is in flight."""
        if self.delivery.lock.locked():
            return
        self._commit = asyncio.ensure_future(self.delivery.commit())
        self._commit.add_done_callback(self._after_commit)

    def _after_commit(self, commit: asyncio.Future) -> None:
        """Outputs held while that commit was in flight have waited one commit already: the next starts now,
        not at the next due check (up to one batch later). A failed commit stopped the worker."""
        if commit.cancelled() or commit.exception() is not None:
            return
        if self.delivery.held_outputs:
            self._start_commit()

    async def revoke(self, forget: Callable[[], None]) -> None:
        await self.delivery.revoke(forget)

    def position(self, topic: str, partition: int) -> int:
        tp = (topic, partition)
        return self.engine.positions.get(tp, self.engine.ledger.get(tp, 0))


def _check(msg: Message) -> None:
    """A consumer error: fatal ones stop the worker, the rest (retried by librdkafka) are logged."""
    err = msg.error()
    if err.code() == KafkaError._PARTITION_EOF:
        return
    if err.fatal():
        raise KafkaException(err)
    log.warning("consumer error on %s [%s]: %s", msg.topic(), msg.partition(), err)
