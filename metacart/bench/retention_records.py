"""``metacart bench retention-records``: changelog records the retention engine writes per action, offline.

The soak's retention traffic (``metacart.bench.soak``: 100 session events per second, half from new users, a
simulated day per 30 s, idle users evicted after 5 days) is fed to a :class:`RetentionEngine` from memory, in
batches of 50 ms of traffic, over a ``DictStore`` that counts every put and delete it receives: with the Faust
tables each one is a changelog message. Timed flushes are replaced by a flush every ``flush_every_s`` of
traffic time (the worker's ``store.state_flush_interval_s``), so the count does not depend on how fast this
machine replays; a batch that emits actions flushes before returning, as in the worker. No outcomes are sent
(the soak sends none): every window expires.

It uses only the engine's public constructor and ``process_many``, so the same command measures before and
after a change of the engine: ``PYTHONPATH=OTHER_TREE python metacart/bench/retention_records.py`` (its imports
follow this tree's layout: ``streams.store``, ``streams.edge.RawMessage``; README's "before" figure was taken
on 293c324 with the layout of that commit).
"""

from __future__ import annotations

import hashlib
import json
import time
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

@dataclass(frozen=True)
class RecordsConfig:
    days: float = 11.0
    """Simulated days of retention traffic."""
    session_rate: float = 100.0
    """Session events per second of traffic time (as the soak)."""
    batch_s: float = 0.05
    """Traffic time per engine batch (the agent's ``batch_within_s``)."""
    flush_every_s: float = 0.5
    """Traffic time between timed flushes (``store.state_flush_interval_s``)."""


def run(cfg: RecordsConfig = RecordsConfig(), out: Path | None = None) -> dict:
    from metacart.bench.soak import SoakConfig, ensure_artifacts
    from metacart.bench.soak_traffic import Traffic
    from streams.edge import RawMessage
    from streams.app import topics_for
    from streams.retention_engine import RetentionEngine, load_engine_artifacts
    from streams.retention_state import DAY_S
    from streams.store import DictStore
    from streams.settings import Settings

    class CountingStore(DictStore):
        """A ``DictStore`` counting the writes it receives, by table."""

        def __init__(self) -> None:
            super().__init__()
            self.puts: Counter[str] = Counter()
            self.deletes: Counter[str] = Counter()
            self.bytes = 0

        def put(self, table: str, key: str, partition: int, value: bytes) -> None:
            self.puts[table] += 1
            self.bytes += len(value)
            super().put(table, key, partition, value)

        def delete(self, table: str, key: str, partition: int) -> None:
            if key in self.tables[table]:
                self.deletes[table] += 1
            super().delete(table, key, partition)

    soak = SoakConfig(session_rate=cfg.session_rate)
    settings = ensure_artifacts(Settings())
    settings.retention.idle_horizon_s = soak.idle_horizon_days * DAY_S
    settings.store.state_flush_interval_s = 1e9  # flushes come from the replay's clock below
    topics = topics_for(settings)
    store = CountingStore()
    engine = RetentionEngine(load_engine_artifacts(settings.retention.artifact), store, topics, settings.retention,
                             settings.store, settings.policy, clock=lambda: t_now)
    t0 = 1_800_000_000.0  # a fixed start (2027-01-15): the same event times in every run
    traffic = Traffic(soak, settings, t0)
    traffic.run = "replay"  # fixed user ids (the soak draws a run id): the same users on the same partitions
    digest = hashlib.blake2b(digest_size=8)
    per_batch = max(1, round(cfg.session_rate * cfg.batch_s))
    flush_every = max(1, round(cfg.flush_every_s / cfg.batch_s))
    wall_s = cfg.days * DAY_S / soak.retention_speed
    n_batches = int(wall_s / cfg.batch_s)
    offsets: Counter[int] = Counter()
    days: list[dict] = []
    actions = 0
    busy = 0.0
    t_now = t0
    parts = settings.kafka.user_partitions
    for b in range(n_batches):
        batch = []
        for i in range(per_batch):
            t_now = t0 + (b * per_batch + i) / cfg.session_rate
            key, value = traffic.session(t_now)
            p = zlib.crc32(key) % parts
            offsets[p] += 1
            batch.append(RawMessage(topics.sessions.name, p, offsets[p], key, value))
        started = time.perf_counter()
        result = engine.process_many(batch)
        if result.actions and hasattr(engine, "sent_all"):
            engine.sent_all()  # the agent confirms delivery: the actions leave the state's outbox
        if (b + 1) % flush_every == 0:
            engine.flush(force=True)
        busy += time.perf_counter() - started
        actions += len(result.actions)
        for key, value in result.actions:
            digest.update(key + value)
        day = int((t_now - t0) * soak.retention_speed / DAY_S)
        if day >= len(days):
            days.append({"day": day, "records_at_start": _records(store), "actions_at_start": actions})
    engine.flush(force=True)
    records = _records(store)
    for i, d in enumerate(days):
        end_r = days[i + 1]["records_at_start"] if i + 1 < len(days) else records
        end_a = days[i + 1]["actions_at_start"] if i + 1 < len(days) else actions
        d["records"], d["actions"] = end_r - d.pop("records_at_start"), end_a - d.pop("actions_at_start")
    result = {"days": cfg.days, "sessions": n_batches * per_batch, "actions": actions, "records": records,
              "records_per_action": records / max(actions, 1), "bytes_written": store.bytes,
              "puts": dict(store.puts), "deletes": dict(store.deletes), "engine_s": busy, "per_day": days,
              "actions_digest": digest.hexdigest(),
              "counters": {k: v for k, v in engine.counters.items() if "block" in k or k == "retention_open_actions"}}
    print(f"{cfg.days:g} simulated days, {result['sessions']:,} sessions: {actions:,} actions, {records:,} records "
          f"({result['records_per_action']:.3f} per action), {store.bytes / 1e6:.1f} MB written, "
          f"engine {busy:.1f} s; actions digest {digest.hexdigest()}")
    print("puts", dict(store.puts), "deletes", dict(store.deletes))
    for d in days:
        print(f"  day {d['day']:>2}: {d['actions']:>6,} actions {d['records']:>7,} records")
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def _records(store) -> int:
    return sum(store.puts.values()) + sum(store.deletes.values())


if __name__ == "__main__":
    run(RecordsConfig(days=float(sys.argv[1]) if len(sys.argv) > 1 else 11.0),
        Path(sys.argv[2]) if len(sys.argv) > 2 else None)
