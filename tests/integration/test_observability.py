"""A real worker's HTTP endpoints: readiness flips after recovery, /metrics parsed and checked against
what was sent through the broker."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from streams.app import topics_for

from .conftest import Reader, produce, start_worker
from .helpers import click, mixed_requests


def _get(url: str, timeout_s: float = 2.0) -> tuple[int, str]:
    """(status, body); (0, reason) when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        return 0, str(exc)


def _samples(text: str) -> dict[str, list]:
    """Every sample by sample name (``..._total``, ``..._bucket`` included)."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _value(samples: dict[str, list], metric: str, **labels: str) -> float:
    hits = [s.value for s in samples.get(metric, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, f"{metric}{labels}: {len(hits)} samples in {samples.get(metric)}"
    return hits[0]


def _wait_ready(worker, timeout_s: float = 90.0) -> list[int]:
    """Poll /readyz until 200; returns every status seen (0 = nothing listening yet)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.alive(), worker.log_tail()
        status, body = _get(worker.url + "/readyz")
        seen.append(status)
        if status == 200:
            assert json.loads(body)["ready"] is True and json.loads(body)["tables_recovered"] is True
            return seen
        time.sleep(0.05)
    raise AssertionError(f"/readyz never 200 in {timeout_s}s (seen {sorted(set(seen))}):\n{worker.log_tail()}")


def test_readiness_flips_after_recovery_and_metrics_add_up(settings, workers):
    topics = topics_for(settings)
    worker = start_worker(workers, settings)
    seen = _wait_ready(worker)
    answered = [s for s in seen if s != 0]
    assert answered[0] == 503, f"the server answered ready before recovery: {seen}"
    assert set(answered) <= {503, 200}
    status, body = _get(worker.url + "/healthz")
    assert status == 200 and json.loads(body)["alive"] is True

    requests = mixed_requests(30, "m", seed=5)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    produce(settings.kafka, topics.ad_requests.name, requests + [(b"m00-c00", b"{not json")])
    decisions.wait_for(lambda ms: len(ms) >= 30, 60, "30 decisions")
    first = json.loads(decisions.seen[0].value())
    rid, segment = first["request_id"], first["segment"]
    t = float(rid.split("-")[1])  # request m-i has event time T0 + i
    produce(settings.kafka, topics.ad_feedback.name, [click(rid, segment, t + 1), click(rid, segment, t + 2)])

    deadline = time.monotonic() + 30
    while True:
        status, text = _get(worker.url + "/metrics")
        assert status == 200, text
        samples = _samples(text)
        rewards = [s for s in samples.get("metacart_rewards_total", []) if s.labels["kind"] == "click"]
        if sum(s.value for s in rewards) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.3)

    assert _value(samples, "metacart_decisions_total", agent="ads") == 30
    assert _value(samples, "metacart_decision_latency_seconds_count") == 31  # the malformed one too
    assert 0 < _value(samples, "metacart_decision_latency_seconds_sum") < 31 * 60
    assert _value(samples, "metacart_dead_letters_total", agent="ads", reason="not_json") == 1
    assert _value(samples, "metacart_rewards_total", agent="ads", kind="click", outcome="applied") == 1
    assert _value(samples, "metacart_rewards_total", agent="ads", kind="click", outcome="duplicate") == 1
    assert _value(samples, "metacart_open_decisions", agent="ads") == 30  # windows are 600 s of event time
    n_segments = len({json.loads(m.value())["segment"] for m in decisions.seen})
    assert _value(samples, "metacart_segments_in_state", agent="ads") == n_segments
    assert _value(samples, "metacart_policy_info", agent="ads") == 1
    info = next(s for s in samples["metacart_policy_info"] if s.labels["agent"] == "ads")
    assert info.labels["version"] == "itest-v1"
    assert _value(samples, "metacart_ready") == 1
    assert _value(samples, "metacart_assigned_partitions") == 2 * settings.kafka.segment_partitions
    lag = {(s.labels["topic"], s.labels["partition"]): s.value for s in samples["metacart_consumer_lag"]}
    request_lag = {k: v for k, v in lag.items() if k[0] == topics.ad_requests.name}
    assert request_lag and all(v == 0 for v in request_lag.values()), lag
    assert _value(samples, "metacart_state_bytes") > 0
    assert _value(samples, "metacart_engine_counter", agent="ads", name="clicks_applied") == 1
    decisions.close()

    logged = [json.loads(line) for line in worker.log_path.read_text().splitlines()]  # every line is JSON
    assert {r["worker"] for r in logged} == {f"{settings.worker_id}@{socket.gethostname()}:{worker.pid}"}
    assert {"faust.worker", "metacart.worker"} <= {r["logger"] for r in logged}
