"""``TrackedTable``: a commit can wait for every changelog write, which Faust's producer flush does not."""

from __future__ import annotations

import asyncio

import faust
import pytest
from faust.transport.producer import ProducerBuffer

from streams.tables import TrackedTable, tracked_table


def test_fausts_producer_buffer_flush_returns_with_messages_still_unsent():
    """The premise of ``TrackedTable``: ``ProducerBuffer.flush`` gives up when one hand-over takes > 0.1 s."""

    class SlowBuffer(ProducerBuffer):
        async def _send_pending(self, fut) -> None:
            await asyncio.sleep(0.3)  # a Kafka client whose queue is full, on a loaded machine

    async def main() -> int:
        buffer = SlowBuffer()
        buffer.app = faust.App("t-buffer", broker="kafka://127.0.0.1:1")
        await buffer.start()
        for _ in range(3):
            buffer.put(object())
        await buffer.flush()
        left = buffer.size
        while buffer.size:  # let the slow hand-overs finish before stopping
            await asyncio.sleep(0.1)
        await buffer.stop()
        return left

    assert asyncio.run(main()) > 0


def test_tracked_table_waits_for_every_changelog_write_and_raises_a_failed_one():
    async def main() -> None:
        app = faust.App("t-tracked", broker="kafka://127.0.0.1:1", store="memory://")
        table = tracked_table(app, "t", partitions=2, key_type=bytes, value_type=bytes)
        assert isinstance(table, TrackedTable) and app.tables["t"] is table
        futures = [table.send_changelog(p, b"k%d" % p, b"v") for p in (0, 1)]
        assert table.unacked() == 2
        waiter = asyncio.ensure_future(table.changelog_acked())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # nothing acknowledged yet
        futures[0].set_result(None)
        await asyncio.sleep(0.05)
        assert not waiter.done()  # one of two
        futures[1].set_result(None)
        await asyncio.wait_for(waiter, 1)
        assert table.unacked() == 0
        failed = table.send_changelog(0, b"k", b"v")
        failed.set_exception(RuntimeError("broker said no"))
        with pytest.raises(RuntimeError, match="broker said no"):
            await table.changelog_acked()

    asyncio.run(main())
