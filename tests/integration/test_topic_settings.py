"""Replication settings reach the broker for every topic metacart creates (changelogs included)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource

from streams.exceptions import BrokerRefused
from streams.kafka_io import client_config, ensure_topics
from streams.settings import KafkaSettings
from streams.topics import TopicSpec


def _spec(name: str) -> TopicSpec:
    return TopicSpec(name, "key", 2, bytes, "test topic")


def test_min_insync_replicas_is_set_on_created_topics(broker: KafkaSettings):
    name = f"cfg-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker, [_spec(name)], compacted=True)
    admin = AdminClient(client_config(broker))
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["min.insync.replicas"].value == "1"
    assert configs["min.insync.replicas"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["cleanup.policy"].value == "compact"


def test_a_replication_factor_the_cluster_cannot_meet_is_a_clear_error(broker: KafkaSettings):
    three = broker.model_copy(update={"replication_factor": 3, "min_insync_replicas": 2})
    with pytest.raises(BrokerRefused, match=r"cannot create topic cfg-.*replication factor"):
        ensure_topics(three, [_spec(f"cfg-{uuid.uuid4().hex[:8]}")])
