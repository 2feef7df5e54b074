"""What training measured on held-out segments: the exploration it chose, and whether it learned (torch-free).

Both work on segments that training never fitted, in logged order, as a new segment would meet them.

- :func:`calibrate_exploration` replays the policy offline (Li, Chu, Langford & Wang, WSDM 2011: an event
  counts when the policy picks the logged action and a uniform draw falls below ``p_min / propensity``)
  for several sampling widths ``scale`` and compares each with the reference width (the first) **paired
  by segment**. Another width replaces the reference only when its 95 % interval against it lies above
  zero, so a tie within noise keeps the reference rather than the widest (or narrowest) option.
- :func:`gate_report` scores the prequential log loss (each row predicted before it is learned) of the
  adapted model against (a) its own initialisation, adapted the same way, (b) a pooled logistic
  regression on the raw features fitted on the training segments, (c) the prior mean alone (the model
  never updated) and (d) the training base rate. ``learned`` is True only when every paired interval of
  (baseline - ours) is above zero; ``summary`` says it in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from policy.artifact import PolicyArtifact


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass
class ClickData:
    """Logged decisions in logged order: the chosen candidates' inputs and everything replay needs."""

    u: np.ndarray  # float32[N, dx + da], inputs of the chosen candidate
    y: np.ndarray  # float64[N], 0/1
    segment: np.ndarray  # int64[N]
    item: np.ndarray  # int64[N], chosen candidate's id or -1
    context: np.ndarray  # [N, dx]
    candidates: np.ndarray  # [N, K, da]
    action: np.ndarray  # int64[N]
    propensity: np.ndarray  # float64[N]
    candidate_ids: np.ndarray | None  # int64[N, K]
    k_valid: np.ndarray | None  # int64[N]


def _rounds(data: ClickData, segments: np.ndarray, cap: int) -> np.ndarray:
    """int64[S, T] row indices of each segment's first ``cap`` rows in logged order (-1 = none)."""
    per = [np.flatnonzero(data.segment == s)[:cap] for s in segments]
    rounds = max((r.size for r in per), default=0)
    out = np.full((segments.size, rounds), -1, dtype=np.int64)
    for b, r in enumerate(per):
        out[b, : r.size] = r
    return out


