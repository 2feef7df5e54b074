"""Erasure on request: ``metacart forget --user ID`` asks the workers to forget one user.

The request goes to the ``erasure-requests`` topic keyed by the raw user id, like the user's session
events, so it reaches the partition (and the worker) that holds the user's state. The retention agent
pseudonymises it at the edge and deletes the user's row, open actions and contact history from its
tables; each delete is a tombstone in the table's changelog, so a worker restored from the changelogs
does not bring the user back. See docs/SECURITY.md for what erasure does not reach.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from streams.events import ErasureRequest
from streams.kafka_io import ensure_topics, make_producer
from streams.settings import Settings
from streams.topics import Topics


def request_erasure(settings: Settings, user_id: str, timeout_s: float = 10.0) -> ErasureRequest:
    """Publish an erasure request for ``user_id`` (validated like every event) and wait for delivery."""
    kafka = settings.kafka
    topics = Topics(kafka.topic_prefix, kafka.segment_partitions, kafka.user_partitions)
    request = ErasureRequest(request_id=f"erase-{uuid.uuid4().hex[:12]}", user_id=user_id,
                             requested_at=datetime.now(timezone.utc))
    ensure_topics(kafka, [topics.erasure_requests])
    failed: list = []
    producer = make_producer(kafka, on_delivery=lambda err, msg: err is not None and failed.append(err))
    producer.produce(topics.erasure_requests.name, key=user_id.encode(), value=request.model_dump_json().encode())
    if producer.flush(timeout_s) != 0 or failed:
        raise RuntimeError(f"erasure request not delivered within {timeout_s:.0f}s: {failed[0] if failed else ''}")
    return request
