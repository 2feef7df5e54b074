"""``metacart bench chaos``: real worker processes on the real broker, faults injected, exact accounting.

One run per fault. A generator offers ad requests at ``rate`` per second (event time advances one
``1 / rate`` per request); a feeder reads the decisions (``isolation.level=read_committed``, as every
downstream reader must) and sends one click for a fixed share of the requests as soon as their decision
is visible. Mid-stream the fault is injected:

- ``kill9x3``: the worker is killed with SIGKILL three times, each time replaced by a fresh process with
  an empty data directory (its state comes back from the changelog);
- ``rebalance_sigterm`` / ``rebalance_sigkill``: a second worker joins (1 -> 2), then the first is stopped
  with SIGTERM / SIGKILL;
- ``rebalance_chain``: 1 -> 2 -> 3 workers, each joining under load, then the two oldest stopped with
  SIGTERM one after the other (3 -> 2 -> 1): five rebalances in one run;
- ``broker_restart``: the broker is stopped and started again (a worker that died meanwhile is
  restarted, as a supervisor would).

- ``retention_kill9x3``, ``retention_rebalance_sigterm`` / ``_sigkill`` / ``_chain``,
  ``retention_broker_restart``: the same faults for the retention agent, with their own traffic and accounting (:mod:`metacart.bench.chaos_retention`; the same JSON keys, mapped there).

Then every request must have a decision; once the workers have consumed every click, one late request
per segment closes every attribution window, and the segments' head records are read back from the
table changelog. Per request id: decisions seen (0 = ``no_decision``, > 1 = ``multi_decision``, with a
different ad = ``different_ad``). Per segment: clicks the head says were applied against clicks sent
(``clicks_lost`` / ``clicks_double``), and posterior updates against requests sent (each request ends
with exactly one update: its click, or the zero reward of its closed window). With exactly-once delivery,
``ledger_moved_back`` counts committed ledger offsets below the one committed before them (must be 0).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from metacart.bench.chaos_reads import ledger_moves_back, offsets_done, segment_heads
from metacart.processes import REPO, WorkerProcess
from streams.ads_state import SegmentHead
from streams.app import topics_for
from streams.kafka_io import ensure_topics, make_consumer, make_producer
from metacart.live.ads import feedback_payload, request_payloads
from streams.settings import KafkaSettings, Settings

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ADS_FAULTS = ("kill9x3", "rebalance_sigterm", "rebalance_sigkill", "rebalance_chain", "broker_restart")
RETENTION_FAULTS = ("retention_kill9x3", "retention_rebalance_sigterm", "retention_rebalance_sigkill",
                    "retention_rebalance_chain", "retention_broker_restart")
"""The retention agent's faults: :mod:`metacart.bench.chaos_retention`."""
FAULTS = ADS_FAULTS + RETENTION_FAULTS
BROKER = REPO / "deploy" / "kafka" / "broker.sh"


@dataclass(frozen=True)
class ChaosConfig:
    rate: float = 1000.0
    """Offered ad requests per second."""
    click_share: float = 0.25
    """Share of requests that get one click."""
    window_s: float = 90.0
    """Attribution window (event time) of the workers under test."""
    between_faults: int = 3000
    """Decisions seen between two fault steps (and before the first)."""
    after_s: float = 4.0
    """Traffic kept flowing after the last fault step."""
    max_requests: int = 90_000
    """The generator stops here whatever happens (a stuck run still ends)."""
    timeout_s: float = 90.0
    """Longest wait for each phase (every decision, every click consumed, the windows closed)."""


