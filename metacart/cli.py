"""The one command line: ``metacart <subcommand>``.

Process-wide settings come from ``streams.settings.Settings`` (environment variables ``METACART_…``;
``metacart settings`` prints them with their variable names). Options here cover what a person changes
per run. Torch is imported only by ``train`` and the benchmarks that train.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import BaseModel

from streams.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="metacart: Kafka + Faust agents serving a meta-learned, per-segment adapted policy.")
bench = typer.Typer(no_args_is_help=True, help="Benchmarks (results as a table and JSON).")
app.add_typer(bench, name="bench")

REPO = Path(__file__).resolve().parents[1]


@app.command()
def settings() -> None:
    """Print the effective settings and the environment variable behind each."""
    s = Settings()

    def walk(prefix: str, model: object) -> None:
        for name, value in model:  # type: ignore[attr-defined]
            env = f"{prefix}{name.upper()}"
            if isinstance(value, BaseModel):
                walk(env + "__", value)
            else:
                typer.echo(f"{env}={value}")

    walk("METACART_", s)


@app.command()
def broker(action: str = typer.Argument(..., help="start | stop | status | restart")) -> None:
    """Run the local single-node Kafka broker (deploy/kafka/broker.sh)."""
    raise typer.Exit(subprocess.call([str(REPO / "deploy" / "kafka" / "broker.sh"), action]))


@app.command()
def schema(out: Path = typer.Option(Path("schemas"), help="directory for one JSON Schema per payload")) -> None:
    """Write JSON Schema of every event, for producers written in other languages."""
    from streams.topics import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, sch in json_schemas().items():
        (out / f"{name}.schema.json").write_text(json.dumps(sch, indent=2))
        typer.echo(f"wrote {out / f'{name}.schema.json'}")


@app.command()
def logs(
    out: Path = typer.Option(..., help="output .npz in the documented logged-bandit layout"),
    n_per_segment: int = typer.Option(2000, help="logged decisions per training segment"),
    seed: int = typer.Option(0),
    value_weight: float = typer.Option(0.0, help="reward = click + value_weight * purchase value"),
) -> None:
    """Write simulator logs (uniform logging policy) for the training segments."""
    from policy.logs import write_logs
    from policy.simulator.datasets import simulate_logs
    from policy.simulator.market import Market

    market = Market()
    data = simulate_logs(market, market.train_segments, n_per_segment, seed, value_weight=value_weight)
    write_logs(out, data)
    typer.echo(f"wrote {len(data.reward)} rows over {len(market.train_segments)} segments to {out}")


@app.command()
def train(
    out: Path = typer.Option(..., help="artifact directory to write"),
    logs_path: Optional[Path] = typer.Option(None, "--logs", help="logged-bandit .npz to train on"),
    simulate: bool = typer.Option(False, help="train on fresh simulator logs instead of --logs"),
    n_per_segment: int = typer.Option(1000, help="with --simulate: logged rows per training segment"),
    epochs: Optional[int] = typer.Option(None, help="maximum epochs (TrainConfig.epochs)"),
    max_seconds: Optional[float] = typer.Option(None, help="stop training after this long"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    seed: Optional[int] = typer.Option(None, help="seed of the split, batches and initialisation"),
    version: Optional[str] = typer.Option(None, help="artifact version (default: derived)"),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="JSON or TOML file of TrainConfig settings (any field of policy.train_config)"),
    set_values: list[str] = typer.Option(
        [], "--set", help="KEY=VALUE for any TrainConfig field, e.g. --set likelihood=bernoulli "
        "--set explore_scales=[1,0.5]; applied after --config, before the flags above"),
    allow_no_gain: bool = typer.Option(
        False, "--allow-no-gain", help="write the artifact even when it does not beat its held-out baselines"),
) -> None:
    """Meta-train phi and the segment prior (torch), check it on held-out segments, write the artifact.

    Training compares the adapted model on segments it never saw with its own initialisation, a pooled
    logistic regression, the prior mean alone and the base rate. When it does not beat all of them it says
    so, writes nothing and exits 1, unless --allow-no-gain.
    """
    from policy.train import train as train_policy
    from policy.train_config import TrainingError, config_from_file, config_from_mapping

    if (logs_path is None) == (not simulate):
        raise typer.BadParameter("give exactly one of --logs PATH or --simulate")
    try:
        values = config_from_file(config_file) if config_file is not None else {}
        for item in set_values:
            key, sep, value = item.partition("=")
            if not sep:
                raise TrainingError(f"--set takes KEY=VALUE, got {item!r}")
            values[key.strip()] = value
        flags = {"epochs": epochs, "max_seconds": max_seconds, "device": device, "seed": seed, "version": version}
        values.update({k: v for k, v in flags.items() if v is not None})
        config = config_from_mapping(values)
        if simulate:
            from policy.simulator.datasets import simulate_logs
            from policy.simulator.market import Market

            market = Market()
            data = simulate_logs(market, market.train_segments, n_per_segment, config.seed)
        else:
            data = logs_path

        def progress(p: dict) -> None:
            typer.echo(f"epoch {int(p['epoch']):3d}  train nll {p['train_nll']:.4f}  "
                       f"held-out nll {p['heldout_nll']:.4f}  {p['elapsed_s']:.1f}s")

        artifact = train_policy(data, config, progress=progress)
    except (TrainingError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    report = artifact.meta.report
    for line in report.get("summary", []):
        typer.echo(f"held-out check: {line}")
    evidence = artifact.meta.serving.evidence
    if evidence:
        typer.echo(f"exploration: scale {artifact.meta.serving.scale:g} (reference {evidence['reference_scale']:g}; "
                   f"{evidence['rule']})")
    if report and not report.get("learned", False):
        typer.echo("training did NOT learn anything that beats its baselines on held-out segments.", err=True)
        if not allow_no_gain:
            typer.echo(f"nothing written to {out}; rerun with --allow-no-gain to write it anyway.", err=True)
            raise typer.Exit(1)
        typer.echo("--allow-no-gain: writing it anyway.", err=True)
    artifact.save(out)
    typer.echo(f"artifact {artifact.version} written to {out}")


@app.command()
def worker() -> None:
    """Run a worker (Faust) until interrupted. Configure with METACART_* variables."""
    from streams.worker import run

    run(Settings())


@app.command("publish-policy")
def publish_policy(
    artifact: Path = typer.Option(..., help="artifact directory every worker can read"),
    version: Optional[str] = typer.Option(None, help="version to announce (default: the artifact's)"),
    on_swap: str = typer.Option("keep", help="keep | reset segment posteriors"),
    kind: str = typer.Option("ads", help="ads | retention"),
) -> None:
    """Tell every worker to hot-swap to ARTIFACT (rollback = publish the old one again)."""
    from streams.control import publish_policy_update

    v = publish_policy_update(Settings(), artifact, version, on_swap, kind)
    typer.echo(f"published {kind} policy {v} from {artifact}")


@app.command()
def simulate(
    rate: float = typer.Option(500.0, help="ad requests per second (wall clock)"),
    duration_s: float = typer.Option(60.0, help="how long to run"),
    speed: float = typer.Option(60.0, help="event-time seconds per wall-clock second"),
    seed: int = typer.Option(0),
    segments: str = typer.Option("heldout", help="heldout | train | all"),
) -> None:
    """Run the market live against the worker: requests out, decisions in, clicks and purchases back."""
    from streams.live import LiveConfig, run_live

    summary = run_live(Settings(), LiveConfig(rate=rate, duration_s=duration_s, speed=speed, seed=seed,
                                              segments=segments))
    summary.pop("series")
    summary.pop("latencies_ms")
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def demo(
    duration_s: float = typer.Option(90.0, help="length of the live phase"),
    rate: float = typer.Option(400.0, help="ad requests per second"),
    out_dir: Path = typer.Option(Path("reports/demo"), help="where the report goes"),
    train_seconds: float = typer.Option(60.0, help="time box of the meta-training step"),
) -> None:
    """The closed loop: train a small meta-policy, start a worker, run the market live, report."""
    from metacart.demo import run_demo

    run_demo(Settings(), duration_s=duration_s, rate=rate, out_dir=out_dir, train_seconds=train_seconds)


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
) -> None:
    """Regret on held-out segments (meta vs scratch, pooled, random, oracle), then every world family
    against a practitioner's baselines (lift = fraction of the random->oracle gap, paired 95 % CIs)."""
    from metacart.bench.adapt import run
    from metacart.bench.worlds import WORLDS

    chosen = [] if worlds.strip().lower() == "none" else [w.strip() for w in worlds.split(",") if w.strip()]
    bad = [w for w in chosen if w not in WORLDS]
    if bad:
        typer.echo(f"error: unknown world {bad[0]!r}; choose from {', '.join(WORLDS)} or none", err=True)
        raise typer.Exit(2)
    run(quick=quick, out=out, plot=plot, seed=seed, artifact=artifact, worlds=chosen,
        cache_dir=None if no_cache else cache_dir)


@bench.command("stream")
def bench_stream(
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    n: int = typer.Option(30000, help="requests for the throughput run"),
    load_rate: float = typer.Option(1000.0, help="offered load for the latency run (requests/s)"),
    load_s: float = typer.Option(15.0, help="length of the latency run"),
) -> None:
    """Worker decisions/s and request→decision latency on the real broker, against a plain-client ceiling."""
    from metacart.bench.stream import run

    run(Settings(), out=out, n=n, load_rate=load_rate, load_s=load_s)


@bench.command("retention")
def bench_retention(
    quick: bool = typer.Option(False),
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    seed: int = typer.Option(0),
) -> None:
    """Incremental retained value at equal spend: ours vs risk_top, random, oracle."""
    from metacart.bench.retention import run

    run(quick=quick, out=out, seed=seed)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
