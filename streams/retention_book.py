"""Open retention actions: deadline heaps, a bounded cache of decoded actions, outcomes and learning (a
mixin of :class:`streams.retention_engine.RetentionEngine`, whose state it uses).

**Outcomes.** An open action waits for its ``RetentionOutcome`` until the partition's watermark
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

**Outbox.** An action is sent only after the state that decided it is in the changelogs, so a crash in
between would lose it (decided, its window then learned as "not retained", never seen by the user). Each
action's bytes therefore wait in the state as ``outbox:<partition>/<decision id>`` (same block as the open
action) until the agent has delivered it (:meth:`ActionBook.sent_all`). After a restore the agent asks
:meth:`ActionBook.unsent` and sends again those that ``retention-actions`` does not hold
(:mod:`streams.agents.retention_outbox`), so each decision is visible once.

Bounded work and memory. Open actions wait in the deadline book of :mod:`streams.outcome_book` (shared
with the ad engine's decisions; a heap per partition of (deadline, opening order, id)): a batch pops the
windows that end instead of scanning every open action, and they close in opening order; closed ids are
remembered until one window after their deadline, then forgotten through a second heap. In memory an open
action is its id and partition plus a heap entry; the decoded actions (features, ``phi``) are an LRU of ``max_cached_actions``, the others
are read back from the ``actions`` table when their outcome arrives or their window ends.
"""

from __future__ import annotations

import math
import struct
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import numpy as np

from policy.retention.policy import RetentionPolicy
from policy.retention.schema import NONE
from streams.edge import Source, dead_letter
from streams.events import DeadLetter, RetentionOutcome
from streams.retention_state import OpenAction, UserRow


OUTBOX_PREFIX = "outbox:"
_OUTBOX = struct.Struct("<qH")  # wall-clock ms when decided, key length; then the key and the action's bytes


@dataclass(frozen=True)
class Unsent:
    """A decided action whose delivery was never confirmed."""

    partition: int
    decision_id: str
    decided_ms: int
    key: bytes
    value: bytes


@dataclass
class Close:
    did: str
    act: OpenAction
    retained: bool
    value: float


class ActionBook:
    """Actions whose outcome window is open, their deadlines and closed ids (see the module docstring)."""

    def _outcome(self, event: RetentionOutcome, partition: int, t: float, source: Source,
                 raw: bytes) -> DeadLetter | None:
        did = event.decision_id
        act = self._action(did)
        if act is None:
            if self._book.closed_by_outcome(did):
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
        self._book.close_one(did, remember_until=act.decided_t + self._window + self._grace + self._window,
                             by_outcome=not expired)
        self._cached.pop(did, None)
        if self._new_open.pop(did, None) is None:
            self._deletes.append((did, act.partition))
        self._learn.append(Close(did, act, retained, value))

    def _open_one(self, did: str, act: OpenAction, cache: bool = True) -> OpenAction:
        """Hold ``act`` open and schedule its window's end (plus grace) in its partition's deadline heap."""
        self._book.open_one(did, act.partition, act.decided_t + self._window + self._grace)
        if cache:
            self._cached[did] = act
        return act

    def _action(self, did: str, cache: bool = True) -> OpenAction | None:
        """The open action ``did``: from memory (the last ``max_cached_actions`` used, and those not yet
        flushed), else read back from the store (and cached when ``cache``); None when it is not open."""
        partition = self._book.partition_of(did)
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
        skipped), so the cost is that of the windows that end, not of every open action. They stay open
        until ``_close_due`` closes them. (A deadline before the mark is one at or before the float just
        below it, the book's "through".)
        """
        return self._book.pop_due_many({p: math.nextafter(mark, -math.inf) for p, mark in marks.items()})

    def _close_due(self, due: list[str]) -> None:
        for did in due:
            act = self._action(did, cache=False)
            if act is not None:
                self._close(did, act, False, 0.0, expired=True)
                self.counters["retention_windows_expired"] += 1

    def _forget_closed(self) -> None:
        """Forget closed ids one window after their deadline (a duplicate outcome is recognised until then)."""
        self._book.forget_closed({p: math.nextafter(mark, -math.inf) for p, mark in self._watermark.items()})

    def _apply_learning(self) -> None:
        """Closed actions into the posteriors, risk offsets and budgets of their partitions."""
        if not self._learn:
            return
        by_part: dict[int, list[Close]] = {}
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
            for segment in segs:
                self._segments.mark((partition, segment))  # written at the next flush, kept until then
            part.dirty = True
            self.counters["retention_updates"] += len(closes)

    # --- the outbox (see the module docstring) ----------------------------------------------------

    def _outbox_put(self, did: str, partition: int, key: bytes, value: bytes) -> None:
        self._outbox[did] = (partition, key)
        self.store.put("partitions", f"{OUTBOX_PREFIX}{partition}/{did}", partition,
                       _OUTBOX.pack(int(time.time() * 1000), len(key)) + key + value)

    def unsent(self, partitions: Collection[int] | None = None) -> list[Unsent]:
        """The actions decided (their state written) whose delivery :meth:`sent_all` has not confirmed (of
        ``partitions`` only, when given)."""
        out = []
        for did, (partition, _) in self._outbox.items():
            if partitions is not None and partition not in partitions:
                continue
            raw = self.store.get("partitions", f"{OUTBOX_PREFIX}{partition}/{did}", partition)
            if raw is not None:
                ms, n = _OUTBOX.unpack_from(raw)
                at = _OUTBOX.size
                out.append(Unsent(partition, did, ms, raw[at:at + n], raw[at + n:]))
        return out

    def sent_all(self, partitions: Collection[int] | None = None) -> None:
        """Every action in the outbox (of ``partitions``, when given) is delivered: their entries go at the
        next flush."""
        for did, (partition, _) in list(self._outbox.items()):
            if partitions is None or partition in partitions:
                self.store.delete("partitions", f"{OUTBOX_PREFIX}{partition}/{did}", partition)
                del self._outbox[did]

    def _outbox_forget(self, user: bytes) -> None:
        """Drop the unsent actions of ``user`` (erasure)."""
        for did, (partition, key) in list(self._outbox.items()):
            if key == user:
                self.store.delete("partitions", f"{OUTBOX_PREFIX}{partition}/{did}", partition)
                del self._outbox[did]

    def restore(self) -> None:
        """Reload what the store holds now if partitions moved since (start, rebalance); the first batch
        after one does it too. The agent calls it before asking for :meth:`unsent`."""
        if self._rebuild_needed:
            self._rebuild()

    def _rebuild(self) -> None:
        """Reload open actions, the outbox and per-partition user counts from the store (start, rebalance)."""
        self._rebuild_needed = False
        self.store.load()
        self._outbox = {}
        for name, raw in self.store.items("partitions", OUTBOX_PREFIX):
            partition, did = name[len(OUTBOX_PREFIX):].split("/", 1)
            _, n = _OUTBOX.unpack_from(raw)
            self._outbox[did] = (int(partition), raw[_OUTBOX.size:_OUTBOX.size + n])
        self._book.clear()
        self._cached.clear()
        for did, raw in self.store.items("actions"):
            self._open_one(did, OpenAction.decode(raw), cache=len(self._cached) < self._max_cached)
        self._members = {}
        for user, raw in self.store.items("users"):
            self._members.setdefault(UserRow.partition_of(raw), set()).add(user)
        self._user_counts = Counter({p: len(m) for p, m in self._members.items()})
        for partition, part in self._parts.items():
            part.users = self._user_counts.get(partition, 0)
        self._rebuild_idle()  # streams.retention_partitions: the stored segments' last-seen times
