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
3. **Decision points: scheduled reviews** (:mod:`streams.retention_review`).
4. **Actions.** Every decision, ``none`` included, is emitted as a ``RetentionAction`` (propensity of
   the action under the bandit, floored at 1e-6 where the budget overrode the bandit — ``reason.rule`` then
   says why; ``decided_at`` is the review tick ``T`` in event time, where the outcome window starts).
   Decision ids are a hash of (user, ``T``), so a replayed review repeats ids: the budget answers
   replays idempotently and an id already open (or recently closed) is not decided again. A granted
   treatment is also folded into the user's features as an ``INTERVENTION`` event at ``T``.
5. **Outcomes** (:mod:`streams.retention_book`, with the bounded work and memory of open actions).

Budgets and learning per partition: :mod:`streams.retention_partitions`.

State is kept under four names (``users``, ``segments``, ``partitions`` for budgets and review marks,
``actions`` for open actions) in a :class:`streams.retention_blocks.BlockStore` over the
:class:`streams.store.PartitionStore` it is given (the Faust tables, or dicts in tests): each flush writes every key that
changed since the last one once, in one block per partition (split below ``retention.max_block_bytes``), so a
changelog record carries many keys instead of one. A budget is kept as many small records
(``budget:<partition>/<record>``, see :meth:`Budget.drain_changes`), never as one value: no state value grows
with the number of users toward the producer's message limit. Writes are buffered and flushed at most
every ``state_flush_interval_s`` (and before every review, rebalance and swap of state).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policy.adapter import Adapter
from policy.artifact import ArtifactError
from policy.retention.artifacts import RetentionArtifacts
from policy.retention.features import new_states, update_many
from policy.retention.schema import PURCHASE, SESSION, EventBatch
from streams.retention_blocks import BlockStore
from streams.outcome_book import OutcomeBook
from streams.retention_book import ActionBook, Close
from streams.retention_partitions import Partition, Partitions, risk_model
from streams.retention_review import Reviews
from streams.segment_expiry import IdleSegments, idle_ttl
from streams.segment_lru import CleanLRU
from streams.retention_state import (DAY_S, TICK, OpenAction, UserRow, budget_key, from_days,
                                     partition_budget_config, read_never_contact, to_days)
from streams.edge import Decoder, RawMessage, Source, dead_letter
from streams.pseudonyms import Pseudonyms
from streams.events import DeadLetter, ErasureRequest, SessionEvent
from streams.event_time import EventClock
from streams.store import PartitionStore
from streams.settings import PolicySettings, RetentionSettings, StoreSettings
from streams.topics import Topics

@dataclass
class Outputs:
    """What one batch produced: (key, value) pairs for each output topic."""

    actions: list[tuple[bytes, bytes]] = field(default_factory=list)
    action_partitions: list[int] = field(default_factory=list)
    """The user's partition of each action: actions stay co-partitioned with the user's input (whose key,
    the raw id, the pseudonymised action key no longer hashes like)."""
    dead_letters: list[tuple[bytes, bytes]] = field(default_factory=list)






