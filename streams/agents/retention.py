"""Faust glue for retention: topics, RocksDB tables, the agent loop and rebalances.

One agent reads session events and retention outcomes (both keyed by ``user_id``, co-partitioned over
``user_partitions``) as a single stream, in batches (``take_events``), and hands each batch to
:class:`streams.retention_engine.RetentionEngine`. Its state (users, segments, budgets and review marks,
open actions) is written in blocks (:mod:`streams.retention_blocks`) to ``retention-partitions`` (rocksdict
driver); ``retention-users``, ``retention-segments`` and ``retention-actions`` are still registered so that
records of the format before blocks are read (and moved into blocks) after an upgrade.

As in :mod:`streams.agents.ads`, Faust routes a table read or write to the RocksDB partition and the
changelog partition of the *current event*; a batch spans partitions, so the shared
:class:`streams.store.FaustStore` sets the current event to one from the key's own partition before each
access.

Ordering. When a batch emits actions the engine has already written its state (budgets included); the
agent waits for Faust's producer to deliver those changelog writes, then sends actions and dead letters
through a confluent-kafka producer and waits for them, and only then lets the batch be acknowledged. A
crash in between cannot lose an action: each one waits in the state's outbox until it is delivered, and
after a restore the actions found there that ``retention-actions`` does not hold are sent again
(:mod:`streams.agents.retention_outbox`); a contact the budget did not account for is never sent. A batch that reviews runs as
:meth:`RetentionEngine.process_steps`: at each pause (every ``retention.review_step`` actions, state written)
the agent delivers that changelog through ``app.producer.flush`` (with the ads agent, its commit) before
going on, so one review never queues tens of thousands of changelog records in front of the ads commit.

Artifact directory (``settings.retention.artifact``): see :mod:`policy.retention.artifacts`
(``retention.json`` + ``uplift/`` + ``risk/``); a missing or bad one, or one that fails a probe batch,
raises ``ArtifactError``. Policy updates of kind "retention" hot-swap it (``streams.agents.policy_watch``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tracemalloc
import uuid

import faust
from confluent_kafka import TopicPartition
from rocksdict import DbClosedError

from policy.retention.artifacts import RetentionArtifacts, check_serves, load_artifacts
from streams.agents import policy_watch
from streams.agents.lifecycle import install_state_hooks
from streams.agents.precommit import before_offsets_commit
from streams.agents.retention_outbox import resend_unsent
from streams.agents.stall import StallWatch
from streams.app import TABLE_OPTIONS
from streams.edge import RawMessage
from streams.events import DeadLetter
from streams.kafka_io import make_consumer, make_producer
from streams.metrics import WorkerMetrics
from streams.retention_engine import Outputs, RetentionEngine, load_engine_artifacts
from streams.retention_state import TABLES
from streams.pseudonyms import Pseudonyms
from streams.settings import KafkaSettings, Settings
from streams.store import FaustStore
from streams.tables import changelog_producer, tracked_table
from streams.topics import Topics

log = logging.getLogger("metacart.retention")
SKIPPED_INPUT_EXIT = 75
"""Exit status of a worker whose retention input skipped messages (a supervisor restarts it)."""


def install(app: faust.App, settings: Settings, topics: Topics,
            pseudonyms: Pseudonyms | None = None, metrics: WorkerMetrics | None = None) -> RetentionEngine:
    """Register the retention agent and its tables on ``app``; returns the engine (for its counters).

    With ``metrics``, each batch's engine time is observed.
    """
    r = settings.retention
    artifacts = load_engine_artifacts(r.artifact)
    parts = settings.kafka.user_partitions
    source = app.topic(topics.sessions.name, topics.retention_outcomes.name, topics.erasure_requests.name,
                       key_type=bytes, value_type=bytes, partitions=parts)
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

    next_offset: dict[tuple[str, int], int] = {}  # (topic, partition) -> the offset expected next
    watch = StallWatch(app, settings.kafka, "retention", r.stall_exit_s)
    watch.install()

    @app.on_partitions_revoked.connect
    async def _forget_offsets(app_: faust.App, revoked: set, **kwargs: object) -> None:
        next_offset.clear()
        watch.progressed(next_offset)

    @app.agent(source, name="retention")
    async def retain(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(r.batch_max, within=r.batch_within_s):
            batch = []
            holes = []
            for event in events:
                msg = event.message
                expected = in_order(next_offset, msg.topic, msg.partition, msg.offset, engine.counters)
                if expected is not None and msg.offset < expected:
                    continue  # processed before, in this assignment
                if expected is not None:
                    holes.append((msg.topic, msg.partition, expected, msg.offset))
                store.events[msg.partition] = event
                batch.append(RawMessage(msg.topic, msg.partition, msg.offset, msg.key, msg.value))
            if holes:
                missed = await loop.run_in_executor(None, messages_between, settings.kafka, holes)
                if missed:  # never delivered: exit before any commit can pass them (Faust commits acked offsets
                    # up to the first one missing), so the replacement reads them from the last commit. At once, as
                    # a kill -9 would: a clean stop waits for this agent's stream (awaiting it here hangs).
                    log.error("retention input skipped %d messages (%s/%d offsets %d..%d, %d holes): exiting for "
                              "a restart", missed, holes[0][0], holes[0][1], holes[0][2], holes[0][3] - 1, len(holes))
                    logging.shutdown()
                    os._exit(SKIPPED_INPUT_EXIT)
            engine.restore()  # after a start or a rebalance: the state as stored, its outbox included
            unsent = engine.unsent(store.events.keys())  # partitions with an event to write under
            if unsent:  # decided before a crash, delivery never confirmed: sent again unless already in the topic
                found, sent = await loop.run_in_executor(None, resend_unsent, settings.kafka, output,
                                                         topics.retention_actions.name, unsent)
                engine.sent_all(store.events.keys())
                engine.counters["retention_outbox_found"] += found
                engine.counters["retention_outbox_resent"] += sent
                log.warning("retention outbox after a restore: %d actions already sent, %d sent again", found, sent)
            out = Outputs()
            busy = 0.0
            t0 = time.perf_counter()
            for _ in engine.process_steps(batch, out):  # a review pauses after each slice, its state written:
                busy += time.perf_counter() - t0
                counters = engine.counters
                counters["retention_pauses"] += 1
                counters["retention_pause_changelog_pending"] += sum(t.unacked() for t in tables.values())
                waited = time.perf_counter()
                # That changelog is delivered first: through app.producer.flush, which with the ads agent is its
                # commit (state, changelog, one transaction; streams.agents.delivery). Draining Faust's buffer
                # alone starved that commit (it waits for an empty buffer, each slice refilled it) until the
                # broker aborted the open transaction and fenced the worker (bench soak, load 9).
                await app.producer.flush()
                t0 = time.perf_counter()
                counters["retention_pause_wait_s"] += t0 - waited
                watch.progressed(next_offset)
            busy += time.perf_counter() - t0
            if metrics is not None:
                metrics.observe_batch("retention", busy)
            if out.actions:
                await app.producer.flush()  # the state behind these actions is in the changelogs first
            if engine.partitions_moved():  # a rebalance meanwhile: whoever holds the partitions now sends them
                engine.counters["retention_actions_left_in_outbox"] += len(out.actions)
                out.actions.clear()
                out.action_partitions.clear()
            for (key, value), partition in zip(out.actions, out.action_partitions):
                output.produce(topics.retention_actions.name, key=key, value=value, partition=partition)
            for key, value in out.dead_letters:
                output.produce(topics.dead_letters.name, key=key, value=value)
            if out.actions or out.dead_letters:
                left = await loop.run_in_executor(None, output.flush, 30.0)
                if left:
                    raise RuntimeError(f"{left} retention outputs not delivered in 30 s; "
                                       "not acknowledging the batch")
            if out.actions:  # delivered: their outbox entries go at the next flush (every other entry of these
                engine.sent_all(store.events.keys())  # partitions was sent again before the batch)
            watch.progressed(next_offset)

    install_state_hooks(app, engine, settings.store.state_flush_interval_s)

    async def state_in_changelog() -> None:
        """Before Faust commits retention offsets (and before the agent sends actions, through the same
        flush): what the processed batches changed is written and acknowledged in the tables' changelogs.
        A paused batch wrote its state at the pause, and its events are not acknowledged yet."""
        if not engine.paused():
            engine.flush(force=True)
        await asyncio.gather(*(table.changelog_acked() for table in tables.values()))

    before_offsets_commit(app, state_in_changelog)
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


def in_order(next_offset: dict[tuple[str, int], int], topic: str, partition: int, offset: int,
             counters) -> int | None:
    """None when ``offset`` is the next one of its input partition (or the first after a start or rebalance,
    logged); else the offset expected, counted as ``retention_offset_repeats`` (``offset`` is below it:
    processed before) or ``retention_offset_gaps`` (above it: the ones between were not delivered).

    Faust's consumer stands between the broker and this agent: right after a start it was seen to drop
    messages it had fetched before seeking to the committed offsets (``metacart bench chaos``,
    ``retention_kill9x3``), and to deliver messages twice. Where a partition starts after an assignment is not
    checked: seeding ``next_offset`` with the group's committed offsets (``streams.kafka_io.committed_offsets``)
    would make a start above it a gap too (faust-streaming/faust#596), but the lookup, made in the first batch,
    was followed by a restart loop in one fresh-clone ``make test`` (session 11), so it is not wired in."""
    expected = next_offset.get((topic, partition))
    if expected is None:
        log.info("retention input %s/%d starts at offset %d", topic, partition, offset)
    elif offset < expected:
        counters["retention_offset_repeats"] += 1
        return expected
    elif offset > expected:
        counters["retention_offset_gaps"] += 1
        log.warning("retention input %s/%d: offset %d after %d", topic, partition, offset, expected - 1)
        next_offset[(topic, partition)] = offset + 1
        return expected
    next_offset[(topic, partition)] = offset + 1
    return None


def messages_between(kafka: KafkaSettings, holes: list[tuple[str, int, int, int]], timeout_s: float = 30.0) -> int:
    """Messages a ``read_committed`` reader finds in each ``(topic, partition, start, end)`` range (``end``
    excluded): 0 when the offsets between are transaction markers only."""
    consumer = make_consumer(kafka, f"retention-holes-{uuid.uuid4().hex[:8]}",
                             **{"enable.auto.commit": False, "isolation.level": "read_committed"})
    found = 0
    try:
        for topic, partition, start, end in holes:
            consumer.assign([TopicPartition(topic, partition, start)])
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                batch = consumer.consume(num_messages=1000, timeout=0.5)
                found += sum(1 for m in batch if m.error() is None and m.offset() < end)
                if any(m.error() is None and m.offset() >= end - 1 for m in batch):
                    break
                if not batch and consumer.position([TopicPartition(topic, partition)])[0].offset >= end:
                    break
            else:
                raise TimeoutError(f"{topic}/{partition} offsets {start}..{end - 1} not read within {timeout_s:g}s")
    finally:
        consumer.close()
    return found


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
