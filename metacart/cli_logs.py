"""``metacart logs …``: logged-bandit data written, imported and exported (formats in ``policy/logs.py`` and
``policy/logformat/``)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from streams.settings import Settings

logs_app = typer.Typer(help="Logged-bandit data: simulate, import, export (formats in policy/logs.py, "
                             "policy/logformat).")


@logs_app.callback(invoke_without_command=True)
def logs(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, help="output: an .npz file (v1) or, with --format v2, a directory"),
    n_per_segment: int = typer.Option(2000, help="logged decisions per training segment"),
    seed: int = typer.Option(0),
    value_weight: float = typer.Option(0.0, help="reward = click + value_weight * purchase value"),
    fmt: str = typer.Option("npz", "--format", help="npz (v1) | v2 (Parquet + item table)"),
) -> None:
    """Write simulator logs (uniform logging policy) for the training segments; or run a subcommand."""
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise typer.BadParameter("give --out PATH (or a subcommand: import-obd, export)")
    from policy.simulator.market import Market

    market = Market()
    if fmt == "v2":
        from policy.logformat.simulated import simulate_v2

        n = n_per_segment * len(market.train_segments)
        simulate_v2(market, market.train_segments, n, seed, out, value_weight=value_weight)
        typer.echo(f"wrote {n} rows over {len(market.train_segments)} segments to {out} (v2)")
        return
    if fmt != "npz":
        raise typer.BadParameter(f"--format must be npz or v2, got {fmt!r}")
    from policy.logs import write_logs
    from policy.simulator.datasets import simulate_logs

    data = simulate_logs(market, market.train_segments, n_per_segment, seed, value_weight=value_weight)
    write_logs(out, data)
    typer.echo(f"wrote {len(data.reward)} rows over {len(market.train_segments)} segments to {out}")


@logs_app.command("import-obd")
def logs_import_obd(
    directory: Path = typer.Argument(..., help="an Open Bandit Dataset campaign directory, or a folder of them"),
    out: Path = typer.Option(..., help="v2 log directory to write"),
) -> None:
    """Import the Open Bandit Dataset's CSV layout (ZOZO Research, CC BY 4.0) into log format v2."""
    from policy.exceptions import LogFormatError
    from policy.logformat.obd import import_obd
    from policy.logformat.reader import LogReader

    try:
        import_obd(directory, out)
    except (LogFormatError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    log = LogReader(out)
    size = sum(f.stat().st_size for f in out.iterdir())
    typer.echo(f"wrote {log.n_rows} rows, {len(log.segment_names)} segments, up to {log.max_k} candidates, "
               f"{size / log.n_rows:.1f} bytes/row to {out}")


@logs_app.command("export")
def logs_export(
    out: Path = typer.Option(..., help="v2 log directory to write"),
    since: Optional[datetime] = typer.Option(None, help="keep decisions whose request time is >= this (UTC)"),
    until: Optional[datetime] = typer.Option(None, help="keep decisions whose request time is < this (UTC)"),
    value_weight: float = typer.Option(0.0, help="reward = click + value_weight * purchase value"),
) -> None:
    """Join ad-decisions with their requests and feedback over the attribution window into log format v2."""
    from streams.export import export_ads

    def aware(t: Optional[datetime]) -> Optional[datetime]:
        return None if t is None or t.tzinfo else t.replace(tzinfo=timezone.utc)

    from streams.pseudonyms import PrivacyConfigError

    try:
        summary = export_ads(Settings(), out, since=aware(since), until=aware(until), value_weight=value_weight)
    except (ValueError, PrivacyConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {summary.rows} decisions ({summary.clicks} clicked, {summary.purchases} purchases; "
               f"{summary.open} still inside their window, {summary.no_request} without a request, "
               f"{summary.duplicate_decisions} duplicates skipped) over {summary.items} ads to {out}")