class RetentionEngine(Reviews, ActionBook, Partitions):
    """Engagement features, churn risk, budgeted uplift decisions and delayed outcomes, per partition."""

    def __init__(self, artifacts: RetentionArtifacts, store: PartitionStore, topics: Topics,
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
        self._parts: dict[int, Partition] = {}
        # (partition, segment) pairs whose posterior is in memory, least recently used first
        self._segments: CleanLRU[tuple[int, str], None] = CleanLRU(settings.max_cached_segments)
        self._idle: IdleSegments[tuple[int, str]] = IdleSegments(idle_ttl(
            settings.segment_idle_ttl_s, settings.outcome_window_s + settings.outcome_grace_s) / DAY_S)
        self._watermark: dict[int, float] = {}
        # The skew rule's watermark per partition (days): the latest accepted event time, persisted.
        self.event_time = EventClock(storage.max_event_time_skew_s, clock, unit_s=DAY_S)
        self._users: dict[str, UserRow] = {}
        self._dirty_users: set[str] = set()
        self._folds: list[tuple[str, float, int, float]] = []  # (user, t, kind, value) not yet folded
        self._book = OutcomeBook(ties_by_opening=True)  # open actions' deadlines, recently closed ids
        self._cached: OrderedDict[str, OpenAction] = OrderedDict()  # open actions in memory (LRU)
        self._max_cached = settings.max_cached_actions
        self._new_open: dict[str, OpenAction] = {}  # opened since the last flush (not yet in the store)
        self._outbox: dict[str, tuple[int, bytes]] = {}  # decision id -> (partition, key) not yet delivered
        self._members: dict[int, set[str]] = {}  # partition -> its users (ids only; rows live in the store)
        self._deletes: list[tuple[str, int]] = []
        self._learn: list[Close] = []
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
            t = to_days(event.event_time)
            if self._beyond_skew(msg.partition, t):
                ref = self.event_time.mark(msg.partition)
                mark = "none yet" if ref is None else from_days(ref).isoformat()
                self._dead(out, dead_letter(msg.value or b"", source, "event_time_skew",
                                            f"event_time {event.event_time.isoformat()} is more than "
                                            f"{self.event_time.max_skew * DAY_S:.0f} s ahead of partition {msg.partition}'s "
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
        self.counters["retention_open_actions"] = len(self._book)
        self.counters["retention_actions_cached"] = len(self._cached)
        self.counters["retention_closed_ids"] = self._book.remembered()
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
        stored = ((did, OpenAction.decode(raw)) for did, raw in self.store.items("actions") if did in self._book)
        for did, act in [(d, a) for d, a in [*stored, *self._new_open.items()] if a.user == user]:
            if self._book.close_one(did) is None:
                continue
            self._cached.pop(did, None)
            if self._new_open.pop(did, None) is None:
                self._deletes.append((did, act.partition))
        part = self._part(partition)
        part.budget.forget_user(user)
        part.dirty = True
        self._outbox_forget(user.encode())
        self.counters["retention_erasures"] += 1
        self.flush(force=True, within_steps=True)
        self.store.purge(partition, user.encode())  # no older block keeps a copy of their records

    # --- event time and reviews ------------------------------------------------------------------


    def _beyond_skew(self, partition: int, t: float) -> bool:
        """Whether event time ``t`` is too far ahead (``streams.event_time``: of both the partition's watermark,
        persisted so a restart keeps it, and the wall clock); if not, ``t`` moves the watermark when newer."""
        part = self._part(partition)  # loads the partition's persisted watermark first
        if self.event_time.too_far(partition, t):
            self.counters["retention_event_time_skew"] += 1
            return True
        if self.event_time.advance(partition, t):
            part.watermark_dirty = True
        return False





    # --- outcomes --------------------------------------------------------------------------------












    # --- state -----------------------------------------------------------------------------------





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
        changed: dict[int, list[str]] = {}
        for partition, segment in self._segments.changed():
            changed.setdefault(partition, []).append(segment)
        self._segments.written()
        for partition, part in self._parts.items():
            for segment in changed.get(partition, ()):
                self.store.put("segments", f"{partition}/{segment}", partition,
                               self._segment_record(partition, segment))
            puts, deletes = part.budget.drain_changes()
            for record, value in puts.items():
                self.store.put("partitions", budget_key(partition, record), partition, value)
            for record in deletes:
                self.store.delete("partitions", budget_key(partition, record), partition)
            if partition in self._legacy_budgets:
                self.store.delete("partitions", budget_key(partition), partition)
                self._legacy_budgets.discard(partition)
            mark = self.event_time.mark(partition)
            if part.watermark_dirty and mark is not None:
                self.store.put("partitions", f"watermark:{partition}", partition, TICK.pack(mark))
                part.watermark_dirty = False
            if part.dirty and not part.reviewing:  # a restart in the middle of a review reviews again
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
        self._expire_idle_segments()
        self.store.commit()  # every key changed since the last flush, once, in one block per partition
        self._evict_segments()  # those written are current in the store: the least recently used may leave
        self.counters["retention_segments_cached"] = len(self._segments)
        self.counters.update(self.store.drain_counters())
        self.counters["retention_blocks"] = self.store.blocks()
        size, live = self.store.block_bytes()
        self.counters["retention_block_bytes"] = size
        self.counters["retention_block_live_bytes"] = live
        self.counters["retention_block_index_keys"] = self.store.indexed()

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
            risk = risk_model(artifacts)
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
        self._segments.clear()
        self._watermark.clear()
        self.event_time.clear()
        self._book.clear()
        self._cached.clear()
        self._members.clear()
        self.store.invalidate()
        self._rebuild_needed = True

    def pending_count(self) -> int:
        """Actions whose outcome window is still open."""
        return len(self._book)

    def _dead(self, out: Outputs, letter: DeadLetter) -> None:
        if self.pseudonyms is not None:
            letter = self.pseudonyms.letter_one(letter)
        self.counters[f"retention_dead_letters_{letter.error_type}"] += 1
        self.counters["retention_dead_letters"] += 1
        out.dead_letters.append((letter.source_topic.encode(), letter.model_dump_json().encode()))






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
