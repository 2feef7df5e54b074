"""``metacart bench stream``: one real worker on the real broker, against a plain-client ceiling.

1. Throughput: ``n`` requests are produced at once; decisions/s = n / (time from the first produce to
   the n-th decision read back).
2. Latency at a fixed offered load (``load_rate`` requests/s for ``load_s`` seconds, paced in 5 ms
   steps): milliseconds from producing each request to reading its decision (p50, p99), including
   the Faust batch wait (``METACART_ADS__BATCH_WITHIN_S``).
3. Ceiling: the same ``n`` messages through a plain confluent-kafka loop in its own process
   (consume → validate with the same edge decoder → produce a reply), timed the same way.
Worker and ceiling run one at a time, each in its own process, on the same broker.
"""

from __future__ import annotations

import json
import multiprocessing
import time
import uuid
from pathlib import Path

import numpy as np

from metacart.processes import WorkerProcess
from streams.app import topics_for
from streams.kafka_io import client_config, ensure_topics, make_producer, tail_consumer, wait_for_broker
from metacart.live.ads import request_payloads
from streams.pseudonyms import with_run_key
from streams.settings import Settings
from streams.topics import TopicSpec

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: event times are synthetic, one request per ms


def _payloads(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    from policy.simulator.market import Market

    market = Market()
    rng = np.random.default_rng(seed)
    reqs = market.sample_requests(rng.choice(market.heldout_segments, size=n), rng)
    ids = [f"b{seed}-{i}" for i in range(n)]
    return request_payloads(market, reqs, T0 + np.arange(n) * 1e-3, ids)


def _reader(settings: Settings, topic: str):
    return tail_consumer(settings.kafka, topic, **{"fetch.wait.max.ms": 5})


def _throughput(settings: Settings, in_topic: str, out_topic: str, payloads: list, timeout_s: float
                ) -> tuple[float, int]:
    """(messages/s from first produce to last reply read, replies read)."""
    consumer = _reader(settings, out_topic)
    producer = make_producer(settings.kafka)
    t0 = time.perf_counter()
    for key, value in payloads:
        producer.produce(in_topic, key=key, value=value)
        producer.poll(0)
    producer.flush(30)
    got = 0
    t_last = t0
    deadline = time.monotonic() + timeout_s
    while got < len(payloads) and time.monotonic() < deadline:
        msgs = consumer.consume(num_messages=10000, timeout=0.2)
        ok = sum(1 for m in msgs if m.error() is None)
        if ok:
            got += ok
            t_last = time.perf_counter()
    consumer.close()
    return got / max(t_last - t0, 1e-9), got


def _latency(settings: Settings, rate: float, seconds: float, seed: int = 1) -> dict:
    topics = topics_for(settings)
    payloads = _payloads(int(rate * seconds), seed)
    consumer = _reader(settings, topics.ad_decisions.name)
    producer = make_producer(settings.kafka, **{"linger.ms": 0})
    sent_at: dict[str, float] = {}
    lat: list[float] = []
    n = min(len(payloads), int(rate * seconds))
    step = 0.005
    t_start = time.perf_counter()
    i = 0
    while i < n or (len(lat) < n and time.perf_counter() - t_start < seconds + 10):
        now = time.perf_counter()
        due = min(n, int((now - t_start) * rate))
        while i < due:
            key, value = payloads[i]
            producer.produce(topics.ad_requests.name, key=key, value=value)
            sent_at[f"b{seed}-{i}"] = time.perf_counter()
            i += 1
        producer.poll(0)
        for m in consumer.consume(num_messages=1000, timeout=step):
            if m.error() is None:
                t = sent_at.pop(json.loads(m.value())["request_id"], None)
                if t is not None:
                    lat.append((time.perf_counter() - t) * 1e3)
    consumer.close()
    arr = np.array(lat) if lat else np.array([np.nan])
    return {"offered_per_s": rate, "requests": n, "answered": len(lat),
            "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def _ceiling_loop(connection: dict, in_topic: str, out_topic: str, n: int, ready) -> None:
    """The plain loop: consume → validate (the edge's AdRequest decoder) → produce a reply, batched polls."""
    from confluent_kafka import Consumer, Producer

    from streams.edge import Decoder, Source
    from streams.events import AdRequest, DeadLetter

    decoder = Decoder(AdRequest)
    consumer = Consumer(connection | {"group.id": f"ceiling-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "fetch.wait.max.ms": 5})
    producer = Producer(connection | {"linger.ms": 2, "partitioner": "murmur2_random"})
    consumer.subscribe([in_topic])
    ready.set()
    done = 0
    idle_since = time.monotonic()
    while done < n and time.monotonic() - idle_since < 30:
        msgs = consumer.consume(num_messages=1000, timeout=0.1)
        if msgs:
            idle_since = time.monotonic()
        for m in msgs:
            if m.error():
                continue
            event = decoder.decode_one(m.value(), Source(m.topic(), m.partition(), m.offset(), m.key()))
            if isinstance(event, DeadLetter):
                continue
            reply = {"request_id": event.request_id, "ad_id": event.candidates[0].ad_id}
            producer.produce(out_topic, key=m.key(), value=json.dumps(reply).encode())
            done += 1
        producer.poll(0)
    producer.flush(30)
    consumer.close()


def _start_worker(settings: Settings, log: Path) -> WorkerProcess:
    from metacart.demo import ensure_artifact

    ensure_artifact(settings.policy.artifact)
    worker = WorkerProcess(settings, log).start()
    topics = topics_for(settings)
    warm = _payloads(200, seed=99)
    rate, got = _throughput(settings, topics.ad_requests.name, topics.ad_decisions.name, warm, 180)
    if got < len(warm):
        worker.stop()
        raise RuntimeError(f"worker did not answer the warm-up ({got}/{len(warm)}); log:\n{worker.log_tail()}")
    return worker


def run(settings: Settings, out: Path | None = None, n: int = 30000, load_rate: float = 1000.0,
        load_s: float = 15.0) -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    wait_for_broker(settings.kafka)
    tag = uuid.uuid4().hex[:8]
    s = with_run_key(settings)  # a random pseudonym key unless one is configured
    s = s.model_copy(deep=True)
    s.kafka.topic_prefix = f"bench-{tag}"
    s.worker_id = f"bench-{tag}"
    s.store.data_dir = Path("var") / f"bench-{tag}"
    topics = topics_for(s)
    ensure_topics(s.kafka, topics.all())
    payloads = _payloads(n, seed=0)

    console.print(f"[bold]bench stream[/]: starting a worker ({s.worker_id}) ...")
    worker = _start_worker(s, Path("var") / f"bench-{tag}.log")
    try:
        console.print(f"throughput: {n} requests ...")
        rate, got = _throughput(s, topics.ad_requests.name, topics.ad_decisions.name, payloads, 300)
        console.print(f"latency at {load_rate:.0f} requests/s for {load_s:.0f}s ...")
        latency = _latency(s, load_rate, load_s)
    finally:
        worker.stop()

    console.print("ceiling: plain confluent-kafka consume → validate → produce ...")
    in_topic, out_topic = f"bench-{tag}.ceiling-in", f"bench-{tag}.ceiling-out"
    parts = topics.ad_requests.partitions
    ensure_topics(s.kafka, [TopicSpec(in_topic, "segment", parts, bytes, "ceiling input"),
                            TopicSpec(out_topic, "segment", parts, bytes, "ceiling output")])
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(
        target=_ceiling_loop, args=(client_config(s.kafka), in_topic, out_topic, n, ready))
    proc.start()
    ready.wait(60)
    time.sleep(3.0)  # let the ceiling consumer join its group before the clock starts
    ceiling, ceiling_got = _throughput(s, in_topic, out_topic, payloads, 300)
    proc.join(60)

    result = {
        "decisions_per_s": round(rate, 1),
        "decided": got,
        "requests": n,
        "p50_ms": round(latency["p50_ms"], 2),
        "p99_ms": round(latency["p99_ms"], 2),
        "latency_at_load": latency,
        "ceiling_per_s": round(ceiling, 1),
        "ceiling_answered": ceiling_got,
        "ratio": round(rate / ceiling, 3) if ceiling else None,
        "batch_max": s.ads.batch_max,
        "batch_within_s": s.ads.batch_within_s,
    }
    table = Table(title="metacart bench stream (one worker process, local broker)")
    for col in ("metric", "value"):
        table.add_column(col)
    table.add_row("decisions/s (saturated)", f"{rate:,.0f}  ({got}/{n} decided)")
    table.add_row(f"p50 / p99 latency at {load_rate:.0f}/s", f"{latency['p50_ms']:.1f} / {latency['p99_ms']:.1f} ms "
                  f"({latency['answered']}/{latency['requests']} answered)")
    table.add_row("ceiling (plain client loop)", f"{ceiling:,.0f} msg/s")
    table.add_row("ratio worker / ceiling", f"{result['ratio']}")
    console.print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {out}")
    return result
