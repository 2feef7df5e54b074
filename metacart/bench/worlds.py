"""Adaptation on world families: metacart against the baselines a practitioner would try first.

For each world family (:mod:`policy.simulator.world`: ``market``, ``recsys``, ``logistic``) the artifact is
trained by :func:`train_ours` on uniform logs of the world's *training* tasks; then every policy plays the
same *held-out* tasks for ``horizon`` rounds, one request per task per round. All policies play in
lock-step: each round's requests are drawn once and shown to every policy, and each (task, candidate)
gets one uniform ``u``; a policy that shows candidate ``k`` is clicked iff ``u[k] < p[k]``. So policies see
the same tasks, requests and outcome draws (common random numbers), and differences between them are
paired across tasks.

Scored in expected reward (the true click probability of the shown candidate, which removes the click
noise of the policy's own draws): per held-out task, ``lift = (R_policy - R_random) / (R_oracle -
R_random)`` (0 = uniform random, 1 = oracle, where ``R_random`` is the exact uniform expectation over the
valid candidates and ``R_oracle`` the best candidate's). Reported per policy: the mean lift over tasks
with its 95 % t-interval; for ``ours`` the paired 95 % CI of ``ours - best baseline`` and of ``ours -
ours_frozen`` (the same artifact never updated); the lift per window of rounds for ``ours`` and
``scratch`` with the paired CI of their difference (a late crossover shows as a window below zero); and
the exploration cost, ``ours_greedy - ours`` (greedy decisions on the same posterior, learning from its own
choices), in lift and in expected clicks per task.

Policies (:mod:`policy.baselines`):

=====================  ===================================================================================
``most_popular``       per task, the item with the most clicks so far; ties uniformly; 5 % uniform
``most_viewed``        the candidate this user viewed most (worlds with views only); ties uniformly
``pooled_frozen``      one Bayesian linear model on ``[x, a, x (x) a, 1]`` fitted on the training logs,
                       never updated (Thompson sampling from its posterior)
``pooled_warm``        the same, warm-started and updated by every held-out task's rewards (one posterior)
``egreedy_logistic``   per task online logistic regression (AdaGrad) on the same features, 5 % uniform
``scratch``            per task linear Thompson sampling on the same features from ``N(0, s2 I)`` with
                       ``s2`` = noise variance = the logged reward variance (ridge 1 in noise units)
``ours``               :class:`policy.adapter.Adapter` on the trained artifact
``ours_frozen``        the same artifact, never updated
``ours_greedy``        the same artifact, ``eps = 0`` and posterior scale 0 (greedy on the posterior mean)
=====================  ===================================================================================
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from policy.adapter import Adapter
from policy.artifact import PolicyArtifact
from policy.baselines import (
    EpsGreedyLogistic,
    Frozen,
    InteractionFeatures,
    InteractionLinearTS,
    MostPopular,
    MostViewed,
    fit_pooled_linear,
)
from policy.logs import LoggedData
from policy.simulator.logistic_worlds import LogisticConfig, LogisticWorld
from policy.simulator.market import MarketConfig
from policy.simulator.recsys import RecsysConfig, RecsysWorld
from policy.simulator.world import MarketWorld, World, uniform_logs

WORLDS = ("market", "recsys", "logistic")
BASELINES = ("most_popular", "most_viewed", "pooled_frozen", "pooled_warm", "egreedy_logistic", "scratch")
OURS = ("ours", "ours_frozen", "ours_greedy")
REPO = Path(__file__).resolve().parents[2]
_TRAIN_SOURCES = ("policy/train.py", "policy/meta_model.py", "policy/train_glm.py", "policy/glm_prior.py",
                  "policy/training_report.py", "policy/features.py",
                  "kernels/glm.py", "policy/train_config.py", "policy/calibrate.py", "policy/artifact.py",
                  "policy/adapter.py")


@dataclass(frozen=True)
class WorldSpec:
    """Sizes of one world's run."""

    tasks: int
    """Held-out tasks played (the first of the world's held-out split)."""
    horizon: int
    """Rounds per task."""
    train_per_task: int
    """Uniform logged rounds per training task."""
    train_seconds: float
    """Wall-clock cap on meta-training (``TrainConfig.max_seconds``)."""
    windows: int = 10
    """Learning-curve windows (equal numbers of rounds)."""
    eps: float = 0.01
    """Uniform exploration of the Thompson-sampling policies (ours, scratch, pooled)."""
    n_draws: int = 64
    """Posterior draws per Thompson decision."""
    quick: bool = False
    """Shortened training (few epochs, small calibration) for the unit test."""


