"""Intervention budget: spend caps with pacing, a per-user frequency cap and a never-contact list.

A pure, deterministic state machine (no clock, no randomness, no I/O): every call names its event time
``now`` (days) and the state serialises to bytes (:meth:`Budget.to_bytes`), so a stream agent can keep it
in a table and replay input safely.

Rules, checked by :meth:`Budget.try_spend_one` for a contact ``(decision_id, user, segment, cost, now)``:

1. **Idempotence.** A decision id seen before returns its first answer and changes nothing (a replay).
   If the replay names another user or segment it is denied (``id_conflict``); if the user has opted out
   since, it is denied (``never_contact``), so a replay never contacts a never-contact user.
2. **Never-contact.** Users on the list (configuration plus :meth:`Budget.add_never_contact`) are never
   granted.
3. **Frequency cap.** No window of ``contact_window_days`` contains more than ``max_contacts`` granted
   contacts of one user — in event time, for contacts arriving in any order.
4. **Caps with pacing.** Periods are ``[p * period_days, (p + 1) * period_days)``. Within a period, for
   every event time ``t``, the cost granted at decision times ``<= t`` stays below the *allowance*
   ``cap * min(1, (t - start) / period_days + pacing_lead)``, both per segment and in total. The cap is
   never exceeded and cannot be spent in the first hour; late (out-of-order) decisions are checked
   against every later point of the period, so the invariant holds for any arrival order.
5. **Retention horizon.** State older than ``horizon_periods`` periods before the latest time seen is
   dropped; decisions that old are denied as ``expired`` (so a replay of an evicted decision cannot
   contact anyone twice). Contacts are kept one contact window longer, so rule 3 stays exact.

Persistence. :meth:`Budget.to_bytes` writes the whole state as one value; its size grows with the
decisions of the horizon, so a stream store keeps the state as *records* instead
(:meth:`Budget.drain_changes` / :meth:`Budget.from_records`): one small value per decision (``d/<id>``),
per user with contacts (``c/<user>``), per opted-out user (``n/<user>``) and a head (``head``), and only
the records changed since the last drain are written or deleted. Every record stays small whatever the
number of users (a user's contact list is bounded by the frequency cap and the horizon).

Costs are reserved at their worst case (a coupon's face value) and may later be lowered to what was
actually paid with :meth:`Budget.settle_one` (idempotent: it sets, never subtracts twice). Money is kept in
integer micro-units (cost rounded up, caps rounded down), so sums are exact and a cap check never fails
by rounding.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable

from policy.retention.budget_config import MICRO, BudgetConfig, Grant, to_micro_down, to_micro_up
from policy.retention.exceptions import BudgetStateError

STATE_VERSION = 1


class _Ledger:
    """Charges of one (period, segment) or one period in total: sorted by (time, id), with a running sum."""

    __slots__ = ("keys", "total", "max_time")

    def __init__(self) -> None:
        self.keys: list[tuple[float, str]] = []
        self.total = 0
        self.max_time = -math.inf

    def fits(self, t: float, amount: int, allowance, amounts: dict[str, int]) -> bool:
        """Whether adding ``amount`` at ``t`` keeps cumulative spend <= allowance at every time >= t."""
        if t >= self.max_time:  # the common, in-order case
            return self.total + amount <= allowance(t)
        pos = bisect.bisect_right(self.keys, (t, "\U0010ffff"))
        cum = sum(amounts[k[1]] for k in self.keys[:pos]) + amount
        if cum > allowance(t):
            return False
        for ti, did in self.keys[pos:]:
            cum += amounts[did]
            if cum > allowance(ti):
                return False
        return True

    def add(self, t: float, did: str, amount: int) -> None:
        bisect.insort(self.keys, (t, did))
        self.total += amount
        self.max_time = max(self.max_time, t)


class Budget:
    """The budget state machine (see the module docstring for the rules).

    Parameters
    ----------
    config
        Caps and limits.
    """

    def __init__(self, config: BudgetConfig) -> None:
        self.config = config
        self._decisions: dict[str, dict] = {}
        """decision id -> {user, segment, time, period, reserved, charged, granted, reason}"""
        self._amounts: dict[str, int] = {}
        """decision id -> charged micro-units (granted decisions only)"""
        self._seg_ledgers: dict[tuple[int, str], _Ledger] = {}
        self._tot_ledgers: dict[int, _Ledger] = {}
        self._contacts: dict[str, list[float]] = {}
        self._never: set[str] = set()
        self._latest_period: int | None = None
        self._changed: set[str] = set()
        """record keys (``head``, ``d/<id>``, ``c/<user>``, ``n/<user>``) changed since the last drain"""

    # ------------------------------------------------------------------ queries
    def period_of(self, now: float) -> int:
        return int(math.floor(now / self.config.period_days))

    def _allowance(self, cap: float, period: int):
        start = period * self.config.period_days
        cap_micro = to_micro_down(cap)

        def allowance(t: float) -> int:
            frac = min(1.0, (t - start) / self.config.period_days + self.config.pacing_lead)
            return min(cap_micro, to_micro_down(cap * max(frac, 0.0)))

        return allowance

    def is_never_contact(self, user: str) -> bool:
        return user in self._never or user in self.config.never_contact

    def spent(self, segment: str | None, period: int) -> float:
        """Cost charged in ``period`` for ``segment`` (``None``: all segments)."""
        ledger = self._tot_ledgers.get(period) if segment is None else self._seg_ledgers.get((period, segment))
        return 0.0 if ledger is None else ledger.total / MICRO

    def available(self, segment: str, now: float) -> float:
        """What an in-order contact at ``now`` could still be granted (min of segment and total slack)."""
        p = self.period_of(now)
        seg = self._seg_ledgers.get((p, segment))
        tot = self._tot_ledgers.get(p)
        s = self._allowance(self.config.cap_for(segment), p)(now) - (seg.total if seg else 0)
        a = self._allowance(self.config.total_cap, p)(now) - (tot.total if tot else 0)
        return max(0, min(s, a)) / MICRO

    def contacts_of(self, user: str) -> list[float]:
        """Event times of the user's granted contacts still in the state, sorted."""
        return list(self._contacts.get(user, ()))

    @property
    def n_decisions(self) -> int:
        """Decision records held (every contact asked for within the horizon, granted or not)."""
        return len(self._decisions)

    def decision(self, decision_id: str) -> dict | None:
        rec = self._decisions.get(decision_id)
        return None if rec is None else dict(rec)

    # ------------------------------------------------------------------ updates
    def add_never_contact(self, user: str) -> None:
        """Put ``user`` on the never-contact list (opt-out); later requests for them are denied."""
        self._never.add(user)
        self._changed.add(f"n/{user}")

    def forget_user(self, user: str) -> int:
        """Erase ``user``: their contact times go and their name leaves the decision records (the spend
        stays accounted; a replayed decision for them is then an ``id_conflict``, never a contact). A
        never-contact entry stays: it is the record that they must not be contacted. Returns the number
        of entries changed."""
        changed = len(self._contacts.pop(user, ()))
        self._changed.add(f"c/{user}")
        for did, rec in self._decisions.items():
            if rec["user"] == user:
                rec["user"] = ""
                self._changed.add(f"d/{did}")
                changed += 1
        return changed

    def _frequency_ok(self, user: str, t: float) -> bool:
        w = self.config.contact_window_days
        k = self.config.max_contacts
        if k == 0:
            return False
        times = self._contacts.get(user, [])
        lo = bisect.bisect_left(times, t - w)
        hi = bisect.bisect_right(times, t + w)
        near = times[lo:hi]
        bisect.insort(near, t)
        # any k+1 consecutive contacts must span at least the window
        return all(near[i + k] - near[i] >= w for i in range(len(near) - k))

    def try_spend_one(
        self, decision_id: str, user: str, segment: str, cost: float, now: float, tag: str = ""
    ) -> Grant:
        """Ask to contact ``user`` of ``segment`` at event time ``now`` at (worst-case) ``cost``.

        Returns the first answer for a repeated ``decision_id``. Grants reserve ``cost`` against the
        segment and total caps of the period of ``now`` and count as a contact for the frequency cap.
        ``tag`` is stored with the decision and returned on replays.
        """
        prior = self._decisions.get(decision_id)
        if prior is not None:
            if prior["user"] != user or prior["segment"] != segment:
                return Grant(False, "id_conflict", 0.0, True)  # an id reused for someone else: never a contact
            if self.is_never_contact(user):
                return Grant(False, "never_contact", 0.0, True)  # opted out since: do not repeat the contact
            return Grant(prior["granted"], prior["reason"], prior["charged"] / MICRO, True, prior.get("tag", ""))
        if not (isinstance(now, (int, float)) and math.isfinite(now)):
            raise BudgetStateError(f"now must be a finite number, got {now!r}")
        period = self.period_of(now)
        if self._latest_period is not None and period < self._latest_period - self.config.horizon_periods:
            # remembered (under the latest period, so it ages out) to answer a replay the same way
            self._decisions[decision_id] = {
                "user": user,
                "segment": segment,
                "time": float(now),
                "period": self._latest_period,
                "reserved": 0,
                "charged": 0,
                "granted": False,
                "reason": "expired",
                "tag": tag,
            }
            self._changed.add(f"d/{decision_id}")
            return Grant(False, "expired", 0.0, False, tag)
        reason = self._check(user, segment, cost, now, period)
        granted = reason == "granted"
        amount = to_micro_up(cost) if granted else 0
        self._decisions[decision_id] = {
            "user": user,
            "segment": segment,
            "time": float(now),
            "period": period,
            "reserved": amount,
            "charged": amount,
            "granted": granted,
            "reason": reason,
            "tag": tag,
        }
        if granted:
            self._amounts[decision_id] = amount
            self._seg_ledgers.setdefault((period, segment), _Ledger()).add(float(now), decision_id, amount)
            self._tot_ledgers.setdefault(period, _Ledger()).add(float(now), decision_id, amount)
            bisect.insort(self._contacts.setdefault(user, []), float(now))
            self._changed.add(f"c/{user}")
        self._changed.add(f"d/{decision_id}")
        if self._latest_period is None or period > self._latest_period:
            self._latest_period = period
            self._changed.add("head")
            self._evict()
        return Grant(granted, reason, amount / MICRO, False, tag)

    def _check(self, user: str, segment: str, cost: float, now: float, period: int) -> str:
        if not (isinstance(cost, (int, float)) and math.isfinite(cost) and cost >= 0):
            return "invalid_cost"
        if self.is_never_contact(user):
            return "never_contact"
        if not self._frequency_ok(user, float(now)):
            return "frequency_cap"
        amount = to_micro_up(cost)
        for name, ledger, cap in (
            ("segment", self._seg_ledgers.get((period, segment)), self.config.cap_for(segment)),
            ("total", self._tot_ledgers.get(period), self.config.total_cap),
        ):
            ledger = ledger or _Ledger()
            if ledger.total + amount > to_micro_down(cap):
                return f"{name}_cap"
            if not ledger.fits(float(now), amount, self._allowance(cap, period), self._amounts):
                return f"{name}_pacing"
        return "granted"

    def settle_one(self, decision_id: str, actual_cost: float) -> float:
        """Lower a granted decision's charge to what was actually paid (never raises it).

        Idempotent: settling twice with the same cost changes nothing. Returns the charge now on the
        books (0 for unknown, denied or evicted decisions).
        """
        rec = self._decisions.get(decision_id)
        if rec is None or not rec["granted"]:
            return 0.0
        if not (math.isfinite(actual_cost) and actual_cost >= 0):
            raise BudgetStateError(f"actual_cost must be finite and >= 0, got {actual_cost!r}")
        new = min(rec["charged"], to_micro_up(actual_cost))
        delta = rec["charged"] - new
        if delta:
            self._changed.add(f"d/{decision_id}")
            rec["charged"] = new
            self._amounts[decision_id] = new
            self._seg_ledgers[(rec["period"], rec["segment"])].total -= delta
            self._tot_ledgers[rec["period"]].total -= delta
        return new / MICRO

    def _evict(self) -> None:
        oldest = self._latest_period - self.config.horizon_periods
        stale = [d for d, r in self._decisions.items() if r["period"] < oldest]
        for d in stale:
            del self._decisions[d]
            self._amounts.pop(d, None)
            self._changed.add(f"d/{d}")
        for key in [k for k in self._seg_ledgers if k[0] < oldest]:
            del self._seg_ledgers[key]
        for key in [k for k in self._tot_ledgers if k < oldest]:
            del self._tot_ledgers[key]
        # contacts that can still fall in the window of a decision that is not expired
        cutoff = oldest * self.config.period_days - self.config.contact_window_days
        for user in list(self._contacts):
            times = self._contacts[user]
            keep = times[bisect.bisect_left(times, cutoff) :]
            if len(keep) != len(times):
                self._changed.add(f"c/{user}")
            if keep:
                self._contacts[user] = keep
            else:
                del self._contacts[user]

    # ------------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        """The configuration and state as deterministic JSON bytes (equal states give equal bytes)."""
        payload = {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "decisions": dict(sorted(self._decisions.items())),
            "contacts": dict(sorted(self._contacts.items())),
            "never": sorted(self._never),
            "latest_period": self._latest_period,
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> "Budget":
        """Inverse of :meth:`to_bytes`; raises :class:`BudgetStateError` on malformed input."""
        try:
            payload = json.loads(raw)
            if payload["version"] != STATE_VERSION:
                raise BudgetStateError(f"unsupported budget state version {payload['version']!r}")
            budget = Budget(BudgetConfig.from_dict(payload["config"]))
            budget._latest_period = payload["latest_period"]
            budget._never = set(payload["never"])
            budget._contacts = {u: sorted(float(t) for t in ts) for u, ts in payload["contacts"].items()}
            for did, rec in payload["decisions"].items():
                budget._add_record(did, dict(rec))
        except BudgetStateError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BudgetStateError(f"malformed budget state: {exc}") from exc
        return budget

    # ------------------------------------------------------------------ records
    def drain_changes(self) -> tuple[dict[str, bytes], list[str]]:
        """The records changed since the last drain: ``(puts, deletes)`` by record key; clears the set.

        Keys are ``head``, ``d/<decision id>``, ``c/<user>`` and ``n/<user>``; values are small JSON
        documents (one decision, one user's contact times, one opt-out, the latest period).
        """
        puts: dict[str, bytes] = {}
        deletes: list[str] = []
        for key in sorted(self._changed):
            raw = self._record(key)
            if raw is None:
                deletes.append(key)
            else:
                puts[key] = raw
        self._changed.clear()
        return puts, deletes

    def mark_all_changed(self) -> None:
        """Make the next :meth:`drain_changes` return every record (e.g. to move a whole state)."""
        self._changed.add("head")
        self._changed.update(f"d/{d}" for d in self._decisions)
        self._changed.update(f"c/{u}" for u in self._contacts)
        self._changed.update(f"n/{u}" for u in self._never)

    def _record(self, key: str) -> bytes | None:
        kind, _, name = key.partition("/")
        if kind == "head":
            body: object = {"version": STATE_VERSION, "latest_period": self._latest_period}
        elif kind == "d":
            body = self._decisions.get(name)
        elif kind == "c":
            body = self._contacts.get(name)
        elif kind == "n":
            body = 1 if name in self._never else None
        else:
            raise BudgetStateError(f"unknown budget record key {key!r}")
        if body is None:
            return None
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def from_records(config: BudgetConfig, records: Iterable[tuple[str, bytes]]) -> "Budget":
        """The budget whose records (as written from :meth:`drain_changes`) are ``records``, under
        ``config``; raises :class:`BudgetStateError` on a malformed record."""
        budget = Budget(config)
        try:
            for key, raw in records:
                kind, _, name = key.partition("/")
                body = json.loads(raw)
                if kind == "head":
                    if body["version"] != STATE_VERSION:
                        raise BudgetStateError(f"unsupported budget state version {body['version']!r}")
                    budget._latest_period = body["latest_period"]
                elif kind == "d":
                    budget._add_record(name, dict(body))
                elif kind == "c":
                    budget._contacts[name] = sorted(float(t) for t in body)
                elif kind == "n":
                    budget._never.add(name)
                else:
                    raise BudgetStateError(f"unknown budget record key {key!r}")
        except BudgetStateError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BudgetStateError(f"malformed budget record: {exc}") from exc
        return budget

    def _add_record(self, did: str, rec: dict) -> None:
        self._decisions[did] = rec
        if rec["granted"]:
            self._amounts[did] = int(rec["charged"])
            p, seg, t = int(rec["period"]), str(rec["segment"]), float(rec["time"])
            for ledger in (self._seg_ledgers.setdefault((p, seg), _Ledger()),
                           self._tot_ledgers.setdefault(p, _Ledger())):
                ledger.add(t, did, int(rec["charged"]))
