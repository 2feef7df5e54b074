"""``metacart bench ope --quick`` writes the documented JSON, and its intervals are not vacuous."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from metacart.bench.ope import LOGGING, TARGETS
from metacart.cli import app
from policy.ope.estimators import ESTIMATORS


def test_quick_bench_writes_coverage_bias_rmse(tmp_path):
    out = tmp_path / "ope.json"
    result = CliRunner().invoke(app, ["bench", "ope", "--quick", "--n-logs", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("coverage", "bias", "rmse"):
        assert set(report[key]) == set(LOGGING)
        for logging in LOGGING:
            assert set(report[key][logging]) == set(ESTIMATORS)
    assert set(report["truth"]) == set(TARGETS)
    # The peaked policy on true click probabilities beats uniform: the truths are the simulator's.
    assert report["truth"]["softmax_true"] > 1.5 * report["truth"]["uniform"]
    # 80 (log, target) pairs under uniform logging: honest 95 % intervals cover most of them; a
    # zero-width or mis-centred interval would cover almost none.
    for est in ("ips", "snips", "dr"):
        assert report["coverage"]["uniform"][est] >= 0.8, (est, report["coverage"]["uniform"])
