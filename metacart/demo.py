"""``make demo``: the closed loop, narrated.

1. Meta-train a small policy on simulator logs of the *training* segments (time-boxed).
2. Start a real worker process (Faust, RocksDB tables) on the local broker.
3. Run the market live on the *held-out* segments — segments the policy has never seen — and show a
   terminal view: events/s, decision latency, the live policy's CTR against the simulator's random and
   oracle references, segments adapted, updates applied, and the retention side when it runs.
4. Write ``report.png`` (CTR against the number of decisions a new segment has had) and ``summary.json``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from metacart.processes import WorkerProcess
from streams.app import topics_for
from streams.kafka_io import ensure_topics, make_consumer, wait_for_broker
from streams.live import LiveConfig, LiveStats, run_live
from streams.live_retention import LiveRetentionConfig, LiveRetentionStats, aligned_settings, run_live_retention
from streams.pseudonyms import with_run_key
from streams.settings import Settings


def ensure_artifact(path: Path, max_seconds: float = 60.0, n_per_segment: int = 600) -> Path:
    """Train a small ads artifact at ``path`` unless one is there already."""
    path = Path(path)
    if (path / "meta.json").exists():
        return path
    from policy.simulator.datasets import simulate_logs
    from policy.simulator.market import Market
    from policy.train import TrainConfig, train

    market = Market()
    logs = simulate_logs(market, market.train_segments, n_per_segment, seed=0)
    train(logs, TrainConfig(max_seconds=max_seconds), out_dir=path)
    return path


def _train(console, path: Path, max_seconds: float) -> None:
    from policy.simulator.datasets import simulate_logs
    from policy.simulator.market import Market
    from policy.train import TrainConfig, train

    market = Market()
    t0 = time.perf_counter()
    logs = simulate_logs(market, market.train_segments, 600, seed=0)
    console.print(f"  {len(logs.reward):,} logged impressions from {len(market.train_segments)} training "
                  f"segments (uniform logging, CTR {logs.reward.mean():.2%}) in {time.perf_counter() - t0:.1f}s")

    def progress(p: dict) -> None:
        if int(p["epoch"]) % 5 == 1:
            console.print(f"  epoch {int(p['epoch']):2d}  held-out NLL {p['heldout_nll']:.4f}  ({p['elapsed_s']:.0f}s)")

    art = train(logs, TrainConfig(max_seconds=max_seconds), out_dir=path, progress=progress)
    console.print(f"  artifact [bold]{art.version}[/] → {path}")


def _view(stats: LiveStats, worker: dict, retention: "LiveRetentionStats | None" = None) -> "object":
    from rich.table import Table

    elapsed = time.monotonic() - stats.started
    recent = slice(-2000, None)
    pol = np.mean(stats.exp_policy[recent]) if stats.exp_policy else float("nan")
    rnd = np.mean(stats.exp_random[recent]) if stats.exp_random else float("nan")
    orc = np.mean(stats.exp_oracle[recent]) if stats.exp_oracle else float("nan")
    lat = np.array(stats.latencies_ms[-2000:]) if stats.latencies_ms else np.array([np.nan])
    c = worker.get("counters", {})
    t = Table(title=f"metacart live — {elapsed:5.0f}s, held-out segments (never seen in training)",
              show_header=False, min_width=70)
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("requests → decisions", f"{stats.sent:,} → {stats.decided:,}  ({stats.decided / max(elapsed, 1e-9):,.0f}/s)")
    t.add_row("decision latency p50 / p99", f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f} ms (last 2,000)")
    t.add_row("expected CTR: live policy", f"[green]{pol:.2%}[/]  (last 2,000 decisions)")
    t.add_row("            random / oracle", f"{rnd:.2%} / {orc:.2%}")
    if np.isfinite(pol) and orc > rnd:
        t.add_row("share of achievable lift", f"{(pol - rnd) / (orc - rnd):.0%}")
    t.add_row("clicks / purchases / revenue", f"{stats.clicks:,} / {stats.purchases:,} / {stats.revenue:,.0f}")
    t.add_row("segments adapted (in worker)", f"{worker.get('segments_in_memory', 0)}")
    t.add_row("posterior updates applied", f"{int(c.get('updates', 0)):,}  (clicks {int(c.get('clicks_applied', 0)):,}, "
              f"closed windows {int(c.get('windows_closed', 0)):,})")
    t.add_row("duplicates / late feedback", f"{int(c.get('clicks_duplicate', 0))} / {int(c.get('clicks_late_or_unknown', 0))}")
    t.add_row("dead letters", f"{int(c.get('dead_letters', 0))}")
    if retention is not None:
        t.add_section()
        t.add_row("[bold]retention[/] (held-out segments)", f"week {retention.rounds} of the live world, "
                  f"{retention.sessions:,} session events")
        treated = {k: v for k, v in retention.by_treatment.items() if k != "none" and v}
        t.add_row("actions (treatments)", f"{retention.actions:,} ({', '.join(f'{k} {v}' for k, v in treated.items()) or '—'})")
        weekly = max(retention.reserved_by_round, default=0.0)
        t.add_row("budget", f"{retention.reserved:,.0f} reserved so far, {retention.spend:,.0f} paid; "
                  f"busiest week {weekly:,.0f} of the {s_cap(c):,.0f} weekly cap")
        t.add_row("retained value vs doing nothing", f"[green]{retention.incremental_value:+,.0f}[/] (true expected, "
                  f"net of cost)")
        t.add_row("outcomes applied / dead letters", f"{int(c.get('retention_outcomes_applied', 0)):,} / "
                  f"{int(c.get('retention_dead_letters', 0))}")
    return t


def merged(reports: dict[str, dict]) -> dict:
    """The workers' latest reports as one: counters summed, segments and open decisions added."""
    out: dict = {"counters": {}, "segments_in_memory": 0, "pending": 0}
    for report in reports.values():
        for k, v in report["counters"].items():
            out["counters"][k] = out["counters"].get(k, 0) + v
        out["segments_in_memory"] += report["segments_in_memory"]
        out["pending"] += report["pending"]
    return out


