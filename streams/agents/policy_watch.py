"""The policy-update watcher both agents run: one mechanism for hot-swapping ads and retention policies.

Every worker reads every policy update (its own consumer group, from the start of the topic) and applies,
in order, those of its ``kind`` for another version than the one it serves. An update is served only
once its artifact loads and scores a probe batch (the agent's ``load``); a refused one is logged,
counted and dead-lettered (``error_type`` "policy_refused"), and the current policy keeps serving. A
malformed update is dead-lettered as well.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from policy.artifact import ArtifactError
from streams.edge import Decoder, Source, dead_letter
from streams.events import DeadLetter
from streams.kafka_io import make_consumer
from streams.settings import Settings
from streams.topics import Topics

A = TypeVar("A")


async def watch_policy_updates(settings: Settings, topics: Topics, kind: str, *,
                               version: Callable[[], str], load: Callable[[str], A],
                               swap: Callable[[A, str], None],
                               send_dead: Callable[[DeadLetter], Awaitable[None]],
                               refused: Callable[[], None], log: logging.Logger) -> None:
    """Run until cancelled; ``load`` runs off the event loop (it reads files and scores a probe batch)."""
    loop = asyncio.get_running_loop()
    decoder = Decoder(topics.policy_updates.payload)
    consumer = make_consumer(settings.kafka, f"{settings.worker_id}-policy-{uuid.uuid4().hex[:8]}",
                             **{"enable.auto.commit": False})
    consumer.subscribe([topics.policy_updates.name])
    try:
        while True:
            msg = consumer.poll(0)
            if msg is None:
                await asyncio.sleep(0.2)
                continue
            if msg.error():
                continue
            src = Source(msg.topic(), msg.partition(), msg.offset(), msg.key())
            update = decoder.decode_one(msg.value(), src)
            if isinstance(update, DeadLetter):
                await send_dead(update)
                continue
            if update.kind != kind or update.version == version():
                continue
            try:
                artifact = await loop.run_in_executor(None, load, update.artifact_uri)
                swap(artifact, update.on_swap)
            except (ArtifactError, OSError, ValueError) as exc:
                reason = f"{kind} policy {update.version} at {update.artifact_uri} refused: {exc}"
                log.error(reason)
                refused()
                await send_dead(dead_letter(msg.value(), src, "policy_refused", reason))
                continue
            log.warning("%s policy %s hot-swapped in from %s (state: %s)",
                        kind, update.version, update.artifact_uri, update.on_swap)
    finally:
        consumer.close()
