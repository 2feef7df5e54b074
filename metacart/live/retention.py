"""The retention world, live against Kafka: a closed loop around the worker's retention agent.

The held-out segments of the artifact's world (its manifest names them) play in simulated event time
that runs ``speed`` times faster than the wall clock. The world moves in rounds of ``W`` days (the
outcome window). Alignment with the engine (see :func:`aligned_settings`): reviews, budget periods and
outcome windows all last ``W`` days, and round ``r`` starts at a review tick ``T_r`` (a multiple of
``W`` days since the epoch).

Round ``r``:

1. Session and purchase events of every user's window are produced when simulated time reaches their
   event time — never earlier — so the engine's watermarks move as in production.
2. The engine reviews at ``T_r`` once a partition's watermark passes it. The world applies the actions
   stamped ``decided_at == T_r`` at ``T_r + lag`` (each user's decision point): simulated time pauses
   there for ``action_wait_s`` of wall clock while actions are read. An action that comes later is
   counted as ``actions_late`` and not applied (the user's outcome is still reported truthfully).
3. The world draws the window ``[T_r + lag, T_r + lag + W)`` under those actions
   (:meth:`RetentionWorld.run_window`) and, for every action received, produces a ``RetentionOutcome``
   (``retained`` = a purchase in the window, ``value`` = its purchase value) stamped at the window's end,
   which the engine accepts because its grace (allowed lateness) is at least ``lag``.

The world knows the truth, so every round is scored: the expected value and cost of each user's window
under the actions taken against doing nothing (closed form), the realised spend against the budget, and
the reserved cost per round against the total cap. Round 0 has no history behind it, so the engine
cannot review before it and it plays untreated.
"""

from __future__ import annotations

import heapq
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from policy.retention.artifacts import load_artifacts
from policy.retention.schema import NONE, PURCHASE, RESERVE_COST, SESSION, TREATMENTS
from policy.simulator.retention import RetentionWorld, draw_segments, subset_segments
from streams.app import topics_for
from streams.pseudonyms import pseudonyms_for
from streams.kafka_io import ensure_topics, make_producer, tail_consumer
from streams.settings import Settings

DAY_S = 86400.0


def _iso(day: float) -> str:
    return datetime.fromtimestamp(day * DAY_S, timezone.utc).isoformat()


@dataclass(frozen=True)
class LiveRetentionConfig:
    users_per_segment: int = 200
    """Users in each held-out segment."""
    rounds: int = 6
    """Rounds (weeks) played; the loop also stops after ``duration_s``."""
    duration_s: float = 120.0
    """Wall-clock limit of the loop."""
    speed: float = 7 * DAY_S / 12.0
    """Simulated event-time seconds per wall-clock second (default: a week in 12 s)."""
    lag_days: float = 0.25
    """From a review tick to the users' decision points (actions take effect there)."""
    action_wait_s: float = 1.0
    """Wall-clock pause at each decision point while the review's actions are read."""
    seed: int = 0
    """Seeds the world's users and outcomes."""
    tick_s: float = 0.05
    """Wall-clock step of the loop."""


def aligned_settings(settings: Settings, artifact: Path | None = None, lag_days: float = 0.25) -> Settings:
    """A copy of ``settings`` whose retention timing matches the live world of ``artifact``.

    Reviews, budget periods and outcome windows last the world's round (``window_days``) and outcomes
    may arrive ``2 * lag_days`` late. Caps and threshold are kept.
    """
    s = settings.model_copy(deep=True)
    if artifact is not None:
        s.retention.artifact = Path(artifact)
    w = float(load_artifacts(s.retention.artifact).world.get("window_days", 7)) * DAY_S
    r = s.retention
    r.review_interval_s = r.period_s = r.outcome_window_s = w
    r.outcome_grace_s = max(r.outcome_grace_s, 2 * lag_days * DAY_S)
    return s


