"""The sampling and summarising parts of ``metacart bench soak`` (``soak_figures``, ``soak``)."""

from __future__ import annotations

import json

import pytest

from metacart.bench import soak, soak_figures, soak_traffic
from streams.events import SEGMENT_PATTERN

STATUS = "Name:\tpython\nVmPeak:\t  900000 kB\nVmRSS:\t  264000 kB\nThreads:\t12\n"

METRICS = """\
# TYPE metacart_state_bytes gauge
metacart_state_bytes 5.0e+06
# TYPE metacart_segments_in_state gauge
metacart_segments_in_state{agent="ads"} 120.0
metacart_segments_in_state{agent="retention"} 30.0
# TYPE metacart_users_in_state gauge
metacart_users_in_state 4000.0
# TYPE metacart_open_decisions gauge
metacart_open_decisions{agent="ads"} 700.0
metacart_open_decisions{agent="retention"} 50.0
# TYPE metacart_dead_letters counter
metacart_dead_letters_total{agent="ads",reason="invalid"} 2.0
metacart_dead_letters_total{agent="retention",reason="late"} 3.0
"""


def test_rss_from_proc_status():
    assert soak_figures.rss_mb(STATUS) == pytest.approx(264000 * 1024 / 1e6)
    assert soak_figures.rss_mb("Name:\tzombie\n") is None


def test_metrics_values_sum_dead_letters_and_open_decisions_over_agents():
    assert soak_figures.metrics_values(METRICS) == {
        "state_bytes": 5e6, "segments_ads": 120.0, "segments_retention": 30.0, "users_retention": 4000.0,
        "open_decisions": 750.0, "dead_letters": 5.0}


PROCESS = """\
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 12.5
# TYPE metacart_gc_pause_seconds histogram
metacart_gc_pause_seconds_bucket{generation="2",le="0.025"} 1.0
metacart_gc_pause_seconds_bucket{generation="2",le="0.05"} 1.0
metacart_gc_pause_seconds_bucket{generation="2",le="+Inf"} 3.0
metacart_gc_pause_seconds_count{generation="2"} 3.0
metacart_gc_pause_seconds_sum{generation="2"} 0.31
metacart_gc_pause_seconds_bucket{generation="0",le="0.05"} 40.0
metacart_gc_pause_seconds_bucket{generation="0",le="+Inf"} 40.0
metacart_gc_pause_seconds_count{generation="0"} 40.0
metacart_gc_pause_seconds_sum{generation="0"} 0.02
"""


def test_interval_cpu_and_collector_pauses_from_two_scrapes():
    now = soak_figures.metrics_values(PROCESS)
    assert now["process_cpu_s"] == 12.5 and now["gc_pauses_2"] == 3.0 and now["gc_pauses_le_50ms_2"] == 1.0
    before = {"process_cpu_s": 9.5, "gc_pauses_2": 1.0, "gc_pauses_le_50ms_2": 1.0, "gc_pause_s_2": 0.01,
              "gc_pauses_0": 30.0, "gc_pauses_le_50ms_0": 30.0, "gc_pause_s_0": 0.015}
    cpu, gc_figures = soak_figures.interval_figures(now, before, 30.0)
    assert cpu == 10.0  # 3 CPU seconds in 30 s
    assert gc_figures == {"pauses": 12.0, "full": 2.0, "over_50ms": 2.0, "seconds": 0.305}
    assert soak_figures.interval_figures(now, {}, 30.0)[0] is None  # no earlier scrape: no interval
    assert soak_figures.interval_figures({"process_cpu_s": 1.0}, {"process_cpu_s": 0.5}, 10.0) == (5.0, None)


def test_summary_adds_cpu_medians_and_long_collector_pauses():
    samples = [_sample(30 * k, 200.0, 10.0) for k in range(1, 4)]
    for k, s in enumerate(samples):
        s["cpu_pct_by_worker"] = {"ads": 40.0 + k, "retention": 20.0}
        s["gc_by_worker"] = {"ads": {"pauses": 5.0, "full": 1.0, "over_50ms": 1.0, "seconds": 0.1}}
    out = soak_figures.summary(samples, warm_up_samples=1)
    assert out["cpu_pct_median_by_worker"] == {"ads": 41.5, "retention": 20.0}
    assert out["gc_pauses_over_50ms_after_warm_up"] == 2.0 and out["gc_pause_s_after_warm_up"] == 0.2


def _sample(t, rss, p99, alive=True):
    return {"t_s": t, "alive": alive, "rss_mb": rss, "p99_ms": p99, "segments_ads": 10, "users_retention": 5,
            "state_mb": 1.0, "dead_letters": 0}


