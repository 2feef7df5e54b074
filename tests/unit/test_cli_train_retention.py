"""``metacart train --kind retention --out DIR`` writes a retention artifact a worker can load."""

from __future__ import annotations

from typer.testing import CliRunner

from metacart.cli import app
from policy.retention.artifacts import load_artifacts
from policy.retention.uplift import dimension


def test_train_kind_retention_writes_a_loadable_artifact(tmp_path):
    out = tmp_path / "ret"
    result = CliRunner().invoke(app, ["train", "--kind", "retention", "--out", str(out), "--max-seconds", "8"])
    assert result.exit_code == 0, result.output
    assert "retention artifact" in result.output and str(out) in result.output
    art = load_artifacts(out)
    assert art.uplift.meta.kind == "retention"
    assert art.uplift.meta.config["head"] == "uplift" and art.uplift.meta.config["learned_effects"] is True
    assert art.uplift.d > dimension(None)  # the learned treatment effects are in the head
    assert art.world["heldout_segments"]


def test_train_unknown_kind_is_one_clear_error(tmp_path):
    from tests.unit.test_cli import assert_one_line_error, cli

    assert_one_line_error(cli("train", "--kind", "churn", "--out", str(tmp_path / "x")),
                          "'churn' is not one of 'ads', 'retention'")
