"""Two real worker processes in one consumer group share the partitions and both decide."""

from __future__ import annotations

from streams.app import topics_for

from .conftest import Reader, json_values, produce, start_worker
from .helpers import latest_stats, mixed_requests


def test_two_workers_split_partitions_and_both_decide(settings, workers, tmp_path):
    topics = topics_for(settings)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    stats = Reader(settings.kafka, topics.worker_stats.name)
    a = start_worker(workers, settings, "a")
    second = settings.model_copy(deep=True)
    second.store.data_dir = tmp_path / "worker-b"
    b = start_worker(workers, second, "b")
    sent = 0
    try:
        # Keep traffic flowing across all held-out segments until both workers report decisions.
        for round_ in range(60):
            batch = mixed_requests(40, f"r{round_}", seed=round_)
            produce(settings.kafka, topics.ad_requests.name, batch)
            sent += len(batch)
            stats.poll(0.5)
            busy = [s for s in latest_stats(stats.seen).values() if s["counters"].get("decisions", 0) > 0]
            if len(busy) == 2 and round_ >= 5:
                break
        reports = latest_stats(stats.seen)
        pids = {str(a.pid), str(b.pid)}
        deciding = {w.rsplit(":", 1)[1] for w, s in reports.items() if s["counters"].get("decisions", 0) > 0}
        assert deciding == pids, f"workers that decided: {deciding}, expected {pids}"
        decisions.wait_for(lambda ms: len({d["request_id"] for d in json_values(ms)}) >= sent, 90,
                           "every request decided")
    except AssertionError:
        print(a.log_tail(), "\n-----\n", b.log_tail())
        raise
    ads: dict[str, set[str]] = {}
    for d in json_values(decisions.seen):
        ads.setdefault(d["request_id"], set()).add(d["ad_id"])
    print(f"rebalance 1->2 workers: {sent} requests, {len(ads)} decided, "
          f"{len(decisions.seen) - len(ads)} extra decisions, {sum(len(v) > 1 for v in ads.values())} with a different ad")
    assert len(decisions.seen) == len(ads), "a request has more than one visible decision after the rebalance"
