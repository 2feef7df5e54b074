"""Intervention decisions: users become bandit requests for the shared Adapter; the budget has the last word.

The decision rule and the budget allocation; :class:`policy.retention.policy.RetentionPolicy` applies them
(and learns from outcomes).

For a batch of decision points (users at event times ``now``)::

    risk      = RiskModel.predict_many(segments, x)
    decisions = Adapter.decide_many(segments, x, candidates = the K treatment encodings)   (Thompson)
    uplift_a  = mean_score_a - mean_score_none            (expected net value of a over doing nothing)

so the bandit, its kernels and its per-segment posteriors are the very ones that place ads; only ``x``
(engagement features) and the candidates (treatments) differ. :func:`allocate_many` then spends the budget:
proposals are served in order of *priority* (for the bandit: expected uplift per unit of reserved cost,
the greedy knapsack rule, so uplift rather than risk decides who is treated, after Ascarza 2018); a
proposal the budget cannot afford falls back to the best cheaper treatment with positive expected uplift
that it can, else to no treatment. Every contact goes through :meth:`Budget.try_spend_one` with the
decision id and the treatment as tag, so a replayed decision repeats its first answer.

Propensities reported are the Thompson-sampling probabilities of the final action under the bandit
(exact when the budget does not intervene; when it does, the action is a deterministic function of the
state and the logged propensity of the proposal is kept in ``propensity_proposed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policy.retention.budget import Budget
from policy.retention.schema import K, NONE, RESERVE_COST, TREATMENTS, treatment_encoding


@dataclass(frozen=True)
class RetentionDecisions:
    """Decisions for a batch of B users.

    Attributes
    ----------
    action : int64[B]                 treatment sent (0 = none)
    proposed : int64[B]               the bandit's proposal before the budget
    propensity : float64[B]           bandit probability of ``action``
    propensity_proposed : float64[B]  bandit probability of ``proposed``
    risk : float64[B]                 churn risk
    uplift : float64[B]               expected net uplift of ``action`` over none (0 for none)
    cost : float64[B]                 cost reserved against the budget
    reason : list[str]                ``treat``, ``no_uplift``, ``fallback:<budget reason>``,
                                      ``budget:<reason>``, ``replay``
    phis : float64[B, d]              features of ``action`` for :meth:`Adapter.learn_many`
    version : str                     policy version
    """

    action: np.ndarray
    proposed: np.ndarray
    propensity: np.ndarray
    propensity_proposed: np.ndarray
    risk: np.ndarray
    uplift: np.ndarray
    cost: np.ndarray
    reason: list[str]
    phis: np.ndarray
    version: str


def candidates_for(n: int) -> np.ndarray:
    """float64[n, K, DA]: the treatment encodings as every user's candidates."""
    enc = treatment_encoding()
    return np.ascontiguousarray(np.broadcast_to(enc, (n, *enc.shape)))


def allocate_many(
    budget: Budget,
    decision_ids: Sequence[str],
    users: Sequence[str],
    segments: Sequence[str],
    now: np.ndarray,
    proposed: np.ndarray,
    priority: np.ndarray,
    uplift: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Spend the budget on proposals in descending ``priority``, with fallbacks to cheaper treatments.

    Parameters
    ----------
    proposed : int[B]       proposed treatment per user (0 = none: nothing is spent)
    priority : float[B]     higher first (ties: batch order)
    uplift : float[B, K]    expected net uplift of each treatment, for fallbacks; None = no fallback

    Returns
    -------
    (action int64[B], cost float64[B], reason list[str])
    """
    n = len(decision_ids)
    now = np.broadcast_to(np.asarray(now, dtype=np.float64), (n,))
    action = np.zeros(n, dtype=np.int64)
    cost = np.zeros(n)
    reason = ["no_uplift"] * n
    order = np.argsort(-np.asarray(priority, dtype=np.float64), kind="stable")
    for i in order:
        a = int(proposed[i])
        if a == NONE:
            continue
        options = [a]
        if uplift is not None:
            cheaper = [b for b in range(1, K) if RESERVE_COST[b] < RESERVE_COST[a] and uplift[i, b] > 0]
            options += sorted(cheaper, key=lambda b: -uplift[i, b])
        seg, t = segments[i], float(now[i])
        pick = next((b for b in options if RESERVE_COST[b] <= budget.available(seg, t) + 1e-12), options[0])
        grant = budget.try_spend_one(decision_ids[i], users[i], seg, float(RESERVE_COST[pick]), t, TREATMENTS[pick])
        if grant.duplicate:
            action[i] = TREATMENTS.index(grant.tag) if grant.granted and grant.tag in TREATMENTS else NONE
            cost[i] = grant.cost
            reason[i] = "replay"
        elif grant.granted:
            action[i], cost[i] = pick, grant.cost
            reason[i] = "treat" if pick == a else "fallback:budget"
        else:
            reason[i] = f"budget:{grant.reason}"
    return action, cost, reason
