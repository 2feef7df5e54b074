"""``metacart bench <name>``: the benchmarks, each printing a table and writing JSON with ``--out``.

The benchmark code lives in ``metacart.bench``; each command imports its module only when it runs, so
``metacart --help`` stays fast and a serving install without torch can still run the stream benchmarks.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from metacart.console import connected, need_training_extra
from metacart.exceptions import UserError
from streams.settings import Settings

bench = typer.Typer(no_args_is_help=True, help="Benchmarks (results as a table and JSON).")

REPO = Path(__file__).resolve().parents[1]


@bench.command("kernels")
def bench_kernels(out: Optional[Path] = typer.Option(None, help="JSON output")) -> None:
    """One decision + one posterior update, numba vs numpy; batched decisions/s."""
    from metacart.bench.kernels import run

    run(out=out)


@bench.command("adapt")
def bench_adapt(
    quick: bool = typer.Option(False, help="fewer segments and decisions"),
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    plot: Optional[Path] = typer.Option(None, help="PNG of regret curves (and STEM-worlds.png: lift per window)"),
    seed: int = typer.Option(0),
    artifact: Optional[Path] = typer.Option(None, help="use this artifact for the market instead of training one"),
    worlds: str = typer.Option("market,recsys,logistic",
                               help="world families to play besides the market regret table (comma list, or none)"),
    cache_dir: Path = typer.Option(REPO / "reports" / "bench-cache",
                                   help="trained artifacts are cached here (keyed by world, sizes, seed, code)"),
    no_cache: bool = typer.Option(False, help="train every artifact afresh, do not read or write the cache"),
    dp_epsilon: Optional[str] = typer.Option(
        None, "--dp-epsilon", help="instead: the DP cost table, regret of artifacts trained with these segment-level "
        "epsilons (comma list, e.g. 1,4,8) and without DP, on --worlds (default here market,logistic)"),
) -> None:
    """Regret on held-out segments (meta vs scratch, pooled, random, oracle), then every world family
    against a practitioner's baselines (lift = fraction of the random->oracle gap, paired 95 % CIs)."""
    need_training_extra("bench adapt")
    from metacart.bench.adapt import run
    from metacart.bench.worlds import WORLDS

    chosen = [] if worlds.strip().lower() == "none" else [w.strip() for w in worlds.split(",") if w.strip()]
    bad = [w for w in chosen if w not in WORLDS]
    if bad:
        typer.echo(f"error: unknown world {bad[0]!r}; choose from {', '.join(WORLDS)} or none", err=True)
        raise typer.Exit(2)
    if dp_epsilon is not None:
        from metacart.bench.adapt import run_dp

        try:
            levels = [float(x) for x in dp_epsilon.split(",") if x.strip()]
        except ValueError:
            levels = []
        if not levels or any(not (e > 0 and e < float("inf")) for e in levels):
            raise UserError(f"--dp-epsilon takes positive numbers separated by commas, got {dp_epsilon!r}")
        dp_worlds = chosen if worlds != "market,recsys,logistic" else ["market", "logistic"]
        run_dp(levels, dp_worlds, seed=seed, out=out, cache_dir=None if no_cache else cache_dir)
        return
    run(quick=quick, out=out, plot=plot, seed=seed, artifact=artifact, worlds=chosen,
        cache_dir=None if no_cache else cache_dir)


@bench.command("stream")
def bench_stream(
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    n: Optional[int] = typer.Option(None, min=1000, help="backlog requests (default: ~25 s of the worker's calibrated speed)"),
    load_rate: float = typer.Option(1000.0, min=1.0, help="offered load for the latency run (requests/s)"),
    load_s: float = typer.Option(15.0, min=1.0, help="length of the latency run"),
    baseline: bool = typer.Option(True, help="also run a worker on the Faust data path (ads.data_path=faust)"),
    click_share: float = typer.Option(0.05, min=0.0, max=1.0, help="share of decisions clicked"),
    profile: Optional[Path] = typer.Option(None, help="py-spy the worker on the backlog (collapsed stacks here)"),
) -> None:
    """Worker decisions/s on a pre-produced backlog (worker clock) and latency at a fixed load, against a
    plain-client ceiling on the same backlog."""
    from metacart.bench.stream import run

    run(connected(Settings()), out=out, n=n, load_rate=load_rate, load_s=load_s, baseline=baseline,
        click_share=click_share, profile=profile)


class SoakWorkers(str, Enum):
    """How the soak runs its agents: one worker process with both, or one per agent (as deployed)."""

    one = "one"
    per_agent = "per-agent"


@bench.command("soak")
def bench_soak(
    minutes: float = typer.Option(30.0, min=0.1, help="how long traffic runs"),
    out: Optional[Path] = typer.Option(None, help="JSON output (rewritten after every sample)"),
    sample_s: float = typer.Option(30.0, min=1.0, help="seconds between samples"),
    ad_rate: float = typer.Option(300.0, min=1.0, help="ad requests per second"),
    session_rate: float = typer.Option(100.0, min=0.0, help="retention session events per second"),
    ad_generations: int = typer.Option(0, min=0, help="ad requests pick among this many latest segment "
                                       "generations (0: all so far)"),
    ads_segment_ttl_s: Optional[float] = typer.Option(
        None, min=0.0, help="the worker's ads.segment_idle_ttl_s (event seconds; a soak minute is an event hour)"),
    retention_segment_ttl_s: Optional[float] = typer.Option(
        None, min=0.0, help="the worker's retention.segment_idle_ttl_s (event seconds; a soak minute is two "
        "event days)"),
    workers: SoakWorkers = typer.Option(SoakWorkers.one, help="one worker with both agents, or one per agent "
                                        "(the layout docker-compose.yml deploys)"),
) -> None:
    """A worker with ads and retention under traffic where new users and segments keep arriving: RSS, state,
    p99 latency, decisions/s and dead letters every SAMPLE_S seconds."""
    from metacart.bench.soak import SoakConfig, ensure_artifacts, run

    settings = ensure_artifacts(connected(Settings()))
    run(settings, SoakConfig(minutes=minutes, sample_s=sample_s, ad_rate=ad_rate, session_rate=session_rate,
                             ad_generations=ad_generations, ads_segment_ttl_s=ads_segment_ttl_s,
                             retention_segment_ttl_s=retention_segment_ttl_s,
                             workers=workers.value.replace("-", "_")), out=out)