def test_summary_skips_warm_up_and_measures_growth():
    samples = [_sample(30, 500.0, 900.0)] + [_sample(30 * k, 200.0 + 10 * k, 10.0 + k) for k in range(2, 8)]
    out = soak_figures.summary(samples, warm_up_samples=1)
    assert out["alive_throughout"] is True
    assert out["rss_mb_first_after_warm_up"] == 220.0 and out["rss_mb_last"] == 270.0
    assert out["rss_growth_mb_per_min"] == pytest.approx(20.0)  # 10 MB per 30 s
    assert out["p99_ms_max_after_warm_up"] == 17.0  # the warm-up's 900 ms left out
    json.dumps(out, allow_nan=False)


def test_summary_reports_a_dead_worker_and_no_samples():
    samples = [_sample(30, 200.0, 5.0), _sample(60, None, None, alive=False)]
    assert soak_figures.summary(samples)["alive_throughout"] is False
    assert soak_figures.summary([]) == {"samples": 0}


def test_new_segment_names_are_valid_segments():
    import re

    assert re.match(SEGMENT_PATTERN, soak_traffic.segment_name("m05-c12", 173))


def test_ad_generations_bound_which_segments_requests_pick():
    import random

    rng = random.Random(0)
    assert {soak_traffic.pick_generation(rng, 9, 0) for _ in range(500)} == set(range(10))  # every generation so far
    assert {soak_traffic.pick_generation(rng, 9, 3) for _ in range(500)} == {7, 8, 9}  # older ones go quiet
    assert {soak_traffic.pick_generation(rng, 1, 3) for _ in range(100)} == {0, 1}


def test_sample_line_shows_missing_values_as_dashes():
    s = soak.Sample(t_s=30.0, alive=False, rss_mb=None, state_mb=None, segments_ads=None, segments_retention=None,
                    users_retention=None, open_decisions=None, decisions_per_s=0.0, requests_per_s=300.0,
                    sessions_per_s=100.0, p50_ms=None, p99_ms=None, answered=0, dead_letters=None,
                    retention_actions=0, load_average_1m=1.0)
    line = soak.sample_line(s)
    assert "DEAD" in line and "RSS — MB" in line


ENGINE = """\
# TYPE metacart_engine_counter gauge
metacart_engine_counter{agent="retention",name="retention_open_actions"} 900.0
metacart_engine_counter{agent="retention",name="retention_actions_cached"} 64.0
metacart_engine_counter{agent="retention",name="retention_rocksdb_memtables_bytes:retention-users"} 4.2e+06
metacart_engine_counter{agent="retention",name="retention_rocksdb_block_cache_bytes:ads-segments"} 8.0e+06
metacart_engine_counter{agent="retention",name="retention_sessions"} 77.0
"""


def test_engine_sizes_and_rocksdb_memory_per_table_are_sampled():
    m = soak_figures.metrics_values(ENGINE)
    assert m["retention_open_actions"] == 900.0 and m["retention_actions_cached"] == 64.0
    assert "retention_sessions" not in m  # a counter, not one of the sizes a sample keeps
    assert soak_figures.rocksdb_mb(m) == {"ads-segments.block_cache": 8.0, "retention-users.memtables": 4.2}
    assert soak_figures.rocksdb_mb({}) is None


def test_per_agent_layout_runs_each_agent_in_its_own_app_and_data_dir(tmp_path):
    from pathlib import Path

    from streams.settings import Settings

    s = Settings()
    s.agents, s.worker_id, s.store.data_dir = "ads,retention", "soak-t", tmp_path / "soak-t"
    assert soak._worker_settings(s, soak.SoakConfig()) == {"ads,retention": s}
    split = soak._worker_settings(s, soak.SoakConfig(workers="per_agent"))
    assert {k: (w.agents, w.worker_id, Path(w.store.data_dir)) for k, w in split.items()} == {
        "ads": ("ads", "soak-t-ads", tmp_path / "soak-t" / "ads"),
        "retention": ("retention", "soak-t-retention", tmp_path / "soak-t" / "retention")}
    assert all(w.kafka.topic_prefix == s.kafka.topic_prefix for w in split.values())  # one set of topics
    assert s.agents == "ads,retention" and s.worker_id == "soak-t"  # copies, the base is unchanged
    with pytest.raises(ValueError, match="workers must be one of one, per_agent"):
        soak.SoakConfig(workers="two")


def test_figures_of_several_workers_add_up_key_by_key():
    merged = soak_figures.merged([{"state_bytes": 5.0, "segments_ads": 3.0}, None, {"state_bytes": 2.25, "users": 9.0}])
    assert merged == {"segments_ads": 3.0, "state_bytes": 7.25, "users": 9.0}
    assert soak_figures.merged([{"ads-segments": 0.14}, {"ads-segments": 0.12}], 1) == {"ads-segments": 0.3}
    assert soak_figures.merged([None, {}]) is None
