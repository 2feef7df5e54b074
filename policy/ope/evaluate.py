"""Evaluate target policies on a logged-bandit log, chunk by chunk, in bounded memory.

A target is served on each logged row as the workers would serve it (``decide_many`` with the row's
segment name, context, candidates, ``k_valid`` and candidate ids), giving ``pi(. | x_i)``:

- **frozen**: decide only; the policy's state never changes during the evaluation;
- **adapting by replay** (Li, Chu, Langford & Wang 2011): after each batch the policy also learns from
  the rows where its own pick equals the logged action, with the logged reward, as it would have
  learnt online. Unbiased for uniform logging; under other logging the replayed policy learns from a
  biased subset, and the estimate is of that replayed policy.

Two passes: the first fits the cross-fitted reward model (:mod:`policy.ope.reward_model`), the second
serves the targets and streams per-row statistics into :class:`policy.ope.moments.Moments`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy.logs import LoggedData
from policy.ope.estimators import (
    ESTIMATORS, LOGGED, Summary, check_names, policy_columns, policy_rows, shared_columns, top_share,
)
from policy.ope.exceptions import OpeError
from policy.ope.moments import Moments, TopWeights
from policy.ope.reward_model import RidgeRewardModel

MIN_ESS = 100.0
"""Below this effective sample size an estimate is flagged as resting on too few rows."""


@dataclass
class Target:
    """A policy to evaluate: anything with ``decide_many`` (and ``learn_many`` when ``adapt``)."""

    name: str
    policy: Any
    adapt: bool = False


def evaluate_log(
    chunks: Callable[[], Iterable[LoggedData]],
    targets: list[Target],
    *,
    n_rows: int | None = None,
    use_reward_model: bool = True,
    n_bootstrap: int = 0,
    seed: int = 0,
    batch: int = 1024,
    reference: str | None = None,
    min_ess: float = MIN_ESS,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Estimate every target's value; returns the report dict (see :func:`build_report`).

    Parameters
    ----------
    chunks
        Called once per pass; yields the log as :class:`LoggedData` chunks in logged order.
    n_rows
        Rows in the log, when known (sizes the top-weight buffer; otherwise it grows with the log).
    reference
        Policy the paired differences are taken against (default: the first target).
    """
    names = [t.name for t in targets]
    if not names:
        raise OpeError("give at least one target policy")
    check_names(names)
    model = RidgeRewardModel() if use_reward_model else None
    if model is not None:
        offset = 0
        for data in chunks():
            rows = np.arange(offset, offset + len(data))
            model.absorb_many(data.context, data.candidates, data.action, data.reward, model.fold_of(rows))
            offset += len(data)
        model.fit()
    columns = shared_columns() + [c for n in names for c in policy_columns(n)]
    moments = Moments(columns, n_bootstrap=n_bootstrap, seed=seed)
    capacity = max(1, math.ceil(0.01 * n_rows)) if n_rows else 1 << 20
    tops = {n: TopWeights(capacity) for n in names}
    offset = 0
    for data in chunks():
        for start in range(0, len(data), batch):
            part = data.take(np.arange(start, min(start + batch, len(data))))
            moments.add_many(_rows_for(part, targets, model, offset + start, tops))
        offset += len(data)
        if progress is not None:
            progress(offset)
    return build_report(Summary(moments), tops, names, reference or names[0], min_ess)


def _rows_for(data: LoggedData, targets: list[Target], model: RidgeRewardModel | None, offset: int,
              tops: dict[str, TopWeights]) -> np.ndarray:
    n = len(data)
    segs = [data.segment_names[s] for s in data.segment]
    kv = data.valid_k()
    q = None
    if model is not None:
        q = model.predict_many(data.context, data.candidates, model.fold_of(np.arange(offset, offset + n)))
    blocks = [np.ones(n), data.reward]
    for t in targets:
        dec = t.policy.decide_many(segs, data.context, data.candidates, k_valid=kv, items=data.candidate_ids)
        pi = np.asarray(dec.propensities, dtype=np.float64)
        padded = np.arange(pi.shape[1])[None, :] >= kv[:, None]
        if np.any(pi[padded] > 0):
            raise OpeError(f"target {t.name!r} gave probability to a padding slot")
        cols = policy_rows(pi, data.action, data.propensity, data.reward, q)
        tops[t.name].add_many(cols[:, 0])
        blocks.append(cols)
        if t.adapt:
            hit = np.flatnonzero(dec.choices == data.action)
            if hit.size:
                items = None if dec.items_chosen is None else dec.items_chosen[hit]
                t.policy.learn_many([segs[i] for i in hit], dec.phis_chosen[hit], data.reward[hit], items=items)
    return np.column_stack(blocks)


def build_report(summary: Summary, tops: dict[str, TopWeights], names: list[str], reference: str,
                 min_ess: float = MIN_ESS) -> dict[str, Any]:
    """The evaluation as a JSON-ready dict.

    ``{"n_rows", "policies": {name: {estimator: {"value", "lo", "hi", "se", "ess", ...}}},
    "logging_policy_value": {"value", "lo", "hi", "ess"}, "diagnostics": {name: {"ess",
    "top1pct_weight_share", "warnings"}}, "differences": {"a - ref": {estimator: {...}}},
    "reference", "interval"}``.
    """
    if reference not in names:
        raise OpeError(f"reference {reference!r} is not one of the targets ({', '.join(names)})")
    policies: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}
    for name in names:
        policies[name] = {e: summary.estimate(name, e).as_dict() for e in ESTIMATORS}
        ess = summary.ess(name)
        warnings = []
        if ess < min_ess:
            warnings.append(f"effective sample size {ess:.1f} < {min_ess:g}: the estimates rest on too few "
                            "effective rows to mean anything")
        diagnostics[name] = {"ess": ess, "top1pct_weight_share": top_share(tops[name], summary.m, name),
                             "warnings": warnings}
    differences: dict[str, Any] = {}
    for name in names:
        if name != reference:
            differences[f"{name} - {reference}"] = {
                e: summary.difference(name, reference, e).as_dict() for e in ESTIMATORS}
    for name in names:
        differences[f"{name} - logged"] = {e: summary.difference(name, LOGGED, e).as_dict() for e in ESTIMATORS}
    logged = summary.estimate(LOGGED, "ips")
    return {
        "n_rows": summary.m.n,
        "interval": "95 % asymptotic (delta method)" + (
            f"; boot_lo/boot_hi: Poisson bootstrap, {summary.m.n_bootstrap} replicates" if summary.m.n_bootstrap else ""),
        "policies": policies,
        "logging_policy_value": {"value": logged.value, "lo": logged.lo, "hi": logged.hi, "ess": logged.ess},
        "diagnostics": diagnostics,
        "reference": reference,
        "differences": differences,
    }
