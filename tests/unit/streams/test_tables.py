"""``TrackedTable``: a commit can wait for every changelog write, which Faust's producer flush does not."""

from __future__ import annotations

import asyncio

import faust
from faust.transport.producer import ProducerBuffer



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
