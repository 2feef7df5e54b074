"""Event time per partition, the same rule for both engines.

Each partition has a *watermark*: the latest event time it accepted. Windows (ads attribution) and
reviews (retention) close against it, so one event stamped far in the future would close them all at
once. An event is therefore refused (the engines dead-letter it as ``event_time_skew``) when its time lies
more than ``max_skew`` ahead of both the partition's watermark and the wall clock: the clock keeps a
partition that was quiet for days live, the watermark admits simulations that run ahead of the clock.
A refused event moves nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator


class EventClock:
    """Watermarks of partitions in one unit of time (``unit_s`` seconds: 1 for the ad engine's epoch seconds,
    a day for retention's simulated days), with the skew rule of the module docstring."""

    def __init__(self, max_skew_s: float, clock: Callable[[], float] = time.time, unit_s: float = 1.0) -> None:
        self.max_skew = max_skew_s / unit_s
        self._clock = clock
        self._unit_s = unit_s
        self._marks: dict[int, float] = {}

    def mark(self, partition: int) -> float | None:
        """The partition's watermark, None before its first accepted event."""
        return self._marks.get(partition)

    def too_far(self, partition: int, t: float) -> bool:
        """Whether ``t`` lies more than ``max_skew`` ahead of both the watermark and the wall clock."""
        if t <= self._marks.get(partition, -math.inf) + self.max_skew:  # the usual case: no clock read
            return False
        return t > self._clock() / self._unit_s + self.max_skew

    def advance(self, partition: int, t: float) -> bool:
        """Accept ``t`` (already checked by ``too_far``); True if the watermark moved."""
        if t > self._marks.get(partition, -math.inf):
            self._marks[partition] = t
            return True
        return False

    def items(self) -> Iterator[tuple[int, float]]:
        """(partition, watermark) of every partition with one."""
        return iter(list(self._marks.items()))

    def clear(self) -> None:
        self._marks.clear()
