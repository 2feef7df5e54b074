"""Faust glue for ad placement: topics, RocksDB tables, the agent loop, hot-swap and stats.

Two data paths (``ads.data_path``), both handing batches bounded in size and wait to ``AdsEngine``:

- ``direct`` (default): Faust owns membership, tables, changelogs and recovery; a librdkafka consumer
  reads ad requests and feedback from the ledger offsets (``streams.agents.datapath``);
- ``faust``: one Faust agent reads ad requests and ad feedback (both keyed by segment, co-partitioned) as
  a single stream, in batches (``take_events``).

Faust routes a table write to the RocksDB partition and changelog partition of the *current event*.
A batch spans partitions, so ``FaustStore`` sets the current event to one from the right partition
before each write; a segment's state therefore always follows its partition.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import faust
from faust.streams import _current_event
from faust.types import EventT

from policy.adapter import Adapter, check_serves
from policy.artifact import PolicyArtifact
from streams.ads_engine import AdsEngine, RawMessage
from streams.agents.delivery import Delivery
from streams.agents import policy_watch
from streams.agents.datapath import DataPath, process_batch
from streams.app import TABLE_OPTIONS
from streams.events import DeadLetter
from streams.pseudonyms import Pseudonyms
from streams.metrics import WorkerMetrics
from streams.settings import Settings
from streams.tables import tracked_table
from streams.topics import Topics

log = logging.getLogger("metacart.ads")


@dataclass
class FaustStore:
    """``StateStore`` over one Faust table; every read and write happens under an event of the key's partition.

    Segment heads (``h:<segment>``) and pending blocks (``b:<key>``) share the table, so both go to the
    changelog partition of their segment, in the order they were written (a head that reached the
    changelog implies the blocks written before it did).

    Faust's RocksDB store reads, tests membership and writes through the partition of the *current event*
    (``faust.streams.current_event``). A batch spans partitions, so each call first makes an event of the
    key's own partition current. With no event of that partition seen yet, reads run with no current
    event, and Faust then searches every assigned partition. On the direct data path ``events`` holds a
    ``datapath.PartitionEvent`` per assigned partition (set on assignment, cleared on revoke).
    """

    table: faust.Table
    events: dict[int, EventT] = field(default_factory=dict)
    skipped_deletes: int = 0

    def _within(self, partition: int) -> bool:
        event = self.events.get(partition)
        _current_event.set(weakref.ref(event) if event is not None else None)
        return event is not None

    def get_head(self, segment: str, partition: int) -> bytes | None:
        self._within(partition)
        return self.table.get(b"h:" + segment.encode())

    def put_head(self, segment: str, partition: int, value: bytes) -> None:
        self._write(b"h:" + segment.encode(), partition, value)

    def put_block(self, key: str, partition: int, value: bytes) -> None:
        self._write(b"b:" + key.encode(), partition, value)

    def del_block(self, key: str, partition: int) -> None:
        # A delete needs an event of the key's partition; every block this process closes belongs to a
        # partition it processed since the assignment, so one exists. Otherwise counted and left (it is
        # read back, found closed and deleted after a later restart).
        if not self._within(partition):
            self.skipped_deletes += 1
            return
        k = b"b:" + key.encode()
        if k in self.table:
            del self.table[k]

    def iter_blocks(self) -> Iterator[tuple[str, bytes]]:
        _current_event.set(None)
        return ((k[2:].decode(), v) for k, v in list(self.table.items()) if k.startswith(b"b:"))

    def _write(self, key: bytes, partition: int, value: bytes) -> None:
        if not self._within(partition):
            raise RuntimeError(f"no event of partition {partition} to write {self.table.name} under")
        self.table[key] = value


def install(app: faust.App, settings: Settings, topics: Topics, adapter: Adapter,
            pseudonyms: Pseudonyms | None = None, metrics: WorkerMetrics | None = None) -> AdsEngine:
    """Register the ad agent, its table, the commit hooks, the policy watcher and the stats timer on ``app``.

    With ``metrics``, each batch's engine time and each request's latency (record timestamp to
    decision produced) are observed.
    """
    ads = settings.ads
    parts = settings.kafka.segment_partitions
    dead_letters = app.topic(topics.dead_letters.name, key_type=bytes, value_type=bytes, partitions=1)
    table = tracked_table(app, "ads-segments", partitions=parts, key_type=bytes, value_type=bytes,
                          options=TABLE_OPTIONS)
    store = FaustStore(table)
    engine = AdsEngine(adapter, store, topics, ads, settings.store, pseudonyms)
    if ads.data_path == "direct":
        DataPath(app, settings, topics, engine, store.events, metrics,
                 changelog_acked=table.changelog_acked).install()
    else:
        _install_faust_path(app, settings, topics, engine, store, metrics)

    @app.task
    async def watch_policy_updates() -> None:
        async def send_dead(letter: DeadLetter) -> None:
            await dead_letters.send(key=letter.source_topic.encode(), value=letter.model_dump_json().encode())

        await policy_watch.watch_policy_updates(
            settings, topics, "ads", version=lambda: engine.adapter.version,
            load=_load_checked, swap=engine.swap, send_dead=send_dead,
            refused=lambda: engine.counters.update(["policy_refused"]), log=log)

    return engine


def _install_faust_path(app: faust.App, settings: Settings, topics: Topics, engine: AdsEngine, store: FaustStore,
                        metrics: WorkerMetrics | None) -> None:
    """The ``faust`` data path: a Faust agent over ad requests and feedback, ``take_events`` batches."""
    ads = settings.ads
    source = app.topic(topics.ad_requests.name, topics.ad_feedback.name,
                       key_type=bytes, value_type=bytes, partitions=settings.kafka.segment_partitions)
    # Decisions and dead letters go out through librdkafka (aiokafka's pure-Python producer was the
    # largest cost per request in profiles), committed together with the state and the input offsets.
    delivery = Delivery(app, settings, topics, engine, changelog_acked=store.table.changelog_acked)
    delivery.install(on_revoked=store.events.clear)

    @app.agent(source, name="ads")
    async def decide(stream: faust.StreamT) -> None:
        try:
            await _decide(stream)
        except Exception as exc:
            log.exception("ad agent failed")
            await delivery.fail(f"ad agent failed: {type(exc).__name__}: {exc}")

    async def _decide(stream: faust.StreamT) -> None:
        async for events in stream.take_events(ads.batch_max, within=ads.batch_within_s):
            batch = []
            for event in events:
                msg = event.message
                store.events[msg.partition] = event
                batch.append(RawMessage(msg.topic, msg.partition, msg.offset, msg.key, msg.value))
            partitions = {m.partition for m in batch}
            if not partitions <= delivery.ready:  # normally read on assignment, before any event
                await delivery.prepare(partitions)
            process_batch(engine, delivery, batch, metrics, (e.message.timestamp for e in events
                                                             if e.message.topic == topics.ad_requests.name))
            if delivery.due():
                await delivery.commit()


def _load_checked(uri: str) -> PolicyArtifact:
    """Load the artifact at ``uri`` and score a probe batch on it (``ArtifactError`` if refused)."""
    artifact = PolicyArtifact.load(uri)
    check_serves(artifact)
    return artifact
