"""``metacart bench ope``: do the off-policy estimators' intervals cover the truth?

On the market simulator the true value of a target policy is known: ``V(pi) = E_x[sum_k pi(k | x) p(x, k)]``
with ``p`` the simulator's true click probability, computed on a large separate sample of requests
(``truth_rows``). Each of ``n_logs`` seeded logs of ``rows_per_log`` decisions is drawn under a logging
policy; every estimator of :mod:`policy.ope.estimators` (cross-fitted ridge reward model for DM/DR/DR-os)
estimates every target on it with its 95 % asymptotic interval. Reported per logging policy and estimator:

- ``coverage``: the share of (log, target) pairs whose interval contains the true value;
- ``bias``: the mean over targets of ``|mean_logs(estimate) - truth|`` (per-target values under ``by_target``);
- ``rmse``: ``sqrt(mean over logs and targets of (estimate - truth)^2)``.

Logging policies:

- ``uniform``: each of the K = 10 candidates with probability 1/K (exact propensities);
- ``thompson``: per-segment linear Thompson sampling on raw standardised features (``scratch_raw``,
  vague prior), learning online from every click while it logs, with the workers' ``eps`` = 0.02 and
  ``n_draws`` = 64: the logged propensity is its Monte-Carlo estimate, as metacart's workers log it (the
  Open Bandit Dataset's Thompson-sampling propensities are Monte-Carlo estimates too).

Targets:

- ``uniform``;
- ``softmax_true``: ``pi ∝ exp(p(x, k) / 0.02)`` on the true click probabilities (a good, peaked policy);
- ``discount_greedy``: 90 % the candidate with the largest discount, 10 % uniform (a poor deterministic-ish
  policy far from uniform);
- ``ts_frozen``: ``scratch_raw`` trained on a separate uniform log and frozen; Monte-Carlo propensities.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from policy.baselines import RawLinearTS
from policy.features import build_inputs
from policy.ope.estimators import ESTIMATORS, estimate_arrays
from policy.ope.reward_model import RidgeRewardModel
from policy.simulator.market import Market, Requests

LOGGING = ("uniform", "thompson")
TARGETS = ("uniform", "softmax_true", "discount_greedy", "ts_frozen")


@dataclass(frozen=True)
class OpeBenchConfig:
    n_logs: int
    """Seeded logs per logging policy."""
    rows_per_log: int
    """Logged decisions per log."""
    n_segments: int = 4
    """Segments the logs are drawn from (the first of the market's held-out split)."""
    truth_rows: int = 100_000
    """Requests behind each target's true value."""
    batch: int = 50
    """Decisions between two learning steps of the Thompson logging policy."""
    eps: float = 0.02
    n_draws: int = 64
    softmax_temperature: float = 0.02


FULL = OpeBenchConfig(n_logs=200, rows_per_log=2000)
QUICK = OpeBenchConfig(n_logs=30, rows_per_log=1000, truth_rows=20_000)


class _TrainableTS(RawLinearTS):
    """``scratch_raw`` that can also learn from rows it did not decide (a uniform training log)."""

    def features_many(self, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return self._features(context, candidates)


class _Targets:
    """The target policies' action distributions on a batch of requests."""

    def __init__(self, market: Market, cfg: OpeBenchConfig, segs: np.ndarray, seed: int) -> None:
        self.market, self.cfg = market, cfg
        rng = np.random.default_rng(seed + 10_000)
        train = market.sample_requests(segs[rng.integers(0, segs.size, 4000)], rng)
        k = train.candidates.shape[1]
        u = build_inputs(train.context, train.candidates).astype(np.float64)
        self._ts = _TrainableTS(u.mean(axis=0), u.std(axis=0), noise_var=0.05, eps=cfg.eps, n_draws=cfg.n_draws,
                               seed=seed + 1)
        action = rng.integers(0, k, len(train))
        click = market.respond(train, action, rng).click.astype(np.float64)
        phis = self._ts.features_many(train.context, train.candidates)
        self._ts.learn_many(train.segment, phis[np.arange(len(train)), action], click)

    def pi(self, name: str, req: Requests, p_true: np.ndarray) -> np.ndarray:
        n, k = p_true.shape
        if name == "uniform":
            return np.full((n, k), 1.0 / k)
        if name == "softmax_true":
            z = p_true / self.cfg.softmax_temperature
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        if name == "discount_greedy":
            pi = np.full((n, k), 0.1 / k)
            pi[np.arange(n), np.argmax(req.candidates[:, :, 4], axis=1)] += 0.9
            return pi
        if name == "ts_frozen":
            return self._ts.decide_many(req.segment, req.context, req.candidates).propensities
        raise ValueError(name)


def _subset(req: Requests, rows: slice) -> Requests:
    return Requests(segment=req.segment[rows], context=req.context[rows], candidates=req.candidates[rows],
                    ad_ids=req.ad_ids[rows], user_ids=req.user_ids[rows])


def _log(market: Market, cfg: OpeBenchConfig, segs: np.ndarray, logging: str, seed: int,
         ts_init: tuple[np.ndarray, np.ndarray]) -> tuple[Requests, np.ndarray, np.ndarray, np.ndarray]:
    """One log: requests, logged action, its propensity, click."""
    rng = np.random.default_rng(seed)
    n = cfg.rows_per_log
    req = market.sample_requests(segs[rng.integers(0, segs.size, n)], rng)
    k = req.candidates.shape[1]
    if logging == "uniform":
        action = rng.integers(0, k, n)
        click = market.respond(req, action, rng).click.astype(np.float64)
        return req, action, np.full(n, 1.0 / k), click
    ts = RawLinearTS(ts_init[0], ts_init[1], noise_var=0.05, eps=cfg.eps, n_draws=cfg.n_draws, seed=seed)
    action, prop, click = np.empty(n, dtype=np.int64), np.empty(n), np.empty(n)
    for start in range(0, n, cfg.batch):
        rows = slice(start, min(start + cfg.batch, n))
        part = _subset(req, rows)
        dec = ts.decide_many(part.segment, part.context, part.candidates)
        action[rows] = dec.choices
        prop[rows] = dec.propensities[np.arange(len(part)), dec.choices]
        click[rows] = market.respond(part, dec.choices, rng).click
        ts.learn_many(part.segment, dec.phis_chosen, click[rows])
    return req, action, prop, click


def _truth(market: Market, cfg: OpeBenchConfig, segs: np.ndarray, targets: _Targets, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed + 20_000)
    req = market.sample_requests(segs[rng.integers(0, segs.size, cfg.truth_rows)], rng)
    p = market.click_prob(req.segment, req.context, req.candidates)
    return {t: float(np.einsum("nk,nk->n", targets.pi(t, req, p), p).mean()) for t in TARGETS}


def run(quick: bool = False, out: Path | None = None, seed: int = 0, n_logs: int | None = None,
        console: Console | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table, optionally write JSON; returns the result dict."""
    cfg = QUICK if quick else FULL
    if n_logs is not None:
        cfg = OpeBenchConfig(**{**asdict(cfg), "n_logs": n_logs})
    console = console or Console()
    t0 = time.perf_counter()
    market = Market()
    segs = market.heldout_segments[: cfg.n_segments]
    targets = _Targets(market, cfg, segs, seed)
    truth = _truth(market, cfg, segs, targets, seed)
    rng = np.random.default_rng(seed + 30_000)
    ref = market.sample_requests(segs[rng.integers(0, segs.size, 4000)], rng)
    u = build_inputs(ref.context, ref.candidates).astype(np.float64)
    ts_init = (u.mean(axis=0), u.std(axis=0))
    est = {lg: {t: {e: np.empty((cfg.n_logs, 3)) for e in ESTIMATORS} for t in TARGETS} for lg in LOGGING}
    ess = {lg: {t: np.empty(cfg.n_logs) for t in TARGETS} for lg in LOGGING}
    for lg in LOGGING:
        for i in range(cfg.n_logs):
            req, action, prop, click = _log(market, cfg, segs, lg, seed * 1_000_003 + i, ts_init)
            p = market.click_prob(req.segment, req.context, req.candidates)
            pis = {t: targets.pi(t, req, p) for t in TARGETS}
            model = RidgeRewardModel()
            fold = model.fold_of(np.arange(action.size))
            model.absorb_many(req.context, req.candidates, action, click, fold)
            q = model.predict_many(req.context, req.candidates, fold)
            summary = estimate_arrays(click, prop, action, pis, q=q)
            for t in TARGETS:
                ess[lg][t][i] = summary.ess(t)
                for e in ESTIMATORS:
                    x = summary.estimate(t, e)
                    est[lg][t][e][i] = (x.value, x.lo, x.hi)
    result = _summarise(est, ess, truth, cfg)
    result.update({"truth": truth, "config": asdict(cfg), "quick": quick, "seed": seed,
                   "segments": [market.segment_names[s] for s in segs], "elapsed_s": time.perf_counter() - t0})
    _print(result, console)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {out}")
    return result


def _summarise(est: dict, ess: dict, truth: dict[str, float], cfg: OpeBenchConfig) -> dict[str, Any]:
    coverage: dict[str, dict[str, float]] = {}
    bias: dict[str, dict[str, float]] = {}
    rmse: dict[str, dict[str, float]] = {}
    by_target: dict[str, dict[str, Any]] = {}
    for lg in LOGGING:
        coverage[lg], bias[lg], rmse[lg], by_target[lg] = {}, {}, {}, {}
        for e in ESTIMATORS:
            hits, biases, sq = [], [], []
            for t in TARGETS:
                v, lo, hi = est[lg][t][e].T
                hit = (lo <= truth[t]) & (truth[t] <= hi)
                hits.append(hit)
                biases.append(abs(float(v.mean() - truth[t])))
                sq.append((v - truth[t]) ** 2)
                by_target[lg].setdefault(t, {"truth": truth[t], "median_ess": float(np.median(ess[lg][t]))})[e] = {
                    "coverage": float(hit.mean()), "bias": float(v.mean() - truth[t]),
                    "rmse": float(np.sqrt(((v - truth[t]) ** 2).mean())),
                    "mean_interval_width": float((hi - lo).mean())}
            coverage[lg][e] = float(np.concatenate(hits).mean())
            bias[lg][e] = float(np.mean(biases))
            rmse[lg][e] = float(np.sqrt(np.concatenate(sq).mean()))
    return {"coverage": coverage, "bias": bias, "rmse": rmse, "by_target": by_target,
            "n_pairs": cfg.n_logs * len(TARGETS)}


def _print(result: dict[str, Any], console: Console) -> None:
    cfg = result["config"]
    table = Table(title=f"bench ope: {cfg['n_logs']} logs x {cfg['rows_per_log']} rows per logging policy, "
                        f"{len(TARGETS)} targets; 95 % asymptotic intervals")
    for col in ("logging", "estimator", "coverage", "mean |bias|", "RMSE"):
        table.add_column(col, justify="left" if col in ("logging", "estimator") else "right")
    for lg in LOGGING:
        for j, e in enumerate(ESTIMATORS):
            table.add_row(lg if j == 0 else "", e, f"{result['coverage'][lg][e]:.3f}",
                          f"{result['bias'][lg][e]:.5f}", f"{result['rmse'][lg][e]:.5f}")
    console.print(table)
    detail = Table(title="per target: coverage / bias (truth, median ESS)")
    detail.add_column("logging")
    detail.add_column("target")
    for e in ESTIMATORS:
        detail.add_column(e, justify="right")
    for lg in LOGGING:
        for t in TARGETS:
            d = result["by_target"][lg][t]
            detail.add_row(lg, f"{t} ({d['truth']:.4f}, {d['median_ess']:.0f})",
                           *[f"{d[e]['coverage']:.2f} / {d[e]['bias']:+.4f}" for e in ESTIMATORS])
    console.print(detail)
    console.print(f"{result['elapsed_s']:.1f} s")
