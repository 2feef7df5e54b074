"""The Open Bandit Dataset sample (ZOZO Research, CC BY 4.0) imports and evaluates end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metacart.cli import app
from policy.logformat.reader import LogReader

SAMPLE = Path(os.environ.get("METACART_OBD_SAMPLE", Path(__file__).resolve().parents[4] / "shared" / "datasets"
                             / "obd-sample"))


@pytest.fixture(scope="module")
def obd_log(tmp_path_factory):
    out = tmp_path_factory.mktemp("obd") / "log"
    result = CliRunner().invoke(app, ["logs", "import-obd", str(SAMPLE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_import_keeps_both_slices_with_their_candidate_counts(obd_log):
    log = LogReader(obd_log)
    assert log.n_rows == 20000 and log.max_k == 80 and log.extra_columns == ["position"]
    assert sorted(log.segment_names) == [f"random-{c}-pos{p}" for c in ("all", "men") for p in (1, 2, 3)]
    clicks = 0.0
    counts = {}
    for data in log.chunks():
        clicks += data.reward.sum()
        for name_index, k in zip(data.segment, data.k_valid):
            counts.setdefault(data.segment_names[name_index].split("-")[1], set()).add(int(k))
        assert (data.action < data.k_valid).all()
    assert clicks == 38 + 46  # the README's click counts of random/all and random/men
    assert counts == {"all": {80}, "men": {34}}
    size = sum(f.stat().st_size for f in obd_log.iterdir())
    assert size / log.n_rows < 100  # bytes per row (the v1 layout took 23.4 KB)


def test_evaluate_uniform_on_the_uniform_logs(obd_log, tmp_path):
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", "--logs", str(obd_log), "--policy", "uniform",
                                      "--policy", "late=uniform", "--out", str(out), "--plot", str(tmp_path / "e.png")])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    logged = report["logging_policy_value"]
    assert logged["value"] == pytest.approx(84 / 20000)
    for est in ("ips", "snips", "dr"):
        got = report["policies"]["uniform"][est]
        assert set(got) >= {"value", "lo", "hi", "ess"}
        assert got["lo"] < 84 / 20000 < got["hi"]
    # The logging policy is uniform per campaign: weights are exactly 1.
    assert report["policies"]["uniform"]["ips"]["value"] == pytest.approx(84 / 20000)
    assert report["diagnostics"]["uniform"]["ess"] == pytest.approx(20000)
    assert (tmp_path / "e.png").stat().st_size > 0


def test_import_of_a_folder_without_the_layout_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["logs", "import-obd", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "no Open Bandit Dataset campaign" in result.output


def test_training_on_the_obd_sample_says_plainly_whether_it_learned(obd_log, tmp_path):
    """Real logs (84 clicks in 20,000 rows, 6 segments): training runs end to end and its verdict is the
    one its held-out report holds; with one held-out segment it cannot show a gain, and says so."""
    out = tmp_path / "art"
    args = ["train", "--logs", str(obd_log), "--out", str(out), "--set", "threads=1", "--set", "epochs=8"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1, refused.output
    assert "training did NOT learn" in refused.output and "cannot tell: 1 held-out segment" in refused.output
    assert not out.exists()
    forced = CliRunner().invoke(app, args + ["--allow-no-gain"])
    assert forced.exit_code == 0, forced.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["likelihood"] == "bernoulli" and meta["report"]["learned"] is False
    assert meta["training_data"]["n_events"] == 20000
