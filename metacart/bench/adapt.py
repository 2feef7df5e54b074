"""``metacart bench adapt``: closed-loop adaptation on held-out simulator segments.

Every policy plays the same held-out segments (never seen in meta-training) for ``T`` rounds; in round
``t`` each segment receives one request. Requests come from one seeded generator and outcomes from another
that :meth:`Market.respond` consumes identically whatever is shown, so all policies see the same users and
candidates and (where their choices agree) the same outcomes. Regret is pseudo-regret: the oracle's true
expected reward minus that of the shown candidate, from the simulator's ``expected_reward``.

Policies (see :mod:`policy.baselines`): ``random``; ``pooled`` (learned ``phi`` + meta prior, but one
posterior shared by all segments: a global model without per-segment adaptation); ``scratch_raw``;
``scratch_phi``; ``meta`` (ours, :class:`policy.adapter.Adapter`); ``oracle``. All Thompson-sampling
policies use the same ``eps``, ``n_draws`` and the artifact's ``noise_var`` (the logged reward variance when the
artifact's head is bernoulli and has none); the scratch baselines use the
vague prior ``N(0, vague_prior_var I)``.

Without ``artifact``, the benchmark first meta-trains one (torch, one thread, about a minute) on uniform
logs of the market's *training* segments (:func:`metacart.bench.worlds.train_ours`, cached by
:func:`metacart.bench.worlds.artifact_for`); the benchmark's segments are the market's held-out split.

Then, under ``"worlds"``, every world family of :mod:`metacart.bench.worlds` (the market again, with the
practitioner's baselines, the recommendation world and the logistic worlds) is played by metacart and the
baselines; see that module for the policies and the statistics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from metacart.bench.worlds import FULL as WORLDS_FULL
from metacart.bench.worlds import QUICK as WORLDS_QUICK
from metacart.bench.worlds import WORLDS, artifact_for, plot_worlds, print_world, run_world
from policy.adapter import Adapter
from policy.artifact import PolicyArtifact
from policy.baselines import OraclePolicy, RandomPolicy, RawLinearTS, pooled, scratch_phi
from policy.features import build_inputs
from policy.simulator.datasets import simulate_logs
from policy.simulator.market import Market, MarketConfig
from policy.simulator.world import MarketWorld, uniform_logs

POLICIES = ("random", "pooled", "scratch_raw", "scratch_phi", "meta", "oracle")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run."""

    n_segments: int
    """Held-out segments played (the first ones of the market's held-out split)."""
    horizon: int
    """Decisions per segment."""
    train_per_segment: int
    """Logged (uniform) events per training segment when the benchmark trains its own artifact."""
    train_seconds: float
    """Wall-clock cap on that training."""
    eps: float = 0.01
    """Uniform exploration of every Thompson-sampling policy."""
    n_draws: int = 64
    """Posterior draws per decision."""
    vague_prior_var: float = 1.0
    """Prior variance per coefficient of the scratch baselines."""
    value_weight: float = 0.0
    """Reward = click + value_weight * purchase value."""


FULL = BenchConfig(n_segments=50, horizon=2000, train_per_segment=4000, train_seconds=90.0)
QUICK = BenchConfig(n_segments=20, horizon=500, train_per_segment=150, train_seconds=5.0)


def train_artifact(market: Market, cfg: BenchConfig, seed: int, progress: Callable[[dict], None] | None = None):
    """Meta-train on uniformly logged events of the market's *training* segments (torch, lazily imported)."""
    from policy.train import TrainConfig, train

    logs = simulate_logs(market, market.train_segments, cfg.train_per_segment, seed=seed + 1,
                         value_weight=cfg.value_weight)
    config = TrainConfig(
        seed=seed,
        max_seconds=cfg.train_seconds,
        reward="logged",
        threads=1,  # tiny matrices: one thread is as fast, and far faster when cores are oversubscribed
        source=f"simulator MarketConfig(seed={market.config.seed}) train segments, "
        f"{cfg.train_per_segment}/segment uniform logging, log seed {seed + 1}",
    )
    return train(logs, config, progress=progress), logs


