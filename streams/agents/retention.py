"""Faust glue for retention: topics, RocksDB tables, the data path and rebalances.

The retention agent reads session events, retention outcomes and erasure requests (all keyed by
``user_id``, co-partitioned over ``user_partitions``) on the direct data path
(:mod:`streams.agents.datapath`, the mechanism the ad agent uses): Faust assigns the partitions of a
never-written membership topic and recovers the tables; a librdkafka consumer of the *retention ledger*
group (``<app id>-retention-ledger``, assign only, ``read_committed``) reads the input from that group's
committed offsets; :class:`RetentionWork` hands each batch to
:class:`streams.retention_engine.RetentionEngine`. Its state (users, segments, budgets and review marks,
open actions) is written in blocks (:mod:`streams.retention_blocks`) to ``retention-partitions`` (rocksdict
driver); ``retention-users``, ``retention-segments`` and ``retention-actions`` are still registered so that
records of the format before blocks are read (and moved into blocks) after an upgrade.

Commit. Every ``faust.commit_interval_s`` (after a batch, or on the data path's idle timer), and before
partitions are revoked or the worker stops: the engine writes what changed, the tables' changelogs
acknowledge it, then the positions (the offset after the last message processed, per input partition) are
committed to the ledger group, synchronously. A crash replays from the last commit onto state at least as
new as that commit: decisions are idempotent on replay (decision ids are a hash of user and review tick),
an outcome closes its open action once. A partition the ledger group has no offset for starts where the
app's Faust group had committed it (the place before this data path, so an upgrade does not replay the
topics), else at the beginning.

Ordering of outputs. When a batch emits actions the engine has already written its state (budgets
included); the work waits for Faust's producer to deliver those changelog writes, then sends actions and
dead letters through a confluent-kafka producer and waits for them, before the batch's positions can be
committed. A crash in between cannot lose an action: each one waits in the state's outbox until it is
delivered, and after a restore the actions found there that ``retention-actions`` does not hold are sent
again (:mod:`streams.agents.retention_outbox`); a contact the budget did not account for is never sent. A
batch that reviews runs as :meth:`RetentionEngine.process_steps`: at each pause (every
``retention.review_step`` actions, state written) the work delivers that changelog through
``app.producer.flush`` (with the ads agent, its commit) before going on, so one review never queues tens of
thousands of changelog records in front of the ads commit.

Artifact directory (``settings.retention.artifact``): see :mod:`policy.retention.artifacts`
(``retention.json`` + ``uplift/`` + ``risk/``); a missing or bad one, or one that fails a probe batch,
raises ``ArtifactError``. Policy updates of kind "retention" hot-swap it (``streams.agents.policy_watch``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
from collections.abc import Callable, Mapping

import faust
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from rocksdict import DbClosedError

from policy.retention.artifacts import RetentionArtifacts, check_serves, load_artifacts
from streams.agents import policy_watch
from streams.agents.datapath import DataPath, data_consumer, raw
from streams.agents.delivery import COORDINATOR_ERRORS, retrying
from streams.agents.lifecycle import install_state_hooks
from streams.agents.retention_outbox import resend_unsent
from streams.agents.stall import StallWatch
from streams.app import TABLE_OPTIONS
from streams.events import DeadLetter
from streams.kafka_io import ledger_offsets, make_consumer, make_producer
from streams.metrics import WorkerMetrics
from streams.retention_engine import Outputs, RetentionEngine, load_engine_artifacts
from streams.retention_state import TABLES
from streams.pseudonyms import Pseudonyms
from streams.settings import Settings
from streams.store import FaustStore
from streams.tables import changelog_producer, tracked_table
from streams.topics import Topics

log = logging.getLogger("metacart.retention")


def retention_ledger_group(settings: Settings) -> str:
    """The consumer group whose committed offsets are the retention input's ledger."""
    return f"{settings.worker_id}-retention-ledger"


