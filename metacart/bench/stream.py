"""``metacart bench stream``: the worker's own speed on the real broker, against a plain-client ceiling.

Everything runs in one invocation, on one broker, one process at a time:

1. **Throughput.** ``n`` ad requests are produced before the clock starts (a backlog). A real worker
   process (``metacart worker``, as the demo starts it) is warmed up on requests of its own, then reads
   the backlog. A feedback process reads its decisions and clicks ``click_share`` of them (chosen by a
   hash of the request id, with the decided ad), so attribution windows close, posteriors are updated
   and written. decisions/s = (decisions - 1) / (last - first decision record timestamp): the clock is
   the worker's producer, not the harness.
2. **Baseline** (``--baseline``): the same measurement with a second worker on the Faust data path
   (:data:`BASELINE_SETTINGS`: the Faust agent reads the data, as before ``ads.data_path="direct"``), so
   that the direct data path is compared with it in the same run.
3. **Latency at a fixed offered load**: a generator process produces ``load_rate`` requests/s for
   ``load_s`` seconds, each stamped with its send time (µs) as its event time; this process reads the
   decisions and takes consume time - request time (p50, p99). The generator reports the rate it achieved
   and how far it fell behind its schedule, so a generator that could not keep up is visible.
4. **Ceiling**: the same backlog through a plain confluent-kafka loop in its own process: consume →
   validate (``streams.edge.Decoder``, the worker's edge) → produce a reply, timed from the replies'
   record timestamps exactly as the worker is.

The load around the worker (payloads, the backlog, the feedback, generator and ceiling processes) lives in
:mod:`metacart.bench.stream_load`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from metacart.bench import stream_load as load
from metacart.bench.profile import record, summarise
from metacart.processes import WorkerProcess
from streams.app import topics_for
from streams.metrics import COMMIT_PHASES
from streams.kafka_io import client_config, ensure_topics, tail_consumer, wait_for_broker
from streams.pseudonyms import with_run_key
from streams.settings import Settings
from streams.topics import TopicSpec

RESULT_KEYS = ("decisions_per_s", "p50_ms", "p99_ms", "ceiling_per_s", "ratio", "p99_ms_at_1000")
"""Keys every ``bench stream`` JSON has (the acceptance test of issue 11 reads them)."""

BASELINE_SETTINGS = {"ads.data_path": "faust", "faust.changelog_producer": "faust"}
"""The baseline run: today's design before the direct data path (a Faust agent reads requests and feedback
with ``take_events``, Faust's aiokafka producer sends the table's changelog); every other setting is the
measured worker's."""

ATTRIBUTION_WINDOW_S = 20.0
"""Event-time attribution window of the benchmark's workers: with one backlog request per event-time ms,
windows close 20,000 requests after they open, so closing and zero updates are part of the work."""



# --- pure parts ------------------------------------------------------------------------------------

def percentiles_ms(latencies_ms: Sequence[float]) -> tuple[float | None, float | None]:
    """(p50, p99) of the latencies, or (None, None) when there are none (JSON has no NaN)."""
    arr = np.asarray(latencies_ms, dtype=np.float64)
    if arr.size == 0:
        return None, None
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def rate_from_timestamps(timestamps_ms: Sequence[int]) -> tuple[float, float]:
    """(messages/s, span in s) from record timestamps: (n - 1) / (last - first).

    ``n`` records span ``n - 1`` inter-record gaps, so the first record starts the clock and is not
    counted. Raises ``ValueError`` when fewer than two records or a zero span make a rate meaningless.
    """
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    if ts.size < 2:
        raise ValueError(f"a rate needs at least two records, got {ts.size}")
    span_s = (int(ts.max()) - int(ts.min())) / 1e3
    if span_s <= 0:
        raise ValueError(f"{ts.size} records share one timestamp: the run was too short to time")
    return (ts.size - 1) / span_s, span_s


