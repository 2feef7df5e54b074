"""Real worker decisions and clicks → ``logs export`` (v2) → ``evaluate`` → gated ``publish-policy``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
from typer.testing import CliRunner

from metacart.cli import app
from policy.artifact import PolicyArtifact
from policy.logformat.reader import LogReader
from streams.app import topics_for
from metacart.live.ads import feedback_payload, request_payloads
from streams.settings import settings_env

from .conftest import Reader, json_values, produce, start_worker
from .helpers import T0, market

N = 1500
STEP_S = 0.2


def _env(settings) -> dict[str, str]:
    k = settings.kafka
    return {"METACART_KAFKA__BOOTSTRAP": k.bootstrap, "METACART_KAFKA__TOPIC_PREFIX": k.topic_prefix,
            "METACART_KAFKA__SEGMENT_PARTITIONS": str(k.segment_partitions),
            "METACART_KAFKA__USER_PARTITIONS": str(k.user_partitions),
            "METACART_POLICY__ARTIFACT": str(settings.policy.artifact),
            # the export pseudonymises user ids with the workers' key
            **{k: v for k, v in settings_env(settings).items() if k.startswith("METACART_PRIVACY__")}}


def _updates(settings) -> list[dict]:
    reader = Reader(settings.kafka, topics_for(settings).policy_updates.name)
    reader.poll(2.0)
    reader.close()
    return json_values(reader.seen)


def _serve_and_export(settings, workers, tmp_path, seed: int = 11):
    """N requests through a real worker, simulator clicks on its choices, exported; returns (log, chosen, clicked)."""
    topics = topics_for(settings)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    start_worker(workers, settings)
    m = market()
    rng = np.random.default_rng(seed)
    reqs = m.sample_requests(rng.choice(m.heldout_segments[:6], N), rng)
    ids = [f"E-{i}" for i in range(N)]
    times = T0 + STEP_S * np.arange(N)
    produce(settings.kafka, topics.ad_requests.name, request_payloads(m, reqs, times, ids))
    decisions.wait_for(lambda ms: len({json.loads(x.value())["request_id"] for x in ms}) >= N, 240, "decisions")
    chosen = {}
    for d in json_values(decisions.seen):
        chosen.setdefault(d["request_id"], d)
    position = np.array([chosen[r]["position"] for r in ids])
    clicked = m.respond(reqs, position, rng).click
    feedback = [feedback_payload("click", r, chosen[r]["segment"], chosen[r]["ad_id"], times[i] + 5.0)
                for i, r in enumerate(ids) if clicked[i]]
    feedback.append(feedback_payload("click", ids[0], chosen[ids[0]]["segment"], chosen[ids[0]]["ad_id"],
                                     times[0] + 700.0))  # outside the 600 s window: not a reward
    produce(settings.kafka, topics.ad_feedback.name, feedback)
    # One request far past every window moves the watermark, so every decision above is complete.
    late = m.sample_requests(np.array([m.heldout_segments[0]]), rng)
    produce(settings.kafka, topics.ad_requests.name,
            request_payloads(m, late, np.array([times[-1] + 1000.0]), ["E-late"]))
    decisions.wait_for(lambda ms: any(json.loads(x.value())["request_id"] == "E-late" for x in ms), 60, "late")

    log = tmp_path / "exported"
    result = CliRunner().invoke(app, ["logs", "export", "--out", str(log)], env=_env(settings))
    assert result.exit_code == 0, result.output
    return log, chosen, clicked, ids


def test_export_evaluate_and_gate(settings, workers, tmp_path):
    log, chosen, clicked, ids = _serve_and_export(settings, workers, tmp_path)
    runner = CliRunner()
    env = _env(settings)
    reader = LogReader(log)
    assert reader.n_rows == N  # the late request's window is still open: not exported
    data = reader.read_all()
    assert data.click.sum() == clicked.sum() and clicked.sum() > 20
    assert sorted(np.concatenate(list(reader.column("request_id")))) == sorted(ids)
    np.testing.assert_allclose(np.sort(data.propensity), np.sort([chosen[r]["propensity"] for r in ids]))
    assert "policy_version" in reader.extra_columns and "request_id" in reader.extra_columns

    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", "--logs", str(log), "--policy", "uniform", "--policy",
                                 f"serving={settings.policy.artifact}", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["logging_policy_value"]["value"] == clicked.mean()
    for name in ("uniform", "serving"):
        assert set(report["policies"][name]["snips"]) >= {"value", "lo", "hi", "ess"}

    v1 = PolicyArtifact.load(settings.policy.artifact)
    same = replace(v1, meta=v1.meta.model_copy(update={"version": "itest-v1b"})).save(tmp_path / "same")
    worst = replace(v1, prior_mean=-v1.prior_mean, meta=v1.meta.model_copy(update={"version": "itest-worst"}))
    worst_dir = worst.save(tmp_path / "worst")

    gate = ["--gate", str(log), "--margin", "-0.01"]
    result = runner.invoke(app, ["publish-policy", "--artifact", str(worst_dir), *gate], env=env)
    assert result.exit_code == 1, result.output
    print(result.output)
    assert "refused" in result.output and "candidate - serving (snips)" in result.output
    assert _updates(settings) == []  # nothing was published

    result = runner.invoke(app, ["publish-policy", "--artifact", str(same), *gate], env=env)
    assert result.exit_code == 0, result.output
    print(result.output)
    assert "passes" in result.output and "published ads policy itest-v1b" in result.output
    (update,) = _updates(settings)
    assert update["version"] == "itest-v1b" and update["gate"]["decision"] == "passed"
    assert update["gate"]["log_rows"] == N and update["gate"]["lo"] > -0.01

    # The serving artifact is now the published one; --force publishes the bad one and says so.
    result = runner.invoke(app, ["publish-policy", "--artifact", str(worst_dir), *gate, "--force"], env=env)
    assert result.exit_code == 0, result.output
    assert "--force: publishing although the gate refused" in result.output
    last = _updates(settings)[-1]
    assert last["version"] == "itest-worst" and last["gate"]["decision"] == "forced"
    assert last["gate"]["serving_version"] == "itest-v1b" and last["gate"]["lo"] <= -0.01  # the refusal, recorded

