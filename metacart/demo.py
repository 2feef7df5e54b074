"""``make demo``: the closed loop, narrated.

1. Meta-train a small policy on simulator logs of the *training* segments (time-boxed).
2. Start a real worker process (Faust, RocksDB tables) on the local broker.
3. Run the market live on the *held-out* segments — segments the policy has never seen — and show a
   terminal view: events/s, decision latency, the live policy's CTR against the simulator's random and
   oracle references, segments adapted, updates applied, and the retention side when it runs.
4. Write ``report.png`` (CTR against the number of decisions a new segment has had; retention value and
   spend per week against doing nothing and the cap) and ``summary.json``.
5. Delete the run's topics, state and artifacts unless told to keep them.

Every breakdown on screen adds up to its total. With stdout not a terminal (a log file, CI) a progress line
is printed every 10 s instead of the live table.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from metacart.processes import WorkerProcess
from streams.app import topics_for
from confluent_kafka.admin import AdminClient

from streams.kafka_io import client_config, ensure_topics, make_consumer, wait_for_broker
from metacart.live.ads import LiveConfig, LiveStats, run_live
from metacart.live.retention import LiveRetentionConfig, LiveRetentionStats, aligned_settings, run_live_retention
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


def _view(stats: LiveStats, worker: dict, retention: "LiveRetentionStats | None" = None,
          value_weight: float = 0.0) -> "object":
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
    t.add_row("posterior updates applied", updates_breakdown(c, value_weight))
    t.add_row("duplicates / late feedback", f"{int(c.get('clicks_duplicate', 0))} / {int(c.get('clicks_late_or_unknown', 0))}")
    t.add_row("dead letters", f"{int(c.get('dead_letters', 0))}")
    if retention is not None:
        t.add_section()
        t.add_row("[bold]retention[/] (held-out segments)", f"week {retention.rounds} of the live world, "
                  f"{retention.sessions:,} session events")
        t.add_row("actions", f"{retention.actions:,} ({actions_breakdown(retention.by_treatment)})")
        weekly = max(retention.reserved_by_round, default=0.0)
        t.add_row("budget", f"{retention.reserved:,.0f} reserved so far, {retention.spend:,.0f} paid; "
                  f"busiest week {weekly:,.0f} of the {s_cap(c):,.0f} weekly cap")
        t.add_row("retained value vs doing nothing", f"[green]{retention.incremental_value:+,.0f}[/] (true expected, "
                  f"net of cost)")
        t.add_row("outcomes applied / dead letters", f"{int(c.get('retention_outcomes_applied', 0)):,} / "
                  f"{int(c.get('retention_dead_letters', 0))}")
    return t


def progress_line(stats: LiveStats, worker: dict, retention: "LiveRetentionStats | None",
                  value_weight: float = 0.0) -> str:
    """One plain line of progress (for a stdout that is not a terminal)."""
    elapsed = time.monotonic() - stats.started
    pol = f"{np.mean(stats.exp_policy[-2000:]):.2%}" if stats.exp_policy else "—"
    line = (f"  {elapsed:4.0f}s  requests {stats.sent:,}  decisions {stats.decided:,}  expected CTR {pol}  "
            f"updates {updates_breakdown(worker.get('counters', {}), value_weight)}")
    if retention is not None:
        line += f"  | retention week {retention.rounds}, actions {retention.actions:,}"
    return line


def updates_breakdown(c: dict, value_weight: float = 0.0) -> str:
    """Posterior updates and the parts they are made of (the parts add up to the total).

    With click rewards (``value_weight`` 0) a click updates at once and a window closing without one
    applies the zero update; with purchase value in the reward every update happens when a window closes
    (or is closed early by the open-decision cap).
    """
    total = int(c.get("updates", 0))
    if value_weight > 0:
        parts = {"windows closed": c.get("windows_closed", 0), "closed early": c.get("windows_forced", 0)}
    else:
        parts = {"clicks": c.get("clicks_applied", 0), "windows closed without a click": c.get("zero_updates", 0)}
    return f"{total:,} = " + " + ".join(f"{int(v):,} {k}" for k, v in parts.items())


def actions_breakdown(by_treatment: dict[str, int]) -> str:
    """Every action by treatment, "none" included, so that the parts add up to the total."""
    return ", ".join(f"{k} {v:,}" for k, v in by_treatment.items() if v) or "—"


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


def replay_reference(artifact, n_per_segment: int, seed: int = 0) -> dict[str, list[float]]:
    """Expected CTR by decisions-so-far for the meta policy and for learning from scratch, replayed offline.

    Both policies meet the same held-out segments and the same requests (one per segment per step, rewards
    drawn by the simulator and learned at once); ``scratch`` is Thompson sampling on the learned phi with a
    vague prior (:func:`policy.baselines.scratch_phi`), ``meta`` the served policy's prior. The difference
    between the two curves is what the meta-prior adds; the live curve (feedback delayed by the attribution
    window) sits beside them.
    """
    from policy.adapter import Adapter
    from policy.baselines import scratch_phi
    from policy.simulator.market import Market

    market = Market()
    segs = np.asarray(market.heldout_segments)
    names = [market.segment_names[i] for i in segs]
    curves: dict[str, list[float]] = {}
    for label, policy in (("meta", Adapter(artifact, seed=seed)), ("scratch", scratch_phi(artifact, seed=seed))):
        rng = np.random.default_rng(seed + 7)
        ctr = []
        for _ in range(n_per_segment):
            req = market.sample_requests(segs, rng)
            decided = policy.decide_many(names, req.context, req.candidates)
            p = market.click_prob(req.segment, req.context, req.candidates)
            ctr.append(float(p[np.arange(len(segs)), decided.choices].mean()))
            clicks = market.respond(req, decided.choices, rng).click.astype(np.float64)
            policy.learn_many(names, decided.phis_chosen, clicks)
        curves[label] = ctr
    return curves


def _plot(summary: dict, path: Path, retention: dict | None = None,
          reference: dict[str, list[float]] | None = None) -> dict:
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
    fig, axes = plt.subplots(1, 2 if retention else 1, figsize=(13 if retention else 7, 4), squeeze=False)
    ax = axes[0, 0]
    labels = {"exp_policy": "live policy (meta prior + per-segment adaptation)", "exp_random": "random",
              "exp_oracle": "oracle (true parameters)"}
    for name, ys in curves.items():
        ax.plot(mids, ys, marker="o", label=labels[name])
    for name, style in (("meta", "tab:blue"), ("scratch", "tab:purple")):
        if reference and reference.get(name):
            ref = np.array(reference[name])
            bins = [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if lo < len(ref)]
            ax.plot([(lo + hi) / 2 for lo, hi in bins], [float(ref[lo:hi].mean()) for lo, hi in bins], ls="--",
                    color=style, alpha=0.8, label=f"{'meta prior' if name == 'meta' else 'learn from scratch'}"
                    " (offline replay, immediate feedback)")
            curves[f"replay_{name}"] = [float(ref[lo:hi].mean()) for lo, hi in bins]
    ax.set_xlabel("decisions the segment had before (new, held-out segments)")
    ax.set_ylabel("expected CTR of the shown ad")
    ax.set_title("metacart demo: CTR on segments never seen in training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if retention:
        _plot_retention(axes[0, 1], retention)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"bins_mid": mids, **{k: v for k, v in curves.items()}}


def _plot_retention(ax, r: dict) -> None:
    """Cumulative expected value over doing nothing (ours and risk targeting at the same reserved budget) and
    cumulative spend, week by week, with the cap."""
    weeks = np.arange(1, len(r["incremental_by_round"]) + 1)
    ax.plot(weeks, np.cumsum(r["incremental_by_round"]), marker="o", color="tab:green",
            label="retained value over doing nothing (expected, net of cost)")
    ax.axhline(0.0, color="grey", lw=1, label="doing nothing")
    if r.get("risk_top_by_round"):
        ax.plot(weeks, np.cumsum(r["risk_top_by_round"]), marker="o", ls="--", color="tab:brown",
                label="risk targeting, same budget (coupon_5 to the highest true churn risk)")
    ax.plot(weeks, np.cumsum(r["reserved_by_round"]), marker="s", color="tab:orange", label="budget reserved")
    ax.plot(weeks, np.cumsum(r["spend_by_round"]), marker="^", color="tab:red", label="spend paid")
    ax.plot(weeks, weeks * r["budget_per_period"], ls="--", color="tab:orange", alpha=0.6, label="cap (cumulative)")
    ax.set_xticks(weeks)
    ax.set_xlabel("week of the live retention world (held-out segments)")
    ax.set_ylabel("cumulative value / spend")
    ax.set_title("retention: value and spend against doing nothing")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def cleanup(settings: Settings, prefix: str, paths: list[Path]) -> tuple[int, list[Path]]:
    """Delete the topics whose names start with ``prefix`` and the ``paths``; returns what went."""
    admin = AdminClient(client_config(settings.kafka))
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    deleted = 0
    for future in (admin.delete_topics(names, operation_timeout=30).values() if names else []):
        try:
            future.result(30)
            deleted += 1
        except Exception:  # already gone, or the broker refused: the run's data is small either way
            pass
    removed = [p for p in paths if p.exists()]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return deleted, removed


def run_demo(settings: Settings, duration_s: float = 90.0, rate: float = 400.0,
             out_dir: Path = Path("reports/demo"), train_seconds: float = 60.0, keep: bool = False) -> dict:
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

    from policy.artifact import PolicyArtifact

    served = PolicyArtifact.load(s.policy.artifact)  # in memory: the directory may be cleaned up below

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
    last_line = [0.0]
    try:
        retention_thread.start()
        with Live(console=console, refresh_per_second=2) as live:
            def on_tick(stats: LiveStats) -> None:
                read_stats(0)
                live.update(_view(stats, merged(reports), retention_view[0], s.ads.value_weight))
                if not console.is_terminal and time.monotonic() - last_line[0] >= 10.0:
                    last_line[0] = time.monotonic()
                    console.print(progress_line(stats, merged(reports), retention_view[0], s.ads.value_weight),
                                  soft_wrap=True)

            summary = run_live(s, LiveConfig(rate=rate, duration_s=duration_s, segments="heldout"),
                               on_tick=on_tick)
            retention_thread.join(timeout=duration_s)
            read_stats(1.0)
    finally:
        stats_consumer.close()
        for w in workers:
            w.stop()
        if not keep:
            n, removed = cleanup(s, f"demo-{tag}", [s.store.data_dir, s.policy.artifact.parent])
            console.print(f"  cleaned up: {n} topics, {', '.join(str(p) for p in removed) or 'no directories'} "
                          "(--keep keeps them)")

    console.rule("[bold]4. report")
    per_segment = max(summary["series"]["seg_rank"], default=0) + 1
    t_ref = time.perf_counter()
    reference = replay_reference(served, per_segment)
    console.print(f"  offline replay of meta prior vs learning from scratch, {per_segment} decisions per held-out "
                  f"segment, in {time.perf_counter() - t_ref:.0f}s")
    curves = _plot(summary, out_dir / "report.png", retention_result or None, reference)
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
        "replay_meta_mean_ctr": float(np.mean(reference["meta"])),
        "replay_scratch_mean_ctr": float(np.mean(reference["scratch"])),
        "oracle_reference": float(np.mean(series["exp_oracle"])),
        "curves": curves,
        "worker_counters": merged(reports).get("counters", {}),
        "artifact": str(s.policy.artifact) if keep else None,
        "retention": retention_result or None,
    })
    if retention_result:
        r = retention_result
        recomputed = (r["expected_value_policy"] - r["expected_cost_policy"]) - (
            r["expected_value_nothing"] - r["expected_cost_nothing"])
        r["incremental_value_check"] = {
            "formula": "(expected_value_policy - expected_cost_policy) - (expected_value_nothing - expected_cost_nothing)",
            "recomputed": round(recomputed, 2),
            "sum_of_rounds": round(sum(r["incremental_by_round"]), 2)}
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
