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
    epochs: int = typer.Option(40),
    max_seconds: Optional[float] = typer.Option(None, help="stop training after this long"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0),
    version: Optional[str] = typer.Option(None, help="artifact version (default: derived)"),
    kind: str = typer.Option("ads", help="ads | retention (retention without --logs: the simulator's "
                                         "randomised treatment history)"),
) -> None:
    """Meta-train phi and the segment prior (torch) and write a versioned artifact."""
    from policy.train import TrainConfig, train as train_policy

    if kind not in ("ads", "retention"):
        raise typer.BadParameter(f"--kind must be ads or retention, got {kind!r}")
    if kind == "retention":
        _train_retention(out, logs_path, max_seconds, seed)
        return
    if (logs_path is None) == (not simulate):
        raise typer.BadParameter("give exactly one of --logs PATH or --simulate")
    if simulate:
        from policy.simulator.datasets import simulate_logs
        from policy.simulator.market import Market

        market = Market()
        data = simulate_logs(market, market.train_segments, n_per_segment, seed)
    else:
        data = logs_path
    config = TrainConfig(epochs=epochs, max_seconds=max_seconds, device=device, seed=seed, version=version)

    def progress(p: dict) -> None:
        typer.echo(f"epoch {int(p['epoch']):3d}  train nll {p['train_nll']:.4f}  "
                   f"held-out nll {p['heldout_nll']:.4f}  {p['elapsed_s']:.1f}s")

    artifact = train_policy(data, config, out_dir=out, progress=progress)
    typer.echo(f"artifact {artifact.version} written to {out}")


def _train_retention(out: Path, logs_path: Optional[Path], max_seconds: Optional[float], seed: int) -> None:
    """``metacart train --kind retention``: a retention artifact directory (risk model + uplift head)."""
    from policy.retention.train import build_artifacts, train_retention

    if logs_path is None:
        path = build_artifacts(out, max_seconds=max_seconds or 60.0, seed=seed)
    else:
        path = train_retention(logs_path, out, max_seconds=max_seconds or 60.0, seed=seed)
    from policy.retention.artifacts import load_artifacts

    art = load_artifacts(path)
    m = art.uplift.meta.metrics
    typer.echo(f"retention artifact {art.version} written to {path}: uplift head d={art.uplift.d}, "
               f"{art.uplift.meta.training_data.n_events} logged decisions, treatment-effect network best epoch "
               f"{int(m.get('effects_best_epoch', -1))}, risk model on {art.risk.meta.get('n_rows', 0)} untreated rows")


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
    plot: Optional[Path] = typer.Option(None, help="PNG of regret curves"),
    seed: int = typer.Option(0),
    artifact: Optional[Path] = typer.Option(None, help="use this artifact instead of training one"),
) -> None:
    """Regret on held-out segments: meta vs scratch, pooled, random, oracle."""
    from metacart.bench.adapt import run

    run(quick=quick, out=out, plot=plot, seed=seed, artifact=artifact)


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
