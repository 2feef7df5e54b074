"""The one command line: ``metacart <subcommand>``.

Process-wide settings come from ``streams.settings.Settings`` (environment variables ``METACART_…``;
``metacart settings`` prints them with their variable names). Options here cover what a person changes
per run. Torch is imported only by ``train`` and the benchmarks that train.

User mistakes end in one line on stderr and exit code 2 (``--debug`` adds the traceback); see
``metacart.console``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from enum import Enum
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Optional

import typer
from pydantic import BaseModel

from metacart.console import finite, run_cli, setting_variables, unknown_variables
from metacart.exceptions import UserError
from streams.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="metacart: Kafka + Faust agents serving a meta-learned, per-segment adapted policy.")
bench = typer.Typer(no_args_is_help=True, help="Benchmarks (results as a table and JSON).")
app.add_typer(bench, name="bench")

REPO = Path(__file__).resolve().parents[1]


class Kind(str, Enum):
    """Which policy: ad placement or churn intervention."""

    ads = "ads"
    retention = "retention"


class OnSwap(str, Enum):
    keep = "keep"
    reset = "reset"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Segments(str, Enum):
    heldout = "heldout"
    train = "train"
    all = "all"


class BrokerAction(str, Enum):
    start = "start"
    stop = "stop"
    status = "status"
    restart = "restart"


def _version() -> str:
    try:
        return package_version("metacart")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"metacart {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="print the version and exit"),
    debug: bool = typer.Option(False, "--debug", help="show the traceback of an error, not just its line"),
) -> None:
    """metacart: Kafka + Faust agents serving a meta-learned, per-segment adapted policy."""
    for warning in unknown_variables(os.environ, setting_variables(Settings)):
        typer.echo(f"metacart: warning: {warning}", err=True)


def _need_training_extra(command: str) -> None:
    """One line instead of an ImportError when a serving-only install runs a command that trains."""
    from importlib.util import find_spec

    missing = [m for m in ("torch", "matplotlib") if find_spec(m) is None]
    if missing:
        raise UserError(f"`metacart {command}` needs {' and '.join(missing)}, which a serving install leaves "
                        "out: pip install 'metacart[train]'")


def _connected(settings: Settings) -> Settings:
    """``settings`` once a broker answers at its address (one-line error within ``broker_wait_s``)."""
    from streams.kafka_io import wait_for_broker

    wait_for_broker(settings.kafka, timeout_s=settings.broker_wait_s)
    return settings


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
def broker(action: BrokerAction = typer.Argument(..., help="what to do with the local broker")) -> None:
    """Run the local single-node Kafka broker (deploy/kafka/broker.sh, in a source checkout)."""
    script = REPO / "deploy" / "kafka" / "broker.sh"
    if not script.is_file():
        raise UserError(f"no broker launcher at {script}: `metacart broker` runs from a source checkout; "
                        "elsewhere point METACART_KAFKA__BOOTSTRAP at your Kafka cluster")
    raise typer.Exit(subprocess.call([str(script), action.value]))


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
    kind: Kind = typer.Option(Kind.ads, help="ads: meta-policy from logged bandit data; retention: churn-risk "
                              "model and uplift prior from the retention simulator"),
    logs_path: Optional[Path] = typer.Option(None, "--logs", help="ads: logged-bandit .npz to train on"),
    simulate: bool = typer.Option(False, help="ads: train on fresh simulator logs instead of --logs"),
    n_per_segment: int = typer.Option(1000, help="with --simulate: logged rows per training segment"),
    epochs: int = typer.Option(40, min=1, help="ads: training epochs"),
    max_seconds: Optional[float] = typer.Option(None, min=0.1, help="stop training after this long "
                                                "(retention: default 60)"),
    device: Device = typer.Option(Device.auto, help="ads: torch device (auto = cuda when available)"),
    seed: int = typer.Option(0),
    version: Optional[str] = typer.Option(None, help="ads: artifact version (default: derived)"),
) -> None:
    """Train a policy (torch) and write a versioned artifact directory that workers load without torch."""
    _need_training_extra("train")
    if kind is Kind.retention:
        if logs_path is not None or simulate:
            raise UserError("--logs and --simulate are for --kind ads; retention trains on its own simulator")
        from policy.retention.train import build_artifacts

        build_artifacts(out, max_seconds=60.0 if max_seconds is None else max_seconds, seed=seed)
        typer.echo(f"retention artifact written to {out}")
        return
    from policy.train import TrainConfig, train as train_policy

    if (logs_path is None) == (not simulate):
        raise typer.BadParameter("give exactly one of --logs PATH or --simulate")
    if logs_path is not None and not logs_path.is_file():
        raise UserError(f"no logged-bandit file at {logs_path} (write one with `metacart logs --out FILE`)")
    if simulate:
        from policy.simulator.datasets import simulate_logs
        from policy.simulator.market import Market

        market = Market()
        data = simulate_logs(market, market.train_segments, n_per_segment, seed)
    else:
        data = logs_path
    config = TrainConfig(epochs=epochs, max_seconds=max_seconds, device=device.value, seed=seed, version=version)

    def progress(p: dict) -> None:
        typer.echo(f"epoch {int(p['epoch']):3d}  train nll {p['train_nll']:.4f}  "
                   f"held-out nll {p['heldout_nll']:.4f}  {p['elapsed_s']:.1f}s")

    artifact = train_policy(data, config, out_dir=out, progress=progress)
    typer.echo(f"artifact {artifact.version} written to {out}")


@app.command()
def worker() -> None:
    """Run a worker (Faust) until interrupted. Configure with METACART_* variables (`metacart settings`)."""
    from streams.worker import run

    run(Settings())


@app.command()
def status(
    decisions: int = typer.Option(20000, min=1, help="how many of the newest decisions to summarise per segment"),
    segments: int = typer.Option(10, min=1, help="segments shown in the table"),
    as_json: bool = typer.Option(False, "--json", help="print the whole state as JSON instead of tables"),
) -> None:
    """What the running system is doing: workers, consumer groups and lag, what each segment has learned."""
    from metacart.status import collect, render

    state = collect(_connected(Settings()), decisions=decisions)
    if as_json:
        typer.echo(json.dumps(finite(state), indent=2, allow_nan=False))
    else:
        render(state, segments=segments)


@app.command("publish-policy")
def publish_policy(
    artifact: Path = typer.Option(..., help="artifact directory every worker can read"),
    version: Optional[str] = typer.Option(None, help="version to announce (default: the artifact's)"),
    on_swap: OnSwap = typer.Option(OnSwap.keep, help="what happens to segment posteriors learned so far"),
    kind: Kind = typer.Option(Kind.ads, help="the policy the artifact is for (checked against the artifact)"),
) -> None:
    """Tell every ad worker to hot-swap to --artifact (rollback = publish the old one again).

    The artifact is loaded and its kind checked first. Ad workers hot-swap to an ads update; retention
    workers do not hot-swap: they log a warning and count it (restart them with
    METACART_RETENTION__ARTIFACT pointing at the new artifact).
    """
    from streams.control import artifact_version, publish_policy_update

    checked = artifact_version(artifact, kind.value)  # the wrong kind fails here, before any I/O
    version = version or checked
    v = publish_policy_update(_connected(Settings()), artifact, version, on_swap.value, kind.value, check=False)
    typer.echo(f"published {kind.value} policy {v} from {artifact}")


@app.command()
def simulate(
    rate: float = typer.Option(500.0, help="ad requests per second (wall clock)"),
    duration_s: float = typer.Option(60.0, help="how long to run"),
    speed: float = typer.Option(60.0, help="event-time seconds per wall-clock second"),
    seed: int = typer.Option(0),
    segments: Segments = typer.Option(Segments.heldout, help="which market segments send requests"),
) -> None:
    """Run the market live against the worker: requests out, decisions in, clicks and purchases back.

    Prints a JSON summary (values that could not be measured are null). Exit code 1 when no worker
    answered.
    """
    from streams.live import LiveConfig, run_live

    summary = run_live(_connected(Settings()), LiveConfig(rate=rate, duration_s=duration_s, speed=speed,
                                                          seed=seed, segments=segments.value))
    summary.pop("series")
    summary.pop("latencies_ms")
    typer.echo(json.dumps(finite(summary), indent=2, allow_nan=False))
    if summary["requests_sent"] and not summary["decisions"]:
        typer.echo("metacart: no decision came back: is a worker running against this broker and topic prefix "
                   "(`metacart worker`, METACART_KAFKA__TOPIC_PREFIX)?", err=True)
        raise typer.Exit(1)


@app.command()
def demo(
    duration_s: float = typer.Option(90.0, help="length of the live phase"),
    rate: float = typer.Option(400.0, help="ad requests per second"),
    out_dir: Path = typer.Option(Path("reports/demo"), help="where the report goes"),
    train_seconds: float = typer.Option(60.0, help="time box of the meta-training step"),
    keep: bool = typer.Option(False, help="keep the run's topics, worker state and artifacts (deleted by default)"),
) -> None:
    """The closed loop: train small policies, start two workers (ads, retention), run both worlds live, report."""
    _need_training_extra("demo")
    from metacart.demo import run_demo

    run_demo(_connected(Settings()), duration_s=duration_s, rate=rate, out_dir=out_dir, train_seconds=train_seconds,
             keep=keep)


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
    _need_training_extra("bench adapt")
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

    run(_connected(Settings()), out=out, n=n, load_rate=load_rate, load_s=load_s)


@bench.command("retention")
def bench_retention(
    quick: bool = typer.Option(False),
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    seed: int = typer.Option(0),
) -> None:
    """Incremental retained value at equal spend: ours vs risk_top, random, oracle."""
    _need_training_extra("bench retention")
    from metacart.bench.retention import run

    run(quick=quick, out=out, seed=seed)


@bench.command("all")
def bench_all(
    out_dir: Path = typer.Option(Path("reports"), help="one JSON per benchmark goes here"),
    quick: bool = typer.Option(False, help="the quick variants of adapt and retention"),
) -> None:
    """Every benchmark in turn (kernels, adapt, retention, stream), writing OUT_DIR/bench-<name>.json."""
    _need_training_extra("bench all")
    from metacart.bench import adapt, kernels, retention, stream

    settings = _connected(Settings())
    out_dir.mkdir(parents=True, exist_ok=True)
    kernels.run(out=out_dir / "bench-kernels.json")
    adapt.run(quick=quick, out=out_dir / "bench-adapt.json", plot=out_dir / "bench-adapt.png")
    retention.run(quick=quick, out=out_dir / "bench-retention.json")
    stream.run(settings, out=out_dir / "bench-stream.json")
    typer.echo(f"wrote {', '.join(sorted(p.name for p in out_dir.glob('bench-*')))} to {out_dir}")


def main(argv: list[str] | None = None) -> int:
    """The console script: ``metacart`` with the error policy of ``metacart.console``."""
    return run_cli(app, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
