"""``metacart bench retention``: incremental retained value at equal budget on held-out segments.

Protocol (all in event time, days):

1. Draw the segments (market × cohort). A set of training segments runs a randomised treatment history
   (:func:`policy.retention.history.simulate_history`); the churn-risk model and the uplift meta-prior
   (shared :func:`policy.train.train`, kind ``"retention"``) are trained on it. Held-out segments are never
   seen in training.
2. Every policy plays its own copy of the same held-out world (same seed, so the same users) for ``rounds``
   weekly rounds after a few untreated warm-up weeks. Each user reaches one decision point per week; the
   decision points of a day form a batch. Each policy proposes treatments and priorities, and one shared
   rule (:func:`policy.retention.decide.allocate_many`) spends one shared budget configuration: a cap per
   segment and a total cap per week, paced linearly (5 % available at the start of the week), a
   frequency cap of one contact per 14 days, and a never-contact list (2 % of users).
3. After each week's outcome window, ``ours`` learns through the same
   :meth:`policy.retention.policy.RetentionPolicy.learn_many` as the stream engine: segment posteriors
   with every user's reward, risk offsets on untreated users, coupons settled at their realised cost (the
   other policies call its shared part, :func:`policy.retention.policy.settle_many`, alone).

Policies: ``ours`` (Thompson sampling with the meta-learned prior, adapted per segment; budget to the best
expected uplift per unit of reserved cost), ``frozen`` (the same artifact and rule, its segment posteriors
reset to the prior after every week: what adaptation adds is ``ours - frozen``), ``risk_top`` (a fixed coupon_5 to the highest predicted churn
risk first), ``random`` (coupon_5 to random users), ``oracle`` (the true best treatment, true uplift per
cost first).

Metric: *incremental value* = sum over decisions of the true expected net uplift of the action taken over
no treatment, ``E[value - cost | a] - E[value - cost | none]`` (closed form in the simulator), so it has no
sampling noise from the outcome draws. ``spend`` is what was actually paid (coupons only when redeemed);
``reserved`` is what the budget reserved (face values), the quantity the caps bound.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy.adapter import Adapter
from policy.retention.budget import Budget
from policy.retention.budget_config import MICRO, BudgetConfig, to_micro_down
from policy.retention.decide import allocate_many
from policy.retention.features import features_many, new_states, update_many
from policy.retention.history import heldout_split, training_logs
from policy.retention.policy import RetentionPolicy, settle_many
from policy.retention.risk import RiskModel
from policy.retention.schema import K, NONE, RESERVE_COST, TREATMENTS
from policy.simulator.retention import RetentionWorld, draw_segments, subset_segments

POLICIES = ("ours", "frozen", "risk_top", "random", "oracle")
FIXED_COUPON = TREATMENTS.index("coupon_5")


@dataclass(frozen=True)
class RetentionBenchConfig:
    """Sizes of one run."""

    n_markets: int
    """Markets in the world (segments = markets × cohorts)."""
    n_cohorts: int
    """Cohorts per market."""
    n_heldout: int
    """Held-out segments played."""
    users_per_segment: int
    """Users per held-out segment."""
    train_users_per_segment: int
    """Users per training segment in the randomised history."""
    train_rounds: int
    """Logged weeks of randomised treatments per training user."""
    rounds: int
    """Weeks played on the held-out segments."""
    train_seconds: float
    """Wall-clock cap on uplift meta-training."""
    warmup_rounds: int = 5
    """Untreated weeks before decisions start (the users' history)."""
    budget_per_user: float = 0.4
    """Segment cap per week, per user of the segment (0.4 ≈ a coupon_5 for 8 % of users)."""
    total_fraction: float = 0.85
    """Total weekly cap as a fraction of the sum of segment caps."""
    never_fraction: float = 0.02
    """Share of users on the never-contact list."""
    eps: float = 0.02
    """Uniform exploration of the bandit."""


FULL = RetentionBenchConfig(
    n_markets=8, n_cohorts=5, n_heldout=8, users_per_segment=1500, train_users_per_segment=600,
    train_rounds=4, rounds=8, train_seconds=90.0,
)
QUICK = RetentionBenchConfig(
    n_markets=6, n_cohorts=5, n_heldout=5, users_per_segment=800, train_users_per_segment=500,
    train_rounds=4, rounds=6, train_seconds=30.0,
)


def _train(cfg: RetentionBenchConfig, names: list[str], params, train_idx: np.ndarray, seed: int):
    from policy.retention.train import RiskTrainConfig, train_risk, train_uplift_prior  # torch: lazily

    logs = training_logs(names, params, train_idx, cfg.train_users_per_segment, cfg.train_rounds,
                         cfg.warmup_rounds, seed)
    risk = train_risk(logs, RiskTrainConfig(epochs=12, max_seconds=cfg.train_seconds / 3, seed=seed))
    artifact = train_uplift_prior(logs, max_seconds=cfg.train_seconds, seed=seed)
    return logs, risk, artifact


def _play(
    name: str,
    cfg: RetentionBenchConfig,
    names: list[str],
    params,
    heldout_idx: np.ndarray,
    risk: RiskModel,
    artifact,
    seed: int,
) -> dict[str, Any]:
    world = RetentionWorld(
        [names[i] for i in heldout_idx], subset_segments(params, heldout_idx), cfg.users_per_segment, seed=seed + 202
    )
    rng = np.random.default_rng([seed, 303])
    never = rng.random(world.n_users) < cfg.never_fraction
    users = [f"u{i}" for i in range(world.n_users)]
    seg_names = [world.segment_names[s] for s in world.segment]
    seg_cap = cfg.budget_per_user * cfg.users_per_segment
    budget = Budget(
        BudgetConfig(
            segment_cap=seg_cap,
            total_cap=cfg.total_fraction * seg_cap * len(heldout_idx),
            period_days=float(world.window_days),
            pacing_lead=0.05,
            contact_window_days=14.0,
            max_contacts=1,
            horizon_periods=4,
            never_contact=frozenset(u for u, nv in zip(users, never) if nv),
        )
    )
    risk = copy.deepcopy(risk)
    decider = None
    if name in ("ours", "frozen"):
        decider = RetentionPolicy(Adapter(artifact, eps=cfg.eps, seed=seed), risk, budget)
    states = update_many(new_states(world.n_users), world.warm_up(cfg.warmup_rounds))

    incremental = 0.0
    incremental_by_round = []
    spend = reserved = 0.0
    contacts_never = 0
    counts = np.zeros(K, dtype=np.int64)
    reserved_by_key: dict[tuple[int, str | None], int] = {}
    for r in range(cfg.rounds):
        t_dec = world.decision_time()
        x = features_many(states, t_dec)
        value, cost = world.expected_reward()
        true_up = (value - cost) - (value - cost)[:, :1]
        risk_all = risk.predict_many(seg_names, x)
        action = np.zeros(world.n_users, dtype=np.int64)
        phis = None if decider is None else np.zeros((world.n_users, artifact.d))
        day = np.floor(t_dec - t_dec.min()).astype(np.int64)
        period = int(np.floor(t_dec.min() / world.window_days))
        for d in np.unique(day):
            idx = np.flatnonzero(day == d)
            ids = [f"{name}-{r}-{i}" for i in idx]
            us = [users[i] for i in idx]
            ss = [seg_names[i] for i in idx]
            if decider is not None:
                dec = decider.decide_many(ids, us, ss, x[idx], t_dec[idx])
                act, res_cost = dec.action, dec.cost
                phis[idx] = dec.phis
            else:
                if name == "oracle":
                    best = true_up[idx].argmax(axis=1)
                    gain = true_up[idx, best]
                    proposed = np.where(gain > 0, best, NONE)
                    priority = gain / np.maximum(RESERVE_COST[proposed], 1e-2)
                    fallback = true_up[idx]
                else:
                    proposed = np.full(idx.size, FIXED_COUPON)
                    priority = risk_all[idx] if name == "risk_top" else rng.random(idx.size)
                    fallback = None
                act, res_cost, _ = allocate_many(budget, ids, us, ss, t_dec[idx], proposed, priority, fallback)
            action[idx] = act
            for i, a, c in zip(idx, act, res_cost):
                if a != NONE:
                    micro = int(round(c * MICRO))
                    for key in ((period, seg_names[i]), (period, None)):
                        reserved_by_key[key] = reserved_by_key.get(key, 0) + micro
        treated = action != NONE
        contacts_never += int((treated & never).sum())
        gained = float(true_up[np.arange(world.n_users), action].sum())
        incremental += gained
        incremental_by_round.append(gained)
        reserved += float(RESERVE_COST[action].sum())
        counts += np.bincount(action, minlength=K)
        res = world.run_window(action)
        spend += float(res.cost.sum())
        states = update_many(states, res.events)
        ids = [f"{name}-{r}-{i}" for i in range(world.n_users)]
        if decider is not None:
            realised = decider.learn_many(ids, seg_names, action, x, phis, res.purchased, res.value)
            if name == "frozen":
                decider.adapter.reset_all()  # the same artifact, never adapted
        else:
            realised = settle_many(risk, budget, ids, seg_names, action, x, res.purchased)
        if not np.allclose(realised, res.cost):
            raise AssertionError("the policy's realised costs disagree with the simulator's")
    # caps hold: reserved (worst-case) spend per (week, segment) and per week in total
    cap_ok = all(
        v <= to_micro_down(budget.config.total_cap if seg is None else budget.config.cap_for(seg))
        for (_, seg), v in reserved_by_key.items()
    )
    return {
        "incremental_value": incremental,
        "incremental_by_round": incremental_by_round,
        "spend": spend,
        "reserved": reserved,
        "treatments": {TREATMENTS[k]: int(counts[k]) for k in range(K)},
        "caps_respected": bool(cap_ok),
        "never_contacted": contacts_never,
        "budget": budget.config.total_cap * cfg.rounds,
        "decisions": world.n_users * cfg.rounds,
    }


def run(quick: bool = False, out: Path | None = None, seed: int = 0) -> dict:
    """Run the benchmark, print a table, optionally write JSON; returns the result dict."""
    cfg = QUICK if quick else FULL
    t0 = time.perf_counter()
    names, params = draw_segments(cfg.n_markets, cfg.n_cohorts, seed=seed)
    heldout_idx, train_idx = heldout_split(len(names), cfg.n_heldout, seed)
    logs, risk, artifact = _train(cfg, names, params, train_idx, seed)
    t_train = time.perf_counter() - t0
    runs = {p: _play(p, cfg, names, params, heldout_idx, risk, artifact, seed) for p in POLICIES}
    inc = {p: runs[p]["incremental_value"] for p in POLICIES}
    result = {
        "incremental_value": inc,
        "spend": {p: runs[p]["spend"] for p in POLICIES},
        "budget": runs["ours"]["budget"],
        "reserved": {p: runs[p]["reserved"] for p in POLICIES},
        "treatments": {p: runs[p]["treatments"] for p in POLICIES},
        "incremental_by_round": {p: runs[p]["incremental_by_round"] for p in POLICIES},
        "caps_respected": {p: runs[p]["caps_respected"] for p in POLICIES},
        "never_contacted": {p: runs[p]["never_contacted"] for p in POLICIES},
        "ratios": {
            "ours_vs_risk_top": inc["ours"] / inc["risk_top"] if inc["risk_top"] > 0 else float("inf"),
            "ours_vs_oracle": inc["ours"] / inc["oracle"] if inc["oracle"] > 0 else float("nan"),
            "frozen_vs_oracle": inc["frozen"] / inc["oracle"] if inc["oracle"] > 0 else float("nan"),
        },
        "heldout_segments": [names[i] for i in heldout_idx],
        "n_train_segments": int(train_idx.size),
        "train_rows": len(logs),
        "artifact": {"version": artifact.version, "d": artifact.d, "metrics": dict(artifact.meta.metrics)},
        "risk_model": risk.meta,
        "config": asdict(cfg),
        "quick": quick,
        "seed": seed,
        "seconds": {"train": t_train, "total": time.perf_counter() - t0},
    }
    _print_table(result)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def _print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(
        f"bench retention: {len(result['heldout_segments'])} held-out segments x {cfg['users_per_segment']} users "
        f"x {cfg['rounds']} weeks; budget {result['budget']:.0f} (reserved-cost caps)"
    )
    head = f"{'policy':<10} {'incr. value':>12} {'vs oracle':>10} {'spend':>10} {'reserved':>10} {'caps ok':>8} {'treated':>8}"
    print(head)
    print("-" * len(head))
    oracle = result["incremental_value"]["oracle"]
    for p in result["incremental_value"]:
        treated = sum(v for k, v in result["treatments"][p].items() if k != "none")
        print(
            f"{p:<10} {result['incremental_value'][p]:>12.1f} {result['incremental_value'][p] / oracle:>10.3f} "
            f"{result['spend'][p]:>10.1f} {result['reserved'][p]:>10.1f} {str(result['caps_respected'][p]):>8} "
            f"{treated:>8d}"
        )
    r = result["ratios"]
    print(f"ours / risk_top = {r['ours_vs_risk_top']:.2f}   ours / oracle = {r['ours_vs_oracle']:.3f}")
