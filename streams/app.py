"""The Faust application: one factory, configured from ``Settings``, with RocksDB tables via rocksdict.

faust-streaming picks whichever RocksDB binding imports unless told; metacart names ``rocksdict``
explicitly on every table (``TABLE_OPTIONS``). Values travel as raw bytes: validation happens in
``streams.edge``, not in Faust's codecs, so that a malformed message becomes a dead letter instead of
an exception inside the consumer.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import faust

from streams.connection import faust_options
from streams.settings import Settings
from streams.topics import Topics

# Faust opens one RocksDB per table and partition with a 64 MB write buffer (up to 3 of them) and a 2 GB
# block cache each: with 8 partitions and 5 tables that is no bound at all on a worker's memory (a 5-minute
# soak grew 137 MB/min). These bound each database to about 2 x 4 MB of memtables plus an 8 MB cache.
TABLE_OPTIONS = {
    "driver": "rocksdict",
    "write_buffer_size": 4 * 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * 1024**2,
}


def worker_name(settings: Settings) -> str:
    """``worker_id@host:pid``: how stats, metrics, logs and the consumer's client id name this process."""
    return f"{settings.worker_id}@{socket.gethostname()}:{os.getpid()}"


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app (not started). Agents are installed by ``streams.agents.*.install``."""
    kafka, tuning = settings.kafka, settings.faust
    Path(settings.store.data_dir).mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        settings.worker_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap.split(",")],
        store="rocksdb://",
        datadir=str(settings.store.data_dir),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=kafka.segment_partitions,
        topic_replication_factor=kafka.replication_factor,
        topic_allow_declare=kafka.declare_topics,
        consumer_auto_offset_reset="earliest",
        web_enabled=settings.web_port > 0,
        web_port=max(settings.web_port, 1),
        producer_linger=tuning.producer_linger_s,
        producer_max_batch_size=tuning.producer_max_batch_bytes,
        stream_buffer_maxsize=tuning.stream_buffer_maxsize,
        broker_commit_every=tuning.commit_every,
        broker_commit_interval=tuning.commit_interval_s,
        broker_max_poll_records=tuning.max_poll_records,
        consumer_max_fetch_size=tuning.max_fetch_size_bytes,
        table_standby_replicas=0,
        broker_session_timeout=kafka.session_timeout_s,
        broker_heartbeat_interval=kafka.heartbeat_interval_s,
        logging_config=None,
        **faust_options(kafka),
        broker_client_id=worker_name(settings),  # the broker's view of the group names this process
    )
    # Faust pauses the consumer whenever more than ``max_messages`` table changes wait for the
    # changelog (100 by default, a class attribute). One state flush writes about that many at once
    # (posteriors of every changed segment, closed blocks), so the default stalled decisions for
    # seconds under steady traffic ("producer buffer full" in the log).
    app.producer.buffer.max_messages = settings.store.changelog_buffer_max
    return app


def topics_for(settings: Settings) -> Topics:
    kafka = settings.kafka
    return Topics(kafka.topic_prefix, kafka.segment_partitions, kafka.user_partitions)