FULL = {
    "market": WorldSpec(tasks=50, horizon=2000, train_per_task=4000, train_seconds=90.0),
    "recsys": WorldSpec(tasks=20, horizon=10_000, train_per_task=2000, train_seconds=120.0),
    "logistic": WorldSpec(tasks=20, horizon=5000, train_per_task=2000, train_seconds=90.0),
}
QUICK = {
    "market": WorldSpec(tasks=8, horizon=300, train_per_task=150, train_seconds=5.0, windows=3, quick=True),
    "recsys": WorldSpec(tasks=8, horizon=300, train_per_task=150, train_seconds=5.0, windows=3, quick=True),
    "logistic": WorldSpec(tasks=8, horizon=300, train_per_task=150, train_seconds=5.0, windows=3, quick=True),
}


def make_world(name: str, seed: int = 0) -> World:
    """The world family ``name`` (one of :data:`WORLDS`) built from ``seed``."""
    if name == "market":
        return MarketWorld(MarketConfig(seed=seed))
    if name == "recsys":
        return RecsysWorld(RecsysConfig(seed=seed))
    if name == "logistic":
        return LogisticWorld(LogisticConfig(seed=seed))
    raise ValueError(f"unknown world {name!r}; known: {', '.join(WORLDS)}")


def train_config(world: World, spec: WorldSpec, seed: int) -> Any:
    """The :class:`policy.train_config.TrainConfig` the bench trains a world's artifact with (defaults
    except the time cap, one thread and, for ``spec.quick``, a shortened schedule)."""
    from policy.train_config import TrainConfig

    quick = {"epochs": 6, "steps_per_epoch": 20, "calibrate_max_events": 200, "calibrate_segments": 10} \
        if spec.quick else {}
    return TrainConfig(
        seed=seed,
        max_seconds=spec.train_seconds,
        reward="logged",
        threads=1,  # tiny matrices: one thread is as fast, and far faster when cores are oversubscribed
        source=f"{world.name} world (seed {seed}) training tasks, {spec.train_per_task}/task uniform logging",
        **quick,
    )


def train_ours(world: World, logs: LoggedData, cfg: Any) -> PolicyArtifact:
    """Meta-train metacart's artifact on a world's uniform logs: the one place the bench calls training."""
    from policy.train import train

    return train(logs, cfg)


def _cache_key(world: World, cfg: Any, spec: WorldSpec) -> str:
    h = hashlib.sha256()
    h.update(f"{world.name}|{getattr(world, 'config', None)!r}|{spec.train_per_task}|{cfg!r}".encode())
    if world.name == "market":
        h.update(repr(world.market.config).encode())  # type: ignore[attr-defined]
    for rel in _TRAIN_SOURCES:
        h.update((REPO / rel).read_bytes())
    return h.hexdigest()[:16]


def artifact_for(world: World, logs: LoggedData, spec: WorldSpec, seed: int, cache_dir: Path | None
                 ) -> tuple[PolicyArtifact, dict[str, Any]]:
    """The trained artifact, from ``cache_dir`` when the world, log size, training config and training code
    (the sources in ``_TRAIN_SOURCES``) are unchanged; else trained by :func:`train_ours` (and cached)."""
    cfg = train_config(world, spec, seed)
    path = None if cache_dir is None else Path(cache_dir) / f"{world.name}-{_cache_key(world, cfg, spec)}"
    if path is not None and (path / "meta.json").exists():
        return PolicyArtifact.load(path), {"cached": str(path)}
    t0 = time.perf_counter()
    art = train_ours(world, logs, cfg)
    info: dict[str, Any] = {"cached": None, "seconds": round(time.perf_counter() - t0, 1)}
    if path is not None:
        art.save(path)
    return art, info