def install(app: faust.App, settings: Settings, topics: Topics,
            pseudonyms: Pseudonyms | None = None, metrics: WorkerMetrics | None = None) -> RetentionEngine:
    """Register the retention data path and its tables on ``app``; returns the engine (for its counters).

    With ``metrics``, each batch's engine time is observed.
    """
    r = settings.retention
    artifacts = load_engine_artifacts(r.artifact)
    parts = settings.kafka.user_partitions
    tables = {name: tracked_table(app, f"retention-{name}", partitions=parts, key_type=bytes, value_type=bytes,
                                  options=TABLE_OPTIONS, changelog_producer=changelog_producer(settings))
              for name in TABLES}
    store = FaustStore(tables)
    engine = RetentionEngine(artifacts, store, topics, r, settings.store, settings.policy,
                             pseudonyms=pseudonyms)
    log.warning("retention policy %s loaded from %s", engine.version, r.artifact)

    def on_failed_delivery(err: object, msg: object) -> None:
        engine.counters["retention_output_delivery_errors"] += 1
        log.error("retention output not delivered: %s", err)

    output = make_producer(settings.kafka, **{"linger.ms": 5, "delivery.report.only.error": True,
                                              "on_delivery": on_failed_delivery})
    watch = StallWatch(app, settings.kafka, "retention", r.stall_exit_s)
    watch.install()
    consumer = data_consumer(settings.kafka, retention_ledger_group(settings), r.batch_max)
    work = RetentionWork(app, settings, topics, engine, store, tables, output, consumer, watch, metrics)
    DataPath(app, settings.kafka, "retention", parts, consumer, work, store.events, batch_max=r.batch_max,
             within_s=r.batch_within_s, idle_s=settings.faust.commit_interval_s, metrics=metrics).install()
    install_state_hooks(app, engine, settings.store.state_flush_interval_s)
    heap: list[tracemalloc.Snapshot] = []

    @app.timer(interval=60.0)
    async def report_heap_growth() -> None:
        if tracemalloc.is_tracing():  # only when started with PYTHONTRACEMALLOC=1 (a diagnosis, it is slow)
            heap_growth(heap)

    @app.timer(interval=10.0)
    async def report_rocksdb_memory() -> None:
        for name, value in rocksdb_memory(app).items():  # gauges: set, not added
            engine.counters[name] = value

    @app.task
    async def watch_policy_updates() -> None:
        loop = asyncio.get_running_loop()

        async def send_dead(letter: DeadLetter) -> None:
            output.produce(topics.dead_letters.name, key=letter.source_topic.encode(),
                           value=letter.model_dump_json().encode())
            await loop.run_in_executor(None, output.flush, 30.0)

        await policy_watch.watch_policy_updates(
            settings, topics, "retention", version=lambda: engine.version,
            load=_load_checked, swap=engine.swap, send_dead=send_dead,
            refused=lambda: engine.counters.update(["retention_policy_refused"]), log=log)

    return engine


class RetentionWork:
    """The retention agent's part of the data path: process a batch, send its outputs, commit positions
    (module docstring)."""

    def __init__(self, app: faust.App, settings: Settings, topics: Topics, engine: RetentionEngine,
                 store: FaustStore, tables: dict, output: Producer, consumer: Consumer, watch: StallWatch,
                 metrics: WorkerMetrics | None) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.engine = engine
        self.store = store
        self.tables = tables
        self.output = output
        self.consumer = consumer
        self.watch = watch
        self.metrics = metrics
        self.inputs = (topics.sessions.name, topics.retention_outcomes.name, topics.erasure_requests.name)
        self.interval_s = settings.faust.commit_interval_s
        self.positions: dict[tuple[str, int], int] = {}  # next offset to process
        self.committed: dict[tuple[str, int], int] = {}  # positions at the last commit
        self._last = time.monotonic()

    async def prepare(self, partitions: set[int]) -> Mapping[tuple[str, int], int]:
        tps = [(t, p) for t in self.inputs for p in sorted(partitions)]
        loop = asyncio.get_running_loop()
        starts = await loop.run_in_executor(None, ledger_offsets, self.consumer, tps)
        before = [tp for tp in tps if tp not in starts]
        if before:  # never committed by this data path: where the app's Faust consumer had committed them
            faust_group = make_consumer(self.settings.kafka, self.app.conf.id, **{"enable.auto.commit": False})
            try:
                older = await loop.run_in_executor(None, ledger_offsets, faust_group, before)
            finally:
                faust_group.close()
            if older:
                log.warning("retention ledger: %d partitions start at the Faust group's offsets %s",
                            len(older), sorted(older.items()))
            starts = {**starts, **older}
        self.positions.update(starts)
        self.committed.update(starts)
        self.engine.counters["retention_ledger_reads"] += 1
        # partitions never committed start at their beginning: the watch looks there
        self.watch.progressed({**{tp: 0 for tp in tps}, **self.positions})
        return starts

    async def process(self, messages: list[Message]) -> None:
        batch = [raw(m) for m in messages]
        for m in messages:
            self.positions[(m.topic(), m.partition())] = m.offset() + 1
        engine, loop, counters = self.engine, asyncio.get_running_loop(), self.engine.counters
        partitions = self.store.events.keys()
        engine.restore()  # after a start or a rebalance: the state as stored, its outbox included
        unsent = engine.unsent(partitions)
        if unsent:  # decided before a crash, delivery never confirmed: sent again unless already in the topic
            found, sent = await loop.run_in_executor(None, resend_unsent, self.settings.kafka, self.output,
                                                     self.topics.retention_actions.name, unsent)
            engine.sent_all(partitions)
            counters["retention_outbox_found"] += found
            counters["retention_outbox_resent"] += sent
            log.warning("retention outbox after a restore: %d actions already sent, %d sent again", found, sent)
        out = Outputs()
        busy = 0.0
        t0 = time.perf_counter()
        for _ in engine.process_steps(batch, out):  # a review pauses after each slice, its state written:
            busy += time.perf_counter() - t0
            counters["retention_pauses"] += 1
            counters["retention_pause_changelog_pending"] += sum(t.unacked() for t in self.tables.values())
            waited = time.perf_counter()
            # That changelog is delivered first: through app.producer.flush, which with the ads agent is its
            # commit (state, changelog, one transaction; streams.agents.delivery). Draining Faust's buffer
            # alone starved that commit (it waits for an empty buffer, each slice refilled it) until the
            # broker aborted the open transaction and fenced the worker (bench soak, load 9).
            await self.app.producer.flush()
            t0 = time.perf_counter()
            counters["retention_pause_wait_s"] += t0 - waited
            self.watch.progressed(self.positions)
        busy += time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.observe_batch("retention", busy)
        await self._send(out)
        self.watch.progressed(self.positions)

    async def _send(self, out: Outputs) -> None:
        """The batch's actions (once the state behind them is in the changelogs) and dead letters, delivered."""
        if out.actions:
            await self.app.producer.flush()
        name = self.topics.retention_actions.name
        for (key, value), partition in zip(out.actions, out.action_partitions):
            self.output.produce(name, key=key, value=value, partition=partition)
        for key, value in out.dead_letters:
            self.output.produce(self.topics.dead_letters.name, key=key, value=value)
        if out.actions or out.dead_letters:
            left = await asyncio.get_running_loop().run_in_executor(None, self.output.flush, 30.0)
            if left:
                raise RuntimeError(f"{left} retention outputs not delivered in 30 s; not committing the batch")
        if out.actions:  # delivered: their outbox entries go at the next flush (every other entry of these
            self.engine.sent_all(self.store.events.keys())  # partitions was sent again before the batch)

    async def after_step(self) -> None:
        if self.positions != self.committed and time.monotonic() - self._last >= self.interval_s:
            await self.commit()

    async def commit(self) -> None:
        """State, then its changelog acknowledged, then the positions, committed to the ledger group."""
        positions = dict(self.positions)
        self.engine.flush(force=True)
        await asyncio.gather(*(table.changelog_acked() for table in self.tables.values()))
        if positions != self.committed:
            offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
            await asyncio.get_running_loop().run_in_executor(
                None, retrying, lambda: _commit(self.consumer, offsets), 60.0, COORDINATOR_ERRORS)
            self.committed = positions
            self.engine.counters["retention_commits"] += 1
        self._last = time.monotonic()

    async def revoke(self, forget: Callable[[], None]) -> None:
        if self.store.events:
            await self.commit()
        self.engine.on_rebalance()
        forget()
        self.positions.clear()
        self.committed.clear()
        self.watch.progressed({})

    def position(self, topic: str, partition: int) -> int:
        return self.positions.get((topic, partition), 0)


