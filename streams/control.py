"""Control messages: announcing a policy artifact to every worker."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from policy.artifact import PolicyArtifact
from streams.app import topics_for
from streams.events import GateRecord, PolicyUpdate
from streams.kafka_io import ensure_topics, make_producer
from streams.settings import Settings


def publish_policy_update(settings: Settings, artifact: Path, version: str | None = None,
                          on_swap: str = "keep", kind: str = "ads", check: bool = True,
                          gate: GateRecord | None = None) -> str:
    """Publish a ``PolicyUpdate`` for ``artifact``; returns the announced version.

    With ``check`` the artifact is loaded first, so a typo fails here rather than in every worker
    (workers validate again and refuse a bad artifact either way).
    """
    if check:
        version = version or PolicyArtifact.load(artifact).version
    if not version:
        raise ValueError("a version is needed when check=False")
    topics = topics_for(settings)
    ensure_topics(settings.kafka, [topics.policy_updates])
    update = PolicyUpdate(kind=kind, version=version, artifact_uri=str(Path(artifact).resolve()),
                          on_swap=on_swap, event_time=datetime.now(timezone.utc), gate=gate)
    producer = make_producer(settings.kafka)
    producer.produce(topics.policy_updates.name, key=kind.encode(), value=update.model_dump_json().encode())
    if producer.flush(10) != 0:
        raise RuntimeError("policy update not delivered within 10 s")
    return version


def latest_policy_update(settings: Settings, kind: str = "ads", timeout_s: float = 30.0) -> PolicyUpdate | None:
    """The newest ``PolicyUpdate`` of ``kind`` on the policy-updates topic (None when there is none)."""
    from streams.export import read_topic

    topics = topics_for(settings)
    ensure_topics(settings.kafka, [topics.policy_updates])
    latest = None
    for value in read_topic(settings.kafka, topics.policy_updates.name, timeout_s):
        try:
            update = PolicyUpdate.model_validate_json(value)
        except ValueError:
            continue
        if update.kind == kind:
            latest = update
    return latest