def result_json(*, worker: dict, latency: dict, ceiling: dict, baseline: dict | None, settings: dict) -> dict:
    """The benchmark's JSON: :data:`RESULT_KEYS` first, then what each figure was measured on."""
    rate = worker["per_s"]
    out = {
        "decisions_per_s": round(rate, 1),
        "p50_ms": _round(latency["p50_ms"]),
        "p99_ms": _round(latency["p99_ms"]),
        "ceiling_per_s": round(ceiling["per_s"], 1),
        "ratio": round(rate / ceiling["per_s"], 3) if ceiling["per_s"] > 0 else None,
        "p99_ms_at_1000": _round(latency["p99_ms"]) if latency["offered_per_s"] == 1000 else None,
    }
    if baseline is not None:
        out["baseline_per_s"] = round(baseline["per_s"], 1)
        out["speedup_vs_baseline"] = round(rate / baseline["per_s"], 2) if baseline["per_s"] > 0 else None
        out["baseline"] = baseline | {"what": "same code and settings, the Faust data path and changelog producer "
                                      "(ads.data_path=faust, faust.changelog_producer=faust)",
                                      "settings": BASELINE_SETTINGS}
    out.update({"worker": worker, "latency_at_load": latency, "ceiling": ceiling, "settings": settings})
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# --- phases ----------------------------------------------------------------------------------------

def _bench_settings(settings: Settings, tag: str, overrides: dict | None = None) -> Settings:
    s = settings.model_copy(deep=True)
    s.kafka.topic_prefix = f"bench-{tag}"
    s.worker_id = f"bench-{tag}"
    s.store.data_dir = Path("var") / f"bench-{tag}"
    s.agents = "ads"
    s.ads.attribution_window_s = ATTRIBUTION_WINDOW_S
    for dotted, value in (overrides or {}).items():
        group, name = dotted.split(".")
        setattr(getattr(s, group), name, value)
    return s


def _start_worker(s: Settings, log: Path, warm_n: int = 2000) -> WorkerProcess:
    """A worker process that has answered ``warm_n`` requests of its own (kernels compiled, tables open)."""
    from metacart.demo import ensure_artifact

    ensure_artifact(s.policy.artifact)
    topics = topics_for(s)
    ensure_topics(s.kafka, topics.all())
    worker = WorkerProcess(s, log).start()
    rate = _timed(s, worker, load.payloads(warm_n, 99, time.time() - 3600.0, "warm"), stall_s=120)
    if rate is None:
        worker.stop()
        raise RuntimeError(f"worker did not answer the warm-up; log:\n{worker.log_tail()}")
    return worker


def cpu_seconds(stat_text: str, ticks_per_s: int) -> float:
    """User + system CPU seconds of a process (all its threads) from the text of ``/proc/PID/stat``."""
    fields = stat_text.rpartition(")")[2].split()  # the command name may hold spaces; it ends with ")"
    return (int(fields[11]) + int(fields[12])) / ticks_per_s  # utime, stime: fields 14 and 15 of stat


def _cpu_of(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))


def _timed(s: Settings, worker: WorkerProcess, requests: list, stall_s: float = 30) -> float | None:
    """Decisions/s (worker clock) on ``requests`` produced at once; None when not all were answered."""
    topics = topics_for(s)
    start = load.end_offsets(s, topics.ad_decisions.name)
    load.produce(s, topics.ad_requests.name, requests)
    got = load.wait_for(s, topics.ad_decisions.name, start, len(requests), stall_s=stall_s, alive=worker.alive)
    if got < len(requests):
        return None
    return rate_from_timestamps(load.record_timestamps(s, topics.ad_decisions.name, start, got))[0]


def _calibrate(s: Settings, worker: WorkerProcess, n: int = 10_000) -> float:
    """The worker's decisions/s on a small backlog, to size the measured one."""
    rate = _timed(s, worker, load.payloads(n, 98, time.time() - 3000.0, "cal"))
    if rate is None:
        raise RuntimeError(f"worker did not answer the calibration backlog; log:\n{worker.log_tail()}")
    return rate


def backlog_size(rate_per_s: float, seconds: float = 25.0, lo: int = 20_000, hi: int = 1_000_000) -> int:
    """Requests that keep a worker of ``rate_per_s`` busy for ``seconds`` (within [lo, hi])."""
    return int(min(max(rate_per_s * seconds, lo), hi))