def _commit(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    """Commit ``offsets`` to ``consumer``'s group and wait; a partition's error raises (retried when retriable)."""
    for tp in consumer.commit(offsets=offsets, asynchronous=False) or ():
        if tp.error is not None:
            raise KafkaException(tp.error)


ROCKSDB_PROPERTIES = {"memtables": "rocksdb.cur-size-all-mem-tables", "block_cache": "rocksdb.block-cache-usage",
                      "readers": "rocksdb.estimate-table-readers-mem",
                      "sst": "rocksdb.total-sst-files-size", "live_data": "rocksdb.estimate-live-data-size"}


def rocksdb_memory(app: faust.App) -> dict[str, int]:
    """Bytes RocksDB holds in memory for each table of the worker (memtables, block caches, index and filter
    blocks of table readers), and on disk (SST files, and RocksDB's estimate of the live data in them: the
    rest is garbage awaiting compaction), summed over its open partition databases, as
    ``retention_rocksdb_<what>_bytes:<table>`` (the ads agent's table included), plus the number of databases.

    Reads each partition database of Faust's RocksDB store (``Store._dbs``, not a public attribute: a store
    without it counts as 0), so ``metacart bench soak`` can tell RocksDB's memory from Python's.
    """
    out: dict[str, int] = {}
    for name, table in app.tables.items():
        dbs = list(getattr(table.data, "_dbs", {}).values())
        out[f"retention_rocksdb_databases:{name}"] = len(dbs)
        for what in ROCKSDB_PROPERTIES:
            out[f"retention_rocksdb_{what}_bytes:{name}"] = 0
        for db in dbs:
            for what, prop in ROCKSDB_PROPERTIES.items():
                try:
                    out[f"retention_rocksdb_{what}_bytes:{name}"] += int(db.property_int_value(prop) or 0)
                except DbClosedError:  # closed by a rebalance meanwhile
                    break
    return out


def heap_growth(previous: list[tracemalloc.Snapshot], top: int = 15) -> None:
    """Log the Python allocation sites that grew most since the last call (``previous`` keeps one snapshot)."""
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    total = sum(stat.size for stat in snap.statistics("filename"))
    log.warning("heap: %.1f MB traced", total / 1e6)
    if previous:
        for stat in snap.compare_to(previous[0], "lineno")[:top]:
            log.warning("heap growth: %s", stat)
    previous[:] = [snap]


def _load_checked(uri: str) -> RetentionArtifacts:
    """Load the artifact directory ``uri`` and score a probe batch on it (``ArtifactError`` if refused)."""
    artifacts = load_artifacts(uri)
    check_serves(artifacts)
    return artifacts
