"""Command-line traps that need the real broker: ``simulate`` with no worker, retention train + publish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from streams.app import topics_for
from streams.settings import settings_env

from .conftest import Reader, start_worker
from .helpers import counter
from .test_observability import _wait_ready

ROOT = Path(__file__).resolve().parents[2]


def cli(settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = settings_env(settings, dict(os.environ)) | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "metacart.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def test_simulate_without_worker_prints_valid_json_and_a_hint(settings):
    result = cli(settings, "simulate", "--duration-s", "1", "--rate", "50")
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert summary["requests_sent"] > 0 and summary["decisions"] == 0
    assert summary["ctr_expected_policy"] is None and summary["p50_ms"] is None
    assert result.stderr.strip().splitlines() == [
        "metacart: no decision came back: is a worker running against this broker and topic prefix "
        "(`metacart worker`, METACART_KAFKA__TOPIC_PREFIX)?"]


def test_train_and_publish_a_retention_policy(settings, workers, tmp_path):
    out = tmp_path / "retention"
    trained = cli(settings, "train", "--kind", "retention", "--out", str(out), "--max-seconds", "6", timeout=240)
    assert trained.returncode == 0, trained.stderr
    assert (out / "retention.json").is_file()
    updates = Reader(settings.kafka, topics_for(settings).policy_updates.name)
    published = cli(settings, "publish-policy", "--kind", "retention", "--artifact", str(out))
    assert published.returncode == 0, published.stderr
    update = json.loads(updates.wait_for(lambda ms: len(ms) >= 1, 30, "the policy update")[0].value())
    assert update["kind"] == "retention" and update["artifact_uri"] == str(out.resolve())
    assert published.stdout.strip() == f"published retention policy {update['version']} from {out}"
    wrong = cli(settings, "publish-policy", "--kind", "ads", "--artifact", str(out))
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        f"metacart: error: {out} is a retention artifact, not an ads one: publish it with --kind retention"]
    updates.close()

    # A retention worker hot-swaps: it loads the published artifact, checks it and says so in its log.
    settings.agents = "retention"
    settings.retention.artifact = out
    worker = start_worker(workers, settings, "retention")
    _wait_ready(worker)
    stats = Reader(settings.kafka, topics_for(settings).worker_stats.name)
    assert cli(settings, "publish-policy", "--kind", "retention", "--artifact", str(out),
               "--version", "next-version").returncode == 0
    stats.wait_for(lambda ms: counter(ms, "retention_policy_swaps") == 1, 60, "update applied")
    logged = [json.loads(line) for line in worker.log_path.read_text().splitlines()]
    (line,) = [r for r in logged if "hot-swapped in from" in r["msg"] and str(out.resolve()) in r["msg"]]
    assert line["level"] == "WARNING"
    assert counter(stats.seen, "retention_policy_refused") == 0
    stats.close()
