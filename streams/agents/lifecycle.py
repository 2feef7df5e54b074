"""State hooks every agent installs: a timed flush and a rebalance hook."""

from __future__ import annotations

from typing import Protocol

import faust


class Stateful(Protocol):
    def flush(self, force: bool = True) -> None: ...
    def on_rebalance(self) -> None: ...


def install_state_hooks(app: faust.App, engine: Stateful, flush_interval_s: float) -> None:
    """Flush ``engine`` on a timer and before partitions move.

    The timer saves what the last batches changed even when no further batch arrives (quiet traffic);
    the revoke hook saves and forgets cached state before another worker takes the partitions.
    """

    @app.timer(interval=max(flush_interval_s, 0.05))
    async def flush_state() -> None:
        engine.flush(force=False)

    @app.on_partitions_revoked.connect
    async def _revoked(app_: faust.App, revoked: set, **kwargs: object) -> None:
        engine.on_rebalance()
