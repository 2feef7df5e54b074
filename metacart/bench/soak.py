"""``metacart bench soak --minutes N``: one worker (ads and retention agents) under steady traffic in which
new users and new segments keep arriving; every ``sample_s`` a sample of what would grow if it leaked.
With ``workers="per_agent"`` the agents run in a worker process each, as docker-compose.yml deploys them, and
a sample sums the two (RSS also per worker).

Traffic (one process, paced every 20 ms):

- ad requests at ``ad_rate``/s; every ``segment_every_s`` a new generation of the held-out segments
  (``m05-c12.g7``) starts, and each request picks a generation uniformly among those so far (among the
  latest ``ad_generations`` only, when set: older segments then go quiet, as real ones do), so the
  number of segments grows throughout; every request has a new user id. ``click_share`` of the decisions
  read back are clicked (with the decided ad). Ad event time runs ``ad_speed`` × the wall clock, so
  attribution windows close as the run goes;
- session events at ``session_rate``/s, half from brand-new users, half from users of the last
  ``recent_users`` (a purchase one time in ten); retention event time runs ``retention_speed`` × the wall
  clock (a simulated day every 30 s by default), so reviews, budget periods and idle eviction happen.

Each sample: the worker's RSS (``/proc/PID/status``), its state (bytes under its data dir, segments and
users in memory, open decisions, from its ``/metrics``), the interval's decisions/s, request→decision
p50/p99 (request sent to the decision record's timestamp, set by the worker's producer; ms resolution), dead
letters so far, and whether the worker is alive.
Samples are printed as they are taken and written to ``out`` after each one (a stopped run keeps them).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from metacart.bench.soak_figures import (ENGINE_GAUGES, interval_figures, merged, metrics_values, rocksdb_mb, rss_mb,
                                         summary, table_disk_mb)
from metacart.bench.soak_traffic import Traffic
from metacart.bench.stream import percentiles_ms
from metacart.processes import WorkerProcess
from streams.app import topics_for
from streams.kafka_io import ensure_topics, make_producer, tail_consumer, wait_for_broker
from metacart.live.ads import feedback_payload
from streams.pseudonyms import with_run_key
from streams.settings import Settings

DAY_S = 86400.0
WORKER_LAYOUTS = ("one", "per_agent")


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 30.0
    """How long traffic runs."""
    sample_s: float = 30.0
    """Seconds between samples."""
    ad_rate: float = 300.0
    """Ad requests per second."""
    session_rate: float = 100.0
    """Session events per second."""
    click_share: float = 0.05
    """Share of decisions clicked."""
    segment_every_s: float = 10.0
    """A new generation of segments starts this often (wall clock)."""
    ad_generations: int = 0
    """Requests pick among this many latest generations (0: all so far, every segment stays in use)."""
    recent_users: int = 5000
    """Returning session users are drawn from this many most recent users."""
    ad_speed: float = 60.0
    """Ad event-time seconds per wall-clock second."""
    retention_speed: float = DAY_S / 30.0
    """Retention event-time seconds per wall-clock second."""
    idle_horizon_days: float = 5.0
    """The worker evicts retention users idle this long (event time), so state has a bound to keep."""
    ads_segment_ttl_s: float | None = None
    """``ads.segment_idle_ttl_s`` of the worker (event seconds; None: its setting). A soak minute is
    ``ad_speed`` event minutes (an hour by default)."""
    retention_segment_ttl_s: float | None = None
    """``retention.segment_idle_ttl_s`` of the worker (event seconds; None: its setting). A soak minute is
    ``retention_speed`` event minutes (two days by default)."""
    workers: str = "one"
    """``"one"``: one worker process with both agents; ``"per_agent"``: one per agent (the deployed layout)."""

    def __post_init__(self) -> None:
        if self.workers not in WORKER_LAYOUTS:
            raise ValueError(f"workers must be one of {', '.join(WORKER_LAYOUTS)}, got {self.workers!r}")


@dataclass
class Sample:
    """One sample of the worker (see the module docstring)."""

    t_s: float
    alive: bool
    rss_mb: float | None
    state_mb: float | None
    segments_ads: int | None
    segments_retention: int | None
    users_retention: int | None
    open_decisions: int | None
    decisions_per_s: float
    requests_per_s: float
    sessions_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    answered: int
    dead_letters: int | None
    retention_actions: int
    load_average_1m: float
    open_retention: int | None = None
    """Retention actions waiting for their outcome (in ``open_decisions`` with the ads' open windows)."""
    budget_records: int | None = None
    """Decision records the retention budgets hold."""
    retention_engine: dict[str, float] | None = None
    """The retention engine's sizes and pause counters (``ENGINE_GAUGES``; pause figures are totals so far)."""
    rocksdb_mb: dict[str, float] | None = None
    """RocksDB memory by table group (``retention``, ``ads``) and kind (memtables, block cache, readers), and
    its SST bytes and estimate of live data in them (``sst``, ``live_data``)."""
    disk_mb: dict[str, float] | None = None
    """Bytes under the data dir per table (its partition databases together: SST, WAL, manifests)."""
    rss_mb_by_worker: dict[str, float] | None = None
    """RSS of each worker process by its agents (``rss_mb`` is their sum)."""
    cpu_pct_by_worker: dict[str, float] | None = None
    """CPU of each worker process over the interval, in % of one core (its ``process_cpu_seconds_total``)."""
    gc_by_worker: dict[str, dict[str, float]] | None = None
    """Each worker's garbage-collector pauses in the interval (``metacart_gc_pause_seconds``): ``pauses``,
    ``full`` (generation 2), ``over_50ms``, and ``seconds`` the process stood still for them."""


# --- pure parts ------------------------------------------------------------------------------------


def ensure_artifacts(settings: Settings) -> Settings:
    """Settings whose ads and retention artifacts exist, trained where missing (torch needed then).

    A missing ads artifact is trained at its configured path (as ``bench stream`` does). A missing retention
    artifact is built under ``artifacts/bench-soak/`` instead of the configured path: a default worker starts
    the retention agents whenever that path holds one, and a benchmark should not change what it does.
    """
    from metacart.demo import ensure_artifact

    ensure_artifact(settings.policy.artifact)
    if Path(settings.retention.artifact).exists():
        return settings
    path = Path("artifacts") / "bench-soak" / "retention-policy"
    if not path.exists():
        from policy.retention.train import build_artifacts

        build_artifacts(path, max_seconds=40.0)
    s = settings.model_copy(deep=True)
    s.retention.artifact = path
    return s


def _soak_settings(settings: Settings, tag: str, cfg: SoakConfig, data_root: Path) -> Settings:
    s = with_run_key(settings).model_copy(deep=True)
    s.kafka.topic_prefix = f"soak-{tag}"
    s.worker_id = f"soak-{tag}"
    s.store.data_dir = data_root / f"soak-{tag}"
    s.agents = "ads,retention"
    s.retention.idle_horizon_s = cfg.idle_horizon_days * DAY_S
    if cfg.ads_segment_ttl_s is not None:
        s.ads.segment_idle_ttl_s = cfg.ads_segment_ttl_s
    if cfg.retention_segment_ttl_s is not None:
        s.retention.segment_idle_ttl_s = cfg.retention_segment_ttl_s
    return s


def _scrape(worker: WorkerProcess) -> dict[str, float]:
    import urllib.request

    try:
        return metrics_values(urllib.request.urlopen(worker.url + "/metrics", timeout=5).read().decode())
    except OSError:
        return {}


def _rss(pid: int) -> float | None:
    try:
        return rss_mb(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


def _worker_settings(s: Settings, cfg: SoakConfig) -> dict[str, Settings]:
    """The soak's workers by their agents: one with both, or one per agent (own app id and data dir)."""
    if cfg.workers == "one":
        return {s.agents: s}
    out = {}
    for agent in s.agents.split(","):
        w = s.model_copy(deep=True)
        w.agents, w.worker_id, w.store.data_dir = agent, f"{s.worker_id}-{agent}", s.store.data_dir / agent
        out[agent] = w
    return out


def _take_sample(t_s: float, workers: dict[str, WorkerProcess], counts: dict, lat: list[float],
                 interval: float, previous: dict[str, dict[str, float]]) -> Sample:
    """One sample; ``previous`` holds each worker's last scrape (updated here) for the interval's figures."""
    alive = all(w.alive() for w in workers.values())
    scrapes = {name: _scrape(w) for name, w in workers.items() if w.alive()}
    cpu: dict[str, float] = {}
    gc_figures: dict[str, dict[str, float]] = {}
    for name, now in scrapes.items():
        c, g = interval_figures(now, previous.get(name, {}), interval)
        if c is not None:
            cpu[name] = c
        if g is not None and previous.get(name):
            gc_figures[name] = g
        if now:
            previous[name] = now
    m = merged(list(scrapes.values())) or {}
    rss = {name: _rss(w.pid) for name, w in workers.items() if w.alive()}
    p50, p99 = percentiles_ms(lat)

    def get(key: str) -> int | None:
        return int(m[key]) if key in m else None

    return Sample(t_s=round(t_s, 1), alive=alive,
                  rss_mb=round(sum(rss.values()), 1) if alive and None not in rss.values() else None,
                  rss_mb_by_worker={k: round(v, 1) for k, v in rss.items() if v is not None} or None,
                  cpu_pct_by_worker=cpu or None, gc_by_worker=gc_figures or None,
                  state_mb=round(m["state_bytes"] / 1e6, 2) if "state_bytes" in m else None,
                  segments_ads=get("segments_ads"), segments_retention=get("segments_retention"),
                  users_retention=get("users_retention"), open_decisions=get("open_decisions"),
                  decisions_per_s=round(counts["decided"] / interval, 1),
                  requests_per_s=round(counts["requests"] / interval, 1),
                  sessions_per_s=round(counts["sessions"] / interval, 1),
                  p50_ms=None if p50 is None else round(p50, 2), p99_ms=None if p99 is None else round(p99, 2),
                  answered=len(lat), dead_letters=get("dead_letters"), retention_actions=counts["actions"],
                  load_average_1m=round(os.getloadavg()[0], 2), open_retention=get("retention_open_actions"),
                  budget_records=get("retention_budget_records"), rocksdb_mb=rocksdb_mb(m),
                  retention_engine={k: round(m[k], 3) for k in ENGINE_GAUGES if k in m} or None,
                  disk_mb=merged([table_disk_mb(w.settings.store.data_dir) for w in workers.values()], 1))


def sample_line(s: Sample) -> str:
    """One progress line per sample."""
    def f(x, fmt="{:,.0f}"):
        return "—" if x is None else fmt.format(x)

    return (f"  {s.t_s:6.0f}s  {'alive' if s.alive else 'DEAD '}  RSS {f(s.rss_mb)} MB  state {f(s.state_mb, '{:,.1f}')} MB  "
            f"segments {f(s.segments_ads)} ads / {f(s.segments_retention)} retention  users {f(s.users_retention)}  "
            f"open {f(s.open_decisions)}  {s.decisions_per_s:,.0f} decisions/s  p50/p99 {f(s.p50_ms, '{:.1f}')}/"
            f"{f(s.p99_ms, '{:.1f}')} ms  dead letters {f(s.dead_letters)}  actions {s.retention_actions:,}  "
            f"load {s.load_average_1m}  CPU % {s.cpu_pct_by_worker or '—'}  GC {s.gc_by_worker or '—'}  "
            f"open retention {f(s.open_retention)}  budget records {f(s.budget_records)}  "
            f"rocksdb MB {s.rocksdb_mb or '—'}  disk MB {s.disk_mb or '—'}")


def run(settings: Settings, cfg: SoakConfig, out: Path | None = None, data_root: Path = Path("var")) -> dict:
    """Run the soak; the worker's state and log go under ``data_root``."""
    from rich.console import Console

    console = Console()
    wait_for_broker(settings.kafka)
    tag = uuid.uuid4().hex[:8]
    s = _soak_settings(settings, tag, cfg, data_root)
    topics = topics_for(s)
    ensure_topics(s.kafka, topics.all())
    layout = (f"worker {s.worker_id} (ads + retention)" if cfg.workers == "one"
              else f"workers {s.worker_id}-ads and {s.worker_id}-retention (one per agent)")
    console.print(f"[bold]bench soak[/]: {cfg.minutes:g} min, {cfg.ad_rate:.0f} ad requests/s + "
                  f"{cfg.session_rate:.0f} sessions/s, new segments every {cfg.segment_every_s:g} s, "
                  f"a sample every {cfg.sample_s:g} s; {layout}; segments expire "
                  f"after {s.ads.segment_idle_ttl_s:g} s (ads) / {s.retention.segment_idle_ttl_s:g} s (retention) "
                  "idle in event time")
    workers = {agents: WorkerProcess(w, data_root / f"{w.worker_id}.log").start()
               for agents, w in _worker_settings(s, cfg).items()}
    producer = make_producer(s.kafka)
    samples: list[dict] = []
    consumers: list = []
    try:
        for worker in workers.values():
            _wait_ready(worker)  # topics have leaders by then: the tail consumers can read their ends
        decisions = tail_consumer(s.kafka, topics.ad_decisions.name, **{"fetch.wait.max.ms": 10})
        consumers.append(decisions)
        actions = tail_consumer(s.kafka, topics.retention_actions.name)
        consumers.append(actions)
        t0 = time.monotonic()
        traffic = Traffic(cfg, s, time.time())
        counts = {"decided": 0, "requests": 0, "sessions": 0, "actions": 0}
        lat: list[float] = []
        scraped: dict[str, dict[str, float]] = {name: _scrape(w) for name, w in workers.items()}
        credit_ads = credit_sessions = 0.0
        tick, next_tick, next_sample = 0.02, t0, t0 + cfg.sample_s
        n_samples = max(1, round(cfg.minutes * 60.0 / cfg.sample_s))  # the last one ends the run
        while len(samples) < n_samples:
            now_wall = time.time()
            credit_ads += cfg.ad_rate * tick
            credit_sessions += cfg.session_rate * tick
            while credit_ads >= 1:
                key, value, rid = traffic.ad_request(now_wall)
                producer.produce(topics.ad_requests.name, key=key, value=value)
                traffic.sent_at[rid] = time.time()
                counts["requests"] += 1
                credit_ads -= 1
            while credit_sessions >= 1:
                key, value = traffic.session(now_wall)
                producer.produce(topics.sessions.name, key=key, value=value)
                counts["sessions"] += 1
                credit_sessions -= 1
            producer.poll(0)
            _read_decisions(decisions, traffic, producer, topics, cfg, counts, lat)
            counts["actions"] += sum(1 for m in actions.consume(num_messages=5000, timeout=0) if m.error() is None)
            if time.monotonic() >= next_sample:
                sample = _take_sample(time.monotonic() - t0, workers, counts, lat, cfg.sample_s, scraped)
                samples.append(asdict(sample))
                console.print(sample_line(sample), soft_wrap=True)
                console.file.flush()  # progress reaches a log file as it is taken
                _write(out, cfg, samples)
                counts.update(decided=0, requests=0, sessions=0)
                lat = []
                next_sample += cfg.sample_s
                if not sample.alive:
                    for name, worker in workers.items():
                        if not worker.alive():
                            console.print(f"[red]worker {name} died[/]:\n{worker.log_tail()}")
                    break
            next_tick += tick
            time.sleep(max(0.0, next_tick - time.monotonic()))
    finally:
        producer.flush(10)
        for consumer in consumers:
            consumer.close()
        for worker in workers.values():
            worker.stop()
        from metacart.demo import cleanup

        cleanup(s, f"soak-{tag}", [s.store.data_dir])  # the samples are the result; the state was only load
    result = _write(out, cfg, samples)
    console.print("summary: " + json.dumps(result["summary"]))
    if out:
        console.print(f"wrote {out}")
    return result


def _wait_ready(worker: WorkerProcess, timeout_s: float = 180.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"the worker exited during start:\n{worker.log_tail()}")
        try:
            if urllib.request.urlopen(worker.url + "/readyz", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the worker was not ready after {timeout_s:.0f}s:\n{worker.log_tail()}")


def _read_decisions(consumer, traffic: Traffic, producer, topics, cfg: SoakConfig, counts: dict,
                    lat: list[float]) -> None:
    for m in consumer.consume(num_messages=5000, timeout=0):
        if m.error() is not None:
            continue
        d = json.loads(m.value())
        sent = traffic.sent_at.pop(d["request_id"], None)
        if sent is None:
            continue
        counts["decided"] += 1
        # The decision record's timestamp (set by the worker's producer) minus the request's send time:
        # the loop reads every 20 ms, so its own clock would add up to a tick to every latency.
        lat.append(m.timestamp()[1] - sent * 1e3)
        if traffic.rng.random() < cfg.click_share:
            t = datetime.fromisoformat(d["request_time"]).timestamp() + 5.0
            key, value = feedback_payload("click", d["request_id"], d["segment"], d["ad_id"], t)
            producer.produce(topics.ad_feedback.name, key=key, value=value)


def _write(out: Path | None, cfg: SoakConfig, samples: list[dict]) -> dict:
    result = {"config": asdict(cfg), "summary": summary(samples), "samples": samples}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result