@dataclass
class LiveRetentionStats:
    """What the loop measured so far."""

    rounds: int = 0
    sessions: int = 0
    purchases: int = 0
    actions: int = 0
    by_treatment: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TREATMENTS})
    actions_late: int = 0
    actions_unknown_user: int = 0
    outcomes: int = 0
    reserved: float = 0.0
    spend: float = 0.0
    value_policy: float = 0.0
    """Expected window value (all users) under the actions taken."""
    value_nothing: float = 0.0
    """Expected window value (all users) had nobody been treated."""
    cost_policy: float = 0.0
    """Expected cost (all users) of the actions taken; doing nothing costs nothing."""
    cost_nothing: float = 0.0
    incremental_value: float = 0.0
    """Expected net uplift of the actions taken over doing nothing:
    (value_policy - cost_policy) - (value_nothing - cost_nothing)."""
    retained_value: float = 0.0
    """Realised window value reported in outcomes."""
    reserved_by_round: list[float] = field(default_factory=list)
    incremental_by_round: list[float] = field(default_factory=list)
    spend_by_round: list[float] = field(default_factory=list)
    risk_top_by_round: list[float] = field(default_factory=list)
    """Reference: expected net uplift had the round's reserved budget gone as coupon_5 to the users of
    highest true churn risk (risk targeting), instead of the policy's actions."""
    versions: dict[str, int] = field(default_factory=dict)
    sim_day: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def summary(self, budget_per_period: float) -> dict:
        return {
            "rounds": self.rounds,
            "sessions_sent": self.sessions,
            "purchases_sent": self.purchases,
            "actions": self.actions,
            "actions_by_treatment": dict(self.by_treatment),
            "treated": self.actions - self.by_treatment["none"],
            "actions_late": self.actions_late,
            "outcomes_sent": self.outcomes,
            "reserved": round(self.reserved, 4),
            "spend": round(self.spend, 4),
            "budget": budget_per_period * self.rounds,
            "budget_per_period": budget_per_period,
            "caps_respected": all(r <= budget_per_period + 1e-6 for r in self.reserved_by_round),
            "retained_value": round(self.retained_value, 2),
            "expected_value_policy": round(self.value_policy, 2),
            "expected_value_nothing": round(self.value_nothing, 2),
            "expected_cost_policy": round(self.cost_policy, 2),
            "expected_cost_nothing": round(self.cost_nothing, 2),
            "incremental_value": round(self.incremental_value, 2),
            "incremental_by_round": [round(x, 2) for x in self.incremental_by_round],
            "reserved_by_round": [round(x, 4) for x in self.reserved_by_round],
            "spend_by_round": [round(x, 4) for x in self.spend_by_round],
            "risk_top_by_round": [round(x, 2) for x in self.risk_top_by_round],
            "policy_versions": dict(self.versions),
            "wall_s": round(time.monotonic() - self.started, 1),
        }


def _world(artifact: Path, cfg: LiveRetentionConfig, t0: float) -> RetentionWorld:
    spec = load_artifacts(artifact).world
    if not spec:
        raise ValueError(f"retention artifact {artifact} records no simulated world to play")
    names, params = draw_segments(int(spec["n_markets"]), int(spec["n_cohorts"]), seed=int(spec["seed"]))
    idx = np.asarray(spec["heldout_index"], dtype=np.int64)
    world = RetentionWorld([names[i] for i in idx], subset_segments(params, idx), cfg.users_per_segment,
                           seed=cfg.seed + 202, window_days=int(spec.get("window_days", 7)), t0=t0)
    world.offset[:] = cfg.lag_days  # every decision point lies `lag` after its round's review tick
    return world


def run_live_retention(settings: Settings, cfg: LiveRetentionConfig,
                       on_tick: Callable[[LiveRetentionStats], None] | None = None) -> dict:
    """Run the retention world against the worker; returns ``LiveRetentionStats.summary()``.

    ``settings`` must be aligned with the world (:func:`aligned_settings`); ``ValueError`` otherwise.
    """
    r = settings.retention
    spec = load_artifacts(r.artifact).world
    w_days = int(spec.get("window_days", 7))
    if not (r.review_interval_s == r.period_s == r.outcome_window_s == w_days * DAY_S):
        raise ValueError(f"retention settings must review, budget and close windows every {w_days} days "
                         "to play the live world: use metacart.live.retention.aligned_settings")
    if r.outcome_grace_s < cfg.lag_days * DAY_S:
        raise ValueError(f"outcome_grace_s must be >= lag ({cfg.lag_days * DAY_S:.0f} s)")
    topics = topics_for(settings)
    ensure_topics(settings.kafka, topics.all())
    now_day = time.time() / DAY_S
    t_start = math.floor(now_day / w_days) * w_days  # a review tick
    world = _world(r.artifact, cfg, t_start)
    run_id = uuid.uuid4().hex[:6]
    users = [f"{run_id}-u{i}" for i in range(world.n_users)]
    index = {u: i for i, u in enumerate(users)}
    pseudonyms = pseudonyms_for(settings)
    by_pseudonym = {pseudonyms.of(u): u for u in users} if pseudonyms is not None else {}
    segs = [world.segment_names[s] for s in world.segment]
    producer = make_producer(settings.kafka)
    consumer = tail_consumer(settings.kafka, topics.retention_actions.name)

    stats = LiveRetentionStats()
    heap: list[tuple[float, int, str, bytes, bytes]] = []  # (event day, seq, topic, key, value)
    seq = 0
    received: dict[float, dict[str, dict]] = {}  # review tick -> user -> action
    applied_ticks: set[float] = set()
    sim_day = t_start
    next_round = 0
    pause_until: float | None = None
    end_day = t_start + cfg.rounds * w_days + cfg.lag_days + 0.01
    deadline = time.monotonic() + cfg.duration_s
    last_report = 0.0
    while sim_day < end_day and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=5000, timeout=0):
            if msg.error():
                continue
            a = json.loads(msg.value())
            a["user_id"] = by_pseudonym.get(a["user_id"], a["user_id"])  # the shop holds the key
            if a["user_id"] not in index:
                stats.actions_unknown_user += 1
                continue
            tick = round(datetime.fromisoformat(a["decided_at"]).timestamp() / DAY_S, 6)
            stats.versions[a["policy_version"]] = stats.versions.get(a["policy_version"], 0) + 1
            if tick in applied_ticks:
                stats.actions_late += 1
                continue
            received.setdefault(tick, {})[a["user_id"]] = a
        decision_day = t_start + next_round * w_days + cfg.lag_days
        if next_round < cfg.rounds and sim_day >= decision_day:
            if pause_until is None:
                pause_until = time.monotonic() + cfg.action_wait_s
            if time.monotonic() >= pause_until:
                seq = _play_round(world, round(decision_day - cfg.lag_days, 6), received, applied_ticks, users,
                                  segs, index, stats, heap, seq, topics, r.budget_per_period)
                next_round += 1
                pause_until = None
        if pause_until is None:
            sim_day = min(sim_day + cfg.tick_s * cfg.speed / DAY_S,
                          t_start + next_round * w_days + cfg.lag_days if next_round < cfg.rounds else end_day)
        while heap and heap[0][0] <= sim_day:
            _, _, topic, key, value = heapq.heappop(heap)
            producer.produce(topic, key=key, value=value)
        producer.poll(0)
        stats.sim_day = sim_day - t_start
        now_m = time.monotonic()
        if on_tick is not None and now_m - last_report > 0.5:
            on_tick(stats)
            last_report = now_m
        time.sleep(cfg.tick_s)
    producer.flush(10)
    consumer.close()
    return stats.summary(r.budget_per_period)


