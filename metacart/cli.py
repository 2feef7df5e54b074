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

from metacart.cli_bench import bench
from metacart.cli_logs import logs_app
from metacart.console import connected, finite, need_training_extra, run_cli, setting_variables, unknown_variables
from metacart.exceptions import UserError
from streams.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="metacart: Kafka + Faust agents serving a meta-learned, per-segment adapted policy.")
app.add_typer(bench, name="bench")
app.add_typer(logs_app, name="logs")

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


@app.command()
def settings(show_secrets: bool = typer.Option(
        False, help="print secrets too (otherwise a comment says which are set)")) -> None:
    """Print the effective settings as environment variables; the output can be fed back as an env file."""
    from streams.settings import settings_items

    for env, value, hidden in settings_items(Settings(), show_secrets=show_secrets):
        if hidden:
            typer.echo(f"# {env} is set (hidden; --show-secrets prints it)")
        elif value is None:
            typer.echo(f"# {env} is unset")
        else:
            typer.echo(f"{env}={value}")


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
def evaluate(
    logs_path: Path = typer.Option(..., "--logs", help="log to evaluate on: a v2 directory or a v1 .npz"),
    policy: list[str] = typer.Option(..., help="target: uniform | scratch_raw | ARTIFACT[@replay] | "
                                              "pooled@ARTIFACT | scratch_phi@ARTIFACT, optionally NAME=SPEC; repeat"),
    out: Optional[Path] = typer.Option(None, help="JSON output"),
    plot: Optional[Path] = typer.Option(None, help="PNG of the estimates with their intervals"),
    reward: Optional[str] = typer.Option(None, help="reward column (default reward, else click)"),
    bootstrap: int = typer.Option(0, help="Poisson-bootstrap replicates (0: asymptotic intervals only)"),
    reference: Optional[str] = typer.Option(None, help="policy the paired differences are taken against"),
    min_ess: float = typer.Option(100.0, help="warn when a policy's effective sample size is below this"),
) -> None:
    """Off-policy estimates (IPS, SNIPS, DM, DR, DR-os) of target policies on logged decisions."""
    from metacart.evaluate import plot_report, print_report, run_evaluation, write_json
    from policy.exceptions import PolicyError
    from policy.ope.targets import ServingParams

    p = Settings().policy
    serving = ServingParams(eps=p.eps, n_draws=p.n_draws, forget=p.forget, scale=p.scale, seed=p.seed)
    try:
        report = run_evaluation(logs_path, policy, reward=reward, serving=serving, n_bootstrap=bootstrap,
                                reference=reference, min_ess=min_ess, show_progress=True)
    except (PolicyError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    print_report(report)
    if out is not None:
        write_json(report, out)
        typer.echo(f"wrote {out}")
    if plot is not None:
        plot_report(report, plot)
        typer.echo(f"wrote {plot}")


@app.command()
def train(
    out: Path = typer.Option(..., help="artifact directory to write"),
    kind: Kind = typer.Option(Kind.ads, help="ads: meta-policy from logged bandit data; retention: churn-risk "
                              "model and uplift prior from the retention simulator"),
    logs_path: Optional[Path] = typer.Option(None, "--logs", help="ads: logged-bandit .npz (v1) or v2 directory"),
    simulate: bool = typer.Option(False, help="ads: train on fresh simulator logs instead of --logs"),
    n_per_segment: int = typer.Option(1000, help="with --simulate: logged rows per training segment"),
    epochs: Optional[int] = typer.Option(None, min=1, help="ads: maximum epochs (TrainConfig.epochs)"),
    max_seconds: Optional[float] = typer.Option(None, min=0.1, help="stop training after this long "
                                                "(retention: default 60)"),
    device: Optional[Device] = typer.Option(None, help="ads: torch device (auto = cuda when available)"),
    seed: Optional[int] = typer.Option(None, help="seed of the split, batches and initialisation"),
    version: Optional[str] = typer.Option(None, help="ads: artifact version (default: derived)"),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="ads: JSON or TOML file of TrainConfig settings (any field of policy.train_config)"),
    set_values: list[str] = typer.Option(
        [], "--set", help="ads: KEY=VALUE for any TrainConfig field, e.g. --set likelihood=bernoulli "
        "--set explore_scales=[1,0.5]; applied after --config, before the flags above"),
    allow_no_gain: bool = typer.Option(
        False, "--allow-no-gain", help="ads: write the artifact even when it does not beat its held-out baselines"),
) -> None:
    """Train a policy (torch) and write a versioned artifact directory that workers load without torch.

    Ads: meta-train phi and the segment prior, then check the model on held-out segments against its own
    initialisation, a pooled logistic regression, the prior mean alone and the base rate. When it does not
    beat all of them it says so, writes nothing and exits 1, unless --allow-no-gain.
    """
    need_training_extra("train")
    if kind is Kind.retention:
        if simulate:
            raise UserError("--simulate is for --kind ads; retention trains on its simulator's randomised "
                            "treatment history, or on --logs in the retention layout")
        if logs_path is not None and not logs_path.exists():
            raise UserError(f"no retention log at {logs_path}")
        _train_retention(out, logs_path, max_seconds, 0 if seed is None else seed)
        return
    from policy.train import train as train_policy
    from policy.exceptions import LogFormatError
    from policy.train_config import TrainingError, config_from_file, config_from_mapping

    if (logs_path is None) == (not simulate):
        raise typer.BadParameter("give exactly one of --logs PATH or --simulate")
    if logs_path is not None and not logs_path.exists():
        raise UserError(f"no logged-bandit file or v2 log directory at {logs_path} "
                        "(write one with `metacart logs --out FILE`)")
    try:
        values = config_from_file(config_file) if config_file is not None else {}
        for item in set_values:
            key, sep, value = item.partition("=")
            if not sep:
                raise TrainingError(f"--set takes KEY=VALUE, got {item!r}")
            values[key.strip()] = value
        flags = {"epochs": epochs, "max_seconds": max_seconds, "device": None if device is None else device.value,
                 "seed": seed, "version": version}
        values.update({k: v for k, v in flags.items() if v is not None})
        config = config_from_mapping(values)
        if simulate:
            from policy.simulator.datasets import simulate_logs
            from policy.simulator.market import Market

            market = Market()
            data = simulate_logs(market, market.train_segments, n_per_segment, config.seed)
        elif logs_path.is_dir():  # a v2 log (policy/logformat): read whole, the trainer holds it in memory
            from policy.logformat.reader import LogReader

            data = LogReader(logs_path).read_all()
        else:
            data = logs_path

        def progress(p: dict) -> None:
            typer.echo(f"epoch {int(p['epoch']):3d}  train nll {p['train_nll']:.4f}  "
                       f"held-out nll {p['heldout_nll']:.4f}  {p['elapsed_s']:.1f}s")

        artifact = train_policy(data, config, progress=progress)
    except (TrainingError, LogFormatError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    report = artifact.meta.report
    for line in report.get("summary", []):
        typer.echo(f"held-out check: {line}")
    dp = artifact.meta.dp
    if dp is not None:
        typer.echo(f"differential privacy per segment: epsilon {dp.epsilon:.3f} (target {dp.target_epsilon:g}), "
                   f"delta {dp.delta:g}; DP-SGD sigma {dp.sgd_noise_multiplier:.3f}, q {dp.sample_rate:g}, "
                   f"steps {dp.steps_run}/{dp.steps}, clip {dp.clip:g}; {dp.stats_releases} one-shot releases "
                   f"at sigma {dp.stats_noise_multiplier:.3f} ({dp.accountant})")
        for line in dp.covered:
            typer.echo(f"  covered: {line}")
        for line in dp.not_covered:
            typer.echo(f"  NOT covered: {line}")
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
    """Run a worker (Faust) until interrupted. Configure with METACART_* variables (`metacart settings`)."""
    from streams.exceptions import StreamsError
    from streams.worker import run

    try:
        run(Settings())
    except StreamsError as exc:  # configuration, credentials, TLS, ACLs: one line, exit code 2
        raise UserError(str(exc)) from None


@app.command()
def forget(user: str = typer.Option(..., help="the user id, as the shop knows it (not the pseudonym)")) -> None:
    """Erase one user's per-user state (retention row, open actions, contact history) in every worker."""
    from pydantic import ValidationError

    from streams.erasure import request_erasure

    try:
        request = request_erasure(Settings(), user)
    except ValidationError:
        raise typer.BadParameter(f"{user!r} is not a valid user id", param_hint="--user") from None
    typer.echo(f"erasure {request.request_id} of user {user} sent; workers delete its state as they read it")


@app.command()
def status(
    decisions: int = typer.Option(20000, min=1, help="how many of the newest decisions to summarise per segment"),
    segments: int = typer.Option(10, min=1, help="segments shown in the table"),
    as_json: bool = typer.Option(False, "--json", help="print the whole state as JSON instead of tables"),
) -> None:
    """What the running system is doing: workers, consumer groups and lag, what each segment has learned."""
    from metacart.status import collect, render

    state = collect(connected(Settings()), decisions=decisions)
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
    gate: Optional[Path] = typer.Option(None, help="recent exported log: publish only if the paired lower "
                                                   "bound of candidate - serving on it is above --margin"),
    serving: Optional[Path] = typer.Option(None, help="with --gate: the serving artifact (default: the last "
                                                      "published one, else METACART_POLICY__ARTIFACT)"),
    margin: float = typer.Option(0.0, help="with --gate: required lower bound of candidate - serving "
                                           "(negative = non-inferiority)"),
    estimator: str = typer.Option("snips", help="with --gate: ips | snips | dm | dr | dr_os"),
    gate_replay: bool = typer.Option(False, help="with --gate: evaluate both adapting by replay, not frozen"),
    min_ess: float = typer.Option(100.0, help="with --gate: refuse when either policy's effective sample "
                                              "size on the log is below this"),
    force: bool = typer.Option(False, help="with --gate: publish even if the gate refuses (and say so)"),
) -> None:
    """Tell every worker of --kind to hot-swap to --artifact (rollback = publish the old one again).

    The artifact is loaded and its kind checked first. With --gate it is evaluated off-policy against the
    serving one on a recent exported log and published only when the paired lower bound clears --margin.
    Ad workers hot-swap to an ads update, retention workers to a retention one (after scoring a probe batch
    on it; a refused artifact is dead-lettered and the serving one stays).
    """
    from streams.control import artifact_version, latest_policy_update, publish_policy_update

    checked = artifact_version(artifact, kind.value)  # the wrong kind fails here, before any I/O
    version = version or checked
    s = connected(Settings())
    record = None
    if gate is not None:
        from metacart.gate import gate_check
        from policy.exceptions import PolicyError
        from policy.ope.targets import ServingParams
        from policy.artifact import PolicyArtifact
        from streams.events import GateRecord

        if kind is not Kind.ads:
            raise typer.BadParameter("--gate evaluates ad policies only (retention logs have no export yet)")
        if serving is None:
            last = latest_policy_update(s, kind.value)
            serving = Path(last.artifact_uri) if last is not None else s.policy.artifact
        p = s.policy
        try:
            result = gate_check(gate, artifact, serving, margin=margin, estimator=estimator, replay=gate_replay,
                                min_ess=min_ess,
                                serving_params=ServingParams(eps=p.eps, n_draws=p.n_draws, forget=p.forget,
                                                             scale=p.scale, seed=p.seed))
            serving_version = PolicyArtifact.load(serving).version
        except (PolicyError, FileNotFoundError, ValueError) as exc:
            typer.echo(f"error: gate could not evaluate: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(result.line())
        for w in result.warnings:
            typer.echo(f"warning: {w}")
        if not result.passed and not force:
            typer.echo(f"refused: {artifact} not published (use --force to publish anyway)")
            raise typer.Exit(1)
        if not result.passed:
            typer.echo("--force: publishing although the gate refused")
        d = result.difference
        record = GateRecord(decision="passed" if result.passed else "forced", estimator=estimator, margin=margin,
                            difference=d["value"], lo=d["lo"], hi=d["hi"], candidate_value=result.candidate["value"],
                            serving_value=result.serving["value"], serving_version=serving_version,
                            ess=result.ess, log_rows=result.rows, log_uri=str(gate.resolve()))
    v = publish_policy_update(s, artifact, version, on_swap.value, kind.value, check=False, gate=record)
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
    from metacart.live.ads import LiveConfig, run_live

    summary = run_live(connected(Settings()), LiveConfig(rate=rate, duration_s=duration_s, speed=speed,
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
    need_training_extra("demo")
    from metacart.demo import run_demo

    run_demo(connected(Settings()), duration_s=duration_s, rate=rate, out_dir=out_dir, train_seconds=train_seconds,
             keep=keep)


def main(argv: list[str] | None = None) -> int:
    """The console script: ``metacart`` with the error policy of ``metacart.console``."""
    return run_cli(app, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
