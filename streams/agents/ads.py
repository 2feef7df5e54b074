"""Faust glue for ad placement: topics, RocksDB tables, the agent loop, hot-swap and stats.

Two data paths (``ads.data_path``), both handing batches bounded in size and wait to ``AdsEngine``:

- ``direct`` (default): Faust owns membership, tables, changelogs and recovery; a librdkafka consumer
  reads ad requests and feedback from the ledger offsets (``streams.agents.datapath``);
- ``faust``: one Faust agent reads ad requests and ad feedback (both keyed by segment, co-partitioned) as
  a single stream, in batches (``take_events``).

Faust routes a table write to the RocksDB partition and changelog partition of the *current event*.
A batch spans partitions, so ``streams.store.FaustStore`` sets the current event to one from the right
partition before each write; a segment's state therefore always follows its partition.
"""

from __future__ import annotations

import logging

import faust

from policy.adapter import Adapter, check_serves
from policy.artifact import PolicyArtifact
from streams.ads_engine import AdsEngine
from streams.ads_segments import SEGMENTS
from streams.agents.delivery import Delivery, ledger_group
from streams.agents import policy_watch
from streams.agents.datapath import AdsWork, DataPath, data_consumer, process_batch
from streams.app import TABLE_OPTIONS
from streams.edge import RawMessage
from streams.events import DeadLetter
from streams.pseudonyms import Pseudonyms
from streams.metrics import WorkerMetrics
from streams.settings import Settings
from streams.store import FaustStore
from streams.tables import changelog_producer, tracked_table
from streams.topics import Topics

log = logging.getLogger("metacart.ads")


def install(app: faust.App, settings: Settings, topics: Topics, adapter: Adapter,
            pseudonyms: Pseudonyms | None = None, metrics: WorkerMetrics | None = None) -> AdsEngine:
    """Register the ad agent, its table, the commit hooks, the policy watcher and the stats timer on ``app``.

    With ``metrics``, each batch's engine time and each request's latency (record timestamp to
    decision produced) are observed.
    """
    ads = settings.ads
    parts = settings.kafka.segment_partitions
    dead_letters = app.topic(topics.dead_letters.name, key_type=bytes, value_type=bytes, partitions=1)
    table = tracked_table(app, SEGMENTS, partitions=parts, key_type=bytes, value_type=bytes,
                          options=TABLE_OPTIONS, changelog_producer=changelog_producer(settings))
    store = FaustStore({SEGMENTS: table})
    engine = AdsEngine(adapter, store, topics, ads, settings.store, pseudonyms)
    if ads.data_path == "direct":
        consumer = data_consumer(settings.kafka, ledger_group(settings), ads.batch_max)
        delivery = Delivery(app, settings, topics, engine, table.changelog_acked, consumer=consumer, metrics=metrics)
        path = DataPath(app, settings.kafka, "ads", parts, consumer, AdsWork(engine, delivery, topics, metrics),
                        store.events, batch_max=ads.batch_max, within_s=ads.batch_within_s,
                        idle_s=max(ads.commit_interval_s, 0.01), metrics=metrics)
        delivery.install(on_revoked=path._forget, data_path=True)  # its pre-commit hook; the path commits
        path.install()
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
    delivery = Delivery(app, settings, topics, engine, changelog_acked=store.tables[SEGMENTS].changelog_acked,
                        metrics=metrics)
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