def _paired(diff: np.ndarray, z: float) -> list[float]:
    mean = float(diff.mean())
    half = float(z * diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("inf")
    return [mean - half, mean + half]


def calibrate_exploration(artifact: PolicyArtifact, data: ClickData, segments: np.ndarray, config: Any) -> dict[str, Any]:
    """Choose the serving ``scale`` among ``config.explore_scales`` by paired offline replay (see module)."""
    from policy.adapter import Adapter

    scales = tuple(float(c) for c in config.explore_scales) or (1.0,)
    segs = segments[: config.calibrate_segments]
    rows = _rounds(data, segs, config.calibrate_max_events)
    p_min = float(data.propensity.min())
    accept = np.random.default_rng(config.seed + 31).random(rows.shape)
    policies = {c: Adapter(artifact, scale=c, eps=config.calibrate_eps, n_draws=config.calibrate_n_draws,
                           seed=config.seed + 37) for c in scales}
    features = policies[scales[0]]
    total = {c: np.zeros(segs.size) for c in scales}
    count = {c: np.zeros(segs.size) for c in scales}
    for j in range(rows.shape[1]):
        active = np.flatnonzero(rows[:, j] >= 0)
        idx = rows[active, j]
        seg = segs[active]
        phis = features.phi_many(data.context[idx], data.candidates[idx])
        ids = None if data.candidate_ids is None else data.candidate_ids[idx]
        kv = None if data.k_valid is None else data.k_valid[idx]
        gate = accept[active, j] * data.propensity[idx] < p_min
        for c, policy in policies.items():
            dec = policy.decide_phis(seg, phis, kv, ids)
            hit = gate & (dec.choices == data.action[idx])
            if hit.any():
                got = data.y[idx][hit]
                policy.learn_many(seg[hit], dec.phis_chosen[hit], got,
                                  None if dec.items_chosen is None else dec.items_chosen[hit])
                np.add.at(total[c], active[hit], got)
                np.add.at(count[c], active[hit], 1.0)
    ok = np.all(np.stack([count[c] for c in scales]) > 0, axis=0)
    means = {c: total[c][ok] / count[c][ok] for c in scales}
    ref = scales[0]
    table: dict[str, Any] = {}
    chosen, best = ref, -np.inf
    for c in scales:
        entry: dict[str, Any] = {"reward_per_event": float(means[c].mean()) if ok.any() else 0.0,
                                 "events": int(count[c].sum())}
        if c != ref and ok.sum() > 1:
            lo, hi = _paired(means[c] - means[ref], 1.96)
            entry["minus_reference_ci"] = [lo, hi]
            if lo > 0 and means[c].mean() > best:
                chosen, best = c, float(means[c].mean())
        table[f"{c:g}"] = entry
    return {"method": "paired offline replay on held-out segments (Li et al. 2011)", "reference_scale": ref,
            "chosen_scale": chosen, "segments": int(ok.sum()), "scales": table,
            "rule": "a width replaces the reference only if its paired 95% interval against it is above 0"}


def _pooled(u: np.ndarray, y: np.ndarray, bernoulli: bool, l2: float = 1e-3, iters: int = 25
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The practitioner's pooled model on standardised raw inputs: a logistic regression (Newton) for
    clicks, a ridge regression otherwise. Returns ``(w, mean, sd, residual variance)``."""
    mean, sd = u.mean(axis=0), u.std(axis=0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    X = np.hstack([(u - mean) / sd, np.ones((u.shape[0], 1))])
    reg = l2 * X.shape[0] * np.eye(X.shape[1])
    if not bernoulli:
        w = np.linalg.solve(X.T @ X + reg, X.T @ y)
        return w, mean, sd, float(np.var(y - X @ w))
    w = np.zeros(X.shape[1])
    for _ in range(iters):
        p = _sigmoid(X @ w)
        H = (X * (p * (1 - p))[:, None]).T @ X + reg
        step = np.linalg.solve(H, X.T @ (y - p) - reg @ w)
        w += step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w, mean, sd, 0.0


def _nll(mean: np.ndarray, var: np.ndarray, y: np.ndarray, bernoulli: bool, noise_var: float) -> np.ndarray:
    """Per-row negative log predictive: log loss of the probit-moderated click probability, or the
    gaussian predictive ``N(y | mean, var + noise_var)``."""
    if bernoulli:
        p = np.clip(_sigmoid(mean / np.sqrt(1.0 + np.pi * var / 8.0)), 1e-12, 1 - 1e-12)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    total = var + noise_var
    return 0.5 * (np.log(2 * np.pi * total) + (y - mean) ** 2 / total)


def gate_report(artifact: PolicyArtifact, initial: PolicyArtifact, data: ClickData, train_segs: np.ndarray,
                heldout_segs: np.ndarray, config: Any) -> dict[str, Any]:
    """Prequential held-out log loss of the adapted model against its baselines (see module docstring)."""
    from policy.adapter import Adapter

    bernoulli = artifact.bernoulli
    train_rows = np.flatnonzero(np.isin(data.segment, train_segs))
    y_train = data.y[train_rows]
    w_pool, p_mean, p_sd, p_var = _pooled(data.u[train_rows].astype(np.float64), y_train, bernoulli)
    base_mean = float(np.clip(y_train.mean(), 1e-6, 1 - 1e-6)) if bernoulli else float(y_train.mean())
    base_logit = float(np.log(base_mean / (1 - base_mean))) if bernoulli else base_mean
    base_var = 0.0 if bernoulli else float(y_train.var())
    rows = _rounds(data, heldout_segs, config.calibrate_max_events)
    ours = Adapter(artifact, seed=config.seed + 41)
    init = Adapter(initial, seed=config.seed + 41, item_capacity=0)
    frozen = Adapter(artifact, seed=config.seed + 41)
    names = ("ours", "initialisation", "pooled", "prior_mean", "base_rate")
    loss = {n: np.zeros(heldout_segs.size) for n in names}
    seen = np.zeros(heldout_segs.size)
    for j in range(rows.shape[1]):
        active = np.flatnonzero(rows[:, j] >= 0)
        idx = rows[active, j]
        seg, y, u = heldout_segs[active], data.y[idx], data.u[idx].astype(np.float64)
        items = data.item[idx]
        phi_ours = artifact.phi_numpy(u)  # ours and the prior mean alone share the features
        for name, policy in (("ours", ours), ("initialisation", init), ("prior_mean", frozen)):
            phi = initial.phi_numpy(u) if policy is init else phi_ours
            mean, var = policy.predict_phis(seg, phi, items)
            np.add.at(loss[name], active, _nll(mean, var, y, bernoulli, policy.artifact.noise_var))
            if name != "prior_mean":
                policy.learn_many(seg, phi, y, items)
        X = np.hstack([(u - p_mean) / p_sd, np.ones((u.shape[0], 1))])
        zero = np.zeros(y.size)
        np.add.at(loss["pooled"], active, _nll(X @ w_pool, zero, y, bernoulli, max(p_var, 1e-12)))
        np.add.at(loss["base_rate"], active, _nll(np.full(y.size, base_logit), zero, y, bernoulli,
                                                  max(base_var, 1e-12)))
        np.add.at(seen, active, 1.0)
    per_seg = {n: loss[n] / np.maximum(seen, 1.0) for n in names}
    report: dict[str, Any] = {
        "metric": ("prequential log loss" if bernoulli else "prequential gaussian negative log predictive")
        + " per row on held-out segments (lower is better)",
        "segments": int(heldout_segs.size), "rows": int(seen.sum()),
        "log_loss": {n: float(loss[n].sum() / max(seen.sum(), 1.0)) for n in names},
        "gain_ci": {},
    }
    learned, lines = True, []
    if heldout_segs.size < 2:
        report["learned"] = False
        report["summary"] = [f"cannot tell: {heldout_segs.size} held-out segment (an interval needs at least 2; "
                             f"give the logs more segments or raise heldout_fraction)"]
        report["gain_ci"] = {name: None for name in names[1:]}
        return report
    for name in names[1:]:
        lo, hi = _paired(per_seg[name] - per_seg["ours"], config.gate_z)
        report["gain_ci"][name] = [lo, hi]
        beat = lo > 0
        learned &= beat
        what = name.replace("_", " ")
        lines.append(f"{'better' if beat else 'NOT better'} than the {what}: {'log loss' if bernoulli else 'NLL'} "
                     f"{report['log_loss']['ours']:.5f} vs {report['log_loss'][name]:.5f}, "
                     f"gain per row [{lo:.5f}, {hi:.5f}]")
    report["learned"] = bool(learned)
    report["summary"] = lines
    return report
