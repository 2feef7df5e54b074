"""How the ad agent's outputs, state and input offsets are committed together (one place for the order).

A commit (commits never overlap: one asyncio lock; the agent never waits for it, see ``_commit_locked``):

1. ``engine.flush()`` writes new pending blocks, then every changed segment head, into the Faust table;
2. every changelog write of the table is acknowledged by the broker (``streams.tables.TrackedTable``,
   through its own librdkafka producer; with ``faust.changelog_producer = "faust"``, Faust's producer is
   flushed and the held messages sent in write order, as Faust's flush alone is no barrier): the
   changelog holds that state;
3. ``exactly_once``: one Kafka transaction holds every decision and dead letter produced since the last
   commit *and* the input positions, sent with ``send_offsets_to_transaction`` for the separate *ledger*
   consumer group ``<app id>-ledger``; it commits atomically. ``at_least_once``: the idempotent producer
   is flushed instead;
4. only then may Faust commit its own consumer offsets (this runs inside Faust's pre-commit
   ``producer.flush``, so Faust never commits past the ledger).

With ``ads.data_path="direct"`` (``streams.agents.datapath``) the data consumer *is* the ledger consumer:
``at_least_once`` then commits the positions to the ledger group with it after the producer flush, and
every assigned partition starts at its ledger offset; Faust's consumer offsets play no part.

On assignment, before the first message of a partition is processed, the ledger's committed offsets are
read with ``isolation.level=read_committed`` (that waits while a dead worker's open transaction is
still pending, until the broker aborts it after ``transaction_timeout_s``). The engine skips messages
below them and re-emits the stored decision for a replayed request at or after them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

import faust
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from faust.exceptions import ProducerSendError

from streams.ads_engine import AdsEngine, Outputs
from streams.agents.precommit import before_offsets_commit, precommit
from streams.kafka_io import ledger_offsets, make_consumer, make_producer
from streams.metrics import COMMIT_PHASES, WorkerMetrics
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger("metacart.ads.delivery")


def instance_id(settings: Settings) -> str:
    """Stable name of this worker process inside its app (``ads.instance_id``, else host-pid)."""
    return settings.ads.instance_id or f"{socket.gethostname()}-{os.getpid()}"


class Delivery:
    """The output producer, the ledger and the commit order of one ad worker process."""

    def __init__(self, app: faust.App, settings: Settings, topics: Topics, engine: AdsEngine,
                 changelog_acked: Callable[[], Awaitable[None]], consumer: Consumer | None = None,
                 metrics: WorkerMetrics | None = None) -> None:
        """``changelog_acked``: waits until every changelog write of the table so far is acknowledged.
        ``consumer``: the data path's consumer of the ledger group (``ads.data_path="direct"``): it reads
        the ledger, gives the group metadata of the transactions and (``at_least_once``) commits positions.
        None: a consumer of its own reads the ledger (the Faust data path). ``metrics``: each commit's
        phases are observed there (``metacart_commit_phase_seconds``)."""
        self.app = app
        self.metrics = metrics
        self._changelog_acked = changelog_acked
        self.engine = engine
        self.topics = topics
        self.exactly_once = settings.ads.delivery == "exactly_once"
        self.interval_s = settings.ads.commit_interval_s
        self.stuck_s = 2 * settings.ads.transaction_timeout_s + 10
        self.lock = asyncio.Lock()
        self.ready: set[int] = set()  # partitions whose ledger offsets were read since the assignment
        self.failed = 0
        self._in_txn = False
        self._committing = False
        self._broken: str | None = None
        self._held: list[Outputs] = []
        self.held_outputs = False  # the last commit held outputs back (they wait for the next one)
        self._produced = 0
        self._last = time.monotonic()
        self._committed_positions: dict[tuple[str, int], int] = {}
        kafka = settings.kafka
        # Delivery reports for failures only: a report is a Python call that needs the GIL inside the flush.
        options: dict[str, object] = {"linger.ms": 1, "on_delivery": self._on_delivery,
                                      "delivery.report.only.error": True}
        self.group = ledger_group(settings)
        self._owns_ledger = consumer is None and self.exactly_once
        self._offsets_consumer = consumer  # commits positions itself when there is no transaction
        if self.exactly_once:
            options |= {"transactional.id": f"{settings.worker_id}-ads-{instance_id(settings)}",
                        "transaction.timeout.ms": int(settings.ads.transaction_timeout_s * 1000),
                        "retry.backoff.ms": settings.ads.transaction_retry_backoff_ms}
            self._ledger = consumer if consumer is not None else make_consumer(
                kafka, self.group, **{"enable.auto.commit": False, "isolation.level": "read_committed"})
            self.output = make_producer(kafka, **options)
            self.output.init_transactions(30)
            self._metadata = self._ledger.consumer_group_metadata()
        else:
            self.output = make_producer(kafka, **options)
        # Faust's own flush (not the hook chain around it), needed only while Faust's producer sends the changelog
        self._faust_flush = (precommit(app).faust_flush if settings.faust.changelog_producer == "faust"
                             else None)

    def _on_delivery(self, err: object, msg: object) -> None:
        if err is not None:
            self.failed += 1
            self.engine.counters["output_delivery_errors"] += 1
            log.error("output not delivered: %s", err)

    # --- the agent side --------------------------------------------------------------------------

    async def prepare(self, partitions: set[int]) -> None:
        """Read the ledger of partitions not seen since the last assignment (exactly-once, or the direct path)."""
        new = partitions - self.ready
        if not new:
            return
        if self.exactly_once or self._offsets_consumer is not None:
            offsets = await asyncio.get_running_loop().run_in_executor(None, self._read_ledger, new)
            log.info("ledger of partitions %s: %s", sorted(new), sorted(offsets.items()))
            self.engine.ledger.update(offsets)
            self.engine.counters["ledger_reads"] += 1
        self.ready |= new

    def _read_ledger(self, partitions: set[int], timeout_s: float = 60.0) -> dict[tuple[str, int], int]:
        names = (self.topics.ad_requests.name, self.topics.ad_feedback.name)
        ledger = self._ledger if self.exactly_once else self._offsets_consumer
        return ledger_offsets(ledger, [(t, p) for t in names for p in sorted(partitions)], timeout_s)

    def produce(self, out: Outputs) -> None:
        """Send a batch's outputs. Exactly-once: while a commit is in flight they wait for the next
        transaction (the one in flight holds the outputs its state covers, no others). At least once they are
        sent at once: the commit's positions, taken before, do not cover them, so a crash replays them."""
        if not (out.decisions or out.dead_letters):
            return
        if self._committing and self.exactly_once:
            self._held.append(out)
            return
        if self.exactly_once and not self._in_txn:
            self.output.begin_transaction()
            self._in_txn = True
        for key, value in out.decisions:
            self.output.produce(self.topics.ad_decisions.name, key=key, value=value)
        for key, value in out.dead_letters:
            self.output.produce(self.topics.dead_letters.name, key=key, value=value)
        self._produced += len(out.decisions) + len(out.dead_letters)
        self.output.poll(0)

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval_s

    def has_work(self) -> bool:
        """Outputs produced or input positions moved since the last commit (a quiet worker skips commits)."""
        return bool(self._produced) or self.engine.commit_positions() != self._committed_positions

    # --- the commit ------------------------------------------------------------------------------

    async def commit(self) -> None:
        """State, then changelog, then outputs with the ledger (one transaction); see the module docstring."""
        async with self.lock:
            await self._commit_locked()

    async def _commit_locked(self) -> None:
        if self._broken is not None:
            # After a failed commit the engine's positions cover outputs that were never sent: committing
            # them now (Faust's shutdown commit) would skip those requests for good.
            raise ProducerSendError(self._broken)
        # The agent never waits for this lock (an agent cancelled while waiting would have Faust ack a
        # batch it never processed): batches processed while this commit awaits keep their outputs in
        # ``_held`` for the next transaction, and their positions out of this one.
        self._last = time.monotonic()
        t0 = time.perf_counter()
        self._committing = True
        try:
            self.engine.flush()
            t_state = time.perf_counter()
            positions = self.engine.commit_positions()  # what the state just written covers, never below the ledger
            send = positions != self._committed_positions or bool(self._produced)
            # The ledger offsets join the transaction while the changelog is awaited (two broker round trips
            # off each commit): they take effect only with commit_transaction, which waits for the changelog.
            offsets_sent = self._send_offsets(positions) if send and self.exactly_once else None
            await self._flush_changelog(offsets_sent)
            t_changelog = time.perf_counter()
            if send:
                await self._commit_outputs(positions, offsets_sent)
        finally:
            self._committing = False
        t_end = time.perf_counter()
        held, self._held = self._held, []
        self.held_outputs = bool(held)
        for out in held:
            self.produce(out)
        counters = self.engine.counters
        counters["commits"] += 1
        counters["commit_s"] += t_end - t0
        phases = (t_state - t0, t_changelog - t_state, t_end - t_changelog)
        for name, seconds in zip(COMMIT_PHASES, phases):
            counters[f"commit_{name}_s"] += seconds
        if self.metrics is not None:
            self.metrics.observe_commit("ads", phases)

    async def _flush_changelog(self, offsets_sent: asyncio.Future | None = None) -> None:
        """Hand the table writes to the Kafka client and wait until the broker acknowledged each of them.

        faust 0.15.3's ``ProducerBuffer.flush`` returns as soon as 0.1 s pass without a message handed to
        aiokafka, with table writes still in the buffer: the commit would then record positions past state
        that is not in the changelog, and a kill -9 right after loses it (the chaos suite lost 528 of 13,973
        clicks under SIGKILL x3 that way). Waiting for the futures of this table's own writes is exact and
        does not wait for other tables' writes queued after them (retention reviews write in bursts).

        ``offsets_sent``: the ledger offsets on their way into the transaction; a failure here waits for
        that call before the transaction is aborted (librdkafka refuses overlapping transaction calls).
        """
        if self._faust_flush is not None:
            await self._faust_flush()
        try:
            await asyncio.wait_for(self._changelog_acked(), self.stuck_s)
        except asyncio.TimeoutError:
            await self._settle(offsets_sent)
            await self._fail(f"table changelog not acknowledged within {self.stuck_s:.0f}s: not committing")
        except Exception as exc:
            await self._settle(offsets_sent)
            await self._fail(f"table changelog not written: {type(exc).__name__}: {exc}")

    def _send_offsets(self, positions: dict[tuple[str, int], int]) -> asyncio.Future | None:
        """Begin the transaction if need be and start adding the ledger offsets to it (in a thread)."""
        if not self._in_txn:
            self.output.begin_transaction()
            self._in_txn = True
        if not positions:
            return None
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        step = lambda: self.output.send_offsets_to_transaction(offsets, self._metadata, 30)  # noqa: E731
        return asyncio.get_running_loop().run_in_executor(None, retrying, step)

    async def _settle(self, pending: asyncio.Future | None) -> None:
        """Wait for a transaction call in flight, whatever its outcome."""
        if pending is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(pending), self.stuck_s)
        except asyncio.TimeoutError:
            self._exit_stuck()
        except Exception:  # the caller fails the commit anyway
            pass

    def _exit_stuck(self) -> None:
        # Seen after a broker restart: librdkafka's send_offsets_to_transaction never returned.
        # Exit like a crash (the broker aborts the transaction; a restarted worker replays it).
        log.critical("transaction not committed within %.0fs: exiting", self.stuck_s)
        logging.shutdown()
        os._exit(70)

    async def _commit_outputs(self, positions: dict[tuple[str, int], int],
                              offsets_sent: asyncio.Future | None = None) -> None:
        loop = asyncio.get_running_loop()
        before = self.failed
        if self.exactly_once:
            try:
                if offsets_sent is not None:
                    await asyncio.wait_for(offsets_sent, self.stuck_s)
                await asyncio.wait_for(loop.run_in_executor(
                    None, retrying, lambda: self.output.commit_transaction(30)), self.stuck_s)
            except KafkaException as exc:
                await self._fail(f"transaction not committed: {exc}")
            except asyncio.TimeoutError:
                self._exit_stuck()
            self._in_txn = False
        else:
            left = await loop.run_in_executor(None, self.output.flush, 30.0)
            if left:
                await self._fail(f"{left} outputs undelivered: not committing")
            if self._offsets_consumer is not None and positions and self.failed == before:
                offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
                try:
                    await loop.run_in_executor(None, lambda: self._offsets_consumer.commit(
                        offsets=offsets, asynchronous=False))
                except KafkaException as exc:
                    await self._fail(f"positions not committed to the ledger: {exc}")
        if self.failed != before:
            await self._fail(f"{self.failed - before} outputs failed: not committing")
        self._produced = 0
        self._committed_positions = positions
        self.engine.on_committed(positions)

    async def fail(self, reason: str) -> None:
        """Stop the worker without committing again: what was not committed is processed again after a
        restart. The agent calls this when a batch raised (Faust would restart the agent and ack the batch;
        a later commit would then record positions past messages whose outputs were never produced)."""
        if self._broken is not None:
            raise ProducerSendError(self._broken)
        await self._fail(reason)

    async def _fail(self, reason: str) -> None:
        """Stop the worker: what was not committed is processed again after a restart."""
        log.error(reason)
        self._broken = reason
        if self.exactly_once and self._in_txn:
            try:
                self.output.abort_transaction(10)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._FATAL:
                    log.error("abort failed: %s", exc)
        exc = ProducerSendError(reason)
        await self.app.crash(exc)
        raise exc

    # --- hooks -----------------------------------------------------------------------------------

    def install(self, on_revoked: Callable[[], None], data_path: bool = False) -> None:
        """Commit inside Faust's pre-commit producer flush, on a timer, and before partitions go.

        ``on_revoked`` runs after the revoke commit (the store forgets its events there). With ``data_path``
        (the direct data path, ``streams.agents.datapath``) the data path calls ``prepare``, ``revoke`` and
        ``commit`` itself, after each step and on its idle timer: only the pre-commit hook is installed here.
        """
        app = self.app

        before_offsets_commit(app, self.commit)
        if data_path:
            return

        @app.timer(interval=max(self.interval_s, 0.01))
        async def commit_outputs() -> None:
            if self.has_work():
                await self.commit()

        @app.on_partitions_assigned.connect
        async def _assigned(app_: faust.App, assigned: set, **kwargs: object) -> None:
            # Read the ledger before any message of the new assignment reaches the agent.
            await self.prepare({tp.partition for tp in assigned if tp.topic == self.topics.ad_requests.name})

        @app.on_partitions_revoked.connect
        async def _revoked(app_: faust.App, revoked: set, **kwargs: object) -> None:
            await self.revoke(on_revoked)

    async def revoke(self, then: Callable[[], None]) -> None:
        """Commit what was processed, forget the partitions (engine and ledger), then run ``then``."""
        async with self.lock:
            await self._commit_locked()
            self.engine.on_rebalance()
            then()
            self.ready.clear()
            self._committed_positions = {}

    def close(self) -> None:
        self.output.flush(10)
        if self._owns_ledger:
            self._ledger.close()


def ledger_group(settings: Settings) -> str:
    """The consumer group whose committed offsets are the ledger: ``<app id>-ledger``."""
    return f"{settings.worker_id}-ledger"


COORDINATOR_ERRORS = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                                KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError._WAIT_COORD,
                                KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT})
"""Errors of a group's coordinator moving or away (a broker restart) that librdkafka does not flag retriable
on an offset commit (``NOT_COORDINATOR`` crashed a retention worker in ``retention_broker_restart``)."""


def retrying(step: Callable[[], None], timeout_s: float = 60.0, also: frozenset[int] = frozenset()) -> None:
    """Run one Kafka call; retriable errors (a broker away), and those with a code in ``also``, are retried
    for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            step()
            return
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.retriable() or error.code() in also) or time.monotonic() > deadline:
                raise
            log.warning("Kafka call failed, retrying: %s", exc)
            time.sleep(0.5)
