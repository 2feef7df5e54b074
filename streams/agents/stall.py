"""Exit a worker whose Faust consumer stopped delivering input that the broker holds, or stopped committing.

After a broker outage faust-streaming's consumer can come back without ever fetching again: the heartbeat
session expires, the coordinator is marked dead, and the agent then receives nothing while its input
grows (faust-streaming issues #175 and #523; ``metacart bench chaos --faults retention_broker_restart``
saw it: no retention action for 110 s after the broker was back, and none until the worker was stopped).
Nothing inside the worker brings that consumer back, but a restart does, and a restart is what the design
already survives (state from the changelogs, the ledger and the outbox; crash-tested under kill -9).

:class:`StallWatch` therefore watches the agent's progress: the agent calls :meth:`StallWatch.progressed`
after each batch (and each pause of a long one) with the offsets it expects next. Every ``check_s``, when
nothing progressed for ``stall_s`` and no rebalance is under way, a librdkafka consumer outside the stuck
client (``read_committed``, so transaction markers are not input) looks for a message at or after the
offset the agent expects in each of those partitions; if it finds one, the worker exits with :data:`STALLED_INPUT_EXIT` for its
supervisor to restart it. When the broker cannot be asked (still away), nothing happens: a restart would
not help.

The same watch ends a worker whose Faust consumer stopped *committing*: when a partition's committed offset
stays the same for ``stall_s`` while the agent has processed past it (:func:`stuck_commits`,
:meth:`StallWatch.check_commits`), the worker exits with :data:`STUCK_COMMIT_EXIT`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Mapping

import faust
from confluent_kafka import KafkaException, TopicPartition

from streams.kafka_io import committed_offsets, make_consumer
from streams.settings import KafkaSettings

log = logging.getLogger("metacart.stall")

STALLED_INPUT_EXIT = 76
"""Exit status of a worker whose agent received nothing for ``stall_s`` while its input held messages."""
STUCK_COMMIT_EXIT = 77
"""Exit status of a worker whose Faust consumer committed no progress for ``stall_s`` on a partition whose
input the agent had processed past its committed offset."""


def stuck_commits(seen: dict[tuple[str, int], tuple[int, float]], committed: Mapping[tuple[str, int], int],
                  expected: Mapping[tuple[str, int], int], now: float, stall_s: float) -> list[tuple[str, int]]:
    """Partitions whose committed offset stayed the same, below the offset the agent expects next, for
    ``stall_s`` or more. ``seen`` (updated here) holds, per partition behind, its committed offset and since
    when; a partition whose committed offset is unknown, moved, or caught up starts over."""
    stuck = []
    for tp, next_offset in expected.items():
        offset = committed.get(tp)
        if offset is None or offset >= next_offset:
            seen.pop(tp, None)
            continue
        before = seen.get(tp)
        if before is None or before[0] != offset:
            seen[tp] = (offset, now)
        elif now - before[1] >= stall_s:
            stuck.append(tp)
    for tp in set(seen) - set(expected):
        del seen[tp]
    return stuck


class StallWatch:
    """Progress of one agent, and the check that ends a worker whose consumer went quiet (module docstring)."""

    def __init__(self, app: faust.App, kafka: KafkaSettings, name: str, stall_s: float, check_s: float = 5.0,
                 exit=os._exit) -> None:
        self.app = app
        self.kafka = kafka
        self.name = name
        self.stall_s = stall_s
        self.check_s = check_s
        self._exit = exit
        self._last = time.monotonic()
        self._expected: dict[tuple[str, int], int] = {}
        self._behind: dict[tuple[str, int], tuple[int, float]] = {}

    def progressed(self, expected: Mapping[tuple[str, int], int]) -> None:
        """The agent handled input; ``expected``: the offset it expects next per (topic, partition)."""
        self._last = time.monotonic()
        self._expected = dict(expected)

    def install(self) -> None:
        if self.stall_s <= 0:
            return

        @self.app.timer(interval=self.check_s)
        async def watch_for_stalled_input() -> None:
            if not await self.check():
                await self.check_commits()

    async def check_commits(self) -> bool:
        """True (after asking for the exit) when Faust's consumer committed no progress for ``stall_s`` on a
        partition the agent had processed past its committed offset.

        Seen in the retention chaos faults after rebalances: Faust's list of acknowledged offsets held some
        offsets twice (the offsets of a gap it registered are added to it at each commit without a check
        against those already acknowledged), and Faust commits only the first run of consecutive offsets in
        it, so its commits stopped for good (docs/ARCHITECTURE.md, "Input order"). A restarted worker starts
        from the committed offsets with that bookkeeping empty, and its effects are idempotent on replay."""
        if self.app.rebalancing or not self._expected:
            self._behind.clear()
            return False
        expected = dict(self._expected)
        committed = await asyncio.get_running_loop().run_in_executor(
            None, committed_offsets, self.kafka, self.app.conf.id, set(expected))
        stuck = stuck_commits(self._behind, committed, expected, time.monotonic(), self.stall_s)
        if not stuck or self.app.rebalancing:
            return False
        log.error("%s agent: Faust committed no progress for %.0f s on %s (committed %s, processed to %s): "
                  "exiting for a restart", self.name, self.stall_s, sorted(stuck),
                  [committed[tp] for tp in sorted(stuck)], [expected[tp] for tp in sorted(stuck)])
        logging.shutdown()
        self._exit(STUCK_COMMIT_EXIT)
        return True

    async def check(self) -> bool:
        """True (after asking for the exit) when the agent is stalled behind input the broker holds."""
        quiet = time.monotonic() - self._last
        if quiet < self.stall_s or self.app.rebalancing or not self._expected:
            return False
        expected = dict(self._expected)
        waiting = await asyncio.get_running_loop().run_in_executor(None, self._waiting, expected)
        if not waiting:  # idle input, or the broker not answering: look again in stall_s
            self._last = time.monotonic()
            return False
        log.error("%s agent received nothing for %.0f s while %d of its input partitions hold messages: exiting "
                  "for a restart (a Faust consumer back from a broker outage without fetching)",
                  self.name, quiet, waiting)
        logging.shutdown()
        self._exit(STALLED_INPUT_EXIT)
        return True

    def _waiting(self, expected: Mapping[tuple[str, int], int], timeout_s: float = 5.0) -> int:
        """Partitions holding a message (for a ``read_committed`` reader, so not a transaction marker) at or
        after the offset the agent expects; 0 when the broker does not answer."""
        consumer = make_consumer(self.kafka, f"stall-watch-{uuid.uuid4().hex[:8]}",
                                 **{"enable.auto.commit": False, "isolation.level": "read_committed"})
        found = 0
        try:
            for (topic, partition), offset in expected.items():
                try:
                    _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
                except KafkaException as exc:
                    log.warning("end offset of %s/%d not read (%s): not judging the stall", topic, partition, exc)
                    return 0
                if high <= offset:
                    continue
                consumer.assign([TopicPartition(topic, partition, offset)])
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    if any(m.error() is None for m in consumer.consume(num_messages=10, timeout=0.5)):
                        found += 1
                        break
                    if consumer.position([TopicPartition(topic, partition)])[0].offset >= high:
                        break  # only markers up to the end
        finally:
            consumer.close()
        return found
