"""``metacart bench soak`` for half a minute against the real broker and real workers: one with both agents, or
one per agent (the deployed layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metacart.bench.soak import SoakConfig, run
from streams.settings import Settings


@pytest.mark.parametrize("workers", ["one", "per_agent"])
def test_short_soak_samples_live_workers_while_segments_and_users_arrive(
        settings: Settings, retention_artifact: Path, tmp_path: Path, workers: str) -> None:
    settings.retention.artifact = retention_artifact
    out = tmp_path / "soak.json"
    cfg = SoakConfig(minutes=0.5, sample_s=10.0, ad_rate=100.0, session_rate=50.0, segment_every_s=2.0,
                     workers=workers)
    result = run(settings, cfg, out=out, data_root=tmp_path)
    samples = result["samples"]
    assert json.loads(out.read_text())["samples"] == samples
    assert [round(s["t_s"] / 10) for s in samples] == [1, 2, 3]  # every 10 s of a 30 s run
    assert all(s["alive"] for s in samples) and result["summary"]["alive_throughout"]
    assert all(s["rss_mb"] > 50 for s in samples)
    agents = ["ads,retention"] if workers == "one" else ["ads", "retention"]
    assert all(sorted(s["rss_mb_by_worker"]) == agents for s in samples)
    assert all(abs(sum(s["rss_mb_by_worker"].values()) - s["rss_mb"]) < 0.2 for s in samples)
    assert all(sorted(s["cpu_pct_by_worker"]) == agents for s in samples)  # from each worker's /metrics
    assert all(0 < pct < 250 for s in samples for pct in s["cpu_pct_by_worker"].values())
    # The workers' collector settings (streams.worker.tune_gc) can leave an interval without any collection.
    assert all(sorted(s["gc_by_worker"]) == agents and all(g["pauses"] >= g["full"] >= 0 for g in
                                                           s["gc_by_worker"].values()) for s in samples)
    assert all(s["decisions_per_s"] > 50 and s["p99_ms"] is not None for s in samples)
    assert all(s["requests_per_s"] > 90 for s in samples)
    assert samples[-1]["segments_ads"] > samples[0]["segments_ads"] > 0  # new segments keep arriving
    assert samples[-1]["users_retention"] > 0
    assert samples[-1]["state_mb"] > 0
    assert samples[-1]["dead_letters"] == 0