def s_cap(counters: dict) -> float:
    """The weekly retention cap the worker reports (sum of its partitions' shares)."""
    return float(counters.get("retention_budget", 0.0))


def _plot(summary: dict, path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = summary["series"]
    rank = np.array(series["seg_rank"])
    edges = np.array([0, 25, 50, 100, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200])
    edges = edges[edges <= max(rank.max(initial=0) + 1, 50)]
    curves = {}
    mids = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (rank >= lo) & (rank < hi)
        if sel.sum() < 20:
            continue
        mids.append((lo + hi) / 2)
        for name in ("exp_policy", "exp_random", "exp_oracle"):
            curves.setdefault(name, []).append(float(np.mean(np.array(series[name])[sel])))
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {"exp_policy": "live policy (meta prior + per-segment adaptation)", "exp_random": "random",
              "exp_oracle": "oracle (true parameters)"}
    for name, ys in curves.items():
        ax.plot(mids, ys, marker="o", label=labels[name])
    ax.set_xlabel("decisions the segment had before (new, held-out segments)")
    ax.set_ylabel("expected CTR of the shown ad")
    ax.set_title("metacart demo: CTR on segments never seen in training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"bins_mid": mids, **{k: v for k, v in curves.items()}}


def run_demo(settings: Settings, duration_s: float = 90.0, rate: float = 400.0,
             out_dir: Path = Path("reports/demo"), train_seconds: float = 60.0) -> dict:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    wait_for_broker(settings.kafka)
    tag = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    s = with_run_key(settings)  # a random pseudonym key unless one is configured
    s = s.model_copy(deep=True)
    s.kafka.topic_prefix = f"demo-{tag}"
    s.worker_id = f"demo-{tag}"
    s.store.data_dir = Path("var") / f"demo-{tag}"
    s.policy.artifact = Path("artifacts") / f"demo-{tag}" / "ads-policy"

    console.rule("[bold]1. meta-training on the training segments")
    from policy.retention.train import build_artifacts

    _train(console, s.policy.artifact, train_seconds)

    console.print("  retention: churn-risk model and uplift meta-prior on the retention world's training segments")
    t_ret = time.perf_counter()
    retention_dir = s.policy.artifact.parent / "retention"
    build_artifacts(retention_dir, max_seconds=min(train_seconds, 40.0))
    s = aligned_settings(s, artifact=retention_dir)
    console.print(f"  retention artifacts in {time.perf_counter() - t_ret:.0f}s")

    console.rule("[bold]2. starting two workers (Faust + RocksDB via rocksdict): ads, retention")
    topics = topics_for(s)
    ensure_topics(s.kafka, topics.all())
    workers = []
    for role in ("ads", "retention"):
        w = s.model_copy(deep=True)
        w.agents, w.worker_id = role, f"{s.worker_id}-{role}"
        w.store.data_dir = s.store.data_dir / role
        workers.append(WorkerProcess(w, out_dir / f"worker-{role}.log").start())
    stats_consumer = make_consumer(s.kafka, f"demo-view-{tag}")
    stats_consumer.subscribe([topics.worker_stats.name])
    reports: dict[str, dict] = {}

    def read_stats(timeout: float) -> None:
        for m in stats_consumer.consume(num_messages=200, timeout=timeout):
            if m.error() is None:
                report = json.loads(m.value())
                reports[report["worker"]] = report

    t0 = time.monotonic()
    while len(reports) < len(workers) and time.monotonic() - t0 < 120:
        read_stats(0.5)
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"a worker exited during start:\n{w.log_tail()}")
    console.print(f"  workers up in {time.monotonic() - t0:.1f}s: " + ", ".join(
        f"{r['worker'].split('@')[0]} serving {r['policy_version']}" for r in reports.values()))

    console.rule(f"[bold]3. live market: {rate:.0f} requests/s for {duration_s:.0f}s on held-out segments")
    retention_view: list = [None]
    retention_result: dict = {}
    rounds = max(2, int(duration_s // 12) - 1)

    def retention_loop() -> None:
        retention_result.update(run_live_retention(
            s, LiveRetentionConfig(rounds=rounds, duration_s=duration_s),
            on_tick=lambda st: retention_view.__setitem__(0, st)))

    retention_thread = threading.Thread(target=retention_loop, name="live-retention", daemon=True)
    try:
        retention_thread.start()
        with Live(console=console, refresh_per_second=2) as live:
            def on_tick(stats: LiveStats) -> None:
                read_stats(0)
                live.update(_view(stats, merged(reports), retention_view[0]))

            summary = run_live(s, LiveConfig(rate=rate, duration_s=duration_s, segments="heldout"),
                               on_tick=on_tick)
            retention_thread.join(timeout=duration_s)
            read_stats(1.0)
    finally:
        stats_consumer.close()
        for w in workers:
            w.stop()

    console.rule("[bold]4. report")
    curves = _plot(summary, out_dir / "report.png")
    series = summary.pop("series")
    early = [i for i, r in enumerate(series["seg_rank"]) if r < 50]
    late = [i for i, r in enumerate(series["seg_rank"]) if r >= max(series["seg_rank"]) * 0.6]
    pol = np.array(series["exp_policy"])
    lat = np.array(summary.pop("latencies_ms"))
    steady = lat[len(lat) // 10:] if len(lat) >= 10 else lat
    summary.update({
        "p50_ms_steady": float(np.percentile(steady, 50)) if steady.size else None,
        "p99_ms_steady": float(np.percentile(steady, 99)) if steady.size else None,
        "ctr_first50_per_segment": float(pol[early].mean()) if early else None,
        "ctr_last40pct_per_segment": float(pol[late].mean()) if late else None,
        "random_reference": float(np.mean(series["exp_random"])),
        "oracle_reference": float(np.mean(series["exp_oracle"])),
        "curves": curves,
        "worker_counters": merged(reports).get("counters", {}),
        "artifact": str(s.policy.artifact),
        "retention": retention_result or None,
    })
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"  CTR on new segments: first 50 decisions each {summary['ctr_first50_per_segment']:.2%} → "
                  f"late {summary['ctr_last40pct_per_segment']:.2%}; random {summary['random_reference']:.2%}, "
                  f"oracle {summary['oracle_reference']:.2%}")
    if retention_result:
        r = retention_result
        console.print(f"  retention: {r['actions']:,} actions over {r['rounds']} weeks, {r['treated']:,} treatments; "
                      f"reserved {r['reserved']:,.0f} of budget {r['budget']:,.0f}, paid {r['spend']:,.0f}; "
                      f"incremental value vs doing nothing {r['incremental_value']:+,.0f}; caps respected: "
                      f"{r['caps_respected']}")
    console.print(f"  latency p50/p99 {summary['p50_ms']:.1f}/{summary['p99_ms']:.1f} ms over the run, "
                  f"{summary['p50_ms_steady']:.1f}/{summary['p99_ms_steady']:.1f} ms after the first 10% of decisions")
    console.print(f"  wrote "
                  f"{out_dir / 'report.png'} and {out_dir / 'summary.json'}")
    return summary
