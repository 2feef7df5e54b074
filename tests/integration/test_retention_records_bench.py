"""``metacart bench retention-records`` end to end: the soak's retention traffic through the real engine, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from metacart.bench.retention_records import RecordsConfig, run


def test_records_bench_replays_the_soak_traffic_and_counts_what_the_engine_writes(
        artifact_dir: Path, retention_artifact: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METACART_POLICY__ARTIFACT", str(artifact_dir))
    monkeypatch.setenv("METACART_RETENTION__ARTIFACT", str(retention_artifact))
    monkeypatch.setenv("METACART_PRIVACY__PSEUDONYM_KEY", "0123456789abcdef0123456789abcdef")
    first = run(RecordsConfig(days=2.0))
    assert first["sessions"] == 6_000
    assert first["actions"] > 0 and first["records"] > 0 and first["bytes_written"] > 0
    assert [d["day"] for d in first["per_day"]] == [0, 1]
    assert sum(d["actions"] for d in first["per_day"]) == first["actions"]
    assert first["actions_digest"] == run(RecordsConfig(days=2.0))["actions_digest"]  # a replay, the same actions