RISK_TOP_ACTION = TREATMENTS.index("coupon_5")


def _risk_top_gain(world: RetentionWorld, net: np.ndarray, reserved: float) -> float:
    """Expected net uplift of risk targeting with ``reserved`` to spend: coupon_5 by true churn risk."""
    n = min(int(reserved // RESERVE_COST[RISK_TOP_ACTION]), world.n_users)
    if n <= 0:
        return 0.0
    chosen = np.argsort(-world.churn_probability(), kind="stable")[:n]
    return float((net[chosen, RISK_TOP_ACTION] - net[chosen, NONE]).sum())


def _play_round(world: RetentionWorld, tick: float, received: dict, applied_ticks: set, users: list[str],
                segs: list[str], index: dict[str, int], stats: LiveRetentionStats, heap: list, seq: int,
                topics, budget: float) -> int:
    """Apply the actions of review ``tick``, draw the round's windows, schedule events and outcomes."""
    got = received.pop(tick, {})
    applied_ticks.add(tick)
    action = np.zeros(world.n_users, dtype=np.int64)
    for user, a in got.items():
        action[index[user]] = TREATMENTS.index(a["action"])
    value, cost = world.expected_reward()
    rows = np.arange(world.n_users)
    net = value - cost
    gained = float((net[rows, action] - net[:, NONE]).sum())
    stats.value_policy += float(value[rows, action].sum())
    stats.value_nothing += float(value[:, NONE].sum())
    stats.cost_policy += float(cost[rows, action].sum())
    stats.cost_nothing += float(cost[:, NONE].sum())
    stats.incremental_value += gained
    stats.incremental_by_round.append(gained)
    reserved = float(sum(a["cost"] for a in got.values()))
    stats.risk_top_by_round.append(_risk_top_gain(world, net, reserved))
    stats.reserved += reserved
    stats.reserved_by_round.append(reserved)
    for a in got.values():
        stats.actions += 1
        stats.by_treatment[a["action"]] += 1
    res = world.run_window(action)
    ev = res.events
    for u, t, kind, v in zip(ev.user.tolist(), ev.time.tolist(), ev.kind.tolist(), ev.value.tolist()):
        if kind not in (SESSION, PURCHASE):
            continue  # interventions are the engine's own; the shop does not echo them
        name = "purchase" if kind == PURCHASE else "session_start"
        seq += 1
        body = {"schema_version": 1, "user_id": users[u], "segment": segs[u], "session_id": f"s{seq}",
                "kind": name, "value": round(v, 4) if kind == PURCHASE else 0.0, "event_time": _iso(t)}
        heapq.heappush(heap, (t, seq, topics.sessions.name, users[u].encode(),
                              json.dumps(body, separators=(",", ":")).encode()))
        stats.sessions += kind == SESSION
        stats.purchases += kind == PURCHASE
    end = float(res.decision_time.max()) + world.window_days
    spent = 0.0
    for user, a in got.items():
        i = index[user]
        if a["action"] != "none":
            spent += float(res.cost[i])
        body = {"schema_version": 1, "decision_id": a["decision_id"], "user_id": user, "segment": a["segment"],
                "retained": bool(res.purchased[i]), "value": round(float(res.value[i]), 4),
                "event_time": _iso(end)}
        seq += 1
        heapq.heappush(heap, (end, seq, topics.retention_outcomes.name, user.encode(),
                              json.dumps(body, separators=(",", ":")).encode()))
        stats.outcomes += 1
        stats.retained_value += float(res.value[i])
    stats.spend += spent
    stats.spend_by_round.append(spent)
    stats.rounds += 1
    return seq

