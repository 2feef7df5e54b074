"""The retention engine: the part of the retention agent that does not know about Faust.

``process_many`` takes one batch of raw messages — session events and retention outcomes, both keyed by
``user_id`` and co-partitioned — and returns what to send (retention actions, dead letters). Every
counter it keeps is named ``retention_*``.

Event time. Timestamps become days since the Unix epoch at the edge (the scale of
:mod:`policy.retention`). Each partition has a *watermark*, the latest event time it has seen. An event
stamped more than ``max_event_time_skew_s`` (store settings, default one day) ahead of both the
partition's latest accepted event time (persisted as ``watermark:<partition>``) and the wall clock moves
nothing: it is dead-lettered (``event_time_skew``) and counted (``retention_event_time_skew``), so one event
dated 2100 cannot close every open window. Both references are needed: the wall clock keeps a partition
that was quiet for days live (its next event is not "ahead" of now), and the partition's own time admits
simulations that run event time ahead of the wall clock (:mod:`metacart.live.retention` runs a week in 12 s,
its events in event-time order, so consecutive events of a partition are minutes apart). One day tolerates
clocks off by a time zone.

Flow, in arrival order within a batch:

1. **Edge.** Each message is validated (``streams.edge``); malformed input, a session event of a kind
   other than ``purchase`` that carries a value, an outcome with ``retained=false`` and a value > 0, and an
   outcome naming another user or segment than its decision become dead letters, never exceptions.
2. **Features.** ``session_start`` and ``purchase`` events are folded into the user's engagement state
   (:func:`policy.retention.features.update_many`, order independent); ``page_view`` and ``add_to_cart``
   only advance the watermark (counted). A user row holds the state, the segment, the partition and the
   event time of the user's last decision.
3. **Decision points: scheduled reviews.** Review ticks are the multiples of ``review_interval_s`` in
   event time. When a partition's watermark crosses a tick ``T`` (events before ``T`` are folded first),
   every user of that partition is reviewed at ``T``: users idle for more than ``idle_horizon_s`` are
   evicted (the table stays bounded; ``retention_users`` reports its size), the others get churn risk at
   ``T``, and those with risk >= ``risk_threshold`` that were not decided in the current budget period
   (at most one decision per user per period) are decided in one batch by
   :class:`policy.retention.policy.RetentionPolicy` (Thompson sampling over the shared ``Adapter``, then
   the budget). A gap that skips several ticks reviews at the latest one only. A partition's first tick
   after a fresh start is the one after its first event. A review reads the rows of its partition's users
   (an in-memory index of their ids per partition, rebuilt from the table on start and rebalance; sorted,
   the order of a RocksDB partition), so its cost grows with that partition's (bounded) users only.
4. **Actions.** Every decision, ``none`` included, is emitted as a ``RetentionAction`` (propensity of
   the action under the bandit, floored at 1e-6 where the budget overrode the bandit — ``reason.rule`` then
   says why; ``decided_at`` is the review tick ``T`` in event time, where the outcome window starts).
   Decision ids are a hash of (user, ``T``), so a replayed review repeats ids: the budget answers
   replays idempotently and an id already open (or recently closed) is not decided again. A granted
   treatment is also folded into the user's features as an ``INTERVENTION`` event at ``T``.
5. **Outcomes.** An open action waits for its ``RetentionOutcome`` until the partition's watermark
   passes ``T + outcome_window_s + outcome_grace_s`` (allowed lateness). The world's semantics
   (:mod:`policy.simulator.retention`): ``retained`` = at least one purchase in the window, ``value`` =
   the window's purchase value, a coupon is redeemed with the first purchase. The realised cost is
   ``fixed_cost + coupon_face * retained`` and the reward is ``value - realised cost``. An outcome
   stamped after the window (plus grace) is late: counted, not applied. A window that expires without an
   outcome counts as *not retained, value 0* (cost = the fixed cost; a coupon is not redeemed). Each
   closed action, exactly once: ``Adapter.learn_many`` with that reward, the risk model's segment offset
   adapts on untreated users (churned = not retained), and ``Budget.settle_one`` lowers a treatment's
   reservation to its realised cost. Duplicate outcomes (of a recently closed decision) are counted as
   ``retention_outcomes_duplicate``; unknown ones as ``retention_outcomes_late_or_unknown``.

Bounded work and memory. Open actions wait in a deadline heap per partition (deadline, opening order,
id): a batch pops the windows that end instead of scanning every open action, and they close in opening
order; closed ids are forgotten through a second heap. In memory an open action is its id and partition
plus a heap entry; the decoded actions (features, ``phi``) are an LRU of ``max_cached_actions``, the others
are read back from the ``actions`` table when their outcome arrives or their window ends.

Pauses. :meth:`RetentionEngine.process_steps` is ``process_many`` as a generator that pauses, with the
state so far written, after every ``review_step`` actions of a review, after each review and between
slices of windows that end together, so the agent can deliver the slice's changelog (and let the ads
agent commit and run) in between: a review decides a whole partition at once and writes a few records per
action, and the ads commit waits for Faust's changelog buffer. The decisions, their order and the
learning are those of ``process_many``; a timed flush waits while a batch is paused, a swap or a rebalance
first finishes it.

Budget under several partitions and workers. One process cannot see the spend of users on partitions
it does not own, so each user partition gets a fixed share of every cap: ``cap / user_partitions`` for
the total cap and for each segment cap (in micro-units, rounded down), in a :class:`Budget` of its own.
Whatever the assignment of partitions to workers, the global spend of a period is the sum of partition
spends, each within its share, so no cap is exceeded globally. The price: a partition cannot borrow
another's unused share. A user always lives on one partition, so the frequency cap (at most
``max_contacts_per_user`` contacts in any window of ``period_s``) and the never-contact list are exact.

Learning per partition. Segment posteriors and risk offsets are kept per (partition, segment): a
partition learns from its own users only, so state never needs merging and moves with its partition on
a rebalance. (Combining partitions exactly is possible — Gaussian evidence adds in natural parameters —
but is left out.)

State goes through a :class:`RetentionStore` (four tables: ``users``, ``segments``, ``partitions`` for
budgets and review marks, ``actions`` for open actions), so the Faust glue can route each write to the
changelog partition of its key and unit tests can use dicts. A budget is kept as many small records
(``budget:<partition>/<record>``, see :meth:`Budget.drain_changes`), never as one value: no state value grows
with the number of users toward the producer's message limit. Writes are buffered and flushed at most
every ``state_flush_interval_s`` (and before every review, rebalance and swap of state).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from policy.adapter import Adapter
from policy.artifact import ArtifactError
from policy.retention.artifacts import RetentionArtifacts
from policy.retention.budget import Budget
from policy.retention.policy import RetentionPolicy
from policy.retention.features import expired_many, features_many, new_states, update_many
from policy.retention.risk import RiskModel
from policy.retention.schema import INTERVENTION, NONE, PURCHASE, SESSION, TREATMENTS, EventBatch
from streams.ads_engine import RawMessage
from streams.retention_blocks import BlockStore
from streams.retention_state import (DAY_S, TICK, OpenAction, RetentionStore, UserRow, budget_key, decision_id,
                                     partition_budget_config, read_never_contact)
from streams.edge import Decoder, Source, dead_letter
from streams.pseudonyms import Pseudonyms
from streams.events import DeadLetter, ErasureRequest, RetentionAction, RetentionOutcome, RetentionReason, SessionEvent
from streams.settings import PolicySettings, RetentionSettings, StoreSettings
from streams.topics import Topics

MIN_PROPENSITY = 1e-6
REVIEW_BATCH = 4096


@dataclass
class Outputs:
    """What one batch produced: (key, value) pairs for each output topic."""

    actions: list[tuple[bytes, bytes]] = field(default_factory=list)
    action_partitions: list[int] = field(default_factory=list)
    """The user's partition of each action: actions stay co-partitioned with the user's input (whose key,
    the raw id, the pseudonymised action key no longer hashes like)."""
    dead_letters: list[tuple[bytes, bytes]] = field(default_factory=list)


def _days(t: datetime) -> float:
    return t.timestamp() / DAY_S


def _iso(days: float) -> datetime:
    return datetime.fromtimestamp(days * DAY_S, timezone.utc)


@dataclass
class _Partition:
    """What the engine holds in memory for one user partition."""

    adapter: Adapter
    risk: RiskModel
    budget: Budget
    last_tick: float | None
    loaded: set[str] = field(default_factory=set)
    dirty_segments: set[str] = field(default_factory=set)
    dirty: bool = False
    watermark_dirty: bool = False
    users: int = 0


@dataclass
class _Close:
    did: str
    act: OpenAction
    retained: bool
    value: float


class RetentionEngine:
    """Engagement features, churn risk, budgeted uplift decisions and delayed outcomes, per partition."""

    def __init__(self, artifacts: RetentionArtifacts, store: RetentionStore, topics: Topics,
                 settings: RetentionSettings, storage: StoreSettings,
                 policy: PolicySettings | None = None, never_contact: frozenset[str] | None = None,
                 pseudonyms: Pseudonyms | None = None, clock: Callable[[], float] = time.time) -> None:
        self.artifacts = artifacts
        self.pseudonyms = pseudonyms
        self.store = store if isinstance(store, BlockStore) else BlockStore(store, settings.max_block_bytes)
        self.topics = topics
        self.settings = settings
        self.policy = policy or PolicySettings()
        self.partitions = topics.user_partitions
        if never_contact is None:
            never_contact = read_never_contact(settings.never_contact_path)
        if pseudonyms is not None:  # matched where user ids live: in pseudonym space
            never_contact = frozenset(pseudonyms.of(u) for u in never_contact)
        self.budget_config = partition_budget_config(settings, self.partitions, frozenset(never_contact))
        self.flush_interval_s = storage.state_flush_interval_s
        self._sessions = Decoder(topics.sessions.payload, settings.max_message_bytes)
        self._outcomes = Decoder(topics.retention_outcomes.payload, settings.max_message_bytes)
        self._erasures = Decoder(topics.erasure_requests.payload, settings.max_message_bytes)
        self._interval = settings.review_interval_s / DAY_S
        self._window = settings.outcome_window_s / DAY_S
        self._grace = settings.outcome_grace_s / DAY_S
        self._horizon = settings.idle_horizon_s / DAY_S
        self._epoch = artifacts.uplift.version.encode()
        self._parts: dict[int, _Partition] = {}
        self._watermark: dict[int, float] = {}
        self._skew_ref: dict[int, float] = {}  # latest accepted event time per partition, persisted
        self._skew = storage.max_event_time_skew_s / DAY_S
        self._clock = clock
        self._users: dict[str, UserRow] = {}
        self._dirty_users: set[str] = set()
        self._folds: list[tuple[str, float, int, float]] = []  # (user, t, kind, value) not yet folded
        self._open: dict[str, int] = {}  # decision id -> partition, of every action whose window is open
        self._cached: OrderedDict[str, OpenAction] = OrderedDict()  # open actions in memory (LRU)
        self._max_cached = settings.max_cached_actions
        self._new_open: dict[str, OpenAction] = {}  # opened since the last flush (not yet in the store)
        self._closed: dict[str, tuple[int, float, bool]] = {}  # id -> (partition, forget after, expired)
        self._expiry: dict[int, list[tuple[float, int, str]]] = {}  # partition -> heap (deadline, seq, id)
        self._forgets: dict[int, list[tuple[float, str]]] = {}  # partition -> heap (forget after, id)
        self._seq = 0  # opening order of actions: expired windows close in it, as a scan of _open would
        self._members: dict[int, set[str]] = {}  # partition -> its users (ids only; rows live in the store)
        self._deletes: list[tuple[str, int]] = []
        self._learn: list[_Close] = []
        self._rebuild_needed = True
        self._legacy_budgets: set[int] = set()
        self._user_counts: Counter[int] = Counter()
        self._last_flush = 0.0
        self._steps: Iterator[None] | None = None  # a paused process_steps
        self._review_step = settings.review_step
        self.counters: Counter[str] = Counter()
        self.counters["retention_budget"] = settings.budget_per_period
        self.counters["retention_budget_per_partition"] = self.budget_config.total_cap

    @property
    def version(self) -> str:
        return self.artifacts.uplift.version

    # --- the batch entry point -------------------------------------------------------------------

    def process_many(self, messages: Sequence[RawMessage]) -> Outputs:
        """Handle one batch (see the module docstring) and return what to send."""
        out = Outputs()
        for _ in self.process_steps(messages, out):
            pass
        return out

    def process_steps(self, messages: Sequence[RawMessage], out: Outputs) -> Iterator[None]:
        """``process_many`` in steps: a generator that pauses after each slice of at most ``review_step``
        actions of a review and after each review, with the state so far written, so that an asyncio caller
        can let the changelog drain and other agents run between slices (a review decides a whole partition
        at once and writes a few records per action). It fills ``out``; the decisions and their order are
        exactly those of ``process_many``. While it is paused, timed flushes wait, and a swap or a rebalance
        first runs the rest of it (:meth:`finish_steps`)."""
        self._steps = steps = self._steps_of(messages, out)
        try:
            yield from steps
        finally:
            self._steps = None

    def finish_steps(self) -> None:
        """Run the rest of a paused :meth:`process_steps` now (its caller then finds it done)."""
        steps, self._steps = self._steps, None
        if steps is not None:
            for _ in steps:
                pass

    def _steps_of(self, messages: Sequence[RawMessage], out: Outputs) -> Iterator[None]:
        if self._rebuild_needed:
            self._rebuild()
        for msg in messages:
            source = Source(msg.topic, msg.partition, msg.offset, msg.key)
            if msg.topic == self.topics.sessions.name:
                event = self._sessions.decode_one(msg.value, source)
                if not isinstance(event, DeadLetter) and event.kind != "purchase" and event.value > 0:
                    event = dead_letter(msg.value or b"", source, "invalid",
                                        f"value: a {event.kind} event carries no value (got {event.value})")
            elif msg.topic == self.topics.retention_outcomes.name:
                event = self._outcomes.decode_one(msg.value, source)
                if not isinstance(event, DeadLetter) and not event.retained and event.value > 0:
                    event = dead_letter(msg.value or b"", source, "invalid",
                                        f"value: {event.value} > 0 but retained is false "
                                        "(a purchase in the window means retained)")
            elif msg.topic == self.topics.erasure_requests.name:
                event = self._erasures.decode_one(msg.value, source)
            else:
                event = dead_letter(msg.value or b"", source, "unknown_topic",
                                    f"the retention engine does not read {msg.topic}")
            if isinstance(event, DeadLetter):
                self._dead(out, event)
                continue
            if self.pseudonyms is not None:
                event = self.pseudonyms.event_one(event)
            if isinstance(event, ErasureRequest):
                self._erase(event.user_id, msg.partition)
                continue
            t = _days(event.event_time)
            if self._beyond_skew(msg.partition, t):
                ref = self._skew_ref.get(msg.partition)
                mark = "none yet" if ref is None else _iso(ref).isoformat()
                self._dead(out, dead_letter(msg.value or b"", source, "event_time_skew",
                                            f"event_time {event.event_time.isoformat()} is more than "
                                            f"{self._skew * DAY_S:.0f} s ahead of partition {msg.partition}'s "
                                            f"watermark ({mark}) and of the wall clock"))
                continue
            yield from self._advance(msg.partition, t, out)
            if isinstance(event, SessionEvent):
                self._session(event, msg.partition, t)
            else:
                letter = self._outcome(event, msg.partition, t, source, msg.value or b"")
                if letter is not None:
                    self._dead(out, letter)
        self._fold()
        yield from self._expire_steps()
        self._apply_learning()
        self._forget_closed()
        self.counters["retention_open_actions"] = len(self._open)
        self.counters["retention_actions_cached"] = len(self._cached)
        self.counters["retention_closed_ids"] = len(self._closed)
        self.counters["retention_budget_records"] = sum(p.budget.n_decisions for p in self._parts.values())
        self.counters["retention_users"] = sum(p.users for p in self._parts.values())
        # State before output: when a batch emits actions, everything (budgets above all) is written
        # before the caller sends them, so a crash can lose an action but never repeat a contact.
        self.flush(force=bool(out.actions), within_steps=True)

    # --- sessions and features -------------------------------------------------------------------

    def _session(self, event: SessionEvent, partition: int, t: float) -> None:
        self.counters["retention_sessions"] += 1
        if event.kind not in ("session_start", "purchase"):
            self.counters["retention_page_events"] += 1
            return
        row = self._user(event.user_id, partition)
        if row is None:
            row = UserRow(new_states(1)[0], event.segment, partition)
            self._users[event.user_id] = row
            self._members.setdefault(partition, set()).add(event.user_id)
            self._part(partition).users += 1
            self.counters["retention_users_new"] += 1
        row.segment = event.segment
        kind = PURCHASE if event.kind == "purchase" else SESSION
        self._folds.append((event.user_id, t, kind, event.value if kind == PURCHASE else 0.0))
        self._dirty_users.add(event.user_id)

    def _user(self, user: str, partition: int) -> UserRow | None:
        row = self._users.get(user)
        if row is None:
            raw = self.store.get("users", user, partition)
            if raw is None:
                return None
            row = UserRow.decode(raw)
            self._users[user] = row
        return row

    def _fold(self) -> None:
        """Fold the buffered engagement events into their users' states (one vectorised call)."""
        if not self._folds:
            return
        names = list(dict.fromkeys(u for u, _, _, _ in self._folds))
        index = {u: i for i, u in enumerate(names)}
        states = np.stack([self._users[u].state for u in names])
        batch = EventBatch(np.array([index[u] for u, _, _, _ in self._folds]),
                           np.array([t for _, t, _, _ in self._folds]),
                           np.array([k for _, _, k, _ in self._folds]),
                           np.array([v for _, _, _, v in self._folds]))
        states = update_many(states, batch)
        for u, i in index.items():
            self._users[u].state = states[i]
        self._dirty_users.update(names)
        self._folds.clear()

    # --- erasure ----------------------------------------------------------------------------------

    def _erase(self, user: str, partition: int) -> None:
        """Forget ``user``: their row, their open actions and their contact history, deleted through the
        store (tombstones in the changelogs), so a restored worker does not bring them back."""
        self._fold()
        self._folds = [f for f in self._folds if f[0] != user]
        self._dirty_users.discard(user)
        row = self._users.pop(user, None) or self._user(user, partition)
        self._users.pop(user, None)
        if row is not None:
            self.store.delete("users", user, partition)
            self._members.get(row.partition, set()).discard(user)
            part = self._part(partition)
            part.users = max(0, part.users - 1)
        stored = ((did, OpenAction.decode(raw)) for did, raw in self.store.items("actions") if did in self._open)
        for did, act in [(d, a) for d, a in [*stored, *self._new_open.items()] if a.user == user]:
            if self._open.pop(did, None) is None:
                continue
            self._cached.pop(did, None)
            if self._new_open.pop(did, None) is None:
                self._deletes.append((did, act.partition))
        part = self._part(partition)
        part.budget.forget_user(user)
        part.dirty = True
        self.counters["retention_erasures"] += 1
        self.flush(force=True, within_steps=True)
        self.store.purge(partition, user.encode())  # no older block keeps a copy of their records

    # --- event time and reviews ------------------------------------------------------------------

    def _advance(self, partition: int, t: float, out: Outputs) -> Iterator[None]:
        part = self._part(partition)
        if part.last_tick is None:
            part.last_tick = math.floor(t / self._interval) * self._interval
            part.dirty = True
        tick = math.floor(t / self._interval) * self._interval
        if tick > part.last_tick:
            yield from self._review(partition, tick, out)
        if t > self._watermark.get(partition, -math.inf):
            self._watermark[partition] = t

    def _beyond_skew(self, partition: int, t: float) -> bool:
        """Whether event time ``t`` lies more than ``max_event_time_skew_s`` ahead of both the partition's
        watermark (persisted, so a restart keeps it) and the wall clock; if not, ``t`` becomes the
        partition's reference when it is newer."""
        part = self._part(partition)
        ref = self._skew_ref.get(partition, -math.inf)
        if t <= ref:
            return False
        if t > max(ref, self._clock() / DAY_S) + self._skew:
            self.counters["retention_event_time_skew"] += 1
            return True
        self._skew_ref[partition] = t
        part.watermark_dirty = True
        return False

    def _review(self, partition: int, tick: float, out: Outputs) -> Iterator[None]:
        """Evict idle users of ``partition`` and decide for the risky ones at event time ``tick``."""
        self._fold()
        self._close_expired(upto={partition: tick})
        self._apply_learning()
        self.flush(force=True, within_steps=True)
        part = self._part(partition)
        self._users.clear()
        users, rows = self._rows_of(partition)
        part.last_tick = tick
        part.dirty = True
        self.counters["retention_reviews"] += 1
        if not rows:
            part.users = 0
            return
        states = np.stack([r.state for r in rows])
        gone = expired_many(states, tick, self._horizon)
        members = self._members.get(partition, set())
        for i in np.flatnonzero(gone):
            self.store.delete("users", users[i], partition)
            members.discard(users[i])
        self.counters["retention_users_evicted"] += int(gone.sum())
        keep = np.flatnonzero(~gone)
        part.users = int(keep.size)
        if not keep.size:
            return
        x = features_many(states[keep], tick)
        segs = [rows[i].segment for i in keep]
        for s in set(segs):
            self._load_segment(partition, s)
        risk = part.risk.predict_many(segs, x)
        period = part.budget.period_of(tick)
        chosen = []
        for j, i in enumerate(keep):
            last = rows[i].last_decision_t
            if risk[j] < self.settings.risk_threshold:
                continue
            if not math.isnan(last) and part.budget.period_of(last) == period:
                self.counters["retention_once_per_period_skips"] += 1
                continue
            did = decision_id(users[i], tick)
            if did in self._open or did in self._closed:
                self.counters["retention_decisions_replayed"] += 1
                continue
            chosen.append((j, i, did))
        self.counters["retention_decision_points"] += len(chosen)
        for start in range(0, len(chosen), REVIEW_BATCH):
            yield from self._decide(partition, tick, chosen[start:start + REVIEW_BATCH], users, rows, x, out)
        if chosen:
            yield from self._pause()

    def _pause(self) -> Iterator[None]:
        """Write what changed so far (its changelog can drain while the batch is paused), then pause."""
        self.flush(force=True, within_steps=True)
        yield

    def _rows_of(self, partition: int) -> tuple[list[str], list[UserRow]]:
        """The users of ``partition`` (sorted by id, the order of a RocksDB partition) and their rows, read
        from the store: the partition's member index names them, so a review reads only its own users."""
        users, rows = [], []
        members = self._members.get(partition, set())
        for user in sorted(members):
            raw = self.store.get("users", user, partition)
            if raw is None:
                members.discard(user)
                continue
            users.append(user)
            rows.append(UserRow.decode(raw))
        return users, rows

    def _decide(self, partition: int, tick: float, chosen: list[tuple[int, int, str]], users: list[str],
                rows: list[UserRow], x: np.ndarray, out: Outputs) -> Iterator[None]:
        """Decide ``chosen`` in one policy call (the budget serves them in priority order), then open and
        encode the actions, pausing after every ``review_step`` of them."""
        part = self._part(partition)
        ids = [did for _, _, did in chosen]
        us = [users[i] for _, i, _ in chosen]
        segs = [rows[i].segment for _, i, _ in chosen]
        xs = x[[j for j, _, _ in chosen]]
        decider = RetentionPolicy(part.adapter, part.risk, part.budget)
        dec = decider.decide_many(ids, us, segs, xs, np.full(len(chosen), tick))
        decided_at = _iso(tick)
        version = dec.version[:64] or "unknown"
        treated: list[tuple[int, int]] = []  # (row, treatment): folded as INTERVENTION events at the tick
        for k, (_, i, did) in enumerate(chosen):
            if k and not k % self._review_step:
                _fold_interventions(rows, treated, tick)  # the slice's rows complete before they are written
                treated = []
                yield from self._pause()
            a = int(dec.action[k])
            cost = float(dec.cost[k])
            prop = float(dec.propensity[k])
            self._new_open[did] = self._open_one(did, OpenAction(us[k], segs[k], partition, tick, a, cost, prop,
                                                                 xs[k].copy(), dec.phis[k].copy()))
            rows[i].last_decision_t = tick
            if a != NONE:
                treated.append((i, a))
                self.counters["retention_treated"] += 1
                self.counters["retention_reserved"] += cost
            self._users[us[k]] = rows[i]
            self._dirty_users.add(us[k])
            if dec.reason[k].startswith("budget:"):
                self.counters[f"retention_denied_{dec.reason[k].split(':', 1)[1]}"] += 1
            action = RetentionAction(
                decision_id=did, user_id=us[k], segment=segs[k], action=TREATMENTS[a],
                propensity=min(1.0, max(prop, MIN_PROPENSITY)), cost=cost, policy_version=version,
                reason=RetentionReason(risk=float(np.clip(dec.risk[k], 0.0, 1.0)),
                                       expected_uplift=float(dec.uplift[k]), cost=cost,
                                       rule=dec.reason[k][:64]),
                decided_at=decided_at)
            out.actions.append((us[k].encode(), action.model_dump_json().encode()))
            out.action_partitions.append(partition)
            self.counters["retention_actions"] += 1
            self.counters[f"retention_actions_{TREATMENTS[a]}"] += 1
        _fold_interventions(rows, treated, tick)
        part.dirty = True

    # --- outcomes --------------------------------------------------------------------------------

    def _outcome(self, event: RetentionOutcome, partition: int, t: float, source: Source,
                 raw: bytes) -> DeadLetter | None:
        did = event.decision_id
        act = self._action(did)
        if act is None:
            closed = self._closed.get(did)
            if closed is not None and not closed[2]:
                self.counters["retention_outcomes_duplicate"] += 1
            else:
                self.counters["retention_outcomes_late_or_unknown"] += 1
            return None
        if act.user != event.user_id or act.segment != event.segment:
            self.counters["retention_outcomes_mismatched"] += 1
            return dead_letter(raw, source, "invalid",
                               f"outcome for {did} names user {event.user_id} / segment {event.segment}; "
                               f"the decision was for {act.user} / {act.segment}")
        if t > act.decided_t + self._window + self._grace:
            self.counters["retention_outcomes_late_or_unknown"] += 1
            return None
        self._close(did, act, event.retained, event.value)
        self.counters["retention_outcomes_applied"] += 1
        self.counters["retention_retained_value"] += event.value
        self.counters["retention_retained"] += int(event.retained)
        return None

    def _close(self, did: str, act: OpenAction, retained: bool, value: float, expired: bool = False) -> None:
        del self._open[did]
        self._cached.pop(did, None)
        if self._new_open.pop(did, None) is None:
            self._deletes.append((did, act.partition))
        until = act.decided_t + self._window + self._grace + self._window
        self._closed[did] = (act.partition, until, expired)
        heapq.heappush(self._forgets.setdefault(act.partition, []), (until, did))
        self._learn.append(_Close(did, act, retained, value))

    def _open_one(self, did: str, act: OpenAction, cache: bool = True) -> OpenAction:
        """Hold ``act`` open and schedule its window's end (plus grace) in its partition's deadline heap."""
        self._open[did] = act.partition
        if cache:
            self._cached[did] = act
        self._seq += 1
        heapq.heappush(self._expiry.setdefault(act.partition, []),
                       (act.decided_t + self._window + self._grace, self._seq, did))
        return act

    def _action(self, did: str, cache: bool = True) -> OpenAction | None:
        """The open action ``did``: from memory (the last ``max_cached_actions`` used, and those not yet
        flushed), else read back from the store (and cached when ``cache``); None when it is not open."""
        partition = self._open.get(did)
        if partition is None:
            return None
        act = self._cached.get(did)
        if act is not None:
            self._cached.move_to_end(did)
            return act
        act = self._new_open.get(did)
        if act is not None:
            return act
        raw = self.store.get("actions", did, partition)
        if raw is None:
            raise RuntimeError(f"open retention action {did} of partition {partition} is not in the store")
        act = OpenAction.decode(raw)
        self.counters["retention_actions_read_back"] += 1
        if cache:
            self._cached[did] = act
            self._trim_cache()
        return act

    def _trim_cache(self) -> None:
        """Drop the least recently used open actions beyond ``max_cached_actions``. Only actions already in
        the store are dropped: those opened since the last flush stay until it writes them."""
        unwritten = []
        while len(self._cached) > self._max_cached:
            did, act = self._cached.popitem(last=False)
            if did in self._new_open:
                unwritten.append((did, act))
            else:
                self.counters["retention_actions_evicted"] += 1
        for did, act in unwritten:
            self._cached[did] = act

    def _close_expired(self, upto: dict[int, float] | None = None) -> None:
        """Close the open actions whose window (plus grace) ended before their partition's watermark."""
        self._close_due(self._due(self._watermark if upto is None else upto))

    def _expire_steps(self) -> Iterator[None]:
        """``_close_expired`` and their learning in slices of ``review_step``, pausing between slices (the
        windows of one review all end together); learning row by row in order, as in one call."""
        due = self._due(self._watermark)
        for start in range(0, len(due), self._review_step):
            if start:
                yield from self._pause()
            self._close_due(due[start:start + self._review_step])
            self._apply_learning()

    def _due(self, marks: dict[int, float]) -> list[str]:
        """Ids of the open actions whose window (plus grace) ended before ``marks[partition]``, in opening order.

        Pops each partition's deadline heap (entries of actions closed by their outcome meanwhile are
        skipped), so the cost is that of the windows that end, not of every open action.
        """
        due: list[tuple[int, str]] = []
        for partition, mark in marks.items():
            heap = self._expiry.get(partition)
            while heap and heap[0][0] < mark:
                _, seq, did = heapq.heappop(heap)
                if self._open.get(did) == partition:
                    due.append((seq, did))
        due.sort()
        return [did for _, did in due]

    def _close_due(self, due: list[str]) -> None:
        for did in due:
            act = self._action(did, cache=False)
            if act is not None:
                self._close(did, act, False, 0.0, expired=True)
                self.counters["retention_windows_expired"] += 1

    def _forget_closed(self) -> None:
        """Forget closed ids one window after their deadline (a duplicate outcome is recognised until then)."""
        for partition, heap in self._forgets.items():
            mark = self._watermark.get(partition, -math.inf)
            while heap and heap[0][0] < mark:
                until, did = heapq.heappop(heap)
                closed = self._closed.get(did)
                if closed is not None and closed[1] == until:
                    del self._closed[did]

    def _apply_learning(self) -> None:
        """Closed actions into the posteriors, risk offsets and budgets of their partitions."""
        if not self._learn:
            return
        by_part: dict[int, list[_Close]] = {}
        for c in self._learn:
            by_part.setdefault(c.act.partition, []).append(c)
        self._learn = []
        for partition, closes in by_part.items():
            part = self._part(partition)
            for c in closes:
                self._load_segment(partition, c.act.segment)
            segs = [c.act.segment for c in closes]
            actions = np.array([c.act.action for c in closes], dtype=np.int64)
            realised = RetentionPolicy(part.adapter, part.risk, part.budget).learn_many(
                [c.did for c in closes], segs, actions, np.stack([c.act.x for c in closes]),
                np.stack([c.act.phi for c in closes]), np.array([c.retained for c in closes], dtype=bool),
                np.array([c.value for c in closes], dtype=np.float64))
            self.counters["retention_spend"] += float(realised[actions != NONE].sum())
            part.dirty_segments.update(segs)
            part.dirty = True
            self.counters["retention_updates"] += len(closes)

    # --- state -----------------------------------------------------------------------------------

    def _part(self, partition: int) -> _Partition:
        part = self._parts.get(partition)
        if part is not None:
            return part
        art = self.artifacts.uplift
        p = self.policy
        adapter = Adapter(art, eps=p.eps, n_draws=p.n_draws, forget=p.forget, scale=p.scale,
                          seed=p.seed * 1009 + partition)
        risk = _risk_model(self.artifacts)
        budget = self._load_budget(partition)
        tick = self.store.get("partitions", f"tick:{partition}", partition)
        mark = self.store.get("partitions", f"watermark:{partition}", partition)
        if mark is not None:
            self._skew_ref[partition] = max(self._skew_ref.get(partition, -math.inf), TICK.unpack(mark)[0])
        part = _Partition(adapter, risk, budget, None if tick is None else TICK.unpack(tick)[0],
                          users=self._user_counts.get(partition, 0))
        self._parts[partition] = part
        return part

    def _load_budget(self, partition: int) -> Budget:
        """The partition's budget from its records (caps follow the current settings). A budget stored
        as one value (before records) is read once and moved to records at the next flush."""
        legacy = self.store.get("partitions", budget_key(partition), partition)
        if legacy is not None:
            budget = Budget.from_bytes(legacy)
            budget.config = self.budget_config
            budget.mark_all_changed()
            self._legacy_budgets.add(partition)
            return budget
        prefix = budget_key(partition, "")
        return Budget.from_records(self.budget_config, ((k[len(prefix):], v) for k, v in
                                                        self.store.items("partitions", prefix)))

    def _load_segment(self, partition: int, segment: str) -> None:
        part = self._part(partition)
        if segment in part.loaded:
            return
        part.loaded.add(segment)
        raw = self.store.get("segments", f"{partition}/{segment}", partition)
        if raw is None:
            self.counters["retention_segments_new"] += 1
            return
        n = raw[0]
        if raw[1:1 + n] != self._epoch:
            self.counters["retention_segments_reset_by_swap"] += 1
            return
        at = 1 + n
        size = int.from_bytes(raw[at:at + 4], "little")
        part.adapter.load_state(segment, raw[at + 4:at + 4 + size])
        part.risk.load_state(segment, raw[at + 4 + size:])
        self.counters["retention_segments_restored"] += 1

    def _rebuild(self) -> None:
        """Reload open actions and per-partition user counts from the store (start, rebalance)."""
        self._rebuild_needed = False
        self.store.load()
        self._open.clear()
        self._cached.clear()
        self._expiry.clear()
        for did, raw in self.store.items("actions"):
            self._open_one(did, OpenAction.decode(raw), cache=len(self._cached) < self._max_cached)
        self._members = {}
        for user, raw in self.store.items("users"):
            self._members.setdefault(UserRow.partition_of(raw), set()).add(user)
        self._user_counts = Counter({p: len(m) for p, m in self._members.items()})
        for partition, part in self._parts.items():
            part.users = self._user_counts.get(partition, 0)

    def paused(self) -> bool:
        """Whether a batch of :meth:`process_steps` is paused between two steps."""
        return self._steps is not None

    def flush(self, force: bool = True, within_steps: bool = False) -> None:
        """Write what changed: segment states, budgets and review marks, users, open actions; then
        delete closed actions. A timed flush (``force=False``) from outside waits while a batch is paused
        between steps (its review is half done)."""
        if self._steps is not None and not within_steps:
            if not force:
                return
            self.finish_steps()
        now = time.monotonic()
        if not force and now - self._last_flush < self.flush_interval_s:
            return
        self._last_flush = now
        self._fold()
        for partition, part in self._parts.items():
            for segment in part.dirty_segments:
                adapter_state = part.adapter.state_bytes(segment)
                value = (bytes([len(self._epoch)]) + self._epoch + len(adapter_state).to_bytes(4, "little")
                         + adapter_state + part.risk.state_bytes(segment))
                self.store.put("segments", f"{partition}/{segment}", partition, value)
            part.dirty_segments.clear()
            puts, deletes = part.budget.drain_changes()
            for record, value in puts.items():
                self.store.put("partitions", budget_key(partition, record), partition, value)
            for record in deletes:
                self.store.delete("partitions", budget_key(partition, record), partition)
            if partition in self._legacy_budgets:
                self.store.delete("partitions", budget_key(partition), partition)
                self._legacy_budgets.discard(partition)
            if part.watermark_dirty and partition in self._skew_ref:
                self.store.put("partitions", f"watermark:{partition}", partition,
                               TICK.pack(self._skew_ref[partition]))
                part.watermark_dirty = False
            if part.dirty:
                if part.last_tick is not None:
                    self.store.put("partitions", f"tick:{partition}", partition, TICK.pack(part.last_tick))
                part.dirty = False
        for user in self._dirty_users:
            row = self._users[user]
            self.store.put("users", user, row.partition, row.encode())
        self._dirty_users.clear()
        self._users.clear()  # memory holds only what changed since the last flush
        for did, act in self._new_open.items():
            self.store.put("actions", did, act.partition, act.encode())
        self._new_open.clear()
        self._trim_cache()
        for did, partition in self._deletes:
            self.store.delete("actions", did, partition)
        self._deletes.clear()
        self.store.commit()  # every key changed since the last flush, once, in one block per partition
        self.counters.update(self.store.drain_counters())

    def swap(self, artifacts: RetentionArtifacts, on_swap: str) -> None:
        """Serve ``artifacts`` from the next decision on; ``on_swap`` is "keep" or "reset".

        The caller has checked that they serve (:func:`policy.retention.artifacts.check_serves`). Closed
        actions are learnt and state is written first. "keep" carries every segment's posterior and risk
        offset over (the feature dimension ``d`` must match: ``ArtifactError`` before anything changes);
        "reset" restarts every segment from the new prior, and segment states stored under the old
        version are ignored from then on. Open actions keep the features they were decided with.
        """
        mode = "keep" if on_swap == "keep" else "reset"
        self.finish_steps()
        probe = Adapter(self.artifacts.uplift)
        probe.swap_artifact(artifacts.uplift, mode)  # raises ArtifactError for an impossible "keep"
        self._apply_learning()
        self.flush(force=True)
        for part in self._parts.values():
            part.adapter.swap_artifact(artifacts.uplift, mode)
            risk = _risk_model(artifacts)
            if mode == "keep":
                for segment in part.loaded:
                    risk.load_state(segment, part.risk.state_bytes(segment))
            part.risk = risk
        if mode == "reset":
            self._epoch = artifacts.uplift.version.encode()
        self.artifacts = artifacts
        self.counters["retention_policy_swaps"] += 1

    def on_rebalance(self) -> None:
        """Partitions move: save what changed, forget everything in memory, reload lazily."""
        self.finish_steps()
        self._apply_learning()
        self.flush(force=True)
        self._parts.clear()
        self._watermark.clear()
        self._skew_ref.clear()
        self._open.clear()
        self._cached.clear()
        self._expiry.clear()
        self._closed.clear()
        self._forgets.clear()
        self._members.clear()
        self.store.invalidate()
        self._rebuild_needed = True

    def pending_count(self) -> int:
        """Actions whose outcome window is still open."""
        return len(self._open)

    def _dead(self, out: Outputs, letter: DeadLetter) -> None:
        if self.pseudonyms is not None:
            letter = self.pseudonyms.letter_one(letter)
        self.counters[f"retention_dead_letters_{letter.error_type}"] += 1
        self.counters["retention_dead_letters"] += 1
        out.dead_letters.append((letter.source_topic.encode(), letter.model_dump_json().encode()))


