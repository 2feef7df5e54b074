"""The direct data path routes table writes without Faust events: pin the Faust behaviour it relies on.

``streams.agents.datapath.PartitionEvent`` carries only ``message.topic`` and ``message.partition``;
made current, it must send a table key to changelog partition p (``Table.partition_for_key``, what
``Table.on_key_set`` sends the changelog record to) and to RocksDB partition p (the store). If a Faust
upgrade reads more of the current event, or routes otherwise, these fail (and the version pin first).
"""

from __future__ import annotations

import asyncio
import re
import tomllib
import weakref
from pathlib import Path

import faust
import pytest
from faust.streams import _current_event

from streams.agents.datapath import PartitionEvent, membership_topic_name

REPO = Path(__file__).resolve().parents[3]


def test_faust_is_the_pinned_version():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("faust-streaming"))
    match = re.fullmatch(r"faust-streaming==([\w.]+)", pin.split(";")[0].strip())
    assert match, f"faust-streaming must be pinned exactly (the data path relies on its internals): {pin!r}"
    assert faust.__version__ == match.group(1)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    loop = asyncio.new_event_loop()
    app = faust.App("route-test", broker="kafka://127.0.0.1:1", store="rocksdb://", loop=loop,
                    datadir=str(tmp_path_factory.mktemp("faust")), key_serializer="raw", value_serializer="raw")
    yield app
    if app._consumer is not None:  # partition_for_key made Faust's consumer: its thread made a loop too
        app._consumer._thread.thread_loop.close()
    loop.close()


@pytest.fixture
def table(app, request):
    table = app.Table(f"t{len(app.tables)}", partitions=4, key_type=bytes, value_type=bytes,
                      options={"driver": "rocksdict"})
    yield table
    _current_event.set(None)


def _within(partition: int) -> PartitionEvent:
    event = PartitionEvent(membership_topic_name("route-test"), partition)
    _current_event.set(weakref.ref(event))
    return event


@pytest.mark.parametrize("partition", [0, 2, 3])
def test_a_partition_event_routes_the_changelog_and_the_rocksdb_partition(table, partition):
    event = _within(partition)
    assert table.partition_for_key(b"h:seg") == partition  # the changelog partition of the write
    table.data[b"h:seg"] = b"head"
    assert table.data[b"h:seg"] == b"head"
    other = _within((partition + 1) % 4)
    assert b"h:seg" not in table.data  # another partition's database does not hold it
    assert table.data.get(b"h:seg") is None
    _current_event.set(None)  # no event: Faust searches every open partition and finds it in its own
    assert table.data.get(b"h:seg") == b"head"
    assert (Path(table.data.partition_path(partition))).exists()
    del event, other


def test_without_any_event_a_write_is_refused(table):
    _current_event.set(None)
    with pytest.raises(TypeError):
        table.partition_for_key(b"h:seg")