def make_policies(world: World, art: PolicyArtifact, logs: LoggedData, spec: WorldSpec, seed: int
                  ) -> dict[str, Callable[[], Any]]:
    """Factories of every policy that plays this world (fresh state each call)."""
    feats = InteractionFeatures.from_logs(logs.context, logs.candidates, logs.valid_k())
    chosen = logs.candidates[np.arange(len(logs)), logs.action]
    mean, cov, noise = fit_pooled_linear(feats, logs.context, chosen, logs.reward, prior_var=1.0)
    base = float(np.clip(logs.reward.mean(), 1e-4, 1 - 1e-4))
    s2 = max(float(logs.reward.var()), 1e-6)
    ts = {"eps": spec.eps, "n_draws": spec.n_draws}
    out: dict[str, Callable[[], Any]] = {
        "most_popular": lambda: MostPopular(eps=0.05, seed=seed + 401),
        "pooled_frozen": lambda: Frozen(InteractionLinearTS(feats, mean, cov, noise, shared=True, seed=seed + 402,
                                                            version="pooled", **ts), "pooled_frozen"),
        "pooled_warm": lambda: InteractionLinearTS(feats, mean, cov, noise, shared=True, seed=seed + 403,
                                                   version="pooled_warm", **ts),
        "egreedy_logistic": lambda: EpsGreedyLogistic(feats, base, eps=0.05, seed=seed + 404),
        "scratch": lambda: InteractionLinearTS(feats, np.zeros(feats.d), s2 * np.eye(feats.d), s2,
                                               seed=seed + 405, version="scratch", **ts),
        "ours": lambda: Adapter(art, seed=seed + 406, **ts),
        "ours_frozen": lambda: Frozen(Adapter(art, seed=seed + 407, **ts), "ours_frozen"),
        "ours_greedy": lambda: Adapter(art, eps=0.0, scale=0.0, n_draws=1, seed=seed + 408),
    }
    if world.has_views:
        out["most_viewed"] = lambda: MostViewed(world.views_column, seed=seed + 409)  # type: ignore[attr-defined]
    return {name: out[name] for name in BASELINES + OURS if name in out}


def play_world(world: World, policies: dict[str, Any], tasks: np.ndarray, horizon: int, seed: int,
               windows: int) -> dict[str, Any]:
    """Play every policy in lock-step; per (task, window) sums of expected reward, and propensity checks."""
    req_rng, out_rng = np.random.default_rng(seed + 100), np.random.default_rng(seed + 200)
    b = tasks.shape[0]
    rows = np.arange(b)
    edges = np.linspace(0, horizon, windows + 1).astype(np.int64)
    window_of = np.searchsorted(edges[1:], np.arange(horizon), side="right")
    sums = {name: np.zeros((b, windows)) for name in ("oracle", "random", *policies)}
    seconds = dict.fromkeys(policies, 0.0)
    bad_props = dict.fromkeys(policies, 0)
    for t in range(horizon):
        w = window_of[t]
        req = world.sample_requests(tasks, req_rng, t)
        p = world.click_prob(req)
        u = out_rng.random(p.shape)
        sums["oracle"][:, w] += p.max(axis=1)
        sums["random"][:, w] += p.sum(axis=1) / req.k_valid
        valid = req.valid_mask()
        for name, policy in policies.items():
            t0 = time.perf_counter()
            dec = policy.decide_many(tasks, req.context, req.candidates, k_valid=req.k_valid, items=req.items)
            ch = dec.choices
            clicks = (u[rows, ch] < p[rows, ch]).astype(np.float64)
            policy.learn_many(tasks, dec.phis_chosen, clicks, items=dec.items_chosen)
            seconds[name] += time.perf_counter() - t0
            sums[name][:, w] += p[rows, ch]
            pr = dec.propensities
            shown = pr[rows, ch]
            bad = (shown <= 0) | (shown > 1 + 1e-9) | ~valid[rows, ch] | (np.abs(pr.sum(axis=1) - 1.0) > 1e-6)
            bad_props[name] += int(np.sum(bad | np.any(np.where(valid, 0.0, pr) != 0.0, axis=1)))
    return {"sums": sums, "edges": edges, "seconds": seconds, "bad_propensities": bad_props}


