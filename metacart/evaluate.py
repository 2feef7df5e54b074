"""``metacart evaluate``: off-policy estimates of target policies on a log, as a table, JSON and a plot."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from policy.logformat.reader import open_log
from policy.ope.estimators import ESTIMATORS
from policy.ope.evaluate import MIN_ESS, evaluate_log
from policy.ope.targets import ServingParams, make_target


def run_evaluation(logs: Path, specs: list[str], *, reward: str | None = None, serving: ServingParams = ServingParams(),
                   n_bootstrap: int = 0, chunk_rows: int | None = None, reference: str | None = None,
                   min_ess: float = MIN_ESS, use_reward_model: bool = True,
                   show_progress: bool = False) -> dict[str, Any]:
    """Evaluate the targets ``specs`` (see :mod:`policy.ope.targets`) on the log at ``logs``."""
    log = open_log(logs, reward=reward)
    first = next(iter(log.chunks(rows=chunk_rows)))
    targets = [make_target(s, first, serving) for s in specs]
    t0 = time.perf_counter()
    with Progress(transient=True, disable=not show_progress) as bar:
        task = bar.add_task("serving the targets on the logged rows", total=log.n_rows)
        report = evaluate_log(lambda: log.chunks(rows=chunk_rows), targets, n_rows=log.n_rows,
                              use_reward_model=use_reward_model, n_bootstrap=n_bootstrap, seed=serving.seed,
                              reference=reference, min_ess=min_ess,
                              progress=lambda rows: bar.update(task, completed=rows))
    report["log"] = {"path": str(logs), "rows": log.n_rows, "reward": log.reward,
                     "segments": len(log.segment_names), "max_k": log.max_k}
    report["targets"] = {t.name: {"spec": s, "adapting": t.adapt} for t, s in zip(targets, specs)}
    report["elapsed_s"] = time.perf_counter() - t0
    return report


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """The estimates, one row per policy and estimator, then the paired differences and warnings."""
    console = console or Console()
    table = Table(title=f"off-policy estimates on {report['log']['path']} ({report['n_rows']:,} rows, "
                        f"reward {report['log']['reward']}); {report['interval']}")
    boot = any("boot_lo" in x for ests in report["policies"].values() for x in ests.values())
    cols = ("policy", "estimator", "value", "95 % lo", "95 % hi") + (("bootstrap 95 %",) if boot else ()) + (
        "ESS", "top 1 % weight")
    for col in cols:
        table.add_column(col, justify="left" if col in ("policy", "estimator") else "right")
    for name, ests in report["policies"].items():
        d = report["diagnostics"][name]
        for j, e in enumerate(ESTIMATORS):
            x = ests[e]
            extra = (f"{d['ess']:,.0f}", f"{d['top1pct_weight_share']:.1%}") if j == 0 else ("", "")
            b = (f"[{x['boot_lo']:.5f}, {x['boot_hi']:.5f}]" if x.get("boot_lo") is not None else "",) if boot else ()
            table.add_row(name if j == 0 else "", e + (f" ({x['detail']})" if x.get("detail") else ""),
                          f"{x['value']:.5f}", f"{x['lo']:.5f}", f"{x['hi']:.5f}", *b, *extra)
    lv = report["logging_policy_value"]
    table.add_row("logging policy", "on-policy mean", f"{lv['value']:.5f}", f"{lv['lo']:.5f}", f"{lv['hi']:.5f}",
                  *(("",) if boot else ()), f"{lv['ess']:,.0f}", "")
    console.print(table)
    diff = Table(title="paired differences on the same rows, 95 % interval")
    for col in ("difference", "estimator", "value", "95 % lo", "95 % hi"):
        diff.add_column(col, justify="left" if col in ("difference", "estimator") else "right")
    for name, ests in report["differences"].items():
        for j, e in enumerate(("snips", "dr")):
            x = ests[e]
            diff.add_row(name if j == 0 else "", e, f"{x['value']:+.5f}", f"{x['lo']:+.5f}", f"{x['hi']:+.5f}")
    console.print(diff)
    for name, d in report["diagnostics"].items():
        for w in d["warnings"]:
            console.print(f"[bold yellow]warning[/] {name}: {w}")


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["policies"])
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 4))
    width = 0.8 / len(ESTIMATORS)
    for j, e in enumerate(ESTIMATORS):
        xs = [i + (j - (len(ESTIMATORS) - 1) / 2) * width for i in range(len(names))]
        v = [report["policies"][n][e]["value"] for n in names]
        lo = [report["policies"][n][e]["lo"] for n in names]
        hi = [report["policies"][n][e]["hi"] for n in names]
        ax.errorbar(xs, v, yerr=[[a - b for a, b in zip(v, lo)], [b - a for a, b in zip(v, hi)]], fmt="o",
                    capsize=3, label=e)
    lv = report["logging_policy_value"]
    ax.axhspan(lv["lo"], lv["hi"], color="grey", alpha=0.2, label="logging policy (95 %)")
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel(f"estimated value ({report['log']['reward']} per decision)")
    ax.set_title(f"off-policy estimates, 95 % intervals ({report['n_rows']:,} logged rows)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