def _worker_throughput(s: Settings, worker: WorkerProcess, backlog: list, click_share: float,
                       profile: Path | None = None) -> dict:
    """Decisions/s of a running worker on ``backlog``, with clicks fed back (see the module docstring).

    With ``profile``, py-spy samples the worker for the first 15 s of the backlog (collapsed stacks there).
    """
    topics = topics_for(s)
    ctx = multiprocessing.get_context("spawn")
    stop, counts = ctx.Event(), ctx.Array("q", 2)
    feedback = ctx.Process(target=load.feedback_loop, args=(
        client_config(s.kafka), topics.ad_decisions.name, topics.ad_feedback.name, click_share, 0.5, stop, counts))
    feedback.start()
    time.sleep(3.0)  # the feedback consumer joins its group
    start = load.end_offsets(s, topics.ad_decisions.name)
    spy = record(worker.pid, 15, profile) if profile else None
    cpu0 = _cpu_of(worker.pid)
    load.produce(s, topics.ad_requests.name, backlog)
    got = load.wait_for(s, topics.ad_decisions.name, start, len(backlog), stall_s=30, alive=worker.alive)
    cpu = _cpu_of(worker.pid) - cpu0  # includes up to ~0.5 s idle polling after the last decision
    ts = load.record_timestamps(s, topics.ad_decisions.name, start, got)
    time.sleep(2.0)  # the last clicks reach the worker
    if spy is not None:
        spy.wait(60)
    stop.set()
    feedback.join(30)
    per_s, span = rate_from_timestamps(ts)
    return {"per_s": per_s, "decided": int(ts.size), "requests": len(backlog), "span_s": round(span, 2),
            "cpu_us_per_decision": round(cpu / max(got, 1) * 1e6, 1),
            "decisions_seen_by_feedback": int(counts[0]), "clicks_sent": int(counts[1]),
            "batch_max": s.ads.batch_max, "batch_within_s": s.ads.batch_within_s,
            "worker_counters": _scrape(worker)}


def _scrape(worker: WorkerProcess) -> dict:
    """The worker's engine counters from its ``/metrics`` page (empty when it does not answer)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(worker.url + "/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "metacart_engine_counter":
                out[sample.labels["name"]] = sample.value
            elif sample.name in ("metacart_state_bytes", "metacart_segments_in_state", "metacart_open_decisions"):
                out[sample.name] = sample.value
    return {k: out[k] for k in sorted(out) if k in _REPORTED or k.startswith("metacart_")}


_REPORTED = ("decisions", "updates", "clicks_applied", "clicks_late_or_unknown", "zero_updates", "batches",
             "batch_events", "engine_s", "dead_letters", "commits", "commit_s",
             *(f"commit_{phase}_s" for phase in COMMIT_PHASES))


def commit_phases(before: dict, after: dict, seconds: float) -> dict:
    """Commits per second and the mean milliseconds of each commit phase between two scrapes of the worker's
    counters (``streams.agents.delivery.COMMIT_PHASES``): where a decision's wait for its commit goes."""
    commits = after.get("commits", 0.0) - before.get("commits", 0.0)
    if commits <= 0 or seconds <= 0:
        return {}
    out = {"per_s": round(commits / seconds, 1)}
    for phase in ("", *(f"{p}_" for p in COMMIT_PHASES)):
        key = f"commit_{phase}s"
        out[f"mean_{phase or 'total_'}ms"] = round((after.get(key, 0.0) - before.get(key, 0.0)) / commits * 1e3, 2)
    return out


def _settle(s: Settings, worker: WorkerProcess) -> None:
    """Move every partition's event time to now and wait for the windows this closes to be done.

    The backlog's event times lie minutes in the past; the latency run's are the wall clock. Without this,
    its first requests would pay for closing every window the backlog left open (a one-off of the benchmark,
    not of production traffic, whose event time does not jump).
    """
    try:
        answered = _timed(s, worker, load.payloads(400, 3, time.time() - 1.0, "settle", step_s=1e-6), stall_s=120)
    except ValueError:  # all 400 decided within one millisecond: answered, too fast to time (not needed here)
        answered = True
    if answered is None:
        raise RuntimeError(f"worker did not answer after the backlog; log:\n{worker.log_tail()}")
    time.sleep(2.0)


