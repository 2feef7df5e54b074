"""Faust tables whose changelog writes a commit can wait for.

A table write in Faust puts its changelog message into the app producer's buffer (``send_soon``), and
``app.producer.flush()`` is not a barrier for that buffer: ``ProducerBuffer.flush_atmost`` returns as soon
as handing one message to the Kafka client takes longer than 0.1 s (faust-streaming 0.15.3), leaving the rest
unsent. A commit that trusted it could record input offsets whose state changes never reached the changelog,
and a crash then loses them (seen as clicks lost under kill -9 on a loaded machine).

``TrackedTable`` keeps the future of every changelog message it sends; ``changelog_acked`` waits until the
broker has acknowledged all of them (or raises the first failure). ``send_changelog`` is the public method
Faust's own ``on_key_set`` / ``on_key_del`` call, so the tracking sees every write and delete.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust


class TrackedTable(faust.Table):
    """A ``faust.Table`` that remembers its unacknowledged changelog messages."""

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._unacked: list[asyncio.Future] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self._unacked.append(fut)
        return fut

    def unacked(self) -> int:
        """Changelog messages sent since the last ``changelog_acked``."""
        return len(self._unacked)

    async def changelog_acked(self) -> None:
        """Return once every changelog message sent so far is acknowledged by the broker."""
        pending, self._unacked = self._unacked, []
        if pending:
            await asyncio.gather(*pending)


def tracked_table(app: faust.App, name: str, **kwargs: Any) -> TrackedTable:
    """``app.Table(name, **kwargs)``, as a ``TrackedTable``."""
    return app.tables.add(TrackedTable(app, name=name, beacon=app.tables.beacon, **kwargs))
