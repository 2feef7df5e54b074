"""``metacart bench logs``: write, read and evaluate a large simulated v2 log in bounded memory.

Each phase runs in its own child process so that its peak resident memory (``ru_maxrss``) is its own:

- ``write``: the market simulator logs ``rows`` uniform-random decisions straight into v2 (the import
  path: rows are produced and written chunk by chunk);
- ``read``: every chunk decoded into :class:`policy.logs.LoggedData` (candidate features joined from the
  item table, ``k_valid`` and ``candidate_ids`` set), which is what training and evaluation consume;
- ``evaluate``: both passes of :func:`policy.ope.evaluate.evaluate_log` (cross-fitted reward model, then
  the targets ``uniform`` and ``scratch_raw`` frozen, with every estimator).

Reported per phase: rows/s, wall seconds and peak RSS; for the file, bytes per row. The ceiling to compare
against is the reader alone (evaluation cannot be faster than decoding its input).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PHASES = ("write", "read", "evaluate")


def _phase(phase: str, path: Path, rows: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    if phase == "write":
        from policy.logformat.simulated import simulate_v2
        from policy.simulator.market import Market

        market = Market()
        simulate_v2(market, market.heldout_segments, rows, seed, path)
        n = rows
    elif phase == "read":
        from policy.logformat.reader import LogReader

        n = 0
        for data in LogReader(path).chunks():
            n += len(data)
    else:
        from policy.logformat.reader import LogReader
        from policy.ope.evaluate import Target, evaluate_log
        from policy.ope.targets import make_target

        log = LogReader(path)
        first = next(log.chunks())
        raw = make_target("scratch_raw", first)
        targets = [make_target("uniform", first), Target("scratch_raw_frozen", raw.policy, adapt=False)]
        report = evaluate_log(lambda: log.chunks(), targets, n_rows=log.n_rows)
        n = report["n_rows"]
    wall = time.perf_counter() - t0
    return {"rows": n, "wall_s": wall, "rows_per_s": n / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(rows: int, path: Path, out: Path | None = None, seed: int = 0, keep: bool = False,
        console: Console | None = None) -> dict[str, Any]:
    """Run the three phases in child processes; print a table; optionally write JSON."""
    console = console or Console()
    result: dict[str, Any] = {"rows": rows, "path": str(path), "phases": {}}
    for phase in PHASES:
        proc = subprocess.run([sys.executable, "-m", "metacart.bench.logscale", phase, str(path), str(rows), str(seed)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"phase {phase} failed:\n{proc.stderr[-4000:]}")
        result["phases"][phase] = json.loads(proc.stdout.strip().splitlines()[-1])
        console.print(f"{phase}: {result['phases'][phase]}")
    size = sum(f.stat().st_size for f in path.iterdir())
    result["bytes"] = size
    result["bytes_per_row"] = size / rows
    table = Table(title=f"v2 log of {rows:,} simulated rows ({size / rows:.1f} bytes/row on disk)")
    for col in ("phase", "rows/s", "wall s", "peak RSS MB"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for phase, r in result["phases"].items():
        table.add_row(phase, f"{r['rows_per_s']:,.0f}", f"{r['wall_s']:.1f}", f"{r['peak_rss_mb']:,.0f}")
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {out}")
    if not keep:
        import shutil

        shutil.rmtree(path)
    return result


if __name__ == "__main__":  # a phase, run by ``run`` in a child process
    print(json.dumps(_phase(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
