"""Per-user engagement state and the features the churn-risk model and the uplift bandit read.

Pure and torch-free: :func:`update_many` maps (states, event batch) to new states, :func:`features_many`
maps (states, now) to the feature matrix ``x``. The Faust agent keeps one state row per user in a RocksDB
table (:func:`state_to_bytes` / :func:`state_from_bytes`) and evicts users idle beyond a retention
horizon (:func:`expired_many`), so the table stays bounded.

Order independence. Decayed counters are stored *anchored* at ``t_ref`` (the latest event time seen):
``C(t_ref) = sum_e w_e exp(-(t_ref - t_e) / tau)``. Adding an event at ``t`` either moves the anchor
(``t > t_ref``: rescale, then add 1) or adds ``exp(-(t_ref - t) / tau)``; both give the same sum, so any
order of the same events yields the same state (up to rounding). First/last times are min/max. Duplicated
events are counted twice: the stream edge deduplicates by offset; the budget, not the features, is what
must be exactly idempotent.

State layout (float64[N_STATE] per user)::

    0 t_ref              latest event time (days); NaN for a fresh state
    1 first_seen         earliest event time
    2 last_session       latest SESSION time (NaN if none)
    3 last_purchase      latest PURCHASE time
    4 last_intervention  latest INTERVENTION time
    5 last_treatment     treatment id of the latest intervention (ties: the larger id)
    6 sessions_7         sessions, decayed with tau = 7 days
    7 sessions_30        sessions, tau = 30
    8 purchases_30       purchases, tau = 30
    9 spend_30           purchase value, tau = 30
    10 purchases_total   all purchases
    11 spend_total       all purchase value
    12 interventions_30  interventions, tau = 30

Features (float64[DX] per user, at time ``now``; days are capped at ``CAP_DAYS``)::

    0 log1p(days since last session)      recency
    1 sessions_7(now)                     short-term frequency
    2 sessions_30(now)                    long-term frequency
    3 log1p(spend_30(now))                monetary
    4 purchases_30(now)
    5 log((sessions_7/7 + 0.05) / (sessions_30/30 + 0.05))   trend (negative: slowing down)
    6 log1p(spend_total / max(purchases_total, 1))          average basket
    7 log1p(tenure days)
    8 log1p(days since last intervention)
    9 interventions_30(now)
"""

from __future__ import annotations

import numpy as np

from policy.retention.schema import INTERVENTION, PURCHASE, SESSION, EventBatch

N_STATE = 13
DX = 10
CAP_DAYS = 90.0
FEATURE_NAMES = (
    "log_recency",
    "sessions_7",
    "sessions_30",
    "log_spend_30",
    "purchases_30",
    "trend",
    "log_basket",
    "log_tenure",
    "log_since_intervention",
    "interventions_30",
)

_T_REF, _FIRST, _LAST_S, _LAST_P, _LAST_I, _LAST_A = 0, 1, 2, 3, 4, 5
_S7, _S30, _P30, _V30, _PTOT, _VTOT, _I30 = 6, 7, 8, 9, 10, 11, 12
_DECAYED = np.array([_S7, _S30, _P30, _V30, _I30])
_TAU = np.array([7.0, 30.0, 30.0, 30.0, 30.0])


def new_states(n: int) -> np.ndarray:
    """float64[n, N_STATE]: ``n`` fresh (never seen) users."""
    states = np.zeros((n, N_STATE))
    states[:, [_T_REF, _FIRST, _LAST_S, _LAST_P, _LAST_I]] = np.nan
    states[:, _LAST_A] = -1.0
    return states


