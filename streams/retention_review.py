"""Scheduled reviews of a partition's users: eviction, churn risk, decisions in slices (a mixin of
:class:`streams.retention_engine.RetentionEngine`, whose state it uses).

**Decision points: scheduled reviews.** Review ticks are the multiples of ``review_interval_s`` in
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
The tick of a review is stored once the review is done: a worker that restarts in the middle of one reviews
again, skips the users decided before (decided in this period) and decides the others once.

Pauses. :meth:`RetentionEngine.process_steps` is ``process_many`` as a generator that pauses, with the
state so far written, after every ``review_step`` actions of a review, after each review and between
slices of windows that end together, so the agent can deliver the slice's changelog (and let the ads
agent commit and run) in between: a review decides a whole partition at once, each slice's state is a
block of changelog (``streams.retention_blocks``), and the ads commit waits for Faust's changelog buffer. The decisions, their order and the
learning are those of ``process_many``; a timed flush waits while a batch is paused, a swap or a rebalance
first finishes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from policy.retention.features import expired_many, features_many, update_many
from policy.retention.policy import RetentionPolicy
from policy.retention.schema import INTERVENTION, NONE, TREATMENTS, EventBatch
from streams.events import RetentionAction, RetentionReason
from streams.retention_state import OpenAction, UserRow, decision_id, from_days

if TYPE_CHECKING:
    from streams.retention_engine import Outputs

MIN_PROPENSITY = 1e-6
REVIEW_BATCH = 4096


class Reviews:
    """Reviews at the ticks of ``review_interval_s`` in event time (see the module docstring)."""

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
        part.reviewing = True  # the tick is stored once the review is done: a restart before reviews again
        try:
            chosen = yield from self._review_rows(partition, tick, users, rows, out)
        finally:
            part.reviewing = False
        if chosen:
            yield from self._pause()

    def _review_rows(self, partition: int, tick: float, users: list[str], rows: list[UserRow],
                     out: Outputs) -> Iterator[None]:
        """The review of ``rows`` at ``tick``: eviction, risk, decisions; returns the decision points taken."""
        part = self._part(partition)
        if not rows:
            part.users = 0
            return []
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
            return []
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
            if self._book.knows(did):
                self.counters["retention_decisions_replayed"] += 1
                continue
            chosen.append((j, i, did))
        self.counters["retention_decision_points"] += len(chosen)
        for start in range(0, len(chosen), REVIEW_BATCH):
            yield from self._decide(partition, tick, chosen[start:start + REVIEW_BATCH], users, rows, x, out)
        return chosen

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
        decided_at = from_days(tick)
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
            key, value = us[k].encode(), action.model_dump_json().encode()
            out.actions.append((key, value))
            out.action_partitions.append(partition)
            self._outbox_put(did, partition, key, value)  # until the agent has delivered it
            self.counters["retention_actions"] += 1
            self.counters[f"retention_actions_{TREATMENTS[a]}"] += 1
        _fold_interventions(rows, treated, tick)
        part.dirty = True


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
