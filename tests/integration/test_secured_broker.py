"""The worker against a secured broker: SASL_SSL + SCRAM-SHA-512, a throw-away CA, ACLs.

The module starts its own broker (``METACART_BROKER_SECURE=1 deploy/kafka/broker.sh start``) two ports
above the plain one, so it runs beside it, and stops it at the end. An administrator creates the topics
and the ACLs of ``streams.acls``; the worker runs as ``worker``, the shop as ``producer``. Each way of
getting it wrong (password, CA, missing ACL) must end the worker within seconds with one clear line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from streams.acls import apply_acls, producer_acls, worker_acls
from streams.app import topics_for
from streams.exceptions import BrokerRefused
from streams.kafka_io import ensure_topics, make_producer, wait_for_broker
from streams.settings import KafkaSettings, Settings, settings_env

from .conftest import BROKER, REPO, Reader, json_values, produce, start_worker
from .helpers import mixed_requests


@dataclass(frozen=True)
class SecuredBroker:
    home: Path
    bootstrap: str

    @property
    def ca(self) -> Path:
        return self.home / "tls" / "ca.pem"

    def password_file(self, user: str) -> Path:
        return self.home / "secrets" / f"{user}.password"

    def kafka(self, user: str, **fields) -> KafkaSettings:
        base = {"bootstrap": self.bootstrap, "security_protocol": "SASL_SSL", "sasl_username": user,
                "sasl_password_file": self.password_file(user), "ssl_ca_file": self.ca,
                "declare_topics": False}
        return KafkaSettings(**(base | fields))


@pytest.fixture(scope="module")
def secured(broker: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    port = int(broker.bootstrap.rsplit(":", 1)[1]) + 2  # the plain broker has port and port + 1
    home = tmp_path_factory.mktemp("kafka-secure")
    env = dict(os.environ, METACART_BROKER_SECURE="1", METACART_BROKER_HOME=str(home),
               METACART_BROKER_PORT=str(port), METACART_BROKER_CONTROLLER_PORT=str(port + 1))
    subprocess.check_call([str(BROKER), "start"], env=env)
    try:
        sb = SecuredBroker(home, f"127.0.0.1:{port}")
        wait_for_broker(sb.kafka("admin"), timeout_s=60)
        yield sb
    finally:
        subprocess.call([str(BROKER), "stop"], env=env)


@pytest.fixture
def secure_settings(secured: SecuredBroker, settings: Settings) -> Settings:
    """The test's settings (unique prefix and group) pointed at the secured broker as ``worker``."""
    s = settings.model_copy(deep=True)
    s.kafka = secured.kafka("worker", topic_prefix=settings.kafka.topic_prefix, segment_partitions=2,
                            user_partitions=2)
    s.agents = "ads"
    s.store.data_dir = settings.store.data_dir.parent / "secure-worker"
    topics = topics_for(s)
    admin = secured.kafka("admin", topic_prefix=s.kafka.topic_prefix, segment_partitions=2, user_partitions=2)
    ensure_topics(admin, topics.all(), create=True)
    apply_acls(admin, worker_acls(s, topics, "User:worker") + producer_acls(topics, "User:producer"))
    return s


def test_worker_decides_end_to_end_over_sasl_ssl_with_acls(secured, secure_settings, workers):
    s = secure_settings
    topics = topics_for(s)
    admin = secured.kafka("admin", topic_prefix=s.kafka.topic_prefix)
    shop = secured.kafka("producer", topic_prefix=s.kafka.topic_prefix)
    decisions = Reader(admin, topics.ad_decisions.name)
    worker = start_worker(workers, s, "secure")
    try:
        n = 50
        produce(shop, topics.ad_requests.name, mixed_requests(n, f"sec{uuid.uuid4().hex[:6]}"))
        decisions.wait_for(lambda ms: len(ms) >= n, 120, f"{n} decisions")
        assert len({d["request_id"] for d in json_values(decisions.seen)}) == n
        changelog = Reader(admin, f"{s.worker_id}-ads-segments-changelog")  # open decisions, written by the worker
        changelog.wait_for(lambda ms: len(ms) > 0, 30, "open decisions in the changelog")
        changelog.close()
        assert worker.alive(), worker.log_tail()
    finally:
        decisions.close()


def test_the_shop_may_not_write_decisions(secured, secure_settings):
    shop = secured.kafka("producer", topic_prefix=secure_settings.kafka.topic_prefix)
    errors: list = []
    producer = make_producer(shop, **{"on_delivery": lambda err, msg: errors.append(err),
                                      "message.timeout.ms": 10000})
    producer.produce(topics_for(secure_settings).ad_decisions.name, key=b"k", value=b"{}")
    t0 = time.monotonic()
    producer.flush(15)
    assert time.monotonic() - t0 < 12
    assert errors and errors[0] is not None
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def _worker_error(s: Settings, log: Path) -> tuple[int, float, list[str]]:
    """Run ``metacart worker`` to its end; exit code, seconds, and the lines it wrote."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "metacart.cli", "worker"], env=settings_env(s, dict(os.environ)),
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    log.write_text(proc.stdout + proc.stderr)
    return proc.returncode, elapsed, [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize("case, expected", [
    ("wrong password", "refused the SCRAM-SHA-512 credentials of user 'worker'"),
    ("untrusted certificate", "TLS handshake with Kafka at"),
    ("no ACL", "topics missing or not visible to user 'intruder'"),
])
def test_misconfigured_worker_fails_fast_with_one_line(secured, secure_settings, tmp_path, case, expected):
    s = secure_settings.model_copy(deep=True)
    if case == "wrong password":
        wrong = tmp_path / "wrong.password"
        wrong.write_text("not-the-password\n")
        s.kafka = s.kafka.model_copy(update={"sasl_password_file": wrong})
    elif case == "untrusted certificate":
        other = tmp_path / "other-ca.pem"
        subprocess.check_call(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                               "-subj", "/CN=someone else", "-keyout", str(tmp_path / "other.key"),
                               "-out", str(other)], stderr=subprocess.DEVNULL)
        s.kafka = s.kafka.model_copy(update={"ssl_ca_file": other})
    else:
        s.kafka = secured.kafka("intruder", topic_prefix=s.kafka.topic_prefix, segment_partitions=2,
                                user_partitions=2)
    code, elapsed, lines = _worker_error(s, tmp_path / "worker.log")
    print(f"\n{case}: exit {code} after {elapsed:.1f}s: {lines}")
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("metacart: error: ") and expected in lines[0], lines
    assert elapsed < 20, f"took {elapsed:.1f}s"


def test_host_name_is_verified_unless_turned_off(secured):
    """The broker certificate names 127.0.0.1 only: reached as ``localhost`` it does not match."""
    port = secured.bootstrap.rsplit(":", 1)[1]
    by_name = secured.kafka("admin", bootstrap=f"localhost:{port}")
    t0 = time.monotonic()
    with pytest.raises(BrokerRefused, match="TLS handshake with Kafka at localhost"):
        wait_for_broker(by_name, timeout_s=20)
    assert time.monotonic() - t0 < 10
    wait_for_broker(by_name.model_copy(update={"ssl_check_hostname": False}), timeout_s=20)