@bench.command("retention-records")
def bench_retention_records(
    days: float = typer.Option(11.0, min=0.1, help="simulated days of the soak's retention traffic"),
    out: Optional[Path] = typer.Option(None, help="JSON output"),
) -> None:
    """Changelog records the retention engine writes per action, offline (the engine fed from memory)."""
    from metacart.bench.retention_records import RecordsConfig, run

    run(RecordsConfig(days=days), out=out)


@bench.command("edge")
def bench_edge(
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    n: int = typer.Option(5000, min=1, help="calls per timed round"),
    repeats: int = typer.Option(7, min=1, help="timed rounds (the median is reported)"),
) -> None:
    """Per-message CPU cost at the edge: decoding (pydantic before, msgspec now) and encoding decisions."""
    from metacart.bench.edge import run

    run(out=out, n=n, repeats=repeats)


@bench.command("retention")
def bench_retention(
    quick: bool = typer.Option(False),
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    seed: int = typer.Option(0),
) -> None:
    """Incremental retained value at equal spend: ours vs risk_top, random, oracle."""
    need_training_extra("bench retention")
    from metacart.bench.retention import run

    run(quick=quick, out=out, seed=seed)


@bench.command("ope")
def bench_ope(
    quick: bool = typer.Option(False, help="30 logs of 1,000 rows instead of 200 of 2,000"),
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    seed: int = typer.Option(0),
    n_logs: Optional[int] = typer.Option(None, help="logs per logging policy (overrides the preset)"),
) -> None:
    """Coverage, bias and RMSE of every off-policy estimator on simulator logs with known true values."""
    from metacart.bench.ope import run

    run(quick=quick, out=out, seed=seed, n_logs=n_logs)


@bench.command("logs")
def bench_logs(
    rows: int = typer.Option(10_000_000, help="simulated rows in the v2 log"),
    path: Path = typer.Option(Path("var/bench-logs"), help="where the log is written (removed afterwards)"),
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    keep: bool = typer.Option(False, help="keep the log"),
) -> None:
    """Write, read and evaluate a large simulated v2 log: rows/s, bytes/row and peak RSS per phase."""
    from metacart.bench.logscale import run

    run(rows, path, out=out, keep=keep)


@bench.command("chaos")
def bench_chaos(
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    faults: str = typer.Option("kill9x3,rebalance_sigterm,rebalance_sigkill,broker_restart",
                               help="comma-separated faults of kill9x3, rebalance_sigterm, rebalance_sigkill, "
                               "rebalance_chain, broker_restart (stops the local broker launcher's broker), "
                               "retention_kill9x3, retention_rebalance_sigterm, retention_rebalance_sigkill, "
                               "retention_rebalance_chain, retention_broker_restart (the retention agent)"),
    rate: float = typer.Option(1000.0, help="offered ad requests per second (the retention faults offer "
                               "their own 400 sessions/s)"),
    workdir: Path = typer.Option(Path("var/bench-chaos"), help="worker data directories and logs"),
) -> None:
    """Faults injected into real workers under load: requests without / with several decisions, clicks lost / doubled."""
    from metacart.bench.chaos import FAULTS, ChaosConfig, run
    from metacart.demo import ensure_artifact
    from streams.pseudonyms import with_run_key

    chosen = [f.strip() for f in faults.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown or not chosen:
        raise typer.BadParameter(f"unknown fault(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FAULTS)}",
                                 param_hint="--faults")
    settings = with_run_key(connected(Settings()))
    ensure_artifact(settings.policy.artifact)
    if any(f.startswith("retention_") for f in chosen) and not Path(settings.retention.artifact).exists():
        built = workdir / "retention-artifact"
        if not built.exists():
            from policy.retention.train import build_artifacts

            build_artifacts(built, max_seconds=20.0, seed=0)
        settings.retention.artifact = built
    run(settings, chosen, workdir, out=out, cfg=ChaosConfig(rate=rate))


@bench.command("all")
def bench_all(
    out_dir: Path = typer.Option(Path("reports"), help="one JSON per benchmark goes here"),
    quick: bool = typer.Option(False, help="the quick variants of adapt and retention"),
) -> None:
    """Every benchmark in turn (kernels, adapt, retention, stream), writing OUT_DIR/bench-<name>.json."""
    need_training_extra("bench all")
    from metacart.bench import adapt, kernels, retention, stream

    settings = connected(Settings())
    out_dir.mkdir(parents=True, exist_ok=True)
    kernels.run(out=out_dir / "bench-kernels.json")
    adapt.run(quick=quick, out=out_dir / "bench-adapt.json", plot=out_dir / "bench-adapt.png")
    retention.run(quick=quick, out=out_dir / "bench-retention.json")
    stream.run(settings, out=out_dir / "bench-stream.json")
    typer.echo(f"wrote {', '.join(sorted(p.name for p in out_dir.glob('bench-*')))} to {out_dir}")
