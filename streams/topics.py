"""The Kafka topics of metacart: names, what they are keyed by, how many partitions, what they carry.

Segment-keyed topics share one partition count so that a segment's requests, its feedback and the
changelog of its state land on the same partition number (Faust co-partitioning). Producers must use
Kafka's murmur2 partitioner on the UTF-8 key (Java's and aiokafka's default; confluent-kafka needs
``partitioner=murmur2_random``, which ``streams.kafka_io.producer_config`` sets).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, TypeAdapter

from streams import events


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its full name, the event field it is keyed by, partitions, and its payload type."""

    name: str
    key: str
    partitions: int
    payload: object
    doc: str

    def adapter(self) -> TypeAdapter:
        return TypeAdapter(self.payload)


@dataclass(frozen=True)
class Topics:
    """All topic specs under one name prefix (tests use a unique prefix per run)."""

    prefix: str = "metacart"
    segment_partitions: int = 8
    user_partitions: int = 8

    def _spec(self, suffix: str, key: str, partitions: int, payload: object, doc: str) -> TopicSpec:
        return TopicSpec(f"{self.prefix}.{suffix}", key, partitions, payload, doc)

    @property
    def ad_requests(self) -> TopicSpec:
        return self._spec("ad-requests", "segment", self.segment_partitions, events.AdRequest,
                          "slots to fill, from the shop")

    @property
    def ad_feedback(self) -> TopicSpec:
        return self._spec("ad-feedback", "segment", self.segment_partitions, events.AdFeedback,
                          "impressions, clicks and purchases, joined to decisions by request_id")

    @property
    def ad_decisions(self) -> TopicSpec:
        return self._spec("ad-decisions", "segment", self.segment_partitions, events.AdDecision,
                          "chosen ad, propensity, policy version, explanation")

    @property
    def sessions(self) -> TopicSpec:
        return self._spec("sessions", "user_id", self.user_partitions, events.SessionEvent,
                          "user activity for engagement state")

    @property
    def retention_actions(self) -> TopicSpec:
        return self._spec("retention-actions", "user_id", self.user_partitions, events.RetentionAction,
                          "interventions with propensity and reason")

    @property
    def retention_outcomes(self) -> TopicSpec:
        return self._spec("retention-outcomes", "user_id", self.user_partitions, events.RetentionOutcome,
                          "what happened after an intervention")

    @property
    def erasure_requests(self) -> TopicSpec:
        return self._spec("erasure-requests", "user_id", self.user_partitions, events.ErasureRequest,
                          "users whose per-user state is to be forgotten")

    @property
    def policy_updates(self) -> TopicSpec:
        return self._spec("policy-updates", "kind", 1, events.PolicyUpdate,
                          "artifact hot-swap commands, read by every worker")

    @property
    def dead_letters(self) -> TopicSpec:
        return self._spec("dead-letters", "source_topic", 1, events.DeadLetter,
                          "malformed input with the reason and original bytes")

    @property
    def worker_stats(self) -> TopicSpec:
        return self._spec("worker-stats", "worker", 1, events.WorkerStats,
                          "each worker's counters, once per stats interval")

    def all(self) -> list[TopicSpec]:
        return [
            self.ad_requests, self.ad_feedback, self.ad_decisions, self.sessions,
            self.retention_actions, self.retention_outcomes, self.erasure_requests, self.policy_updates,
            self.dead_letters,
            self.worker_stats,
        ]


def json_schemas() -> dict[str, dict]:
    """JSON Schema of every payload, for producers written in other languages."""
    schemas: dict[str, dict] = {}
    for spec in Topics().all():
        payload = spec.payload
        name = payload.__name__ if isinstance(payload, type) and issubclass(payload, BaseModel) else None
        schemas[name or spec.name.split(".", 1)[1]] = TypeAdapter(payload).json_schema()
    return schemas