def _latency(s: Settings, rate: float, seconds: float, warm_s: float = 5.0) -> dict:
    """Request → decision latency at ``rate``/s for ``seconds``, after ``warm_s`` at the same rate.

    The warm-up lets the worker settle after the backlog (its open windows close when event time jumps
    to the wall clock); its requests (ids ``lw-…``) are not measured.
    """
    topics = topics_for(s)
    n = int(rate * seconds)
    payloads = load.payloads(int(rate * warm_s), 2, 0.0, "lw", step_s=0.0) + load.payloads(n, 1, 0.0, "load", step_s=0.0)
    ctx = multiprocessing.get_context("spawn")
    ready, go, report = ctx.Event(), ctx.Event(), ctx.Queue()
    gen = ctx.Process(target=load.generator_loop, args=(
        client_config(s.kafka), topics.ad_requests.name, payloads, rate, ready, go, report))
    gen.start()
    consumer = tail_consumer(s.kafka, topics.ad_decisions.name, **{"fetch.wait.max.ms": 5})
    ready.wait(60)
    go.set()
    lat: list[float] = []
    to_decided: list[float] = []  # request time -> the worker's decided_at: the part before the engine's clock
    to_record: list[float] = []  # decided_at -> the decision record's timestamp (handed to its producer)
    deadline = time.monotonic() + warm_s + seconds + 20
    while len(lat) < n and time.monotonic() < deadline:
        # One message per poll: consume(num_messages=...) would hold what came until the batch or its
        # timeout fills, adding that wait to every latency.
        m = consumer.poll(0.05)
        for m in ([m] if m is not None else []):
            if m.error() is None and b'"load-' in m.value():
                now = time.time()
                d = json.loads(m.value())
                t_req = datetime.fromisoformat(d["request_time"]).timestamp()
                lat.append((now - t_req) * 1e3)
                t_decided = datetime.fromisoformat(d["decided_at"]).timestamp()
                to_decided.append((t_decided - t_req) * 1e3)
                to_record.append(m.timestamp()[1] - t_decided * 1e3)
    consumer.close()
    gen.join(30)
    generator = report.get(timeout=10) if not report.empty() else {}
    p50, p99 = percentiles_ms(lat)
    steady = lat[len(lat) // 10:]
    p50s, p99s = percentiles_ms(steady)
    return {"offered_per_s": rate, "requests": n, "answered": len(lat), "warm_up_s": warm_s, "p50_ms": p50, "p99_ms": p99,
            "p50_ms_after_first_10pct": p50s, "p99_ms_after_first_10pct": p99s,
            "request_to_decided_at_p50_ms": percentiles_ms(to_decided)[0],
            "request_to_decided_at_p99_ms": percentiles_ms(to_decided)[1],
            "decided_at_to_record_p50_ms": percentiles_ms(to_record)[0],
            "decided_at_to_record_p99_ms": percentiles_ms(to_record)[1], "generator": generator}


def _transaction_floor(s: Settings, tag: str, rate: float, seconds: float) -> dict:
    """Message → visible latency (``read_committed``) of the worker's commit cadence with no engine at all:
    a plain transactional producer at ``rate``/s, one transaction per ``ads.commit_interval_s`` with the
    messages and ledger-like offsets (:func:`metacart.bench.stream_load.transaction_floor_loop`). What the
    worker's exactly-once latency cannot go below on this broker and box."""
    topic = f"bench-{tag}.floor"
    parts = s.kafka.segment_partitions  # as many as the decisions are spread over
    ensure_topics(s.kafka, [TopicSpec(topic, "segment", parts, bytes, "transaction floor")])
    ctx = multiprocessing.get_context("spawn")
    ready, go, report = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=load.transaction_floor_loop, args=(
        client_config(s.kafka), topic, parts, rate, seconds, s.ads.commit_interval_s,
        s.ads.transaction_retry_backoff_ms, ready, go, report))
    proc.start()
    consumer = tail_consumer(s.kafka, topic, **{"fetch.wait.max.ms": 5, "isolation.level": "read_committed"})
    ready.wait(60)
    go.set()
    n = int(rate * seconds)
    lat: list[float] = []
    deadline = time.monotonic() + seconds + 30
    while len(lat) < n and time.monotonic() < deadline:
        m = consumer.poll(0.05)  # one message per poll, as the latency run reads
        if m is not None and m.error() is None:
            lat.append((time.time() - json.loads(m.value())["t"]) * 1e3)
    consumer.close()
    proc.join(30)
    commits = report.get(timeout=10) if not report.empty() else {}
    p50, p99 = percentiles_ms(lat)
    return {"offered_per_s": rate, "messages": n, "visible": len(lat), "p50_ms": _round(p50), "p99_ms": _round(p99),
            **commits}


