"""The pure parts of ``metacart bench stream``: rates, percentiles, click choice, payloads, the JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metacart.bench import stream, stream_load
from streams.edge import Decoder, Source
from streams.events import AdRequest, DeadLetter


def test_rate_counts_gaps_between_records_not_records():
    # 11 records one 100 ms apart: 10 gaps in 1 s.
    rate, span = stream.rate_from_timestamps(np.arange(11) * 100 + 1_700_000_000_000)
    assert span == pytest.approx(1.0)
    assert rate == pytest.approx(10.0)


def test_rate_ignores_arrival_order():
    rate, span = stream.rate_from_timestamps([5000, 1000, 3000])
    assert (rate, span) == (pytest.approx(0.5), pytest.approx(4.0))


@pytest.mark.parametrize("ts", [[], [1000], [1000, 1000, 1000]])
def test_rate_refuses_what_cannot_be_timed(ts):
    with pytest.raises(ValueError):
        stream.rate_from_timestamps(ts)


def test_percentiles_match_numpy_and_empty_is_none():
    lat = np.random.default_rng(0).exponential(5.0, size=1001)
    p50, p99 = stream.percentiles_ms(lat)
    assert p50 == pytest.approx(np.median(lat))
    assert p99 == pytest.approx(np.sort(lat)[990])
    assert stream.percentiles_ms([]) == (None, None)


def test_clicked_takes_the_share_and_is_stable():
    ids = [f"b1-{i}".encode() for i in range(20000)]
    chosen = [stream_load.clicked(i, 0.05) for i in ids]
    assert 0.04 < np.mean(chosen) < 0.06
    assert chosen == [stream_load.clicked(i, 0.05) for i in ids]
    assert not any(stream_load.clicked(i, 0.0) for i in ids)
    assert all(stream_load.clicked(i, 1.0) for i in ids)


def test_backlog_size_is_seconds_of_the_rate_within_bounds():
    assert stream.backlog_size(10_000, seconds=25) == 250_000
    assert stream.backlog_size(100, seconds=25) == 20_000
    assert stream.backlog_size(1e9, seconds=25) == 1_000_000


def test_payloads_are_valid_unique_requests_in_event_time_order():
    payloads = stream_load.payloads(30, seed=0, t0=1_767_225_600.0, prefix="bt", pool=7)
    decoder = Decoder(AdRequest)
    events = [decoder.decode_one(v, Source("t", 0, i, k)) for i, (k, v) in enumerate(payloads)]
    assert not any(isinstance(e, DeadLetter) for e in events)
    assert [e.request_id for e in events] == [f"bt-{i}" for i in range(30)]
    times = [e.event_time.timestamp() for e in events]
    assert times == pytest.approx([1_767_225_600.0 + i * 1e-3 for i in range(30)])
    assert all(k == e.segment.encode() for (k, _), e in zip(payloads, events))


def test_load_payloads_carry_the_placeholder_the_generator_replaces():
    (_, value), = stream_load.payloads(1, seed=1, t0=0.0, prefix="load", step_s=0.0)
    assert json.loads(value)["event_time"] == stream_load.PLACEHOLDER_TIME


def _parts(per_s=4000.0, ceiling=40000.0, offered=1000.0):
    worker = {"per_s": per_s, "decided": 100, "requests": 100, "span_s": 25.0}
    latency = {"offered_per_s": offered, "p50_ms": 3.21, "p99_ms": 12.345}
    return worker, latency, {"per_s": ceiling}


def test_result_keeps_the_issue_keys_and_computes_ratio():
    worker, latency, ceiling = _parts()
    out = stream.result_json(worker=worker, latency=latency, ceiling=ceiling,
                             baseline={"per_s": 2000.0}, settings={})
    assert list(out)[:len(stream.RESULT_KEYS)] == list(stream.RESULT_KEYS)
    assert out["ratio"] == 0.1
    assert out["p99_ms_at_1000"] == 12.35
    assert out["baseline_per_s"] == 2000.0 and out["speedup_vs_baseline"] == 2.0
    json.dumps(out, allow_nan=False)


def test_result_without_baseline_or_at_another_load():
    worker, latency, ceiling = _parts(offered=500.0)
    out = stream.result_json(worker=worker, latency=latency, ceiling=ceiling, baseline=None, settings={})
    assert "baseline_per_s" not in out
    assert out["p99_ms_at_1000"] is None
    assert out["p99_ms"] == 12.35


def test_cpu_seconds_reads_utime_and_stime_past_a_name_with_spaces():
    stat = "4242 (python -m x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 7 0 100 0 0"
    assert stream.cpu_seconds(stat, ticks_per_s=100) == pytest.approx(3.0)


def test_cpu_seconds_of_this_process_grows_with_work():
    import os
    from pathlib import Path

    before = stream.cpu_seconds(Path(f"/proc/{os.getpid()}/stat").read_text(), os.sysconf("SC_CLK_TCK"))
    sum(i * i for i in range(3_000_000))
    after = stream.cpu_seconds(Path(f"/proc/{os.getpid()}/stat").read_text(), os.sysconf("SC_CLK_TCK"))
    assert after > before
