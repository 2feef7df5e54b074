"""Integration fixtures: the real Kafka broker, a small trained artifact, real worker processes.

``make test`` starts the broker before pytest; run alone, the ``broker`` fixture starts it (and stops it
afterwards). Nothing here skips: without a broker these tests fail.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import SecretStr

from metacart.processes import WorkerProcess

from streams.kafka_io import consume, ensure_topics, make_producer, wait_for_broker
from streams.settings import KafkaSettings, Settings
from streams.app import topics_for

REPO = Path(__file__).resolve().parents[2]
BROKER = REPO / "deploy" / "kafka" / "broker.sh"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> Iterator[KafkaSettings]:
    kafka = Settings().kafka  # METACART_KAFKA__BOOTSTRAP, set by the Makefile from BROKER_PORT
    started = False
    if subprocess.call([str(BROKER), "status"], stderr=subprocess.DEVNULL) != 0:
        subprocess.check_call([str(BROKER), "start"])
        started = True
    wait_for_broker(kafka, timeout_s=60)
    yield kafka
    if started:
        subprocess.call([str(BROKER), "stop"])


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small artifact meta-trained in a few seconds on simulator logs (real training code)."""
    from policy.simulator.datasets import simulate_logs
    from policy.simulator.market import Market
    from policy.train import TrainConfig, train

    market = Market()
    logs = simulate_logs(market, market.train_segments[:40], 200, seed=1)
    out = tmp_path_factory.mktemp("artifact") / "ads-v1"
    train(logs, TrainConfig(epochs=3, steps_per_epoch=10, version="itest-v1"), out_dir=out)
    return out


@pytest.fixture(scope="session")
def retention_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A retention artifact built by the real build function, time-boxed for the test."""
    from policy.retention.train import build_artifacts

    return build_artifacts(tmp_path_factory.mktemp("retention") / "art", max_seconds=6.0, seed=0)


@pytest.fixture
def settings(broker: KafkaSettings, artifact_dir: Path, tmp_path: Path) -> Settings:
    """Settings with a unique topic prefix and consumer group, so tests never see each other's data."""
    tag = uuid.uuid4().hex[:10]
    s = Settings(
        kafka=KafkaSettings(bootstrap=broker.bootstrap, topic_prefix=f"t{tag}", segment_partitions=4,
                            user_partitions=4),
        worker_id=f"w{tag}",
        stats_interval_s=0.5,
    )
    s.privacy.pseudonym_key = SecretStr(secrets.token_hex(32))
    s.store.data_dir = tmp_path / "worker-a"
    s.policy.artifact = artifact_dir
    s.ads.batch_within_s = 0.01
    ensure_topics(s.kafka, topics_for(s).all())
    return s


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def start_worker(workers: list[WorkerProcess], s: Settings, name: str = "a") -> WorkerProcess:
    w = WorkerProcess(s, s.store.data_dir.parent / f"worker-{name}.log").start()
    workers.append(w)
    return w


@dataclass
class Reader:
    """Reads a topic from the beginning, keeping everything seen so far."""

    kafka: KafkaSettings
    topic: str
    seen: list = field(default_factory=list)

    def __post_init__(self) -> None:
        from streams.kafka_io import make_consumer

        self._consumer = make_consumer(self.kafka, f"reader-{uuid.uuid4().hex[:8]}")
        self._consumer.subscribe([self.topic])

    def poll(self, timeout_s: float = 0.5) -> list:
        new = []
        for msg in self._consumer.consume(num_messages=10000, timeout=timeout_s):
            if msg.error() is None:
                new.append(msg)
        self.seen.extend(new)
        return new

    def wait_for(self, predicate, timeout_s: float = 60.0, what: str = "condition") -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll(0.3)
            if predicate(self.seen):
                return self.seen
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what} on {self.topic} "
                             f"({len(self.seen)} messages seen)")

    def close(self) -> None:
        self._consumer.close()


def json_values(msgs: list) -> list[dict]:
    return [json.loads(m.value()) for m in msgs]


def produce(kafka: KafkaSettings, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    failed: list = []
    producer = make_producer(kafka, on_delivery=lambda err, msg: err is not None and failed.append(err))
    for key, value in items:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    assert producer.flush(30) == 0, "not every message was delivered"
    assert not failed, f"{len(failed)} messages failed: {failed[0]}"


__all__ = ["Reader", "WorkerProcess", "consume", "json_values", "produce", "start_worker"]
