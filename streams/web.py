"""The worker's HTTP endpoints, on Faust's web server (``METACART_WEB_PORT``, 6066 by default).

- ``GET /metrics``: Prometheus text exposition (``streams.metrics``);
- ``GET /healthz``: 200 while the process's event loop answers (liveness);
- ``GET /readyz``: 200 once partitions are assigned and the tables recovered from their changelogs,
  503 before that and during a rebalance (readiness). Both answer a small JSON body.
"""

from __future__ import annotations

import time

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from streams.metrics import ConsumerState, WorkerMetrics


class FaustConsumerState(ConsumerState):
    """Assignment, readiness and lag of a Faust app's consumer, read when asked."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.started = time.monotonic()
        # A direct data path (streams.agents.datapath) reads its topics with a consumer of its own: it
        # answers for them, and Faust's never-written membership topic is left out.
        self.data_paths: list[ConsumerState] = []
        self.hidden: set[str] = set()

    def _changelogs(self) -> set[str]:
        """Topics Faust reads for itself: table changelogs and its leader-election topic."""
        return ({t.changelog_topic.get_topic_name() for t in self.app.tables.values()}
                | {f"{self.app.conf.id}-__assignor-__leader"})

    def _assignment(self) -> set:
        try:
            return set(self.app.consumer.assignment())
        except Exception:  # consumer not started yet
            return set()

    def assigned(self) -> int:
        skip = self._changelogs() | self.hidden
        faust_owned = sum(1 for tp in self._assignment() if tp.topic not in skip)
        return faust_owned + sum(path.assigned() for path in self.data_paths)

    def ready(self) -> bool:
        recovery = self.app.tables.recovery
        return bool(self._assignment()) and recovery.completed.is_set() and not self.app.rebalancing

    def lag(self) -> dict[tuple[str, int], int]:
        """End offset minus the next offset to read, per assigned source partition (known ones only).

        The position is the last offset read plus one, or the committed offset before any read.
        """
        monitor = self.app.monitor
        changelogs = self._changelogs() | self.hidden
        out: dict[tuple[str, int], int] = {}
        for path in self.data_paths:
            out.update(path.lag())
        for tp in self._assignment():
            if tp.topic in changelogs:
                continue
            try:
                end = self.app.consumer.highwater(tp)
            except Exception:  # not fetched yet, or moved away meanwhile
                continue
            read = monitor.tp_read_offsets.get(tp)
            position = read + 1 if read is not None else monitor.tp_committed_offsets.get(tp)
            if end is None or position is None:
                continue
            out[(tp.topic, tp.partition)] = max(int(end) - int(position), 0)
        return out


def install_routes(app: faust.App, metrics: WorkerMetrics, state: FaustConsumerState) -> None:
    """Register ``/metrics``, ``/healthz`` and ``/readyz`` on ``app``'s web server."""

    @app.page("/metrics")
    async def metrics_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        # aiohttp refuses a charset inside content_type=; the full header goes in as a header.
        return self.bytes(metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return self.json({"alive": True, "uptime_s": round(time.monotonic() - state.started, 3)})

    @app.page("/readyz")
    async def readyz(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        ready = state.ready()
        body = {"ready": ready, "assigned_partitions": state.assigned(),
                "tables_recovered": app.tables.recovery.completed.is_set(), "rebalancing": app.rebalancing}
        return self.json(body, status=200 if ready else 503)
