"""One pre-commit chain per app: every hook runs, in order, before Faust's own producer flush."""

from __future__ import annotations

import asyncio

import faust

from streams.agents.precommit import before_offsets_commit, precommit


def test_hooks_run_in_order_before_fausts_flush_and_neither_replaces_the_other():
    app = faust.App("t-precommit", broker="kafka://127.0.0.1:1", store="memory://")
    calls: list[str] = []

    async def faust_flush() -> None:
        calls.append("faust")

    app.producer.flush = faust_flush  # stands for Faust's own flush (no broker here)

    async def ads() -> None:
        calls.append("ads")

    async def retention() -> None:
        calls.append("retention")

    before_offsets_commit(app, ads)
    before_offsets_commit(app, retention)
    assert precommit(app) is precommit(app)  # installed once
    asyncio.run(app.producer.flush())
    assert calls == ["ads", "retention", "faust"]