# t quantiles (0.975) for small samples; normal beyond 30 degrees of freedom
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of ``values`` over tasks (a paired CI when ``values`` are differences)."""
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    mean = float(v.mean())
    if n < 2:
        return mean, mean, mean
    q = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    half = q * float(v.std(ddof=1)) / np.sqrt(n)
    return mean, mean - half, mean + half


def _lift(sums: dict[str, np.ndarray], name: str, cols: slice | int = slice(None)) -> np.ndarray:
    """Per-task lift of ``name`` over the windows ``cols``."""
    pol, rnd, orc = (sums[k][:, cols].reshape(sums[k].shape[0], -1).sum(axis=1) for k in (name, "random", "oracle"))
    return (pol - rnd) / np.maximum(orc - rnd, 1e-12)


def summarise(world: World, played: dict[str, Any], horizon: int) -> dict[str, Any]:
    """The JSON record of one world (see the module docstring)."""
    sums, edges = played["sums"], played["edges"]
    names = [n for n in sums if n not in ("oracle", "random")]
    lifts = {n: _lift(sums, n) for n in names}
    r = lambda x: round(float(x), 4)  # noqa: E731
    out: dict[str, Any] = {"tasks": int(sums["oracle"].shape[0]), "horizon": horizon, "lift": {}, "lift_ci": {}}
    for n in names:
        mean, lo, hi = mean_ci(lifts[n])
        out["lift"][n], out["lift_ci"][n] = r(mean), [r(lo), r(hi)]
    baselines = [n for n in BASELINES if n in lifts]
    best = max(baselines, key=lambda n: out["lift"][n])
    _, lo, hi = mean_ci(lifts["ours"] - lifts[best])
    out["best_baseline"] = best
    out["paired_vs_best_baseline"] = [r(lo), r(hi)]
    out["paired_vs_baselines"] = {n: [r(x) for x in mean_ci(lifts["ours"] - lifts[n])[1:]] for n in baselines}
    _, lo, hi = mean_ci(lifts["ours"] - lifts["ours_frozen"])
    out["adapt_minus_frozen"] = [r(lo), r(hi)]
    clicks = {n: sums[n].sum(axis=1) for n in sums}
    out["ctr"] = {n: r(clicks[n].mean() / horizon) for n in sums}
    out["regret_per_task"] = {n: round(float((clicks["oracle"] - clicks[n]).mean()), 2) for n in names}
    cost = clicks["ours_greedy"] - clicks["ours"]  # expected clicks per task lost to exploration
    g_mean, g_lo, g_hi = mean_ci(lifts["ours_greedy"] - lifts["ours"])
    c_mean, c_lo, c_hi = mean_ci(cost)
    out["exploration_cost"] = {
        "greedy_minus_ours_lift": r(g_mean), "greedy_minus_ours_lift_ci": [r(g_lo), r(g_hi)],
        "clicks_per_task": round(c_mean, 2), "clicks_per_task_ci": [round(c_lo, 2), round(c_hi, 2)],
        "share_of_ours_regret": r(c_mean / max(out["regret_per_task"]["ours"], 1e-12)),
    }
    n_win = sums["oracle"].shape[1]
    per_win = {n: [mean_ci(_lift(sums, n, j))[0] for j in range(n_win)] for n in names}
    diff_ci = [[r(x) for x in mean_ci(_lift(sums, "ours", j) - _lift(sums, "scratch", j))[1:]]
               for j in range(n_win)]
    diff_mean = [mean_ci(_lift(sums, "ours", j) - _lift(sums, "scratch", j))[0] for j in range(n_win)]
    out["windows"] = {
        "edges": [int(e) for e in edges],
        "lift": {n: [r(x) for x in v] for n, v in per_win.items()},
        "ours_minus_scratch_ci": diff_ci,
        "min_ours_minus_scratch": r(min(diff_mean)),
        "late_crossover": bool(min(diff_mean) < 0.0),
    }
    out["bad_propensities"] = played["bad_propensities"]
    out["seconds_per_policy"] = {n: round(s, 1) for n, s in played["seconds"].items()}
    return out


def run_world(name: str, spec: WorldSpec, seed: int = 0, cache_dir: Path | None = None,
              artifact: PolicyArtifact | None = None, logs: LoggedData | None = None) -> dict[str, Any]:
    """Train (or load) the artifact of world ``name``, play every policy, return its JSON record.

    ``artifact`` skips training; ``logs`` (the world's uniform training logs, as :func:`uniform_logs`
    writes them with ``seed + 1``) skips logging them again.
    """
    t_start = time.perf_counter()
    world = make_world(name, seed)
    tasks = world.heldout_tasks[: spec.tasks].astype(np.int64)
    assert not set(tasks.tolist()) & set(world.train_tasks.tolist()), "benchmark tasks must be held out"
    if logs is None:
        logs = uniform_logs(world, world.train_tasks, spec.train_per_task, seed=seed + 1)
    if artifact is None:
        art, train_info = artifact_for(world, logs, spec, seed, cache_dir)
    else:
        art, train_info = artifact, {"cached": None, "given": True}
    metrics = art.meta.metrics
    train_info.update({"version": art.version, "events": len(logs),
                       **{k: metrics[k] for k in ("heldout_nll_initial", "heldout_nll", "best_epoch",
                                                  "prior_scale") if k in metrics}})
    import kernels

    kernels.warm_up()
    policies = {n: make() for n, make in make_policies(world, art, logs, spec, seed).items()}
    played = play_world(world, policies, tasks, spec.horizon, seed, spec.windows)
    out = summarise(world, played, spec.horizon)
    out["training"] = train_info
    out["spec"] = asdict(spec)
    out["seconds_total"] = round(time.perf_counter() - t_start, 1)
    return out


def print_world(name: str, rec: dict[str, Any]) -> None:
    """A readable table of one world's record."""
    print(f"\nworld {name}: {rec['tasks']} held-out tasks x {rec['horizon']} rounds; lift = fraction of the "
          f"random->oracle gap in expected CTR (random {100 * rec['ctr']['random']:.2f} %, "
          f"oracle {100 * rec['ctr']['oracle']:.2f} %)")
    head = f"{'policy':<18} {'lift':>7} {'95% CI':>18} {'CTR %':>7} {'regret/task':>12}"
    print(head)
    print("-" * len(head))
    for n, v in sorted(rec["lift"].items(), key=lambda kv: -kv[1]):
        lo, hi = rec["lift_ci"][n]
        print(f"{n:<18} {v:>7.3f} {f'[{lo:.3f}, {hi:.3f}]':>18} {100 * rec['ctr'][n]:>7.3f} "
              f"{rec['regret_per_task'][n]:>12.1f}")
    lo, hi = rec["paired_vs_best_baseline"]
    print(f"ours - best baseline ({rec['best_baseline']}): [{lo:+.3f}, {hi:+.3f}]   "
          f"ours - ours_frozen: [{rec['adapt_minus_frozen'][0]:+.3f}, {rec['adapt_minus_frozen'][1]:+.3f}]")
    ec = rec["exploration_cost"]
    print(f"exploration cost (greedy - ours): lift {ec['greedy_minus_ours_lift']:+.3f} "
          f"{ec['greedy_minus_ours_lift_ci']}, {ec['clicks_per_task']:+.2f} clicks/task")
    win = rec["windows"]
    print("windows (rounds from):", win["edges"][:-1])
    print("  ours   :", win["lift"]["ours"])
    print("  scratch:", win["lift"]["scratch"])
    print("  ours - scratch, paired 95% CI:", win["ours_minus_scratch_ci"])
    print(f"  min(ours - scratch) = {win['min_ours_minus_scratch']:+.3f}; late crossover: {win['late_crossover']}")


def plot_worlds(records: dict[str, dict[str, Any]], path: Path) -> None:
    """One panel per world: lift per window of rounds for every policy (PNG at ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(5.5 * len(records), 4.5), squeeze=False)
    colour = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(BASELINES + OURS)}
    for ax, (name, rec) in zip(axes[0], records.items()):
        edges = np.asarray(rec["windows"]["edges"])
        mid = 0.5 * (edges[:-1] + edges[1:])
        for policy, lifts in rec["windows"]["lift"].items():
            style = "-" if policy.startswith("ours") else "--"
            ax.plot(mid, lifts, style, marker="o", markersize=3, label=policy, color=colour.get(policy),
                    linewidth=2.2 if policy == "ours" else 1.2)
        ax.set_title(f"{name}: {rec['tasks']} held-out tasks")
        ax.set_xlabel("round")
        ax.set_ylabel("lift per window (0 random, 1 oracle)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