def _fmax(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.fmax(a, b)  # NaN-ignoring


def update_many(states: np.ndarray, events: EventBatch) -> np.ndarray:
    """Fold a batch of events into the users' states (pure: returns a new array).

    Parameters
    ----------
    states
        float64[N, N_STATE]; ``events.user`` indexes its rows.
    events
        Any order, any mix of users; times may precede a user's ``t_ref`` (late events).

    Returns
    -------
    numpy.ndarray
        float64[N, N_STATE], the updated states.
    """
    states = np.array(states, dtype=np.float64, copy=True)
    if states.ndim != 2 or states.shape[1] != N_STATE:
        raise ValueError(f"states must be [N, {N_STATE}], got {states.shape}")
    if len(events) == 0:
        return states
    u, t, kind, val = events.user, events.time, events.kind, events.value
    if u.min() < 0 or u.max() >= states.shape[0]:
        raise ValueError("event user index out of range")

    old_ref = states[:, _T_REF].copy()
    ev_max = np.full(states.shape[0], np.nan)
    np.fmax.at(ev_max, u, t)
    new_ref = _fmax(old_ref, ev_max)
    # rescale existing counters to the new anchor (NaN old anchor: counters are zero anyway)
    shift = np.where(np.isnan(old_ref), 0.0, new_ref - old_ref)
    touched = ~np.isnan(new_ref)
    factor = np.exp(-shift[touched, None] / _TAU[None, :])
    states[np.ix_(touched, _DECAYED)] *= factor
    states[:, _T_REF] = new_ref

    ev_first = np.full(states.shape[0], np.nan)
    np.fmin.at(ev_first, u, t)
    states[:, _FIRST] = np.fmin(states[:, _FIRST], ev_first)

    age = new_ref[u] - t  # >= 0
    weight = np.exp(-age[:, None] / _TAU[None, :])  # [n, 5] for the five decayed counters
    sess = kind == SESSION
    purch = kind == PURCHASE
    interv = kind == INTERVENTION
    for col, mask, w_col, amount in (
        (_S7, sess, 0, None),
        (_S30, sess, 1, None),
        (_P30, purch, 2, None),
        (_V30, purch, 3, val),
        (_I30, interv, 4, None),
    ):
        contrib = weight[mask, w_col] if amount is None else weight[mask, w_col] * amount[mask]
        np.add.at(states[:, col], u[mask], contrib)
    np.add.at(states[:, _PTOT], u[purch], 1.0)
    np.add.at(states[:, _VTOT], u[purch], val[purch])

    for col, mask in ((_LAST_S, sess), (_LAST_P, purch)):
        last = np.full(states.shape[0], np.nan)
        np.fmax.at(last, u[mask], t[mask])
        states[:, col] = np.fmax(states[:, col], last)

    if interv.any():
        last_i = np.full(states.shape[0], np.nan)
        np.fmax.at(last_i, u[interv], t[interv])
        # treatment of the latest intervention; ties broken by the larger id (order independent)
        cand = np.full(states.shape[0], -1.0)
        at_last = t[interv] == last_i[u[interv]]
        np.maximum.at(cand, u[interv][at_last], val[interv][at_last])
        prev_i = states[:, _LAST_I]
        newer = ~np.isnan(last_i) & (np.isnan(prev_i) | (last_i > prev_i))
        tie = ~np.isnan(last_i) & (last_i == prev_i)
        states[newer, _LAST_A] = cand[newer]
        states[tie, _LAST_A] = np.maximum(states[tie, _LAST_A], cand[tie])
        states[:, _LAST_I] = np.fmax(prev_i, last_i)
    return states


def _days_since(now: np.ndarray, when: np.ndarray) -> np.ndarray:
    d = np.where(np.isnan(when), CAP_DAYS, now - when)
    return np.clip(d, 0.0, CAP_DAYS)


def features_many(states: np.ndarray, now: np.ndarray | float) -> np.ndarray:
    """The engagement features of every user at event time ``now`` (scalar or float[N]).

    Counters are decayed from ``t_ref`` to ``now`` when ``now`` is later; a ``now`` earlier than
    ``t_ref`` (late decision) uses the counters as they stand.

    Returns
    -------
    numpy.ndarray
        float64[N, DX], finite.
    """
    states = np.asarray(states, dtype=np.float64)
    n = states.shape[0]
    now = np.broadcast_to(np.asarray(now, dtype=np.float64), (n,))
    ref = states[:, _T_REF]
    gap = np.where(np.isnan(ref), 0.0, np.clip(now - ref, 0.0, None))
    dec = states[:, _DECAYED] * np.exp(-gap[:, None] / _TAU[None, :])
    s7, s30, p30, v30, i30 = dec.T
    x = np.empty((n, DX))
    x[:, 0] = np.log1p(_days_since(now, states[:, _LAST_S]))
    x[:, 1] = s7
    x[:, 2] = s30
    x[:, 3] = np.log1p(np.clip(v30, 0.0, None))
    x[:, 4] = p30
    x[:, 5] = np.log((s7 / 7.0 + 0.05) / (s30 / 30.0 + 0.05))
    x[:, 6] = np.log1p(states[:, _VTOT] / np.maximum(states[:, _PTOT], 1.0))
    first = states[:, _FIRST]
    x[:, 7] = np.log1p(np.where(np.isnan(first), 0.0, np.clip(now - first, 0.0, 10 * CAP_DAYS)))
    x[:, 8] = np.log1p(_days_since(now, states[:, _LAST_I]))
    x[:, 9] = i30
    return x


def expired_many(states: np.ndarray, now: float, horizon_days: float) -> np.ndarray:
    """bool[N]: users whose latest event is more than ``horizon_days`` before ``now`` (or never seen).

    The agent deletes these rows from its table; a returning user starts from a fresh state.
    """
    ref = np.asarray(states, dtype=np.float64)[:, _T_REF]
    return np.isnan(ref) | (now - ref > horizon_days)


def state_to_bytes(state: np.ndarray) -> bytes:
    """One user's state (float64[N_STATE]) as 104 little-endian bytes."""
    arr = np.asarray(state, dtype="<f8").reshape(-1)
    if arr.shape[0] != N_STATE:
        raise ValueError(f"state must have {N_STATE} entries, got {arr.shape[0]}")
    return arr.tobytes()


def state_from_bytes(raw: bytes) -> np.ndarray:
    """Inverse of :func:`state_to_bytes`."""
    if len(raw) != 8 * N_STATE:
        raise ValueError(f"engagement state must be {8 * N_STATE} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype="<f8").astype(np.float64)


def update_one(state: np.ndarray, user_events: EventBatch) -> np.ndarray:
    """One user's state updated with that user's events (``user_events.user`` is ignored)."""
    batch = EventBatch(np.zeros(len(user_events), dtype=np.int64), user_events.time, user_events.kind, user_events.value)
    return update_many(np.asarray(state, dtype=np.float64)[None, :], batch)[0]
