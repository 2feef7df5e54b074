"""Exit a worker whose agent stopped taking input that the broker holds.

After a broker outage faust-streaming's consumer can come back without ever fetching again: the heartbeat
session expires, the coordinator is marked dead, and an agent fed by it then receives nothing while its
input grows (faust-streaming issues #175 and #523; ``metacart bench chaos --faults retention_broker_restart``
saw it when the retention agent read through Faust's consumer: no retention action for 110 s after the
broker was back, and none until the worker was stopped). The retention agent now reads through its own
librdkafka consumer (``streams.agents.datapath``), which reconnects by itself; the watch stays as the
guard for anything else that stops a data path while it holds partitions. Nothing inside the worker would
bring it back, but a restart does, and a restart is what the design already survives (state from the
changelogs, the ledger and the outbox; crash-tested under kill -9).

:class:`StallWatch` therefore watches the agent's progress: the agent calls :meth:`StallWatch.progressed`
after each batch (and each pause of a long one) with the offsets it expects next. Every ``check_s``, when
nothing progressed for ``stall_s`` and no rebalance is under way, a librdkafka consumer outside the stuck
client (``read_committed``, so transaction markers are not input) looks for a message at or after the
offset the agent expects in each of those partitions; if it finds one, the worker exits with :data:`STALLED_INPUT_EXIT` for its
supervisor to restart it. When the broker cannot be asked (still away), nothing happens: a restart would
not help.
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

from streams.kafka_io import make_consumer
from streams.settings import KafkaSettings

log = logging.getLogger("metacart.stall")

STALLED_INPUT_EXIT = 76
"""Exit status of a worker whose agent received nothing for ``stall_s`` while its input held messages."""


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

    def progressed(self, expected: Mapping[tuple[str, int], int]) -> None:
        """The agent handled input; ``expected``: the offset it expects next per (topic, partition)."""
        self._last = time.monotonic()
        self._expected = dict(expected)

    def install(self) -> None:
        if self.stall_s <= 0:
            return

        @self.app.timer(interval=self.check_s)
        async def watch_for_stalled_input() -> None:
            await self.check()

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
