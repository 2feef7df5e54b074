"""``metacart status`` against a live worker: its report, its consumer group's assignment and lag, and
what each segment has learned, all read back from the broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from streams.app import topics_for
from streams.settings import settings_env

from .conftest import Reader, produce, start_worker
from .helpers import click, market, requests_for
from .test_observability import _wait_ready

ROOT = Path(__file__).resolve().parents[2]
A, B = (int(s) for s in market().heldout_segments[:2])
NAME_A, NAME_B = market().segment_names[A], market().segment_names[B]


def status(settings, *args: str) -> subprocess.CompletedProcess:
    env = settings_env(settings, dict(os.environ)) | {"PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "metacart.cli", "status", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


def test_status_shows_workers_groups_and_segments(settings, workers):
    topics = topics_for(settings)
    worker = start_worker(workers, settings)
    _wait_ready(worker)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    produce(settings.kafka, topics.ad_requests.name,
            requests_for(A, list(range(30)), "a") + requests_for(B, list(range(10)), "b", seed=1))
    decisions.wait_for(lambda ms: len(ms) >= 40, 60, "40 decisions")
    produce(settings.kafka, topics.ad_feedback.name, [click("a-0", NAME_A, 1), click("a-1", NAME_A, 2)])
    stats = Reader(settings.kafka, topics.worker_stats.name)
    stats.wait_for(lambda ms: any(json.loads(m.value())["counters"].get("clicks_applied", 0) == 2 for m in ms),
                   30, "both clicks applied")
    produce(settings.kafka, topics.ad_requests.name, requests_for(A, [40], "later"))
    decisions.wait_for(lambda ms: len(ms) >= 41, 30, "the 41st decision")
    time.sleep(2 * settings.store.state_flush_interval_s + 2 * settings.stats_interval_s)  # flushed + reported

    result = status(settings, "--json")
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    (w,) = state["workers"]
    assert w["worker"].endswith(f":{worker.pid}") and w["group"] == settings.worker_id
    assert w["policy_version"] == "itest-v1" and w["pending"] == 41
    assert w["counters"]["decisions"] == 41 and "decisions" in w["rates_per_s"]
    assert w["lag"] == 0 and sorted(w["partitions"]) == sorted(member_partitions := [
        f"{topics.ad_requests.name}[{p}]" for p in range(settings.kafka.segment_partitions)] +
        [f"{topics.ad_feedback.name}[{p}]" for p in range(settings.kafka.segment_partitions)])
    (g,) = state["groups"]
    assert g["group"] == settings.worker_id and g["state"] == "STABLE"
    (member,) = g["members"]
    assert member["client"] == w["worker"]  # workers name themselves as the consumer's client id
    assert sorted(member["partitions"]) == sorted(member_partitions)
    assert g["total_lag"] == 0
    segs = {s["segment"]: s for s in state["segments"]}
    assert set(segs) == {NAME_A, NAME_B}
    assert segs[NAME_A]["decisions"] == 31 and segs[NAME_B]["decisions"] == 10
    assert segs[NAME_A]["updates"] == 2 and segs[NAME_B]["updates"] == 0
    assert segs[NAME_A]["posterior_updates"] == 2 and segs[NAME_A]["posterior_trace"] > 0
    assert segs[NAME_B]["evidence_share"] < 1e-9 < segs[NAME_A]["evidence_share"]  # B knows only its prior
    assert sum(a["chosen"] for a in segs[NAME_B]["top_ads"]) <= 10
    seen = [json.loads(m.value()) for m in decisions.seen]
    for name, seg in segs.items():
        for ad in seg["top_ads"]:  # the expected CTR the decisions reported when this ad was chosen
            scores = [d["explanation"]["expected_reward"] for d in seen
                      if d["segment"] == name and d["ad_id"] == ad["ad_id"]]
            assert all(0.0 < p < 1.0 for p in scores)  # a click model's probabilities, not its logits
            assert ad["chosen"] == len(scores) and abs(ad["expected_ctr"] - sum(scores) / len(scores)) < 1e-5

    table = status(settings)
    assert table.returncode == 0, table.stderr
    assert settings.worker_id in table.stdout and NAME_A in table.stdout and "itest-v1" in table.stdout
    decisions.close()
    stats.close()