def _ceiling(s: Settings, backlog: list, tag: str) -> dict:
    in_topic, out_topic = f"bench-{tag}.ceiling-in", f"bench-{tag}.ceiling-out"
    parts = topics_for(s).ad_requests.partitions
    ensure_topics(s.kafka, [TopicSpec(in_topic, "segment", parts, bytes, "ceiling input"),
                            TopicSpec(out_topic, "segment", parts, bytes, "ceiling output")])
    load.produce(s, in_topic, backlog)
    start = load.end_offsets(s, out_topic)
    ctx = multiprocessing.get_context("spawn")
    ready, cpu = ctx.Event(), ctx.Value("d", 0.0)
    proc = ctx.Process(target=load.ceiling_loop, args=(client_config(s.kafka), in_topic, out_topic, len(backlog),
                                                   ready, cpu))
    proc.start()
    got = load.wait_for(s, out_topic, start, len(backlog), stall_s=30, alive=proc.is_alive)
    proc.join(60)
    ts = load.record_timestamps(s, out_topic, start, got)
    per_s, span = rate_from_timestamps(ts)
    return {"per_s": per_s, "answered": int(ts.size), "span_s": round(span, 2),
            "cpu_us_per_message": round(cpu.value * 1e6, 1)}


def run(settings: Settings, out: Path | None = None, n: int | None = None, load_rate: float = 1000.0,
        load_s: float = 15.0, baseline: bool = True, click_share: float = 0.05, profile: Path | None = None) -> dict:
    """Run the benchmark; ``n`` None sizes the backlog to ~25 s of the worker's calibrated speed."""
    from rich.console import Console

    console = Console()
    wait_for_broker(settings.kafka)
    load_start = round(os.getloadavg()[0], 2)  # the box is shared: how busy it was is part of the result
    tag = uuid.uuid4().hex[:8]
    base = with_run_key(settings)  # a random pseudonym key unless one is configured
    s = _bench_settings(base, tag)
    console.print(f"[bold]bench stream[/]: starting a worker ({s.worker_id}) ...")
    worker = _start_worker(s, Path("var") / f"bench-{tag}.log")
    try:
        calibrated = _calibrate(s, worker)
        n = n or backlog_size(calibrated)
        console.print(f"  calibration: {calibrated:,.0f} decisions/s → backlog of {n:,} requests")
        backlog = load.payloads(n, 0, time.time() - n * 1e-3 - 600.0, f"b{tag}")
        console.print("worker on the backlog, clicks fed back ...")
        worker_result = _worker_throughput(s, worker, backlog, click_share, profile)
        worker_result["calibration_per_s"] = round(calibrated, 1)
        console.print(f"  {worker_result['per_s']:,.0f} decisions/s over {worker_result['span_s']} s")
        _settle(s, worker)
        console.print(f"latency at {load_rate:.0f} requests/s for {load_s:.0f}s ...")
        before = _scrape(worker)
        t_latency = time.monotonic()
        latency = _latency(s, load_rate, load_s)
        latency["commits"] = commit_phases(before, _scrape(worker), time.monotonic() - t_latency)
    finally:
        worker.stop()
    floor = None
    if s.ads.delivery == "exactly_once":
        console.print(f"transaction floor at {load_rate:.0f} messages/s (plain producer, no engine) ...")
        floor = _transaction_floor(s, tag, load_rate, load_s)
    base_result = None
    if baseline:
        sb = _bench_settings(base, f"{tag}-base", BASELINE_SETTINGS)
        console.print("baseline worker (Faust data path) on the same backlog ...")
        w = _start_worker(sb, Path("var") / f"bench-{tag}-base.log")
        try:
            base_result = _worker_throughput(sb, w, backlog, click_share)
        finally:
            w.stop()
        console.print(f"  {base_result['per_s']:,.0f} decisions/s over {base_result['span_s']} s")
    console.print("ceiling: plain confluent-kafka consume → validate → produce on the same backlog ...")
    try:
        ceiling = _ceiling(s, backlog, tag)
    finally:
        from metacart.demo import cleanup

        dirs = [s.store.data_dir, Path("var") / f"bench-{tag}-base"]
        topics_gone, _ = cleanup(s, f"bench-{tag}", dirs)  # the backlogs are large: leave nothing behind
        console.print(f"  cleaned up {topics_gone} topics and the workers' state")
    used = {"ads.data_path": s.ads.data_path, "ads.batch_max": s.ads.batch_max,
            "ads.batch_within_s": s.ads.batch_within_s, "ads.commit_interval_s": s.ads.commit_interval_s,
            "ads.delivery": s.ads.delivery, "ads.transaction_retry_backoff_ms": s.ads.transaction_retry_backoff_ms,
            **{f"faust.{k}": v for k, v in s.faust.model_dump().items()},
            "ads.attribution_window_s": ATTRIBUTION_WINDOW_S, "click_share": click_share}
    result = result_json(worker=worker_result, latency=latency, ceiling=ceiling, baseline=base_result,
                         settings=used)
    if floor is not None:
        result["latency_floor"] = floor
    result["load_average_1m"] = {"start": load_start, "end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    if profile and profile.exists():
        result["profile"] = summarise(profile) | {"raw": str(profile)}
        console.print("profile (share of samples, self time by part): " + ", ".join(
            f"{k} {v:.0%}" for k, v in result["profile"]["self_time_by_part"].items()))
    if worker_result["span_s"] < 20:
        console.print(f"[yellow]note: the backlog took {worker_result['span_s']} s (< 20 s); raise --n[/]")
    _print_table(console, result, load_rate)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {out}")
    return result


def _print_table(console, result: dict, load_rate: float) -> None:
    from rich.table import Table

    w, lat, gen = result["worker"], result["latency_at_load"], result["latency_at_load"].get("generator", {})
    table = Table(title="metacart bench stream (one worker process, local broker)")
    for col in ("metric", "value"):
        table.add_column(col)
    table.add_row("decisions/s (backlog, worker clock)",
                  f"{w['per_s']:,.0f}  ({w['decided']:,}/{w['requests']:,} decided in {w['span_s']} s)")
    table.add_row("worker CPU per decision", f"{w['cpu_us_per_decision']:.0f} µs (ceiling "
                  f"{result['ceiling'].get('cpu_us_per_message', 0):.0f} µs per message)")
    if "baseline_per_s" in result:
        table.add_row("baseline (Faust data path)", f"{result['baseline_per_s']:,.0f}  "
                      f"(x{result['speedup_vs_baseline']})")
    fmt = (lambda x: "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}")
    table.add_row(f"p50 / p99 latency at {load_rate:.0f}/s", f"{fmt(lat['p50_ms'])} / {fmt(lat['p99_ms'])} ms "
                  f"({lat['answered']}/{lat['requests']} answered)")
    floor = result.get("latency_floor")
    if floor:
        table.add_row(f"transaction floor at {load_rate:.0f}/s (no engine)",
                      f"{fmt(floor['p50_ms'])} / {fmt(floor['p99_ms'])} ms (commit p50 / p99 "
                      f"{fmt(floor.get('commit_p50_ms'))} / {fmt(floor.get('commit_p99_ms'))} ms)")
    commits = lat.get("commits") or {}
    if commits:
        table.add_row(f"commits at {load_rate:.0f}/s", f"{commits['per_s']:.0f}/s, mean {commits['mean_total_ms']:.1f} ms: "
                      + " + ".join(f"{p} {commits[f'mean_{p}_ms']:.1f}" for p in COMMIT_PHASES))
    table.add_row("generator achieved", f"{gen.get('achieved_per_s', 0):,.0f}/s, p99 "
                  f"{gen.get('behind_schedule_p99_ms', 0)} ms behind schedule")
    table.add_row("ceiling (plain client loop)", f"{result['ceiling_per_s']:,.0f} msg/s")
    table.add_row("ratio worker / ceiling", f"{result['ratio']}")
    c = w.get("worker_counters", {})
    table.add_row("worker: clicks applied / late, zero updates",
                  f"{c.get('clicks_applied', 0):,.0f} / {c.get('clicks_late_or_unknown', 0):,.0f}, "
                  f"{c.get('zero_updates', 0):,.0f}")
    console.print(table)
