"""Privacy against the real broker: raw user ids never leave the edge; erasure survives a restore.

The scan feeds distinctive raw ids through a real worker (ads and retention agents: requests, sessions,
outcomes, malformed input of each kind) and then searches every byte the worker wrote: its RocksDB
files (raw bytes, and every key and value read back through rocksdict), every changelog and output
topic (dead letters' base64 payloads decoded), and its log. The inputs themselves, which the shop
writes with raw ids, are the positive control; so are the pseudonyms found where the ids were.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient
from rocksdict import AccessType, Options, Rdict

from metacart.processes import WorkerProcess
from streams.app import topics_for
from streams.kafka_io import client_config, make_consumer
from streams.pseudonyms import pseudonyms_for
from streams.retention_blocks import BlockStore
from streams.retention_state import TABLES
from streams.store import DictStore
from streams.settings import KafkaSettings, Settings, settings_env

from .conftest import REPO, Reader, json_values, produce, start_worker
from .helpers import counter, latest_stats, mixed_requests
from .test_retention_flow import DAY, SEGMENTS, _iso

RUN = uuid.uuid4().hex[:8]
RAW = [f"shopper-{RUN}-{i:02d}" for i in range(12)]


def _session(user: str, day: float, kind: str = "session_start", value: float = 0.0) -> tuple[bytes, bytes]:
    body = {"schema_version": 1, "user_id": user, "segment": SEGMENTS[hash(user) % 2], "session_id": f"s{day}",
            "kind": kind, "value": value, "event_time": _iso(day)}
    return user.encode(), json.dumps(body).encode()


def _retention_settings(s: Settings, artifact: Path) -> Settings:
    s.retention.artifact = artifact
    s.retention.risk_threshold = 0.0
    s.retention.review_interval_s = s.retention.period_s = s.retention.outcome_window_s = 7 * DAY
    s.retention.outcome_grace_s = 0.0
    s.retention.batch_within_s = 0.02
    s.policy.eps = 1.0  # treatments, so that contact histories exist
    return s


def drain(kafka: KafkaSettings, topic: str) -> list:
    """Every message of ``topic``, from the first offset to the end at the time of the call."""
    # End of partition as librdkafka sees it: a transactional topic ends with a commit marker, which is
    # never delivered as a message.
    consumer = make_consumer(kafka, f"scan-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False,
                                                                      "enable.partition.eof": True})
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30) for p in parts}
        todo = {p for p, (lo, hi) in ends.items() if hi > lo}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in parts])
        out = []
        deadline = time.monotonic() + 60
        while todo and time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is None:
                    out.append(m)
                    if m.offset() >= ends[m.partition()][1] - 1:
                        todo.discard(m.partition())
                elif m.error().code() == KafkaError._PARTITION_EOF and m.offset() >= ends[m.partition()][1]:
                    todo.discard(m.partition())
        assert not todo, f"{topic}: partitions {todo} not read to the end"
        return out
    finally:
        consumer.close()


def _blobs(msg) -> list[bytes]:
    """Key and value of a message, plus what a dead letter carries base64-encoded."""
    blobs = [msg.key() or b"", msg.value() or b""]
    try:
        body = json.loads(msg.value() or b"null")
    except ValueError:
        return blobs
    if isinstance(body, dict):
        blobs += [base64.b64decode(body[k]) for k in ("original_b64", "original_key_b64") if body.get(k)]
    return blobs


def _tables(data_dir: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every key and value of every RocksDB table under ``data_dir`` (read-only, as Faust wrote them)."""
    out: dict[str, list[tuple[bytes, bytes]]] = {}
    for db_path in sorted(data_dir.rglob("*.db")):
        db = Rdict(str(db_path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            out[db_path.name] = [(k, v) for k, v in db.items() if not k.startswith(b"__faust\x00")]
        finally:
            db.close()
    return out


def _retention_state(tables: dict[str, list[tuple[bytes, bytes]]]) -> BlockStore:
    """The retention state held in the RocksDB ``tables`` of a worker, read through its blocks."""
    stored = DictStore()
    for name, rows in tables.items():
        for table in TABLES:
            if name.startswith(f"retention-{table}"):
                stored.tables[table].update((k.decode(), v) for k, v in rows)
    return BlockStore(stored)


def hits(blobs, needles: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for blob in blobs:
        for n in needles:
            c = blob.count(n.encode())
            if c:
                found[n] = found.get(n, 0) + c
    return found


def test_no_raw_user_id_in_state_changelogs_outputs_or_logs(settings, workers, retention_artifact):
    s = _retention_settings(settings, retention_artifact)
    topics = topics_for(s)
    pseudonyms = pseudonyms_for(s)
    back = {pseudonyms.of(u): u for u in RAW}
    requests = []
    for i, (key, value) in enumerate(mixed_requests(48, f"pv{RUN}")):
        requests.append((key, json.dumps(dict(json.loads(value), user_id=RAW[i % len(RAW)])).encode()))
    bad_request = json.dumps(dict(json.loads(requests[0][1]), context="abc")).encode()
    history = [_session(u, 0.2 + 0.1 * i) for i, u in enumerate(RAW)] + [_session(u, 7.5) for u in RAW]
    bad_sessions = [_session(RAW[1], 7.6, "page_view", 5.0),
                    (RAW[2].encode(), f'{{"user_id": "{RAW[2]}", broken'.encode())]
    produce(s.kafka, topics.ad_requests.name, requests + [(b"m00-c00", bad_request)])
    produce(s.kafka, topics.sessions.name, history + bad_sessions)
    decisions = Reader(s.kafka, topics.ad_decisions.name)
    actions = Reader(s.kafka, topics.retention_actions.name)
    stats = Reader(s.kafka, topics.worker_stats.name)
    worker = start_worker(workers, s)
    try:
        decisions.wait_for(lambda ms: len(ms) >= len(requests), 120, "every ad decided")
        actions.wait_for(lambda ms: len(ms) >= len(RAW), 90, "the day-7 review")
        answered = json_values(actions.seen)[:6]
        outcomes = [(back[a["user_id"]].encode(), json.dumps(
            {"schema_version": 1, "decision_id": a["decision_id"], "user_id": back[a["user_id"]],
             "segment": a["segment"], "retained": True, "value": 12.0, "event_time": _iso(8.0)}).encode())
            for a in answered]
        produce(s.kafka, topics.retention_outcomes.name, outcomes)
        stats.wait_for(lambda ms: counter(ms, "retention_outcomes_applied") >= len(answered)
                       and counter(ms, "retention_dead_letters") >= 2 and counter(ms, "dead_letters") >= 1,
                       60, "outcomes applied and 3 dead letters")
        time.sleep(1.5)  # a state flush interval and a commit interval
    except AssertionError:
        print(worker.log_tail())
        raise
    finally:
        for r in (decisions, actions, stats):
            r.close()
    worker.stop()

    # The inputs carry raw ids (the shop writes them): the scan can find them.
    assert set(hits([b for m in drain(s.kafka, topics.sessions.name) for b in _blobs(m)], RAW)) == set(RAW)

    data_dir = s.store.data_dir
    files = [p.read_bytes() for p in data_dir.rglob("*") if p.is_file()]
    tables = _tables(data_dir)
    assert files and tables
    stored = [b for rows in tables.values() for kv in rows for b in kv]
    admin = AdminClient(client_config(s.kafka))
    changelogs = sorted(t for t in admin.list_topics(timeout=30).topics if t.startswith(f"{s.worker_id}-"))
    assert len(changelogs) >= 5  # the ads table, four retention tables (and the leader topic)
    outputs = [topics.ad_decisions.name, topics.retention_actions.name, topics.dead_letters.name,
               topics.worker_stats.name]
    written = {t: [b for m in drain(s.kafka, t) for b in _blobs(m)] for t in changelogs + outputs}
    log = worker.log_path.read_bytes()

    report = {"rocksdb files": hits(files, RAW), "rocksdb keys and values": hits(stored, RAW),
              **{t: hits(blobs, RAW) for t, blobs in written.items()}, "worker log": hits([log], RAW)}
    print(f"privacy scan: {len(RAW)} raw ids, {len(files)} files, {len(stored)} stored keys+values, "
          f"{sum(len(b) for b in written.values())} blobs in {len(written)} topics, {len(log)} log bytes")
    assert all(not found for found in report.values()), report

    # ...while their pseudonyms are there: the users' rows (in the state's blocks), decisions, actions, dead letters.
    assert {k for k, _ in _retention_state(tables).items("users")} == set(back)
    for t in outputs[:3]:
        assert hits(written[t], list(back)), t

    # The log export (`metacart logs export`) of what the worker decided: pseudonyms only.
    exported = _export(s, settings.store.data_dir.parent / "export")
    found = hits(exported, RAW)
    print(f"privacy scan of the exported log: {len(exported)} blobs, {sum(map(len, exported))} bytes, "
          f"raw ids found: {found}")
    assert not found, found
    assert set(hits(exported, list(back))) == set(back)  # every user's pseudonym is in the user_id column
    # Positive control: the same export with pseudonymisation off carries the raw ids, and the scan finds them.
    control = _export(s, settings.store.data_dir.parent / "export-control", {"METACART_PRIVACY__PSEUDONYMISE": "false"})
    assert set(hits(control, RAW)) == set(RAW)


def _export(s: Settings, out: Path, extra_env: dict[str, str] | None = None) -> list[bytes]:
    """Run `metacart logs export --out OUT` on the worker's topics; every file's bytes and every decoded value.

    Parquet pages are compressed, so the files are also read back through pyarrow and every row dumped.
    """
    import pyarrow.parquet as pq

    env = {**settings_env(s, dict(os.environ)), "METACART_ADS__ATTRIBUTION_WINDOW_S": "1", **(extra_env or {})}
    cli = subprocess.run([sys.executable, "-m", "metacart.cli", "logs", "export", "--out", str(out)], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    assert cli.returncode == 0 and "wrote" in cli.stdout, cli.stdout + cli.stderr
    files = sorted(p for p in out.rglob("*") if p.is_file())
    blobs = [p.read_bytes() for p in files]
    blobs += [json.dumps(pq.read_table(p).to_pylist(), default=str).encode() for p in files if p.suffix == ".parquet"]
    assert any(p.suffix == ".parquet" for p in files), files
    return blobs


def test_forget_erases_a_user_and_a_restored_worker_does_not_bring_them_back(settings, workers,
                                                                          retention_artifact):
    s = _retention_settings(settings, retention_artifact)
    s.agents = "retention"
    topics = topics_for(s)
    pseudonyms = pseudonyms_for(s)
    users = RAW[:6]
    back = {pseudonyms.of(u): u for u in users}
    produce(s.kafka, topics.sessions.name, [_session(u, 0.2 + 0.1 * i) for i, u in enumerate(users)]
            + [_session(u, 7.5) for u in users])
    stats = Reader(s.kafka, topics.worker_stats.name)
    actions = Reader(s.kafka, topics.retention_actions.name)
    first = start_worker(workers, s, "first")
    try:
        actions.wait_for(lambda ms: len(ms) >= len(users), 90, "the day-7 review")
        contacted = [a["user_id"] for a in json_values(actions.seen) if a["action"] != "none"]
        assert contacted, "nobody was contacted: no contact history to erase"
        gone = contacted[0]  # a contacted user: a row, an open action and a contact history
        target = back[gone]
        kept = [p for p in back if p != gone]
        cli = subprocess.run([sys.executable, "-m", "metacart.cli", "forget", "--user", target],
                             env=settings_env(s, dict(os.environ)), cwd=REPO, capture_output=True, text=True,
                             timeout=60)
        assert cli.returncode == 0 and f"of user {target} sent" in cli.stdout, cli.stderr
        stats.wait_for(lambda ms: counter(ms, "retention_erasures") >= 1, 30, "the erasure applied")
        time.sleep(1.5)
    except AssertionError:
        print(first.log_tail())
        raise
    first.stop()

    # A second worker with an empty data dir rebuilds every table from the changelogs.
    s.store.data_dir = s.store.data_dir.parent / "worker-restored"
    second = WorkerProcess(s, s.store.data_dir.parent / "worker-restored.log").start()
    workers.append(second)
    produce(s.kafka, topics.sessions.name, [_session(back[kept[0]], 7.7)])  # processed after recovery
    try:
        stats.wait_for(lambda ms: any(st["worker"].endswith(f":{second.pid}")
                                      and st["counters"].get("retention_sessions", 0) >= 1
                                      for st in latest_stats(ms).values()), 90, "the restored worker")
        time.sleep(1.0)
    except AssertionError:
        print(second.log_tail())
        raise
    finally:
        stats.close()
        actions.close()
    second.stop()

    tables = _tables(s.store.data_dir)
    raw = [v for name, rows in tables.items() if name.startswith("retention-") for _, v in rows]
    assert raw and not hits(raw, [gone])  # no block (nor any other value) of the restored worker holds them
    state = _retention_state(tables)  # the restored worker's state, read as a worker reads it (blocks)
    assert {k for k, _ in state.items("users")} == set(kept)
    for table in ("actions", "partitions"):
        values = [v for _, v in state.items(table)]
        assert values and hits(values, kept), table  # the others' open actions and budget records are still there
    # In the changelog, every block that ever held the target ends with a tombstone.
    last: dict[bytes, bytes | None] = {}
    held = set()
    for m in drain(s.kafka, f"{s.worker_id}-retention-partitions-changelog"):
        last[m.key()] = m.value()
        if m.value() is not None and gone.encode() in m.value():
            held.add(m.key())
    assert held and all(last[k] is None for k in held)
