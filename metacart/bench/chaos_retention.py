"""Retention under faults: real retention workers on the real broker, exact accounting per review and outcome.

Part of ``metacart bench chaos`` (``metacart.bench.chaos`` dispatches the ``retention_*`` faults here).

**What "exactly once" means for retention**, and what a run checks:

- *Decisions.* Every user is reviewed at every review tick ``T`` (a multiple of ``review_interval_s`` in
  event time) that their partition's event time crosses after their first session; with
  ``risk_threshold = 0`` every reviewed user is a decision point, and every decision (``none`` included) is
  a ``RetentionAction``. For each due ``(user, T)`` a reader of ``retention-actions`` with
  ``isolation.level=read_committed`` must see exactly one action: ``no_decision`` counts pairs with none,
  ``multi_decision`` pairs with more than one message, ``different_ad`` pairs whose messages name different
  treatments, ``unexpected_decision`` actions for a pair that was not due.
- *Outcomes.* Every ``RetentionOutcome`` of a visible action that arrives inside its window is learned
  exactly once: one row of ``learn_many`` into its (partition, segment) posterior. Windows here are longer
  than the run (``window_days``), so before the closing phase an action's window closes only through its
  outcome, and the posteriors' update counts (``n_updates`` in each segment state, read back from the
  ``retention-partitions`` changelog through its blocks) must equal the outcomes sent, per (partition,
  segment): ``clicks_sent`` = outcomes sent, ``clicks_lost`` / ``clicks_double`` = learned fewer / more times.
- *Windows.* Every decision's window closes exactly once (its outcome, or its expiry as "not retained").
  At the end one session per user, ``window_days`` + 40 days later, expires every open window (and evicts
  every user before its review decides); then the update counts must equal the distinct visible decisions
  per (partition, segment): ``updates_lost`` / ``updates_double``. A decision the state holds but no reader
  saw (an action decided and never sent) is learned at its expiry without having reached the user, and shows
  as ``updates_double``.
- *Sessions* fold into engagement features at least once (a replay after a crash folds them again); not
  checked here.

``requests`` is the number of due (user, review) pairs; ``offered_per_s`` the session events offered per
second. The ads keys ``ledger_moved_back`` and ``undecided_at`` have no retention meaning: ``undecided_at``
lists the first (user, review day) pairs without an action instead.

Faults: ``retention_kill9x3`` (SIGKILL three times, each replacement with an empty data directory, its
state restored from the changelogs); ``retention_rebalance_sigterm`` / ``retention_rebalance_sigkill`` (a
second worker joins, then the first is stopped with SIGTERM / SIGKILL); ``retention_rebalance_chain``
(1 -> 2 -> 3 workers, each joining under load, then the two oldest stopped with SIGTERM one after the
other); ``retention_broker_restart`` (the broker is stopped and started again under load). A worker that exits by itself (the stall watch
exits a worker whose agent processes nothing while its input waits, :mod:`streams.agents.stall`) is restarted, as a supervisor would, and counted in
``worker_restarts``; ``workers`` counts every worker process of the run.

Traffic: ``users`` users in ``segments`` segments send ``session_start`` events in turn at ``rate`` per
second, event time advancing one day every ``sessions_per_day`` events; reviews are daily, so each day
decides every user once (``users`` decisions a day). Event time starts four years before the wall clock.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from metacart.bench.chaos import BROKER, RETENTION_FAULTS, Records, _has_assignment, _wait
from metacart.bench.chaos_reads import lagging, latest_values, offsets_done
from metacart.processes import WorkerProcess
from policy.segment_state import decode_state
from streams.agents.retention import retention_ledger_group
from streams.app import topics_for
from streams.kafka_io import ensure_topics, make_consumer, make_producer
from streams.pseudonyms import pseudonyms_for
from streams.retention_blocks import BlockStore
from streams.retention_partitions import split_segment_record
from streams.settings import KafkaSettings, Settings
from streams.store import DictStore

DAY = 86400.0


@dataclass(frozen=True)
class RetentionChaosConfig:
    users: int = 400
    """Users, each sending a session in turn (round robin)."""
    segments: int = 16
    """Segments the users are spread over (user i in segment i mod segments)."""
    rate: float = 400.0
    """Offered session events per second."""
    sessions_per_day: int = 400
    """Session events per simulated day: event time advances one day every ``sessions_per_day / rate`` s."""
    outcome_share: float = 0.5
    """Share of the visible actions that get an outcome (stamped a quarter day after the review)."""
    window_days: int = 400
    """Outcome window (event time): longer than the run, so windows close by outcome until the end."""
    between_faults: int = 2400
    """New (user, review) actions seen between two fault steps (and before the first)."""
    after_s: float = 4.0
    """Traffic kept flowing after the last fault step."""
    max_sessions: int = 200_000
    """The generator stops here whatever happens."""
    timeout_s: float = 120.0
    """Longest wait for each phase (a timeout is a result: its counts show it)."""


@dataclass
class _Traffic:
    n_users: int
    sent: int = 0
    first_day: dict[int, int] = field(default_factory=dict)  # partition -> day of its first session
    last_day: dict[int, int] = field(default_factory=dict)  # partition -> day of its last session
    user_partition: dict[str, int] = field(default_factory=dict)
    actions: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    decisions: dict[str, tuple[int, str]] = field(default_factory=dict)  # decision id -> (partition, segment)
    outcomes: Counter = field(default_factory=Counter)  # outcomes sent per (partition, segment)
    records: Records = field(default_factory=Records)  # action records read
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def seen(self) -> int:
        with self.lock:
            return len(self.actions)


def _user(i: int) -> str:
    return f"ru{i:05d}"


def _segment(i: int, cfg: RetentionChaosConfig) -> str:
    return f"rc-{i % cfg.segments:02d}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


def _session(user: int, t: float, cfg: RetentionChaosConfig, tag: str, i: int) -> tuple[bytes, bytes]:
    body = {"schema_version": 1, "user_id": _user(user), "segment": _segment(user, cfg),
            "session_id": f"s{tag}-{i}", "kind": "session_start", "value": 0.0, "event_time": _iso(t)}
    return _user(user).encode(), json.dumps(body).encode()


def _generate(kafka: KafkaSettings, topic: str, traffic: _Traffic, cfg: RetentionChaosConfig, t0: float,
              tag: str) -> None:
    """Session events in event-time order, paced at ``cfg.rate``; records each one's partition."""
    producer = make_producer(kafka)
    start = time.perf_counter()

    def delivered(user: str, day: int):
        def report(err: object, msg: object) -> None:
            if err is None:
                p = msg.partition()
                with traffic.lock:
                    traffic.user_partition[user] = p
                    traffic.first_day[p] = min(traffic.first_day.get(p, day), day)
                    traffic.last_day[p] = max(traffic.last_day.get(p, day), day)
        return report

    for i in range(cfg.max_sessions):
        if traffic.stop.is_set():
            break
        ahead = start + i / cfg.rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        u = i % cfg.users
        key, value = _session(u, t0 + i * DAY / cfg.sessions_per_day, cfg, tag, i)
        producer.produce(topic, key=key, value=value, on_delivery=delivered(_user(u), i // cfg.sessions_per_day))
        producer.poll(0)
        traffic.sent = i + 1
    producer.flush(60)


def _chosen(did: str, share: float) -> bool:
    return zlib.crc32(did.encode()) % 1000 < share * 1000


def _feed(kafka: KafkaSettings, topics, traffic: _Traffic, cfg: RetentionChaosConfig, t0: float,
          raw_of: dict[str, str], done: threading.Event) -> None:
    """Read actions (read_committed); send one outcome for the chosen share of decision ids, once each."""
    consumer = make_consumer(kafka, f"chaos-ret-reader-{uuid.uuid4().hex[:8]}",
                             **{"isolation.level": "read_committed"})
    consumer.subscribe([topics.retention_actions.name])
    producer = make_producer(kafka)
    try:
        while not done.is_set():
            for msg in consumer.consume(num_messages=2000, timeout=0.2):
                if msg.error() or not traffic.records.first(msg.partition(), msg.offset()):
                    continue
                a = json.loads(msg.value())
                did, user = a["decision_id"], raw_of.get(a["user_id"], a["user_id"])
                decided = datetime.fromisoformat(a["decided_at"]).timestamp()
                day = round((decided - t0) / DAY)
                with traffic.lock:
                    traffic.actions[(user, day)].append(a["action"])
                    first = did not in traffic.decisions
                    traffic.decisions.setdefault(did, (msg.partition(), a["segment"]))
                if not (first and _chosen(did, cfg.outcome_share)):
                    continue
                retained = zlib.crc32(did.encode()[::-1]) % 2 == 0
                body = {"schema_version": 1, "decision_id": did, "user_id": user, "segment": a["segment"],
                        "retained": retained, "value": 20.0 if retained else 0.0,
                        "event_time": _iso(decided + DAY / 4)}
                producer.produce(topics.retention_outcomes.name, key=user.encode(), value=json.dumps(body).encode())
                with traffic.lock:
                    traffic.outcomes[(msg.partition(), a["segment"])] += 1
            producer.poll(0)
    finally:
        producer.flush(60)
        consumer.close()


def learned(kafka: KafkaSettings, topic: str) -> dict[tuple[int, str], int]:
    """Updates absorbed by each (partition, segment) posterior of the retention state in changelog ``topic``
    (``<app>-retention-partitions-changelog``), read through its blocks."""
    base = DictStore()
    for key, value in latest_values(kafka, topic).items():
        if value is not None:
            base.tables["partitions"][key.decode()] = value
    out: dict[tuple[int, str], int] = {}
    for key, raw in BlockStore(base).items("segments"):
        partition, segment = key.split("/", 1)
        out[(int(partition), segment)] = decode_state(split_segment_record(raw).adapter_state)[2]
    return out


def run_fault(base: Settings, fault: str, workdir: Path, cfg: RetentionChaosConfig = RetentionChaosConfig(),
              seed: int = 0) -> dict:
    """One retention run with ``fault`` injected; returns its accounting (see the module docstring)."""
    if fault not in RETENTION_FAULTS:
        raise ValueError(f"unknown retention fault {fault!r}; choose from {', '.join(RETENTION_FAULTS)}")
    if not Path(base.retention.artifact).exists():
        raise FileNotFoundError(f"no retention artifact at {base.retention.artifact} (METACART_RETENTION__ARTIFACT)")
    if cfg.users > cfg.sessions_per_day:
        raise ValueError("every user must have a session on day 0: users <= sessions_per_day")
    tag = uuid.uuid4().hex[:8]
    s = base.model_copy(deep=True)
    s.kafka.topic_prefix = f"rchaos{tag}"
    s.worker_id = f"rchaos{tag}"
    s.agents = "retention"
    s.web_port = 0
    r = s.retention
    r.risk_threshold = 0.0  # every reviewed user is a decision point
    r.review_interval_s = r.period_s = DAY
    r.outcome_window_s = cfg.window_days * DAY
    r.outcome_grace_s = 0.0
    r.idle_horizon_s = 30 * DAY
    # The closing phase jumps event time window_days + 40 days ahead and then reads every posterior back:
    # segment expiry (streams.segment_expiry) would by then have deleted them. Expiry is not under test here.
    r.segment_idle_ttl_s = 0.0
    # Event time starts four years before now, aligned to a day: the whole run, closing included, stays
    # behind the wall clock (the event-time skew rule never applies).
    t0 = math.floor((time.time() - 4 * 365 * DAY) / DAY) * DAY
    topics = topics_for(s)
    ensure_topics(s.kafka, topics.all())
    pseudonyms = pseudonyms_for(s)
    raw_of = {(pseudonyms.of(_user(u)) if pseudonyms else _user(u)): _user(u) for u in range(cfg.users)}
    traffic = _Traffic(cfg.users)
    workers: list[WorkerProcess] = []

    alive: list[WorkerProcess] = []  # the workers that should be running
    exits = 0

    def start(name: str) -> WorkerProcess:
        ws = s.model_copy(deep=True)
        ws.store.data_dir = workdir / f"{tag}-{fault}-{name}"
        w = WorkerProcess(ws, workdir / f"{tag}-{fault}-{name}.log").start()
        workers.append(w)
        alive.append(w)
        return w

    # A worker the fault means to end may have exited by itself and been replaced already (``supervised``):
    # then it is no longer in ``alive``, and ending it again is a no-op.
    def kill(w: WorkerProcess) -> None:
        if w in alive:
            alive.remove(w)
        w.kill()

    def stop(w: WorkerProcess) -> None:
        if w in alive:
            alive.remove(w)
        w.stop()

    def supervised(predicate):
        """``predicate``, after restarting (as a supervisor would) a worker that exited by itself."""
        def check() -> bool:
            nonlocal exits
            for w in [w for w in alive if not w.alive()]:
                alive.remove(w)
                exits += 1
                start(f"x{exits}")
            return predicate()
        return check

    def more(n: int, what: str) -> None:
        target = traffic.seen + n
        _wait(supervised(lambda: traffic.seen >= target), cfg.timeout_s, what, workers)

    done = threading.Event()
    feeder = threading.Thread(target=_feed, args=(s.kafka, topics, traffic, cfg, t0, raw_of, done), daemon=True)
    generator = threading.Thread(target=_generate, args=(s.kafka, topics.sessions.name, traffic, cfg, t0, tag),
                                 daemon=True)
    missed: list[str] = []
    changelog = f"{s.worker_id}-retention-partitions-changelog"
    ledger = retention_ledger_group(s)  # where the retention data path commits its input positions
    parts = s.kafka.user_partitions
    t_start = time.monotonic()
    try:
        first = start("w0")
        feeder.start()
        generator.start()
        more(cfg.between_faults, f"{cfg.between_faults} actions")
        if fault == "retention_kill9x3":
            for i in range(3):
                kill(alive[-1])
                start(f"w{i + 1}")
                more(cfg.between_faults, "actions after the restart")
        elif fault == "retention_broker_restart":
            subprocess.check_call([str(BROKER), "stop"])
            time.sleep(3.0)
            subprocess.check_call([str(BROKER), "start"])
            more(cfg.between_faults, "actions after the broker restart")
        else:
            joined = [first]
            for i in range(2 if fault == "retention_rebalance_chain" else 1):
                joined.append(start(f"w{i + 1}"))
                more(cfg.between_faults, f"actions with {len(joined)} workers")
                _wait(lambda: _has_assignment(joined[-1]), cfg.timeout_s, "the new worker's assignment", workers)
                time.sleep(2.0)  # every member holds partitions before one leaves
            for w in joined[:-1]:
                if fault == "retention_rebalance_sigkill":
                    kill(w)
                else:
                    stop(w)
                more(cfg.between_faults, "actions after the rebalance")
        time.sleep(cfg.after_s)
        traffic.stop.set()
        generator.join(60)
        elapsed = time.monotonic() - t_start
        due = _due(traffic)
        # From here on a timeout is a result (counted), not an error.
        _wait(supervised(lambda: due <= traffic.actions.keys()), cfg.timeout_s, "an action for every due review",
              workers, missed)
        time.sleep(1.0)
        done.set()
        feeder.join(60)
        for topic in (topics.sessions.name, topics.retention_outcomes.name):
            before = len(missed)
            _wait(supervised(lambda: offsets_done(s.kafka, ledger, topic, parts)), cfg.timeout_s,
                  f"every message of {topic} consumed", workers, missed)
            if len(missed) > before:  # which partitions' commits stuck, and where
                behind = lagging(s.kafka, ledger, topic, parts)
                missed[-1] += f" (partition: committed, end offsets of those behind: {behind})"
        by_outcome = learned(s.kafka, changelog)
        # Closing: one session per user far ahead expires every open window and evicts every user.
        close_day = max(traffic.last_day.values()) + cfg.window_days + 40
        producer = make_producer(s.kafka)
        for u in range(cfg.users):
            key, value = _session(u, t0 + close_day * DAY + u, cfg, tag, cfg.max_sessions + u)
            producer.produce(topics.sessions.name, key=key, value=value)
        producer.flush(30)
        _wait(supervised(lambda: offsets_done(s.kafka, ledger, topics.sessions.name, parts)), cfg.timeout_s,
              "the closing sessions consumed", workers, missed)
        time.sleep(1.0)
        final = learned(s.kafka, changelog)
    finally:
        traffic.stop.set()
        done.set()
        for w in workers:
            w.stop()
    result = _account(fault, due, traffic, by_outcome, final, elapsed)
    result["timed_out"] = missed
    result["worker_restarts"] = exits  # workers that exited by themselves (restarted), beyond the fault's own
    result["workers"] = len(workers)
    result["reader_rereads"] = traffic.records.rereads  # action records the reader took twice (not counted twice)
    return result


def _due(traffic: _Traffic) -> set[tuple[str, int]]:
    """The (user, review day) pairs that must get an action: every day after the partition's first one up to
    its last, for each user (all users have their first session on day 0)."""
    with traffic.lock:
        return {(user, day) for user, p in traffic.user_partition.items()
                for day in range(traffic.first_day[p] + 1, traffic.last_day[p] + 1)}


def _account(fault: str, due: set[tuple[str, int]], traffic: _Traffic, by_outcome: dict, final: dict,
             elapsed: float) -> dict:
    seen = traffic.actions
    missing = sorted(pair for pair in due if not seen.get(pair))
    multi = sum(1 for pair in due if len(seen.get(pair, ())) > 1)
    different = sum(1 for pair in due if len(set(seen.get(pair, ()))) > 1)
    unexpected = sum(len(v) for pair, v in seen.items() if pair not in due)
    visible = Counter(traffic.decisions.values())  # distinct visible decisions per (partition, segment)
    lost = double = updates_lost = updates_double = 0
    for bucket in set(visible) | set(final) | set(traffic.outcomes) | set(by_outcome):
        sent, applied = traffic.outcomes.get(bucket, 0), by_outcome.get(bucket, 0)
        lost += max(sent - applied, 0)
        double += max(applied - sent, 0)
        decided, updates = visible.get(bucket, 0), final.get(bucket, 0)
        updates_lost += max(decided - updates, 0)
        updates_double += max(updates - decided, 0)
    return {"fault": fault, "requests": len(due), "offered_per_s": round(traffic.sent / elapsed, 1),
            "no_decision": len(missing), "multi_decision": multi, "different_ad": different,
            "unexpected_decision": unexpected, "clicks_sent": sum(traffic.outcomes.values()),
            "clicks_lost": lost, "clicks_double": double, "updates_lost": updates_lost,
            "updates_double": updates_double, "sessions": traffic.sent, "actions_seen": sum(map(len, seen.values())),
            "undecided_at": [list(pair) for pair in missing[:20]]}
