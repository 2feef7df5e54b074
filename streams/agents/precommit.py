"""Work that must be durable before Faust commits input offsets: hooks chained into Faust's producer flush.

Faust commits a consumer's offsets right after ``await app.producer.flush()`` (``_commit_offsets`` in
faust/transport/consumer.py), and it flushes the producer before partitions are revoked and at shutdown.
Every agent whose state must reach its table changelog before its input offsets are committed registers
one hook here; at each flush the hooks run in registration order, then Faust's own flush. One chain for
the ads and the retention agents, so that neither replaces the other's hook.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import faust

Hook = Callable[[], Awaitable[None]]


class PreCommit:
    """The hooks of one app, and Faust's own producer flush they run before."""

    def __init__(self, faust_flush: Hook) -> None:
        self.faust_flush = faust_flush
        self.hooks: list[Hook] = []

    async def run(self) -> None:
        for hook in self.hooks:
            await hook()
        await self.faust_flush()


def precommit(app: faust.App) -> PreCommit:
    """The app's chain, installed in place of ``app.producer.flush`` the first time it is asked for."""
    chain = getattr(app, "_metacart_precommit", None)
    if chain is None:
        producer = app.producer
        chain = PreCommit(producer.flush)
        producer.flush = chain.run  # type: ignore[method-assign]
        app._metacart_precommit = chain  # type: ignore[attr-defined]
    return chain


def before_offsets_commit(app: faust.App, hook: Hook) -> None:
    """Run ``hook`` at every Faust producer flush (so before every offset commit), after earlier hooks."""
    precommit(app).hooks.append(hook)
