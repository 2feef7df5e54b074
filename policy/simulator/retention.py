"""The simulated retention world: users whose engagement decays towards churn, and treatments that may help.

Segments are ``market × cohort`` (names like ``"m03-c11"``) drawn from one task distribution: each
segment's parameters are a shared mean plus a market effect, a cohort effect and an idiosyncratic part, so
segments share structure yet differ (the premise of a meta-learned prior).

Time is event time in days. Every user is visited at a decision point once per *round* of
``window_days`` days, at ``t0 + round * window_days + offset_u`` (the offset spreads decision points over
the period). The outcome window of a decision is the following ``window_days`` days. Within a window,
on day ``d`` (0-based) under treatment ``a``::

    P(session on day d)        p_d = sigmoid(eng_u - decay_u d + s_a(u, d))
    P(purchase | session)      q_a = sigmoid(buy_u + c_a(u))
    value | purchase           value_u * LogNormal(-0.045, 0.3^2)          (mean value_u)

with session effects (segment gains ``g``; user traits ``price_u`` in (0, 1), price sensitivity, higher for
small baskets; ``freq_u = sigmoid(eng_u)``)::

    s_push(u, d)   = (g_push - g_annoy (1 - freq_u)^2) exp(-d / 2)    infrequent users are annoyed
    s_email(u, d)  = g_email exp(-d / 4)
    s_coupon_k     = g_coupon price_u lift_k                          lift = 0.5 (coupon_5), 0.9 (coupon_15)
    c_coupon_k(u)  = g_coupon price_u buy_k                           buy  = 0.5 (coupon_5), 1.0 (coupon_15)

A coupon is redeemed with the window's first purchase (cost = face value), so coupons subsidise users who
would have bought anyway; push and email cost 0.02 and 0.05 when sent. The *reward* of a decision is the
window's purchase value minus the treatment cost, and its true expectation is known in closed form
(:meth:`RetentionWorld.expected_reward`)::

    E[value | a] = value_u q_a sum_d p_d
    E[cost | a]  = fixed_a + face_a (1 - prod_d (1 - p_d q_a))

so an oracle with the true uplift ``E[reward | a] - E[reward | none]`` exists. Churn risk is the
probability of no purchase in the window without treatment, ``prod_d (1 - p_d q_none)``.

Between windows engagement moves: ``eng_u <- eng_u - decay_u W + 0.09 sessions + N(0, 0.15^2)``
(clipped to [-8, 4]): sessions keep a user engaged, absence lets them drift towards churn, so treatments
that bring a user back also raise their later engagement.

Heterogeneity is observable but not trivially: frequency and recency reveal ``eng_u`` and ``decay_u``,
the basket size reveals ``price_u`` only through noise, and segment gains are latent. Highest-risk users
(``eng_u`` very low) are mostly beyond reach — a logit shift moves a tiny probability by little — which is
the mechanism behind the "retention futility" finding of Ascarza (2018, JMR): uplift, not risk, should
pick whom to treat.

Everything is vectorised over users and seeded (numpy ``Generator``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policy.retention.schema import (
    COUPON_FACE,
    FIXED_COST,
    INTERVENTION,
    K,
    NONE,
    PURCHASE,
    SESSION,
    EventBatch,
)

_LIFT = np.array([0.0, 0.0, 0.0, 0.7, 1.2])
_BUY = np.array([0.0, 0.0, 0.0, 0.15, 0.3])
_SESSION_BUMP = 0.09
_ENG_NOISE = 0.15
_VALUE_NOISE = 0.3


def segment_name(market: int, cohort: int) -> str:
    """``segment_name(3, 11) == "m03-c11"``."""
    return f"m{market:02d}-c{cohort:02d}"


@dataclass(frozen=True)
class SegmentParams:
    """Latent parameters of one segment (arrays indexed by segment)."""

    eng_mean: np.ndarray
    decay_mean: np.ndarray
    value_log_mean: np.ndarray
    buy_mean: np.ndarray
    g_push: np.ndarray
    g_annoy: np.ndarray
    g_email: np.ndarray
    g_coupon: np.ndarray


def draw_segments(n_markets: int, n_cohorts: int, seed: int) -> tuple[list[str], SegmentParams]:
    """All ``n_markets × n_cohorts`` segments of a world, in row-major order (market, then cohort).

    Each parameter is ``mean + market_effect[m] + cohort_effect[c] + idiosyncratic`` (gains then clipped
    to a plausible range).
    """
    rng = np.random.default_rng([seed, 0xC0FFEE])
    names = [segment_name(m, c) for m in range(n_markets) for c in range(n_cohorts)]
    mk = np.repeat(np.arange(n_markets), n_cohorts)
    ck = np.tile(np.arange(n_cohorts), n_markets)

    def draw(mean: float, sd_m: float, sd_c: float, sd_i: float) -> np.ndarray:
        m_eff = rng.normal(0.0, sd_m, n_markets)
        c_eff = rng.normal(0.0, sd_c, n_cohorts)
        return mean + m_eff[mk] + c_eff[ck] + rng.normal(0.0, sd_i, mk.shape[0])

    params = SegmentParams(
        eng_mean=draw(-0.6, 0.25, 0.35, 0.2),
        decay_mean=np.clip(draw(0.045, 0.01, 0.012, 0.008), 0.01, 0.1),
        value_log_mean=draw(np.log(30.0), 0.15, 0.2, 0.1),
        buy_mean=draw(-0.9, 0.2, 0.25, 0.15),
        g_push=np.clip(draw(0.5, 0.15, 0.2, 0.1), 0.0, None),
        g_annoy=np.clip(draw(1.0, 0.3, 0.3, 0.2), 0.0, None),
        g_email=np.clip(draw(0.25, 0.08, 0.1, 0.05), 0.0, None),
        g_coupon=np.clip(draw(1.0, 0.25, 0.3, 0.15), 0.05, None),
    )
    return names, params


@dataclass(frozen=True)
class WindowResult:
    """What one round of decisions led to.

    Attributes
    ----------
    decision_time : float64[N]   the decision point of each user in this round
    events : EventBatch          sessions and purchases in the outcome windows, and the interventions sent
    value : float64[N]           purchase value in each user's window
    cost : float64[N]            realised treatment cost (fixed cost, plus face value if a coupon was redeemed)
    reward : float64[N]          value - cost
    purchased : bool[N]          at least one purchase in the window (not churned)
    """

    decision_time: np.ndarray
    events: EventBatch
    value: np.ndarray
    cost: np.ndarray
    reward: np.ndarray
    purchased: np.ndarray


class RetentionWorld:
    """A population of users in a set of segments, advanced one decision round at a time.

    Parameters
    ----------
    segment_names, params
        From :func:`draw_segments`; pass a subset (see :meth:`subset_segments`) to build a world of, e.g.,
        held-out segments only.
    users_per_segment
        Users in each segment.
    seed
        Seeds user draws and outcomes.
    window_days
        Length of a round and of an outcome window (days, integer).
    t0
        Event time of the first round's period start (days).
    """

    def __init__(
        self,
        segment_names: list[str],
        params: SegmentParams,
        users_per_segment: int,
        seed: int,
        window_days: int = 7,
        t0: float = 0.0,
    ) -> None:
        self.segment_names = list(segment_names)
        self.params = params
        self.window_days = int(window_days)
        self.t0 = float(t0)
        self._rng = np.random.default_rng([seed, 0x5EED])
        n_seg = len(self.segment_names)
        n = n_seg * users_per_segment
        self.segment = np.repeat(np.arange(n_seg, dtype=np.int64), users_per_segment)
        s = self.segment
        rng = self._rng
        self.eng = params.eng_mean[s] + rng.normal(0.0, 1.1, n)
        self.decay = params.decay_mean[s] * rng.lognormal(-0.045, 0.3, n)
        log_value = params.value_log_mean[s] + rng.normal(0.0, 0.4, n)
        self.value = np.exp(log_value)
        self.price = 1.0 / (1.0 + np.exp(-(rng.normal(0.0, 0.8, n) - 1.6 * (log_value - params.value_log_mean[s]))))
        self.buy = params.buy_mean[s] + rng.normal(0.0, 0.4, n)
        self.offset = rng.uniform(0.0, self.window_days, n)
        self.round = 0

    @property
    def n_users(self) -> int:
        return int(self.segment.shape[0])

    def decision_time(self) -> np.ndarray:
        """float64[N]: each user's decision point in the current round."""
        return self.t0 + self.round * self.window_days + self.offset

    def _day_probs(self, action: np.ndarray, users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Session probabilities p[n, W] and purchase-per-session probabilities q[n] under ``action``."""
        idx = slice(None) if users is None else users
        p_ = self.params
        s = self.segment[idx]
        eng = self.eng[idx]
        price = self.price[idx]
        action = np.asarray(action, dtype=np.int64)
        days = np.arange(self.window_days, dtype=np.float64)
        freq = 1.0 / (1.0 + np.exp(-eng))
        effect = np.zeros((eng.shape[0], self.window_days))
        push = action == 1
        effect[push] = ((p_.g_push[s] - p_.g_annoy[s] * (1.0 - freq) ** 2)[push, None]) * np.exp(-days / 2.0)
        email = action == 2
        effect[email] = p_.g_email[s][email, None] * np.exp(-days / 4.0)
        coupon_strength = p_.g_coupon[s] * price
        effect += (coupon_strength * _LIFT[action])[:, None]
        logit = eng[:, None] - self.decay[idx][:, None] * days[None, :] + effect
        p = 1.0 / (1.0 + np.exp(-logit))
        q = 1.0 / (1.0 + np.exp(-(self.buy[idx] + coupon_strength * _BUY[action])))
        return p, q

    def expected_reward(self, users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """True expected window value and cost of every treatment at the current state.

        Returns
        -------
        (value, cost) : float64[n, K] each; the expected reward is ``value - cost`` and the true uplift of
        ``a`` is ``(value - cost)[:, a] - (value - cost)[:, 0]``.
        """
        n = self.n_users if users is None else len(users)
        value = np.empty((n, K))
        cost = np.empty((n, K))
        base_value = self.value if users is None else self.value[users]
        for a in range(K):
            p, q = self._day_probs(np.full(n, a), users)
            value[:, a] = base_value * q * p.sum(axis=1)
            p_buy = 1.0 - np.prod(1.0 - p * q[:, None], axis=1)
            cost[:, a] = FIXED_COST[a] + COUPON_FACE[a] * p_buy
        return value, cost

    def churn_probability(self, users: np.ndarray | None = None) -> np.ndarray:
        """float64[n]: P(no purchase in the next window | no treatment), the true churn risk."""
        n = self.n_users if users is None else len(users)
        p, q = self._day_probs(np.zeros(n, dtype=np.int64), users)
        return np.prod(1.0 - p * q[:, None], axis=1)

    def run_window(self, action: np.ndarray) -> WindowResult:
        """Apply ``action`` (int[N], treatment per user; 0 = none) at this round's decision points.

        Draws sessions and purchases in every user's outcome window, returns them as events (plus one
        INTERVENTION event per treated user at its decision time), advances engagement, and moves to the
        next round.
        """
        action = np.asarray(action, dtype=np.int64)
        if action.shape != (self.n_users,):
            raise ValueError(f"action must have shape ({self.n_users},), got {action.shape}")
        if np.any((action < 0) | (action >= K)):
            raise ValueError("action ids must be in [0, K)")
        rng = self._rng
        t_dec = self.decision_time()
        p, q = self._day_probs(action)
        n, w = p.shape
        session = rng.random((n, w)) < p
        purchase = session & (rng.random((n, w)) < q[:, None])
        basket = self.value[:, None] * rng.lognormal(-0.5 * _VALUE_NOISE**2, _VALUE_NOISE, (n, w))
        basket = np.where(purchase, basket, 0.0)
        value = basket.sum(axis=1)
        purchased = purchase.any(axis=1)
        cost = FIXED_COST[action] + COUPON_FACE[action] * purchased
        times = t_dec[:, None] + np.arange(w)[None, :] + rng.uniform(0.0, 1.0, (n, w))
        users = np.broadcast_to(np.arange(n)[:, None], (n, w))
        treated = action != NONE
        events = EventBatch.concat(
            [
                EventBatch(users[session], times[session], np.full(int(session.sum()), SESSION), np.zeros(int(session.sum()))),
                EventBatch(
                    users[purchase], times[purchase] + 1e-4, np.full(int(purchase.sum()), PURCHASE), basket[purchase]
                ),
                EventBatch(
                    np.flatnonzero(treated),
                    t_dec[treated],
                    np.full(int(treated.sum()), INTERVENTION),
                    action[treated].astype(np.float64),
                ),
            ]
        )
        n_sessions = session.sum(axis=1)
        self.eng = np.clip(
            self.eng - self.decay * w + _SESSION_BUMP * n_sessions + rng.normal(0.0, _ENG_NOISE, n), -8.0, 4.0
        )
        self.round += 1
        return WindowResult(t_dec, events, value, cost, value - cost, purchased)

    def warm_up(self, rounds: int) -> EventBatch:
        """Run ``rounds`` untreated rounds (the users' history before decisions start); returns their events."""
        batches = [self.run_window(np.zeros(self.n_users, dtype=np.int64)).events for _ in range(rounds)]
        return EventBatch.concat(batches)


def subset_segments(params: SegmentParams, index: np.ndarray) -> SegmentParams:
    """The parameters of the segments at ``index`` (e.g. the held-out ones)."""
    index = np.asarray(index, dtype=np.int64)
    return SegmentParams(**{k: getattr(params, k)[index] for k in SegmentParams.__dataclass_fields__})