def _raw_stats(market: Market, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean/sd of raw inputs [x, a] over training-segment requests (for ``scratch_raw``)."""
    rng = np.random.default_rng(seed + 17)
    seg = np.repeat(market.train_segments, 20)
    req = market.sample_requests(seg, rng)
    u = build_inputs(req.context, req.candidates)
    return u.mean(axis=0), u.std(axis=0)


def make_policies(
    artifact: PolicyArtifact, market: Market, cfg: BenchConfig, seed: int
) -> dict[str, Callable[[], Any]]:
    """Factories of the benchmark's policies (fresh state each call)."""
    u_mean, u_sd = _raw_stats(market, seed)
    # A gaussian baseline needs the rewards' noise: a bernoulli artifact has none, so use the logged
    # reward variance (what the gaussian artifact's noise_var estimates).
    noise = artifact.noise_var if not artifact.bernoulli else max(artifact.meta.training_data.reward_std ** 2, 1e-6)
    ts = {"eps": cfg.eps, "n_draws": cfg.n_draws, "seed": seed + 300}
    return {
        "random": lambda: RandomPolicy(seed=seed + 300),
        "pooled": lambda: pooled(artifact, **ts),
        "scratch_raw": lambda: RawLinearTS(u_mean, u_sd, noise, cfg.vague_prior_var, **ts),
        "scratch_phi": lambda: scratch_phi(artifact, cfg.vague_prior_var, **ts),
        "meta": lambda: Adapter(artifact, **ts),
        "oracle": lambda: OraclePolicy(market, cfg.value_weight),
    }


def play(policy: Any, market: Market, segments: np.ndarray, horizon: int, seed: int,
         value_weight: float = 0.0) -> dict[str, np.ndarray]:
    """Run one policy closed-loop; returns per-(segment, round) regret, expected reward and click prob."""
    req_rng = np.random.default_rng(seed + 100)
    out_rng = np.random.default_rng(seed + 200)
    s = segments.shape[0]
    regret = np.empty((s, horizon))
    reward = np.empty((s, horizon))
    ctr = np.empty((s, horizon))
    rows = np.arange(s)
    for t in range(horizon):
        req = market.sample_requests(segments, req_rng)
        exp_r = market.expected_reward(segments, req.context, req.candidates, value_weight)
        dec = policy.decide_many(segments, req.context, req.candidates)
        out = market.respond(req, dec.choices, out_rng)
        policy.learn_many(segments, dec.phis_chosen, out.click + value_weight * out.value)
        chosen = exp_r[rows, dec.choices]
        regret[:, t] = exp_r.max(axis=1) - chosen
        reward[:, t] = chosen
        ctr[:, t] = (
            chosen if value_weight == 0.0
            else market.click_prob(segments, req.context, req.candidates)[rows, dec.choices]
        )
    return {"regret": regret, "reward": reward, "ctr": ctr}


def _fraction(trace: np.ndarray, oracle: np.ndarray, n: int) -> float:
    return float(trace[:, :n].sum() / oracle[:, :n].sum())


def run(
    quick: bool = False,
    out: Path | None = None,
    plot: Path | None = None,
    seed: int = 0,
    artifact: Path | None = None,
    worlds: Sequence[str] = WORLDS,
    cache_dir: Path | None = None,
) -> dict:
    """Run the benchmark, print its tables, optionally write JSON (``out``) and a PNG (``plot``).

    Returns the JSON-able result: ``T``, ``segments``, ``regret`` (mean cumulative regret at ``T``),
    ``regret_ci`` (95 % normal CI over segments), ``reward_first500_vs_oracle`` and more, and ``worlds``
    (one record per world family in ``worlds``; :func:`metacart.bench.worlds.summarise`). Trained
    artifacts are cached in ``cache_dir`` (None: train every time).
    """
    cfg = QUICK if quick else FULL
    specs = WORLDS_QUICK if quick else WORLDS_FULL
    unknown = set(worlds) - set(WORLDS)
    if unknown:
        raise ValueError(f"unknown worlds {sorted(unknown)}; known: {', '.join(WORLDS)}")
    t_start = time.perf_counter()
    market = Market(MarketConfig(seed=seed))
    segments = market.heldout_segments[: cfg.n_segments].astype(np.int64)
    train_info: dict[str, Any] = {}
    logs = None
    market_spec = replace(specs["market"], train_per_task=cfg.train_per_segment, train_seconds=cfg.train_seconds)
    if artifact is None:
        print(f"training (or loading) an artifact on {market.train_segments.size} training segments "
              f"x {cfg.train_per_segment} logged events (cap {cfg.train_seconds:.0f} s) ...", flush=True)
        t0 = time.perf_counter()
        world = MarketWorld(market.config)
        logs = uniform_logs(world, world.train_tasks, cfg.train_per_segment, seed=seed + 1)
        art, cached = artifact_for(world, logs, market_spec, seed, cache_dir)
        train_info = {
            "trained_here": cached["cached"] is None,
            "cached": cached["cached"],
            "events": int(logs.segment.shape[0]),
            "seconds": round(time.perf_counter() - t0, 1),
            "heldout_nll_initial": art.meta.metrics["heldout_nll_initial"],
            "heldout_nll": art.meta.metrics["heldout_nll"],
            "prior_scale": art.meta.metrics.get("prior_scale", 1.0),
        }
    else:
        art = PolicyArtifact.load(artifact)
        train_info = {"trained_here": False, "artifact": str(artifact)}
    train_info["version"] = art.version
    overlap = set(segments.tolist()) & set(market.train_segments.tolist())
    assert not overlap, "benchmark segments must be held out from training"

    import kernels

    kernels.warm_up()  # compile before timing the policies
    factories = make_policies(art, market, cfg, seed)
    traces: dict[str, dict[str, np.ndarray]] = {}
    timings: dict[str, float] = {}
    for name in POLICIES:
        t0 = time.perf_counter()
        traces[name] = play(factories[name](), market, segments, cfg.horizon, seed, cfg.value_weight)
        timings[name] = round(time.perf_counter() - t0, 2)

    n_seg, horizon = segments.shape[0], cfg.horizon
    oracle_r, oracle_c = traces["oracle"]["reward"], traces["oracle"]["ctr"]
    result: dict[str, Any] = {
        "T": horizon,
        "segments": int(n_seg),
        "regret": {},
        "regret_ci": {},
        "reward_first100_vs_oracle": {},
        "reward_first500_vs_oracle": {},
        "ctr_first100_vs_oracle": {},
        "ctr_first500_vs_oracle": {},
    }
    for name, tr in traces.items():
        cum = tr["regret"].sum(axis=1)
        mean = float(cum.mean())
        half = float(1.96 * cum.std(ddof=1) / np.sqrt(n_seg)) if n_seg > 1 else 0.0
        result["regret"][name] = round(mean, 3)
        result["regret_ci"][name] = [round(mean - half, 3), round(mean + half, 3)]
        for n in (100, 500):
            result[f"reward_first{n}_vs_oracle"][name] = round(_fraction(tr["reward"], oracle_r, n), 4)
            result[f"ctr_first{n}_vs_oracle"][name] = round(_fraction(tr["ctr"], oracle_c, n), 4)
    meta_cum = traces["meta"]["regret"].sum(axis=1)
    result["paired_regret_minus_meta_ci"] = {}
    for name, tr in traces.items():
        if name == "meta":
            continue
        diff = tr["regret"].sum(axis=1) - meta_cum  # same segments, requests and outcome draws
        half = float(1.96 * diff.std(ddof=1) / np.sqrt(n_seg)) if n_seg > 1 else 0.0
        result["paired_regret_minus_meta_ci"][name] = [
            round(float(diff.mean()) - half, 3), round(float(diff.mean()) + half, 3)
        ]
    reg = result["regret"]
    result["ratios"] = {
        "meta_vs_scratch_raw": round(reg["meta"] / reg["scratch_raw"], 3),
        "meta_vs_scratch_phi": round(reg["meta"] / reg["scratch_phi"], 3),
        "meta_vs_pooled": round(reg["meta"] / reg["pooled"], 3),
    }
    result["settings"] = {
        "quick": quick, "seed": seed, "eps": cfg.eps, "n_draws": cfg.n_draws,
        "vague_prior_var": cfg.vague_prior_var, "value_weight": cfg.value_weight,
        "pooled": "learned phi + meta prior, one posterior shared by all segments",
    }
    result["training"] = train_info
    result["seconds_per_policy"] = timings
    _print_table(result)

    result["worlds"] = {}
    for name in worlds:
        print(f"\nworld {name}: training (or loading) and playing ...", flush=True)
        if name == "market":
            rec = run_world(name, market_spec, seed, cache_dir, artifact=art, logs=logs)
        else:
            rec = run_world(name, specs[name], seed, cache_dir)
        result["worlds"][name] = rec
        print_world(name, rec)
    result["seconds_total"] = round(time.perf_counter() - t_start, 1)
    print(f"\nbench adapt: {result['seconds_total']:.0f} s in all")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    if plot is not None:
        _plot(traces, plot, horizon, n_seg)
        if result["worlds"]:
            plot_worlds(result["worlds"], Path(plot).with_name(Path(plot).stem + "-worlds.png"))
    return result


def _print_table(result: dict[str, Any]) -> None:
    head = (f"{'policy':<12} {'regret@T':>10} {'95% CI':>20} {'CTR100':>8} {'CTR500':>8} "
            f"{'rew100':>8} {'rew500':>8}")
    print(f"bench adapt: {result['segments']} held-out segments x T={result['T']} decisions "
          f"(fractions are of the oracle's)")
    print(head)
    print("-" * len(head))
    for name in result["regret"]:
        lo, hi = result["regret_ci"][name]
        print(
            f"{name:<12} {result['regret'][name]:>10.2f} {f'[{lo:.2f}, {hi:.2f}]':>20} "
            f"{result['ctr_first100_vs_oracle'][name]:>8.3f} {result['ctr_first500_vs_oracle'][name]:>8.3f} "
            f"{result['reward_first100_vs_oracle'][name]:>8.3f} {result['reward_first500_vs_oracle'][name]:>8.3f}"
        )
    print("ratios:", result["ratios"])
    print("paired 95% CI of (policy - meta) regret at T:", result["paired_regret_minus_meta_ci"])


def _plot(traces: dict[str, dict[str, np.ndarray]], path: Path, horizon: int, n_seg: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    t = np.arange(1, horizon + 1)
    for name, tr in traces.items():
        cum = np.cumsum(tr["regret"], axis=1)
        mean = cum.mean(axis=0)
        half = 1.96 * cum.std(axis=0, ddof=1) / np.sqrt(n_seg) if n_seg > 1 else np.zeros_like(mean)
        (line,) = ax.plot(t, mean, label=name)
        ax.fill_between(t, mean - half, mean + half, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("decisions per segment")
    ax.set_ylabel("mean cumulative pseudo-regret")
    ax.set_title(f"adaptation on {n_seg} held-out segments")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


DP_SPEC = {"tasks": 20, "horizon": 1000, "train_per_task": 500, "train_seconds": 60.0, "windows": 4}
"""Sizes of ``bench adapt --dp-epsilon`` per world (small enough for a shared two-core machine)."""


def _dp_artifact(world: Any, logs: Any, spec: Any, seed: int, epsilon: float | None, cache_dir: Path | None
                 ) -> tuple[PolicyArtifact, bool]:
    """The world's artifact trained with ``dp_epsilon=epsilon`` (None: without DP), cached like the others."""
    from metacart.bench.worlds import _cache_key, train_config, train_ours

    cfg = replace(train_config(world, spec, seed), dp_epsilon=epsilon)
    tag = "nodp" if epsilon is None else f"dp{epsilon:g}"
    path = None if cache_dir is None else Path(cache_dir) / f"{world.name}-{tag}-{_cache_key(world, cfg, spec)}"
    if path is not None and (path / "meta.json").exists():
        return PolicyArtifact.load(path), True
    art = train_ours(world, logs, cfg)
    if path is not None:
        art.save(path)
    return art, False


def run_dp(epsilons: Sequence[float], worlds: Sequence[str] = ("market", "logistic"), seed: int = 0,
           out: Path | None = None, cache_dir: Path | None = None, sizes: dict[str, Any] | None = None) -> dict:
    """The adaptation cost of differentially private meta-training (``metacart bench adapt --dp-epsilon``).

    Per world family: one artifact without DP and one per ``epsilon`` (``TrainConfig.dp_epsilon``, the other
    DP settings at their defaults), all trained on the same uniform logs of the training tasks; then they and
    the per-task ``scratch`` baseline play the same held-out tasks in lock-step (common requests and outcome
    draws, :func:`metacart.bench.worlds.play_world`). Reported per policy: regret per task in expected clicks
    (oracle minus policy) with its 95 % t-interval, the lift (0 random, 1 oracle), and the paired 95 %
    intervals of ``regret(ours at epsilon) - regret(ours without DP)`` and of ``regret - regret(scratch)``.
    """
    from metacart.bench.worlds import WorldSpec, _lift, make_world, mean_ci, play_world
    from policy.baselines import InteractionFeatures, InteractionLinearTS

    import kernels

    unknown = set(worlds) - set(WORLDS)
    if unknown:
        raise ValueError(f"unknown worlds {sorted(unknown)}; known: {', '.join(WORLDS)}")
    spec = WorldSpec(**{**DP_SPEC, **(sizes or {})})
    t_start = time.perf_counter()
    kernels.warm_up()
    levels: list[float | None] = [None, *sorted(float(e) for e in epsilons)]
    names = {e: "ours (no DP)" if e is None else f"ours eps={e:g}" for e in levels}
    result: dict[str, Any] = {"spec": {**DP_SPEC, **(sizes or {})}, "seed": seed, "worlds": {}}
    for wname in worlds:
        world = make_world(wname, seed)
        tasks = world.heldout_tasks[: spec.tasks].astype(np.int64)
        logs = uniform_logs(world, world.train_tasks, spec.train_per_task, seed=seed + 1)
        policies: dict[str, Any] = {}
        training: dict[str, Any] = {}
        for e in levels:
            t0 = time.perf_counter()
            art, cached = _dp_artifact(world, logs, spec, seed, e, cache_dir)
            dp = art.meta.dp
            training[names[e]] = {"cached": cached, "seconds": round(time.perf_counter() - t0, 1),
                                  "heldout_nll": round(art.meta.metrics["heldout_nll"], 5),
                                  "learned": bool(art.meta.report.get("learned", False)),
                                  **({} if dp is None else {"epsilon": round(dp.epsilon, 4), "delta": dp.delta,
                                                            "sigma": round(dp.sgd_noise_multiplier, 3),
                                                            "q": dp.sample_rate, "steps": dp.steps_run})}
            print(f"{wname}: {names[e]} trained ({training[names[e]]})", flush=True)
            policies[names[e]] = Adapter(art, eps=spec.eps, n_draws=spec.n_draws, seed=seed + 406)
        feats = InteractionFeatures.from_logs(logs.context, logs.candidates, logs.valid_k())
        s2 = max(float(logs.reward.var()), 1e-6)
        policies["scratch"] = InteractionLinearTS(feats, np.zeros(feats.d), s2 * np.eye(feats.d), s2,
                                                  seed=seed + 405, version="scratch", eps=spec.eps,
                                                  n_draws=spec.n_draws)
        played = play_world(world, policies, tasks, spec.horizon, seed, spec.windows)
        sums = played["sums"]
        clicks = {n: sums[n].sum(axis=1) for n in sums}
        regret = {n: clicks["oracle"] - clicks[n] for n in policies}
        r = lambda x: round(float(x), 3)  # noqa: E731
        rec: dict[str, Any] = {"tasks": int(tasks.size), "horizon": spec.horizon, "training": training,
                               "regret": {}, "regret_ci": {}, "lift": {}, "minus_no_dp_ci": {},
                               "minus_scratch_ci": {}}
        for n in policies:
            m, lo, hi = mean_ci(regret[n])
            rec["regret"][n], rec["regret_ci"][n] = r(m), [r(lo), r(hi)]
            rec["lift"][n] = r(mean_ci(_lift(sums, n))[0])
            if n != "scratch":
                rec["minus_scratch_ci"][n] = [r(x) for x in mean_ci(regret[n] - regret["scratch"])[1:]]
            if n.startswith("ours eps"):
                rec["minus_no_dp_ci"][n] = [r(x) for x in mean_ci(regret[n] - regret[names[None]])[1:]]
        result["worlds"][wname] = rec
        _print_dp(wname, rec)
    result["seconds_total"] = round(time.perf_counter() - t_start, 1)
    print(f"\nbench adapt --dp-epsilon: {result['seconds_total']:.0f} s in all")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def _print_dp(world: str, rec: dict[str, Any]) -> None:
    print(f"\nworld {world}: {rec['tasks']} held-out tasks x {rec['horizon']} rounds; regret in expected clicks "
          f"per task (oracle - policy)")
    head = (f"{'policy':<14} {'regret/task':>11} {'95% CI':>18} {'lift':>6} {'minus no-DP, paired':>22} "
            f"{'minus scratch, paired':>22}")
    print(head)
    print("-" * len(head))
    for n, v in rec["regret"].items():
        lo, hi = rec["regret_ci"][n]
        nd = rec["minus_no_dp_ci"].get(n)
        sc = rec["minus_scratch_ci"].get(n)
        fmt = lambda ci: "" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"  # noqa: E731
        print(f"{n:<14} {v:>11.2f} {f'[{lo:.2f}, {hi:.2f}]':>18} {rec['lift'][n]:>6.3f} {fmt(nd):>22} {fmt(sc):>22}")
