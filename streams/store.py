"""The state store both engines use: keyed bytes in named tables, every call naming the key's partition.

One protocol (``PartitionStore``), one store over dicts (``DictStore``: tests, offline replays, benchmarks)
and one over Faust tables (``FaustStore``: the workers). The engines name the partition because Faust's
RocksDB table routes a read, a membership test and a write through the partition of the *current event*
(``faust.streams._current_event``), and a batch spans partitions: ``FaustStore`` makes an event of the
key's own partition current before each call. Those events come from the glue: the Faust event of the
last message seen per partition (Faust data paths), or a ``streams.agents.datapath.PartitionEvent`` per
assigned partition (the ads direct path). The semantics without such an event:

- ``get``: no current event, and Faust then searches every assigned partition (a read of a partition
  this worker has not processed since the assignment still finds its value);
- ``put``: refused (``RuntimeError``): a write must reach the changelog partition of its key;
- ``delete``: skipped and counted (``skipped_deletes``): the engines only delete records they wrote or
  read under an event of that partition, so a skipped delete is left for a later restart to find
  and delete again;
- ``items``: no current event (every assigned partition), a snapshot list, optionally by key prefix.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import faust
from faust.streams import _current_event
from faust.types import EventT


class PartitionStore(Protocol):
    """Keyed bytes in named tables; each call names the partition the key belongs to."""

    def get(self, table: str, key: str, partition: int) -> bytes | None: ...
    def put(self, table: str, key: str, partition: int, value: bytes) -> None: ...
    def delete(self, table: str, key: str, partition: int) -> None: ...
    def items(self, table: str, prefix: str = "") -> Iterator[tuple[str, bytes]]: ...


@dataclass
class DictStore:
    """A ``PartitionStore`` over dicts, one per table name (created on first use)."""

    tables: defaultdict[str, dict[str, bytes]] = field(default_factory=lambda: defaultdict(dict))

    def get(self, table: str, key: str, partition: int) -> bytes | None:
        return self.tables[table].get(key)

    def put(self, table: str, key: str, partition: int, value: bytes) -> None:
        self.tables[table][key] = value

    def delete(self, table: str, key: str, partition: int) -> None:
        self.tables[table].pop(key, None)

    def items(self, table: str, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        return iter([(k, v) for k, v in self.tables[table].items() if k.startswith(prefix)])


@dataclass
class FaustStore:
    """A ``PartitionStore`` over Faust tables (``bytes`` keys and values) with the semantics of the module
    docstring; ``events`` maps a partition to an event of it (filled and cleared by the glue)."""

    tables: dict[str, faust.Table]
    events: dict[int, EventT] = field(default_factory=dict)
    skipped_deletes: int = 0

    def _within(self, partition: int) -> bool:
        event = self.events.get(partition)
        _current_event.set(weakref.ref(event) if event is not None else None)
        return event is not None

    def get(self, table: str, key: str, partition: int) -> bytes | None:
        self._within(partition)
        return self.tables[table].get(key.encode())

    def put(self, table: str, key: str, partition: int, value: bytes) -> None:
        if not self._within(partition):
            raise RuntimeError(f"no event of partition {partition} to write {table}/{key} under")
        self.tables[table][key.encode()] = value

    def delete(self, table: str, key: str, partition: int) -> None:
        if not self._within(partition):
            self.skipped_deletes += 1
            return
        raw = key.encode()
        if raw in self.tables[table]:
            del self.tables[table][raw]

    def items(self, table: str, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        _current_event.set(None)
        start = prefix.encode()
        return iter([(k.decode(), v) for k, v in list(self.tables[table].items()) if k.startswith(start)])
