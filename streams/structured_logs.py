"""One logger per worker process: JSON lines (or plain text), a level from the settings, rate-limited.

Every record of the process goes through the root logger: metacart's own, Faust's and mode's, and
librdkafka's (confluent-kafka clients are given the ``librdkafka`` logger). One JSON object per line::

    {"ts": "2026-12-01T09:04:18.516Z", "level": "WARNING", "logger": "metacart.worker",
     "worker": "metacart-worker@host:4242", "msg": "...", "partition": 3}

``partition`` appears when the call passes it (``log.warning(..., extra={"partition": p})``), ``exc``
when there is a traceback. A message template logged more than ``log_rate_limit`` times in 10 s is
dropped until the window ends; the next one that passes says how many were dropped (``suppressed``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone

from streams.settings import Settings

RDKAFKA_LOGGER = logging.getLogger("librdkafka")
WINDOW_S = 10.0


class JsonFormatter(logging.Formatter):
    """A record as one JSON object (``ts``, ``level``, ``logger``, ``worker``, ``msg``, extras)."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "worker": self.worker,
            "msg": record.getMessage(),
        }
        for key in ("partition", "topic", "suppressed"):
            if hasattr(record, key):
                body[key] = getattr(record, key)
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


class RateLimit(logging.Filter):
    """At most ``limit`` records per (logger, message template) in each ``window_s``; 0 = no limit."""

    def __init__(self, limit: int, window_s: float = WINDOW_S, clock=time.monotonic) -> None:
        super().__init__()
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[str, str], list[float | int]] = {}  # key -> [window start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.limit <= 0:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.window_s:
            dropped = int(state[2]) if state else 0
            self._seen[key] = [now, 1, 0]
            if dropped:
                record.suppressed = dropped
            if len(self._seen) > 10_000:  # templates are few; ids pasted into messages are not
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
            return True
        if state[1] < self.limit:
            state[1] += 1
            return True
        state[2] += 1
        return False


def configure_logging(settings: Settings, worker: str, stream=None) -> logging.Handler:
    """Route every logger of the process to one handler on ``stream`` (stderr) with the settings' level."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [{worker}] %(message)s"))
    handler.addFilter(RateLimit(settings.log_rate_limit))
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)
    return handler