class Records:
    """The (partition, offset) of every record a reader took. A reader in a consumer group reads records
    again when its group restarts from an older committed offset (auto commit every 5 s; seen after a broker
    restart: its group rejoined and re-read from the beginning, which counted every decision before the
    restart twice). The same record read again is the reader's, not a second decision: a second decision is
    a second record."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()
        self.rereads = 0

    def first(self, partition: int, offset: int) -> bool:
        """True the first time this record is read; counts the repeats."""
        where = (partition, offset)
        if where in self._seen:
            self.rereads += 1
            return False
        self._seen.add(where)
        return True


@dataclass
class _Traffic:
    """What was sent and what was seen, shared by the generator, the feeder and the run."""

    payloads: list[tuple[bytes, bytes]]
    meta: list[tuple[str, str, float]]  # (request id, segment, event time) per payload
    sent: int = 0
    generated_s: float = 0.0  # how long the generator took to send them (it stops early when told, or runs out)
    where: dict[int, tuple[int, int]] = field(default_factory=dict)  # payload index -> (partition, offset)
    decisions: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    clicks: dict[str, int] = field(default_factory=Counter)  # clicks sent per segment
    clicked: set[str] = field(default_factory=set)
    records: Records = field(default_factory=Records)  # decision records read
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def seen(self) -> int:
        with self.lock:
            return len(self.decisions)


def _clicks(rid: str, share: float) -> bool:
    return zlib.crc32(rid.encode()) % 1000 < share * 1000


def _generate(kafka: KafkaSettings, topic: str, traffic: _Traffic, rate: float) -> None:
    producer = make_producer(kafka)
    t0 = time.perf_counter()

    def delivered(i: int):
        def report(err: object, msg: object) -> None:
            if err is None:
                traffic.where[i] = (msg.partition(), msg.offset())
        return report

    for i, (key, value) in enumerate(traffic.payloads):
        if traffic.stop.is_set():
            break
        ahead = t0 + i / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        producer.produce(topic, key=key, value=value, on_delivery=delivered(i))
        producer.poll(0)
        traffic.sent = i + 1
    traffic.generated_s = time.perf_counter() - t0
    producer.flush(60)


def _feed(kafka: KafkaSettings, topics, traffic: _Traffic, share: float, done: threading.Event) -> None:
    """Read decisions (read_committed) and click the chosen share of them once each."""
    consumer = make_consumer(kafka, f"chaos-reader-{uuid.uuid4().hex[:8]}", **{"isolation.level": "read_committed"})
    consumer.subscribe([topics.ad_decisions.name])
    producer = make_producer(kafka)
    times = {rid: (seg, t) for rid, seg, t in traffic.meta}
    try:
        while not done.is_set():
            for msg in consumer.consume(num_messages=2000, timeout=0.2):
                if msg.error() or not traffic.records.first(msg.partition(), msg.offset()):
                    continue
                d = json.loads(msg.value())
                rid = d["request_id"]
                with traffic.lock:
                    traffic.decisions[rid].append(d["ad_id"])
                    first = len(traffic.decisions[rid]) == 1
                if first and rid in times and _clicks(rid, share):
                    seg, t = times[rid]
                    key, value = feedback_payload("click", rid, seg, d["ad_id"], t + 0.5)
                    producer.produce(topics.ad_feedback.name, key=key, value=value)
                    traffic.clicked.add(rid)
                    traffic.clicks[seg] += 1
            producer.poll(0)
    finally:
        producer.flush(60)
        consumer.close()


def _payloads(n: int, prefix: str, rate: float, seed: int) -> tuple[list, list]:
    from policy.simulator.market import Market

    market = Market()
    rng = np.random.default_rng(seed)
    reqs = market.sample_requests(rng.choice(market.heldout_segments, size=n), rng)
    ids = [f"{prefix}-{i}" for i in range(n)]
    times = T0 + np.arange(n) / rate
    payloads = request_payloads(market, reqs, times, ids)
    names = market.segment_names
    meta = [(ids[i], names[int(reqs.segment[i])], float(times[i])) for i in range(n)]
    return payloads, meta


def _has_assignment(worker: WorkerProcess) -> bool:
    """The worker's consumer took partitions (aiokafka logs every assignment it sets)."""
    try:
        return "Setting newly assigned partitions" in worker.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return False


