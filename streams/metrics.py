"""Prometheus metrics of one worker, served on its HTTP port (``streams.web``).

Almost everything is read at scrape time from what the worker already keeps: the engines' counters,
their open decisions, the adapters' segments in memory, the consumer's assignment and offsets, the
data directory's size. Only two histograms are observed on the hot path, once per request or batch:

- ``metacart_decision_latency_seconds``: the request's Kafka record timestamp (set by its producer)
  to the moment its decision is handed to the output producer, per ad request consumed;
- ``metacart_batch_processing_seconds``: engine time per batch, per agent.

And one observed off the hot path: ``metacart_gc_pause_seconds``, each pause of CPython's cyclic garbage
collector by generation (``gc.callbacks``): the whole process, agents and Kafka callbacks included, stops
while it runs, so a long pause shows in every latency percentile above it. The process's CPU seconds, RSS and
open files (``process_*``) and the collector's counts (``python_gc_*``) come from prometheus_client.

Every engine counter is also exported unchanged as ``metacart_engine_counter{agent, name}`` so that
nothing the worker counts is invisible; the named metrics below are the ones a dashboard needs.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_PHASES = ("state", "changelog", "outputs")
"""A commit's phases, timed by ``streams.agents.delivery`` in the engine counters (``commit_<phase>_s``) and in
``metacart_commit_phase_seconds``: the engine's state written into the table; its changelog messages sent and
acknowledged; the outputs committed with the ledger (one transaction, or the producer flush and the offsets
commit)."""

BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GC_PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# (metric kind label, outcome label) of each reward counter the engines keep.
REWARD_COUNTERS = {
    "clicks_applied": ("ads", "click", "applied"),
    "clicks_duplicate": ("ads", "click", "duplicate"),
    "clicks_late_or_unknown": ("ads", "click", "late"),
    "purchases_attributed": ("ads", "purchase", "applied"),
    "purchases_duplicate": ("ads", "purchase", "duplicate"),
    "purchases_late_or_unknown": ("ads", "purchase", "late"),
    "zero_updates": ("ads", "window_closed_no_click", "applied"),
    "retention_outcomes_applied": ("retention", "outcome", "applied"),
    "retention_outcomes_duplicate": ("retention", "outcome", "duplicate"),
    "retention_outcomes_late_or_unknown": ("retention", "outcome", "late"),
    "retention_windows_expired": ("retention", "window_expired", "applied"),
}

# Every metric this module can export (the dashboard test checks its queries against this list).
EXPORTED = (
    "metacart_decisions_total", "metacart_decision_latency_seconds", "metacart_batch_processing_seconds",
    "metacart_commit_phase_seconds",
    "metacart_updates_total", "metacart_rewards_total",
    "metacart_dead_letters_total", "metacart_open_decisions", "metacart_segments_in_state",
    "metacart_users_in_state", "metacart_state_bytes", "metacart_retention_spend_total",
    "metacart_retention_reserved_total", "metacart_retention_cap", "metacart_retention_actions_total",
    "metacart_consumer_lag", "metacart_assigned_partitions", "metacart_ready", "metacart_policy",
    "metacart_engine_counter", "metacart_policy_swaps_total", "metacart_gc_pause_seconds",
)


class WorkerMetrics:
    """The worker's registry: hot-path histograms plus a collector over ``engines`` read per scrape."""

    def __init__(self, worker: str, engines: Sequence[object], data_dir: Path,
                 consumer_state: "ConsumerState | None" = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram("metacart_decision_latency_seconds",
                                 "ad request record timestamp to its decision handed to the producer",
                                 registry=self.registry, buckets=LATENCY_BUCKETS)
        self.batch_seconds = Histogram("metacart_batch_processing_seconds", "engine time per batch",
                                       ["agent"], registry=self.registry, buckets=BATCH_BUCKETS)
        self.commit_seconds = Histogram(
            "metacart_commit_phase_seconds", "time per commit phase: state (the engine's state into the table), "
            "changelog (sent and acknowledged), outputs (committed with the ledger)", ["agent", "phase"],
            registry=self.registry, buckets=BATCH_BUCKETS)
        self.gc_pauses = GcPauses(Histogram("metacart_gc_pause_seconds",
                                            "pauses of the cyclic garbage collector (the process stops)",
                                            ["generation"], registry=self.registry, buckets=GC_PAUSE_BUCKETS))
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.engines = engines
        self.consumer_state = consumer_state or ConsumerState()
        self.registry.register(_EngineCollector(worker, engines, data_dir, consumer_state))

    def start_gc_watch(self) -> None:
        """Observe every collector pause from now on (the worker calls it once; ``stop_gc_watch`` undoes it)."""
        if self.gc_pauses not in gc.callbacks:
            gc.callbacks.append(self.gc_pauses)

    def stop_gc_watch(self) -> None:
        if self.gc_pauses in gc.callbacks:
            gc.callbacks.remove(self.gc_pauses)

    def observe_requests(self, record_timestamps_s: Iterable[float | None], now_s: float | None = None) -> None:
        """One latency per request whose decision was just produced (timestamps in epoch seconds)."""
        now_s = time.time() if now_s is None else now_s
        for ts in record_timestamps_s:
            if ts is not None and ts > 0:
                self.latency.observe(max(now_s - ts, 0.0))

    def observe_batch(self, agent: str, seconds: float) -> None:
        self.batch_seconds.labels(agent).observe(seconds)

    def observe_commit(self, agent: str, phases: Sequence[float]) -> None:
        """One commit's (state, changelog, outputs) seconds."""
        for name, seconds in zip(COMMIT_PHASES, phases):
            self.commit_seconds.labels(agent, name).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class GcPauses:
    """A ``gc.callbacks`` entry timing each collection into ``histogram`` by generation.

    It runs inside the collector. prometheus_client holds each value's lock only around a float operation,
    which allocates nothing the collector tracks, so no collection starts in a thread holding one of these
    locks: the callback never waits on a lock its own thread holds. Its children are made here, not per pause.
    """

    def __init__(self, histogram: Histogram) -> None:
        self.children = [histogram.labels(str(g)) for g in range(3)]
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.children[info["generation"]].observe(time.perf_counter() - self._start)


class ConsumerState:
    """What the collector asks the consumer at scrape time; this base answers "nothing assigned yet".

    ``lag()`` maps (topic, partition) to messages behind the end; ``ready()`` says whether partitions
    are assigned and tables recovered. ``streams.web.FaustConsumerState`` answers from a Faust app.
    """

    def lag(self) -> dict[tuple[str, int], int]:
        return {}

    def assigned(self) -> int:
        return 0

    def ready(self) -> bool:
        return False


def engine_agent(engine: object) -> str:
    """``ads`` or ``retention``: which agent an engine serves (by its counters' naming)."""
    return "retention" if type(engine).__name__.startswith("Retention") else "ads"


class _EngineCollector(Collector):
    def __init__(self, worker: str, engines: Sequence[object], data_dir: Path,
                 consumer_state: ConsumerState | None) -> None:
        self.worker = worker
        self.engines = engines
        self.data_dir = Path(data_dir)
        self.consumer = consumer_state or ConsumerState()

    def collect(self) -> Iterator[object]:
        decisions = CounterMetricFamily("metacart_decisions", "decisions produced", labels=["agent"])
        updates = CounterMetricFamily("metacart_updates", "posterior updates applied", labels=["agent"])
        rewards = CounterMetricFamily("metacart_rewards", "rewards and outcomes received, by what became of them",
                                      labels=["agent", "kind", "outcome"])
        dead = CounterMetricFamily("metacart_dead_letters", "messages sent to the dead-letter topic",
                                   labels=["agent", "reason"])
        swaps = CounterMetricFamily("metacart_policy_swaps", "policy hot-swaps applied", labels=["agent"])
        open_ = GaugeMetricFamily("metacart_open_decisions", "decisions whose outcome window is open",
                                  labels=["agent"])
        segments = GaugeMetricFamily("metacart_segments_in_state", "segments with a posterior in memory",
                                     labels=["agent"])
        users = GaugeMetricFamily("metacart_users_in_state", "users with engagement state in memory")
        raw = GaugeMetricFamily("metacart_engine_counter", "every engine counter, as the engine keeps it",
                                labels=["agent", "name"])
        info = InfoMetricFamily("metacart_policy", "the policy version each agent serves")
        spend = CounterMetricFamily("metacart_retention_spend", "realised spend of closed retention actions")
        reserved = CounterMetricFamily("metacart_retention_reserved", "spend reserved when actions were sent")
        caps = GaugeMetricFamily("metacart_retention_cap", "retention spend caps per period", labels=["scope"])
        actions = CounterMetricFamily("metacart_retention_actions", "retention actions sent, by treatment",
                                      labels=["treatment"])
        for engine in self.engines:
            agent = engine_agent(engine)
            counters = dict(getattr(engine, "counters", {}))
            for name, value in sorted(counters.items()):
                raw.add_metric([agent, name], float(value))
            prefix = "retention_" if agent == "retention" else ""
            decisions.add_metric([agent], counters.get(f"{prefix}actions" if prefix else "decisions", 0.0))
            updates.add_metric([agent], counters.get(f"{prefix}updates", 0.0))
            swaps.add_metric([agent], counters.get(f"{prefix}policy_swaps", 0.0))
            for name, (owner, kind, outcome) in REWARD_COUNTERS.items():
                if owner == agent:
                    rewards.add_metric([agent, kind, outcome], counters.get(name, 0.0))
            dl_prefix = f"{prefix}dead_letters_"
            for name, value in counters.items():
                if name.startswith(dl_prefix):
                    dead.add_metric([agent, name[len(dl_prefix):]], value)
            open_.add_metric([agent], float(engine.pending_count()))
            segments.add_metric([agent], float(_segments_in_memory(engine)))
            version = getattr(getattr(engine, "adapter", None), "version", None) or getattr(engine, "version", "")
            info.add_metric([], {"agent": agent, "version": str(version), "worker": self.worker})
            if agent == "retention":
                users.add_metric([], counters.get("retention_users", 0.0))
                spend.add_metric([], counters.get("retention_spend", 0.0))
                reserved.add_metric([], counters.get("retention_reserved", 0.0))
                caps.add_metric(["total"], counters.get("retention_budget", 0.0))
                caps.add_metric(["partitions_total"], counters.get("retention_budget_per_partition", 0.0))
                caps.add_metric(["segment"], float(getattr(getattr(engine, "settings", None),
                                                           "segment_budget_per_period", 0.0)))
                for name, value in counters.items():
                    if name.startswith("retention_actions_"):
                        actions.add_metric([name[len("retention_actions_"):]], value)
        yield from (decisions, updates, rewards, dead, swaps, open_, segments, users, raw, info,
                    spend, reserved, caps, actions)
        yield GaugeMetricFamily("metacart_state_bytes", "bytes on disk under the worker's data dir",
                                value=float(_tree_bytes(self.data_dir)))
        lag = GaugeMetricFamily("metacart_consumer_lag", "messages between the last one read and the end",
                                labels=["topic", "partition"])
        consumer = self.consumer
        for (topic, partition), n in sorted(consumer.lag().items()):
            lag.add_metric([topic, str(partition)], float(n))
        yield lag
        yield GaugeMetricFamily("metacart_assigned_partitions", "partitions assigned to this worker",
                                value=float(consumer.assigned()))
        yield GaugeMetricFamily("metacart_ready", "1 when partitions are assigned and tables recovered",
                                value=1.0 if consumer.ready() else 0.0)


def _segments_in_memory(engine: object) -> int:
    adapter = getattr(engine, "adapter", None)
    if adapter is not None:
        return len(adapter.segments)
    parts = getattr(engine, "_parts", {})  # retention keeps one adapter per partition
    return sum(len(p.adapter.segments) for p in parts.values())


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:  # RocksDB removes files while compacting
                pass
    return total