def _fold_interventions(rows: list[UserRow], treated: list[tuple[int, int]], tick: float) -> None:
    """Fold each treated row's treatment as an INTERVENTION event at ``tick``, in one vectorised call (one event
    per user: the same states as one call per user)."""
    if not treated:
        return
    n = len(treated)
    states = update_many(np.stack([rows[i].state for i, _ in treated]),
                         EventBatch(np.arange(n), np.full(n, tick), np.full(n, INTERVENTION),
                                    np.array([float(a) for _, a in treated])))
    for k, (i, _) in enumerate(treated):
        rows[i].state = states[k]


def _risk_model(artifacts: RetentionArtifacts) -> RiskModel:
    """A fresh risk model (no segment offsets) of ``artifacts``: one per partition."""
    r = artifacts.risk
    return RiskModel(r.mean, r.sd, r.w1, r.b1, r.w2, r.b2, r.tau2, dict(r.meta))


def load_engine_artifacts(path: Path) -> RetentionArtifacts:
    """The artifacts at ``path``, checked on a probe batch (``ArtifactError`` with the fix when missing,
    bad or not serving)."""
    from policy.retention.artifacts import check_serves, load_artifacts

    if not Path(path).exists():
        raise ArtifactError(f"no retention artifact at {path}: build one with "
                            "policy.retention.train.build_artifacts(out_dir)")
    artifacts = load_artifacts(path)
    check_serves(artifacts)
    return artifacts