def _wait(predicate, timeout_s: float, what: str, workers: list[WorkerProcess], missed: list | None = None) -> None:
    """Wait for ``predicate``; past ``timeout_s`` raise, or with ``missed`` note ``what`` there and go on."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            if missed is not None:
                missed.append(what)
                return
            tails = "\n-----\n".join(w.log_tail(30) for w in workers[-2:])
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{tails}")
        time.sleep(0.2)


def run_fault(base: Settings, fault: str, workdir: Path, cfg: ChaosConfig = ChaosConfig(), seed: int = 0) -> dict:
    """One run with ``fault`` injected; returns its accounting (see the module docstring)."""
    if fault in RETENTION_FAULTS:
        from metacart.bench import chaos_retention

        return chaos_retention.run_fault(base, fault, workdir, seed=seed)
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
    tag = uuid.uuid4().hex[:8]
    s = base.model_copy(deep=True)
    s.kafka.topic_prefix = f"chaos{tag}"
    s.worker_id = f"chaos{tag}"
    s.ads.attribution_window_s = cfg.window_s
    s.agents = "ads"
    s.web_port = 0
    topics = topics_for(s)
    ensure_topics(s.kafka, topics.all())
    payloads, meta = _payloads(cfg.max_requests, f"c{tag}", cfg.rate, seed)
    traffic = _Traffic(payloads, meta)
    workers: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        ws = s.model_copy(deep=True)
        ws.store.data_dir = workdir / f"{tag}-{fault}-{name}"  # fresh per run: RocksDB offsets follow topics
        w = WorkerProcess(ws, workdir / f"{tag}-{fault}-{name}.log").start()
        workers.append(w)
        return w

    def grown(n: int) -> int:
        target = traffic.seen + n
        return target

    done = threading.Event()
    feeder = threading.Thread(target=_feed, args=(s.kafka, topics, traffic, cfg.click_share, done), daemon=True)
    generator = threading.Thread(target=_generate, args=(s.kafka, topics.ad_requests.name, traffic, cfg.rate),
                                 daemon=True)
    restarts = 0
    missed: list[str] = []
    t_start = time.monotonic()
    try:
        first = start("w0")
        feeder.start()
        generator.start()
        step = cfg.between_faults
        _wait(lambda: traffic.seen >= step, cfg.timeout_s, f"{step} decisions", workers)
        if fault == "kill9x3":
            for i in range(3):
                workers[-1].kill()
                start(f"w{i + 1}")
                target = grown(step)
                _wait(lambda: traffic.seen >= target, cfg.timeout_s, "decisions after the restart", workers)
        elif fault == "rebalance_chain":
            for name in ("w1", "w2"):
                joined = start(name)
                target = grown(step)
                _wait(lambda: traffic.seen >= target, cfg.timeout_s, f"decisions after {name} joined", workers)
                _wait(lambda: _has_assignment(joined), cfg.timeout_s, f"{name}'s assignment", workers)
            for leaving in workers[:2]:
                leaving.stop()
                target = grown(step)
                _wait(lambda: traffic.seen >= target, cfg.timeout_s, "decisions after a worker left", workers)
        elif fault.startswith("rebalance"):
            second = start("w1")
            target = grown(step)
            _wait(lambda: traffic.seen >= target, cfg.timeout_s, "decisions with two workers", workers)
            # The fault is "a rebalance, then a worker leaves": wait until the second member holds partitions
            # (on a loaded box the join can take longer than the decisions above). A SIGTERM that lands in
            # the middle of the rebalance is a different fault; it lost a request once (issue 11, open).
            _wait(lambda: _has_assignment(second), cfg.timeout_s, "the second worker's assignment", workers)
            time.sleep(2.0)  # both members hold partitions before the first leaves
            if fault == "rebalance_sigterm":
                first.stop()
            else:
                first.kill()
            target = grown(step)
            _wait(lambda: traffic.seen >= target, cfg.timeout_s, "decisions after the rebalance", workers)
        else:
            subprocess.check_call([str(BROKER), "stop"])
            time.sleep(3.0)
            subprocess.check_call([str(BROKER), "start"])
            target = grown(step)

            def resumed() -> bool:
                nonlocal restarts
                if not workers[-1].alive():  # the supervisor's part: a dead worker is started again
                    restarts += 1
                    start(f"w{restarts}")
                return traffic.seen >= target

            _wait(resumed, cfg.timeout_s, "decisions after the broker restart", workers)
        time.sleep(cfg.after_s)
        traffic.stop.set()
        generator.join(60)
        elapsed = time.monotonic() - t_start
        n = traffic.sent
        wanted = {rid for rid, _, _ in meta[:n]}
        # From here on a timeout is a result (counted below), not an error.
        _wait(lambda: traffic.seen >= n and wanted <= traffic.decisions.keys(), cfg.timeout_s,
              "a decision for every request", workers, missed)
        time.sleep(1.0)
        done.set()
        feeder.join(60)
        # What was processed and committed: the ledger on the direct data path (Faust's group reads no data).
        progress = f"{s.worker_id}-ledger" if s.ads.data_path == "direct" else s.worker_id
        _wait(lambda: offsets_done(s.kafka, progress, topics.ad_feedback.name, s.kafka.segment_partitions),
              cfg.timeout_s, "every click consumed", workers, missed)
        # One late request per segment closes every open window of its partition.
        segments = sorted({seg for _, seg, _ in meta[:n]})
        t_end = meta[n - 1][2] + cfg.window_s + 10.0
        closing = _closing_requests(segments, t_end, tag)
        producer = make_producer(s.kafka)
        for key, value in closing:
            producer.produce(topics.ad_requests.name, key=key, value=value)
        producer.flush(30)
        _wait(lambda: offsets_done(s.kafka, progress, topics.ad_requests.name, s.kafka.segment_partitions),
              cfg.timeout_s, "the closing requests consumed", workers, missed)
        time.sleep(1.0)
        heads = segment_heads(s.kafka, f"{s.worker_id}-ads-segments-changelog")
        moved_back = (ledger_moves_back(s.kafka, f"{s.worker_id}-ledger")
                      if s.ads.delivery == "exactly_once" else 0)
    finally:
        traffic.stop.set()
        done.set()
        for w in workers:
            w.stop()
    result = _account(fault, n, meta[:n], traffic, heads, elapsed, restarts)
    result["timed_out"] = missed
    result["ledger_moved_back"] = moved_back
    return result


def _closing_requests(segments: list[str], t: float, tag: str) -> list[tuple[bytes, bytes]]:
    from policy.simulator.market import Market

    market = Market()
    index = {name: i for i, name in enumerate(market.segment_names)}
    rng = np.random.default_rng(1)
    reqs = market.sample_requests(np.array([index[s] for s in segments]), rng)
    return request_payloads(market, reqs, np.full(len(segments), t), [f"close{tag}-{s}" for s in segments])


def _account(fault: str, n: int, meta: list, traffic: _Traffic, heads: dict[str, SegmentHead],
             elapsed: float, restarts: int) -> dict:
    decided = traffic.decisions
    ids = [rid for rid, _, _ in meta]
    undecided = [i for i, rid in enumerate(ids) if not decided.get(rid)]
    no_decision = len(undecided)
    multi = sum(1 for rid in ids if len(decided.get(rid, ())) > 1)
    different = sum(1 for rid in ids if len(set(decided.get(rid, ()))) > 1)
    requests_per_segment = Counter(seg for _, seg, _ in meta)
    lost = double = updates_lost = updates_double = 0
    for seg, count in requests_per_segment.items():
        head = heads.get(seg)
        applied = head.clicks if head else 0
        sent = traffic.clicks.get(seg, 0)
        lost += max(sent - applied, 0)
        double += max(applied - sent, 0)
        updates = head.n_updates if head else 0
        updates_lost += max(count - updates, 0)
        updates_double += max(updates - count, 0)
    return {"fault": fault, "requests": n,
            # the generator's own rate: when a slow fault outlasts the payloads it stops sending, not falling behind
            "offered_per_s": round(n / (traffic.generated_s or elapsed), 1), "no_decision": no_decision,
            "multi_decision": multi, "different_ad": different, "clicks_sent": sum(traffic.clicks.values()),
            "clicks_lost": lost, "clicks_double": double, "updates_lost": updates_lost,
            "updates_double": updates_double, "worker_restarts": restarts,
            "reader_rereads": traffic.records.rereads,  # records the reader took twice (not counted twice)
            # where the first undecided requests sit, to read the workers' logs around them
            "undecided_at": [[ids[i], *traffic.where.get(i, (-1, -1))] for i in undecided[:20]]}


def run(settings: Settings, faults: list[str], workdir: Path, out: Path | None = None,
        cfg: ChaosConfig = ChaosConfig()) -> dict:
    """Every fault in ``faults``, one run each; prints a table, writes ``{"runs": [...]}`` to ``out``."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    runs = []
    for i, fault in enumerate(faults):
        load = f"{cfg.rate:.0f} requests/s"
        if fault in RETENTION_FAULTS:
            from metacart.bench.chaos_retention import RetentionChaosConfig

            load = f"{RetentionChaosConfig().rate:.0f} sessions/s"
        console.print(f"[bold]bench chaos[/]: {fault} at {load} ...")
        runs.append(run_fault(settings, fault, Path(workdir), cfg, seed=i))
        console.print(runs[-1])
        if out is not None:  # a later fault that fails keeps the runs before it
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps({"runs": runs, "delivery": settings.ads.delivery, "rate": cfg.rate},
                                            indent=2))
    keys = ["fault", "requests", "offered_per_s", "no_decision", "multi_decision", "different_ad", "clicks_sent",
            "clicks_lost", "clicks_double", "updates_lost", "updates_double", "ledger_moved_back"]
    table = Table(title=f"metacart bench chaos (delivery={settings.ads.delivery})")
    for k in keys:
        table.add_column(k)
    for r in runs:
        table.add_row(*[str(r.get(k, "-")) for k in keys])
    console.print(table)
    result = {"runs": runs, "delivery": settings.ads.delivery, "rate": cfg.rate}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result
