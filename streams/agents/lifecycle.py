"""The timed state flush of an agent whose engine buffers its writes."""

from __future__ import annotations

from typing import Protocol

import faust


class Stateful(Protocol):
    def flush(self, force: bool = True) -> None: ...


def install_state_hooks(app: faust.App, engine: Stateful, flush_interval_s: float) -> None:
    """Flush ``engine`` on a timer: the timer saves what the last batches changed even when no further
    batch arrives (quiet traffic). Before partitions move, the data path's revoke commits and forgets the
    engine's state (``streams.agents.datapath``)."""

    @app.timer(interval=max(flush_interval_s, 0.05))
    async def flush_state() -> None:
        engine.flush(force=False)
