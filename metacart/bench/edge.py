"""Benchmark of the edge: per-message cost of decoding inputs and encoding decisions, before and after msgspec.

- Decoding: one of the simulator's ad requests (its size is reported as ``request_bytes``), a click and
  a session event. ``*_pydantic_us`` is what the edge did
  before (``TypeAdapter(model).validate_json``, lax); ``*_edge_us`` is ``Decoder.decode_one`` as the
  engines call it now (msgspec decode, pattern checks, key check; for clicks and sessions also the
  pydantic model the engines dispatch on); ``*_struct_us`` is the struct alone (``models=False``).
- Encoding a decision: ``AdDecision(...)`` + ``model_dump_json`` (``decision_pydantic_us``, what
  ``AdsEngine._decide_group`` does) against ``AdDecisionRecord(...)`` + ``encode_one``
  (``decision_record_us``); both build the nested explanation too.

Every figure is the median, over ``repeats`` rounds, of the thread CPU time of ``n`` calls divided by
``n`` (CPU time: on a shared machine wall time would mostly measure the scheduler), after one warm-up
round. Run: ``metacart bench edge --out FILE``.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import msgspec
import numpy as np
import pydantic
from pydantic import TypeAdapter

from policy.simulator.market import Market
from streams.edge import Decoder, Source, encode_one
from streams.events import AdDecision, AdRequest, Explanation, SessionEvent
from streams.wire import AdDecisionRecord, ExplanationRecord
from metacart.live.ads import feedback_payload, request_payloads
from streams.topics import Topics


def _per_call_us(fn: Callable[[], object], n: int, repeats: int) -> float:
    fn()
    rounds = []
    for _ in range(repeats + 1):
        t0 = time.thread_time_ns()
        for _ in range(n):
            fn()
        rounds.append((time.thread_time_ns() - t0) / n / 1e3)
    return statistics.median(rounds[1:])


def _inputs() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes], tuple[bytes, bytes]]:
    market = Market()
    rng = np.random.default_rng(0)
    reqs = market.sample_requests(np.array([market.heldout_segments[0]]), rng)
    request = request_payloads(market, reqs, np.array([1.767e9]), ["bench-1"])[0]
    segment = json.loads(request[1])["segment"]
    click = feedback_payload("click", "bench-1", segment, "ad3", 1.767e9 + 5)
    session = json.dumps({"schema_version": 1, "user_id": "u123", "segment": segment, "session_id": "s9",
                          "kind": "page_view", "value": 0.0, "event_time": "2026-01-01T00:00:00Z"}).encode()
    return request, click, (b"u123", session)


def _decision_fields(request: AdRequest) -> tuple[dict, dict]:
    now = datetime.now(timezone.utc)
    fields = dict(request_id=request.request_id, user_id=request.user_id, segment=request.segment,
                  slot=request.slot, ad_id=request.candidates[3].ad_id, position=3, propensity=0.8125,
                  policy_version="v2026.01.01", request_time=request.event_time, decided_at=now)
    expl = dict(score=-1.234567, prior_score=-1.5, evidence_score=0.265433, segment_updates=42,
                expected_reward=0.2253)
    return fields, expl


def run(out: pathlib.Path | None = None, n: int = 5000, repeats: int = 7, show: bool = True) -> dict:
    """Time decoding and encoding at the edge; return the results and write them to ``out`` as JSON."""
    topics = Topics()
    (req_key, request), (click_key, click), (session_key, session) = _inputs()
    src = lambda key: Source("bench", 0, 0, key)  # noqa: E731
    lax_request = TypeAdapter(AdRequest)
    lax_feedback = TypeAdapter(topics.ad_feedback.payload)
    lax_session = TypeAdapter(SessionEvent)
    edge_request = Decoder(topics.ad_requests.payload)
    edge_feedback = Decoder(topics.ad_feedback.payload)
    edge_session = Decoder(topics.sessions.payload)
    struct_feedback = Decoder(topics.ad_feedback.payload, models=False)
    struct_session = Decoder(topics.sessions.payload, models=False)
    for decoder, raw, key in ((edge_request, request, req_key), (edge_feedback, click, click_key),
                              (edge_session, session, session_key)):
        assert not hasattr(decoder.decode_one(raw, src(key)), "error_type"), "the benchmark input is invalid"

    r: dict = {"request_bytes": len(request), "click_bytes": len(click), "session_bytes": len(session)}
    r["request_pydantic_us"] = _per_call_us(lambda: lax_request.validate_json(request), n, repeats)
    r["request_edge_us"] = _per_call_us(lambda: edge_request.decode_one(request, src(req_key)), n, repeats)
    r["click_pydantic_us"] = _per_call_us(lambda: lax_feedback.validate_json(click), n, repeats)
    r["click_edge_us"] = _per_call_us(lambda: edge_feedback.decode_one(click, src(click_key)), n, repeats)
    r["click_struct_us"] = _per_call_us(lambda: struct_feedback.decode_one(click, src(click_key)), n, repeats)
    r["session_pydantic_us"] = _per_call_us(lambda: lax_session.validate_json(session), n, repeats)
    r["session_edge_us"] = _per_call_us(lambda: edge_session.decode_one(session, src(session_key)), n, repeats)
    r["session_struct_us"] = _per_call_us(lambda: struct_session.decode_one(session, src(session_key)), n,
                                          repeats)

    fields, expl = _decision_fields(lax_request.validate_json(request))

    def pydantic_decision() -> bytes:
        return AdDecision(**fields, explanation=Explanation(**expl)).model_dump_json().encode()

    def record_decision() -> bytes:
        return encode_one(AdDecisionRecord(**fields, explanation=ExplanationRecord(**expl)))

    assert AdDecision.model_validate_json(record_decision()) == AdDecision.model_validate_json(pydantic_decision())
    r["decision_pydantic_us"] = _per_call_us(pydantic_decision, n, repeats)
    r["decision_record_us"] = _per_call_us(record_decision, n, repeats)
    r["decision_bytes"] = len(record_decision())
    r["request_speedup"] = r["request_pydantic_us"] / r["request_edge_us"]
    r["decision_speedup"] = r["decision_pydantic_us"] / r["decision_record_us"]
    r["config"] = {"n": n, "repeats": repeats, "clock": "thread CPU time", "python": platform.python_version(),
                   "pydantic": pydantic.VERSION, "msgspec": msgspec.__version__,
                   "cpus_visible": len(os.sched_getaffinity(0)), "load_avg_1min": os.getloadavg()[0]}
    if out is not None:
        out = pathlib.Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r, indent=2) + "\n")
    if show:
        _show(r)
    return r


def _show(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"edge cost per message (µs, thread CPU; request {r['request_bytes']} bytes)")
    for col in ("message", "before: pydantic", "now: edge", "struct only"):
        t.add_column(col, justify="right" if col != "message" else "left")
    t.add_row("ad request (decode)", f"{r['request_pydantic_us']:.2f}", f"{r['request_edge_us']:.2f}", "(same)")
    t.add_row("click (decode)", f"{r['click_pydantic_us']:.2f}", f"{r['click_edge_us']:.2f}",
              f"{r['click_struct_us']:.2f}")
    t.add_row("session (decode)", f"{r['session_pydantic_us']:.2f}", f"{r['session_edge_us']:.2f}",
              f"{r['session_struct_us']:.2f}")
    t.add_row("decision (build + encode)", f"{r['decision_pydantic_us']:.2f}", f"{r['decision_record_us']:.2f}",
              "")
    Console().print(t)
