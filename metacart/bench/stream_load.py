"""The load around a measured worker in ``metacart bench stream``: request payloads, the backlog produced
before the clock starts, reads of a topic's end offsets and record timestamps, and the three child
processes (the feedback loop that clicks decisions, the generator at a fixed offered load, the plain-client
ceiling loop). Nothing here measures the worker; :mod:`metacart.bench.stream` does.
"""

from __future__ import annotations

import json
import re
import time
import uuid
import zlib
from datetime import datetime, timezone

import numpy as np

from metacart.live.ads import request_payloads
from streams.kafka_io import client_config, make_producer
from streams.settings import Settings

PLACEHOLDER_TIME = "1970-01-01T00:00:00+00:00"
"""Event time of a payload built with ``step_s=0``: the generator replaces it with the send time."""
_REQUEST_ID = re.compile(rb'"request_id":"([^"]+)"')


def clicked(request_id: bytes, share: float) -> bool:
    """Whether the feedback process clicks this decision: a stable hash of the id, ``share`` of them."""
    return zlib.crc32(request_id) % 10_000 < share * 10_000



# --- payloads --------------------------------------------------------------------------------------

def payloads(n: int, seed: int, t0: float, prefix: str, step_s: float = 1e-3,
              pool: int = 20_000) -> list[tuple[bytes, bytes]]:
    """``n`` ad requests of held-out segments, one per ``step_s`` of event time from ``t0``.

    ``pool`` distinct requests are drawn from the simulator; beyond that they repeat with their own
    request id and event time (spliced into the JSON, so that a large backlog is cheap to build).
    """
    from policy.simulator.market import Market

    market = Market()
    rng = np.random.default_rng(seed)
    m = min(n, pool)
    reqs = market.sample_requests(rng.choice(market.heldout_segments, size=m), rng)
    base = request_payloads(market, reqs, np.zeros(m), [f"{prefix}-x{i}" for i in range(m)])
    out = []
    for i in range(n):
        key, value = base[i % m]
        t = PLACEHOLDER_TIME if step_s == 0 else datetime.fromtimestamp(t0 + i * step_s, timezone.utc).isoformat()
        value = value.replace(f'"{prefix}-x{i % m}"'.encode(), f'"{prefix}-{i}"'.encode(), 1)
        out.append((key, value.replace(PLACEHOLDER_TIME.encode(), t.encode(), 1)))
    return out


def produce(settings: Settings, topic: str, payloads: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings.kafka, **{"linger.ms": 20, "batch.size": 1_000_000})
    for key, value in payloads:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{left} backlog messages not delivered to {topic}")


