"""The worker's Prometheus exposition over real engines (dict stores): every exported family is listed
in ``EXPORTED``, and the values follow what the engines did."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import EXPORTED, ConsumerState, WorkerMetrics
from tests.unit.streams import test_ads_engine as ads
from tests.unit.streams import test_retention_engine as ret


class Assigned(ConsumerState):
    def lag(self):
        return {("t-ad-requests", 0): 5, ("t-ad-requests", 1): 0}

    def assigned(self):
        return 2

    def ready(self):
        return True


def scrape(metrics: WorkerMetrics) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def one(samples, name, **labels):
    hits = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


def families(samples) -> set[str]:
    names = set()
    for name in samples:
        for suffix in ("_bucket", "_count", "_sum", "_created", "_total", "_info"):
            if name.endswith(suffix):
                name = name[: -len(suffix)] + ("_total" if suffix == "_total" else "")
                break
        names.add(name)
    return names


def run_engines(tmp_path):
    ad = ads.engine()
    ad.process_many([ads.request(f"r{i}", i, seed=i) for i in range(6)] + [
        ads.RawMessage(ads.TOPICS.ad_requests.name, 0, next(ads._OFFSETS["requests"]), b"k", b"{not json")])
    ad.process_many([ads.feedback("click", "r0", 1), ads.feedback("click", "r0", 2)])
    rt = ret.engine()
    users = [f"u{i}" for i in range(5)]
    ret.warm(rt, users)
    rt.process_many([ret.session("u0", 1.05)])  # crosses the day tick: every risky user is reviewed
    (tmp_path / "state.bin").write_bytes(b"x" * 1000)
    return ad, rt


def test_every_family_is_listed_and_values_follow_the_engines(tmp_path):
    ad, rt = run_engines(tmp_path)
    metrics = WorkerMetrics("w@h:1", [ad, rt], tmp_path, Assigned())
    now = time.time()
    metrics.observe_requests([now - 0.004, now - 0.2, None], now_s=now)
    metrics.observe_batch("ads", 0.003)
    metrics.observe_commit("ads", (0.002, 0.004, 0.03))
    samples = scrape(metrics)
    exported = {n[: -len("_total")] if n.endswith("_total") else n for n in EXPORTED}
    ours = {n for n in families(samples) if n.startswith("metacart_")}
    assert {n[: -len("_total")] if n.endswith("_total") else n for n in ours} == exported

    assert one(samples, "metacart_decisions_total", agent="ads") == 6
    assert one(samples, "metacart_decisions_total", agent="retention") == rt.counters["retention_actions"] > 0
    assert one(samples, "metacart_dead_letters_total", agent="ads", reason="not_json") == 1
    assert one(samples, "metacart_rewards_total", agent="ads", kind="click", outcome="applied") == 1
    assert one(samples, "metacart_rewards_total", agent="ads", kind="click", outcome="duplicate") == 1
    assert one(samples, "metacart_open_decisions", agent="ads") == 6
    assert one(samples, "metacart_open_decisions", agent="retention") == rt.pending_count()
    assert one(samples, "metacart_segments_in_state", agent="ads") == 1
    assert one(samples, "metacart_segments_in_state", agent="retention") == 1  # its one segment, reviewed
    assert one(samples, "metacart_users_in_state") == rt.counters["retention_users"] == 5
    assert one(samples, "metacart_retention_cap", scope="total") == rt.settings.budget_per_period
    assert one(samples, "metacart_retention_cap", scope="segment") == rt.settings.segment_budget_per_period
    assert one(samples, "metacart_decision_latency_seconds_count") == 2
    assert one(samples, "metacart_decision_latency_seconds_bucket", le="0.005") == 1
    assert one(samples, "metacart_batch_processing_seconds_count", agent="ads") == 1
    assert one(samples, "metacart_commit_phase_seconds_bucket", agent="ads", phase="changelog", le="0.005") == 1
    assert one(samples, "metacart_commit_phase_seconds_bucket", agent="ads", phase="outputs", le="0.025") == 0
    assert one(samples, "metacart_consumer_lag", topic="t-ad-requests", partition="0") == 5
    assert one(samples, "metacart_ready") == 1 and one(samples, "metacart_assigned_partitions") == 2
    assert one(samples, "metacart_state_bytes") == 1000
    versions = {s.labels["agent"]: s.labels["version"] for s in samples["metacart_policy_info"]}
    assert versions == {"ads": ad.adapter.version, "retention": rt.version}


def test_before_assignment_the_worker_is_not_ready(tmp_path):
    samples = scrape(WorkerMetrics("w", [], tmp_path / "absent"))
    assert one(samples, "metacart_ready") == 0 and one(samples, "metacart_state_bytes") == 0
    assert "metacart_consumer_lag" not in samples


def test_collector_pauses_and_the_process_are_exported(tmp_path):
    import gc

    metrics = WorkerMetrics("w", [], tmp_path)
    before = one(scrape(metrics), "metacart_gc_pause_seconds_count", generation="2")
    metrics.start_gc_watch()
    try:
        garbage = []
        for _ in range(2):
            garbage.append([garbage])  # a cycle for the collector
            gc.collect()
    finally:
        metrics.stop_gc_watch()
    gc.collect()  # not observed: the watch is off
    samples = scrape(metrics)
    assert one(samples, "metacart_gc_pause_seconds_count", generation="2") == before + 2
    assert one(samples, "metacart_gc_pause_seconds_sum", generation="2") > 0
    assert one(samples, "process_cpu_seconds_total") > 0
    assert one(samples, "process_resident_memory_bytes") > 0
    assert one(samples, "python_gc_collections_total", generation="2") >= 2
