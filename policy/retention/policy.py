"""The retention policy: decide treatments (Thompson over the shared Adapter, then the budget) and learn
from their outcomes, in one object that the stream engine and ``metacart bench retention`` both call.

Deciding is :meth:`RetentionPolicy.decide_many` (see :mod:`policy.retention.decide` for the allocation
rule); learning is :meth:`RetentionPolicy.learn_many`, which turns each closed decision's outcome into the
reward, the churn label and the budget settlement, so the outcome semantics live in one place
(:func:`settle_many` is its policy-independent part, which non-bandit baselines call alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policy.adapter import Adapter
from policy.retention.budget import Budget
from policy.retention.decide import RetentionDecisions, allocate_many, candidates_for
from policy.retention.risk import RiskModel
from policy.retention.schema import COUPON_FACE, FIXED_COST, NONE, RESERVE_COST


class RetentionPolicy:
    """Risk model + shared Adapter + budget: decide treatments, then learn from their outcomes.

    Parameters
    ----------
    adapter
        An :class:`policy.adapter.Adapter` over a ``kind="retention"`` artifact (dx = features.DX,
        da = schema.DA).
    risk
        The churn-risk model.
    budget
        The budget state machine (the caller persists it).
    """

    def __init__(self, adapter: Adapter, risk: RiskModel, budget: Budget) -> None:
        self.adapter = adapter
        self.risk = risk
        self.budget = budget

    def decide_many(
        self,
        decision_ids: Sequence[str],
        users: Sequence[str],
        segments: Sequence[str],
        x: np.ndarray,
        now: np.ndarray | float,
    ) -> RetentionDecisions:
        """Decide treatments for B users (features ``x`` float[B, DX]) at event times ``now``."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        n = x.shape[0]
        if not (len(decision_ids) == len(users) == len(segments) == n):
            raise ValueError("decision_ids, users, segments and x must have one entry per user")
        risk = self.risk.predict_many(segments, x)
        cands = candidates_for(n)
        dec = self.adapter.decide_many(list(segments), x, cands)
        uplift_all = dec.mean_scores - dec.mean_scores[:, :1]
        proposed = dec.choices.astype(np.int64)
        rows = np.arange(n)
        gain = uplift_all[rows, proposed]
        # Thompson's choice stands (exploration included); the budget serves the best value per cost first
        priority = np.where(proposed != NONE, gain / np.maximum(RESERVE_COST[proposed], 1e-2), -np.inf)
        action, cost, reason = allocate_many(
            self.budget, decision_ids, users, segments, np.asarray(now, dtype=np.float64), proposed, priority, uplift_all
        )
        phis = self.adapter.phi_many(x, cands)
        return RetentionDecisions(
            action=action,
            proposed=proposed,
            propensity=dec.propensities[rows, action],
            propensity_proposed=dec.propensities[rows, proposed],
            risk=risk,
            uplift=np.where(action != NONE, uplift_all[rows, action], 0.0),
            cost=cost,
            reason=reason,
            phis=np.ascontiguousarray(phis[rows, action]),
            version=dec.version,
        )

    def learn_many(
        self,
        decision_ids: Sequence[str],
        segments: Sequence[str],
        action: np.ndarray,
        x: np.ndarray,
        phis: np.ndarray,
        retained: np.ndarray,
        value: np.ndarray,
    ) -> np.ndarray:
        """Learn from B closed decisions (each exactly once); returns their realised costs float64[B].

        The outcome semantics of :mod:`policy.simulator.retention`: ``retained`` = at least one purchase
        in the window, ``value`` = the window's purchase value, a coupon is redeemed with the first
        purchase. So the realised cost is ``fixed_cost + coupon_face * retained`` and the reward is
        ``value - realised cost``. Three updates, one place:

        - the segment posteriors (:meth:`Adapter.learn_many`) with every reward, at the decision's ``phis``;
        - the risk model's segment offsets with the untreated users (churned = not retained);
        - the budget: each treatment's reservation is lowered to its realised cost (:meth:`Budget.settle_one`,
          idempotent).
        """
        action = np.asarray(action, dtype=np.int64).reshape(-1)
        retained = np.asarray(retained, dtype=bool).reshape(-1)
        value = np.asarray(value, dtype=np.float64).reshape(-1)
        if value.shape != retained.shape:
            raise ValueError("retained and value must have one entry per decision")
        realised = settle_many(self.risk, self.budget, decision_ids, segments, action, x, retained)
        if action.shape[0]:
            self.adapter.learn_many(list(segments), phis, value - realised)
        return realised


def settle_many(
    risk: RiskModel,
    budget: Budget,
    decision_ids: Sequence[str],
    segments: Sequence[str],
    action: np.ndarray,
    x: np.ndarray,
    retained: np.ndarray,
) -> np.ndarray:
    """The part of learning every retention policy shares (bandit or not); returns realised costs float64[B].

    Realised cost ``fixed_cost + coupon_face * retained`` (a coupon is redeemed with the first purchase);
    the risk model's segment offsets learn from the untreated users (churned = not retained); the budget
    lowers each treatment's reservation to its realised cost (:meth:`Budget.settle_one`, idempotent).
    :meth:`RetentionPolicy.learn_many` adds the bandit's posterior update; ``metacart bench retention``'s
    baselines call this alone.
    """
    action = np.asarray(action, dtype=np.int64).reshape(-1)
    retained = np.asarray(retained, dtype=bool).reshape(-1)
    n = action.shape[0]
    if not (len(decision_ids) == len(segments) == retained.shape[0] == n):
        raise ValueError("decision_ids, segments, action, retained and value must have one entry per decision")
    if n == 0:
        return np.zeros(0)
    realised = FIXED_COST[action] + COUPON_FACE[action] * retained
    untreated = np.flatnonzero(action == NONE)
    if untreated.size:
        risk.adapt_many([segments[i] for i in untreated], np.asarray(x)[untreated],
                        (~retained[untreated]).astype(np.float64))
    for i in np.flatnonzero(action != NONE):
        budget.settle_one(decision_ids[i], float(realised[i]))
    return realised