def end_offsets(settings: Settings, topic: str, attempts: int = 20) -> dict[int, int]:
    """End offset of every partition of ``topic`` (retried while a new topic's leaders are elected)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(client_config(settings.kafka) | {"group.id": f"bench-offsets-{uuid.uuid4().hex[:6]}"})
    try:
        for attempt in range(attempts):
            try:
                parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
                return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
            except KafkaException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


def wait_for(settings: Settings, topic: str, start: dict[int, int], n: int, stall_s: float,
              alive=lambda: True) -> int:
    """Wait until ``n`` records were appended to ``topic`` after ``start`` (or none came for ``stall_s``)."""
    got, last_change, last_got = 0, time.monotonic(), -1
    while got < n and time.monotonic() - last_change < stall_s and alive():
        time.sleep(0.5)
        end = end_offsets(settings, topic)
        got = sum(end[p] - start.get(p, 0) for p in end)
        if got != last_got:
            last_got, last_change = got, time.monotonic()
    return got


def record_timestamps(settings: Settings, topic: str, start: dict[int, int], n: int) -> np.ndarray:
    """Record timestamps (ms) of the ``n`` records after ``start`` on ``topic``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(client_config(settings.kafka) | {"group.id": f"bench-ts-{uuid.uuid4().hex[:6]}",
                                                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    out: list[int] = []
    idle = time.monotonic()
    while len(out) < n and time.monotonic() - idle < 10:
        msgs = consumer.consume(num_messages=10000, timeout=0.5)
        if msgs:
            idle = time.monotonic()
        out.extend(m.timestamp()[1] for m in msgs if m.error() is None)
    consumer.close()
    return np.array(out, dtype=np.int64)


# --- child processes -------------------------------------------------------------------------------

def feedback_loop(connection: dict, decisions: str, feedback: str, share: float, delay_s: float,
                   stop, counts) -> None:
    """Click ``share`` of the decisions read (decided ad, event time = request time + ``delay_s``)."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer(connection | {"group.id": f"bench-feedback-{uuid.uuid4().hex[:6]}",
                                      "auto.offset.reset": "latest", "fetch.wait.max.ms": 20})
    producer = Producer(connection | {"linger.ms": 5})
    consumer.subscribe([decisions])
    seen = sent = 0
    while not stop.is_set():
        msgs = consumer.consume(num_messages=5000, timeout=0.1)
        for m in msgs:
            if m.error() is not None:
                continue
            seen += 1
            rid = _REQUEST_ID.search(m.value())
            if rid is None or not clicked(rid.group(1), share):
                continue
            d = json.loads(m.value())
            t = datetime.fromisoformat(d["request_time"]).timestamp() + delay_s
            body = {"schema_version": 1, "type": "click", "request_id": d["request_id"], "segment": d["segment"],
                    "ad_id": d["ad_id"], "event_time": datetime.fromtimestamp(t, timezone.utc).isoformat()}
            producer.produce(feedback, key=m.key(), value=json.dumps(body, separators=(",", ":")).encode())
            sent += 1
        producer.poll(0)
        counts[0], counts[1] = seen, sent
    producer.flush(10)
    consumer.close()
    counts[0], counts[1] = seen, sent


def generator_loop(connection: dict, topic: str, payloads: list, rate: float, ready, go, report) -> None:
    """Produce ``payloads`` at ``rate``/s, each stamped with its send time; report the achieved pace."""
    from confluent_kafka import Producer

    producer = Producer(connection | {"linger.ms": 0})
    ready.set()
    go.wait(120)
    n = len(payloads)
    behind: list[float] = []
    t_start = time.perf_counter()
    first = last = None
    i = 0
    while i < n:
        now = time.perf_counter()
        due = min(n, int((now - t_start) * rate) + 1)
        if due > i:
            behind.append((now - (t_start + (due - 1) / rate)) * 1e3)
        while i < due:
            key, value = payloads[i]
            stamp = datetime.now(timezone.utc).isoformat()
            producer.produce(topic, key=key, value=value.replace(PLACEHOLDER_TIME.encode(), stamp.encode(), 1))
            last = time.perf_counter()
            first = first or last
            i += 1
        producer.poll(0)
        time.sleep(max(0.0, t_start + i / rate - time.perf_counter()))
    producer.flush(30)
    report.put({"sent": n, "achieved_per_s": round((n - 1) / max(last - first, 1e-9), 1),
                "behind_schedule_p99_ms": round(float(np.percentile(behind, 99)), 2) if behind else 0.0,
                "behind_schedule_max_ms": round(float(max(behind, default=0.0)), 2)})


def ceiling_loop(connection: dict, in_topic: str, out_topic: str, n: int, ready, cpu) -> None:
    """The plain loop: consume → validate (the worker's edge decoder) → produce a reply, batched polls."""
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
    cpu0 = None
    while done < n and time.monotonic() - idle_since < 60:
        msgs = consumer.consume(num_messages=1000, timeout=0.1)
        if msgs:
            idle_since = time.monotonic()
            cpu0 = time.process_time() if cpu0 is None else cpu0
        for m in msgs:
            if m.error():
                continue
            event = decoder.decode_one(m.value(), Source(m.topic(), m.partition(), m.offset(), m.key()))
            if isinstance(event, DeadLetter):
                continue
            reply = {"request_id": event.request_id, "ad_id": event.candidates[0].ad_id}
            while True:
                try:
                    producer.produce(out_topic, key=m.key(), value=json.dumps(reply).encode())
                    break
                except BufferError:
                    producer.poll(0.01)
            done += 1
        producer.poll(0)
    producer.flush(30)
    cpu.value = (time.process_time() - cpu0) / max(done, 1) if cpu0 is not None else 0.0
    consumer.close()


def transaction_floor_loop(connection: dict, topic: str, partitions: int, rate: float, seconds: float,
                           interval_s: float, retry_backoff_ms: int, ready, go, report) -> None:
    """The exactly-once commit cadence with no engine: ``rate`` messages/s (each stamped with its due time),
    one transaction (messages + offsets of a ledger-like group) as soon as ``interval_s`` passed since the
    last one began. Messages due while a commit is in flight are produced after it, into the next
    transaction, as the worker holds them (``streams.agents.delivery``); messages spread over ``topic``'s
    ``partitions`` as decisions over the segment partitions. Reports commit durations."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    group = f"bench-floor-{uuid.uuid4().hex[:6]}"
    producer = Producer(connection | {"linger.ms": 1, "transactional.id": group,
                                      "retry.backoff.ms": retry_backoff_ms})
    producer.init_transactions(30)
    metadata = Consumer(connection | {"group.id": group}).consumer_group_metadata()
    ready.set()
    go.wait(120)
    n = int(rate * seconds)
    commits: list[float] = []
    t_start = time.perf_counter()
    last_commit = t_start
    i = 0
    producer.begin_transaction()
    while i < n:
        now = time.perf_counter()
        while i < n and t_start + i / rate <= now:
            stamp = time.time() - (now - (t_start + i / rate))
            producer.produce(topic, value=json.dumps({"i": i, "t": stamp}).encode(), partition=i % partitions)
            i += 1
        if now - last_commit >= interval_s:
            last_commit = now
            producer.send_offsets_to_transaction([TopicPartition(topic, 0, i)], metadata, 30)
            producer.commit_transaction(30)
            commits.append(time.perf_counter() - now)
            producer.begin_transaction()
        time.sleep(0.0005)
    producer.commit_transaction(30)
    arr = np.asarray(commits) * 1e3
    report.put({"messages": n, "commits": len(commits),
                "commit_p50_ms": round(float(np.percentile(arr, 50)), 2) if arr.size else None,
                "commit_p99_ms": round(float(np.percentile(arr, 99)), 2) if arr.size else None})
