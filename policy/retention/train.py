"""Offline training for retention (torch): the churn-risk model and the uplift meta-prior.

- :func:`train_risk` fits the shared network ``g`` of :class:`policy.retention.risk.RiskModel` on untreated
  rows of the history (churn = no purchase in the window) with one offset per training segment as a
  random effect (an L2 penalty = Gaussian prior); the prior variance ``tau2`` of a new segment's offset is
  then estimated from the fitted offsets (empirical Bayes, with a floor).
- :func:`train_uplift_prior` learns the treatment effects on the same logs (:func:`train_effects`, an
  S-learner with explicit treatment heads) and fits the Gaussian prior of the segment's linear head over
  the uplift features of :mod:`policy.retention.uplift` by marginal likelihood; online, the head adapts in
  the shared :class:`policy.adapter.Adapter`, exactly as for ads. Serving loads both without torch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from policy.artifact import PolicyArtifact
from policy.logs import LoggedData
from policy.retention.features import DX, FEATURE_NAMES
from policy.retention.risk import RiskModel
from policy.retention.uplift import N_TREATED, EffectNet, UpliftFitConfig, fit_uplift_prior, standardisation


@dataclass
class RiskTrainConfig:
    """Settings of :func:`train_risk`."""

    hidden: int = 32
    """Width of the hidden ReLU layer of ``g``."""
    epochs: int = 30
    """Passes over the untreated rows."""
    batch_size: int = 1024
    """Rows per Adam step."""
    lr: float = 3e-3
    """Adam learning rate."""
    offset_penalty: float = 2.0
    """Weight of ``sum_s b_s^2 / 2`` relative to the mean log loss times the rows per segment."""
    tau2_floor: float = 0.01
    """Smallest prior variance of a segment offset."""
    max_seconds: float = 30.0
    """Stop after this long."""
    seed: int = 0
    """Seeds torch and the minibatch order."""
    threads: int = 2
    """torch CPU threads."""


def train_risk(logs: LoggedData, config: RiskTrainConfig | None = None) -> RiskModel:
    """Fit the churn-risk model on the untreated rows of ``logs`` (churn = ``value == 0``)."""
    config = config or RiskTrainConfig()
    if logs.value is None:
        raise ValueError("risk training needs the logs' value column (window purchase value)")
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    rows = np.flatnonzero(logs.action == 0)
    x = np.asarray(logs.context[rows], dtype=np.float64)
    y = (logs.value[rows] <= 0).astype(np.float32)
    seg = logs.segment[rows]
    mean, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    z = torch.as_tensor((x - mean) / sd, dtype=torch.float32)
    yt = torch.as_tensor(y)
    st = torch.as_tensor(seg)
    n_seg = int(logs.n_segments)
    rows_per_seg = max(1.0, len(rows) / max(1, len(np.unique(seg))))

    net = nn.Sequential(nn.Linear(x.shape[1], config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1))
    offsets = nn.Parameter(torch.zeros(n_seg))
    opt = torch.optim.Adam([*net.parameters(), offsets], lr=config.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    for _ in range(config.epochs):
        perm = torch.as_tensor(rng.permutation(len(rows)))
        for start in range(0, len(rows), config.batch_size):
            idx = perm[start : start + config.batch_size]
            logit = net(z[idx]).squeeze(-1) + offsets[st[idx]]
            loss = loss_fn(logit, yt[idx]) + config.offset_penalty * (offsets**2).sum() / (2 * rows_per_seg * n_seg)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if time.perf_counter() - t0 > config.max_seconds:
            break
    with torch.no_grad():
        b = offsets.detach().numpy().astype(np.float64)
        present = np.unique(seg)
        centre = float(b[present].mean())
        tau2 = max(float(b[present].var()), config.tau2_floor)
        logit = net(z).squeeze(-1).numpy().astype(np.float64) + b[seg]
        p = 1.0 / (1.0 + np.exp(-logit))
        ll = float(np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))
    lin1, lin2 = net[0], net[2]
    return RiskModel(
        mean=mean,
        sd=sd,
        w1=lin1.weight.detach().numpy().T.astype(np.float64),
        b1=lin1.bias.detach().numpy().astype(np.float64),
        w2=lin2.weight.detach().numpy()[0].astype(np.float64),
        b2=float(lin2.bias.detach().numpy()[0]) + centre,
        tau2=tau2,
        meta={
            "version": f"risk-{config.seed}-{len(rows)}",
            "features": list(FEATURE_NAMES),
            "train_log_loss": -ll,
            "base_rate": float(y.mean()),
            "n_rows": int(len(rows)),
            "tau2": tau2,
        },
    )


@dataclass
class EffectTrainConfig:
    """Settings of :func:`train_effects` (the treatment-effect network behind the uplift head)."""

    hidden: int = 16
    """ReLU units of each treatment's effect network ``tau_k``."""
    baseline_hidden: int = 32
    """ReLU units of the baseline network ``b`` (what a user is worth untreated; used in training only)."""
    epochs: int = 40
    """Passes over the training rows."""
    batch_size: int = 2048
    """Rows per Adam step."""
    lr: float = 3e-3
    """Adam learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    heldout_fraction: float = 0.2
    """Training segments held out for early stopping (never trained on)."""
    patience: int = 6
    """Stop after this many epochs whose held-out loss does not beat the best by one standard error."""
    max_seconds: float = 60.0
    """Stop after this long (the best epoch so far is kept)."""
    seed: int = 0
    """Seeds torch, the split and the minibatch order."""
    threads: int = 2
    """torch CPU threads."""
    baseline_feature: bool = True
    """Keep the trained baseline ``b(z)`` as one more (ungated) feature of the head."""


def train_effects(logs: LoggedData, mean: np.ndarray, sd: np.ndarray,
                  config: EffectTrainConfig | None = None) -> tuple[EffectNet, dict]:
    """Fit ``reward = b(z) + tau_a(z) + noise`` (``tau_none = 0``) by least squares on randomised logs.

    The S-learner with explicit treatment heads (Kunzel et al. 2019): the treatment effect is its own
    function, so the large, noisy baseline cannot hide it. ``b`` is discarded after training; the head
    prior relearns the baseline on its own features. Early stopping: held-out segments' mean squared
    error, an epoch counting as better only when it beats the best by more than one standard error of the
    paired difference (noise cannot keep training alive). Returns the effects and a training report.
    """
    config = config or EffectTrainConfig()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng([config.seed, 0xEFF])
    segs = np.unique(logs.segment)
    n_hold = max(1, int(round(config.heldout_fraction * segs.size))) if segs.size > 1 else 0
    hold = rng.permutation(segs)[:n_hold]
    is_hold = np.isin(logs.segment, hold)
    z_all = (np.asarray(logs.context, dtype=np.float64) - mean) / sd
    y_mean, y_sd = float(logs.reward.mean()), float(max(logs.reward.std(), 1e-8))
    y_all = (logs.reward - y_mean) / y_sd
    a_all = np.asarray(logs.action, dtype=np.int64)

    def tensors(rows: np.ndarray):
        return (torch.as_tensor(z_all[rows], dtype=torch.float32), torch.as_tensor(a_all[rows]),
                torch.as_tensor(y_all[rows], dtype=torch.float32))

    train_rows, hold_rows = np.flatnonzero(~is_hold), np.flatnonzero(is_hold)
    if hold_rows.size == 0:
        hold_rows = train_rows
    zt, at, yt = tensors(train_rows)
    zh, ah, yh = tensors(hold_rows)
    base = nn.Sequential(nn.Linear(DX, config.baseline_hidden), nn.ReLU(), nn.Linear(config.baseline_hidden, 1))
    w = nn.Parameter(torch.randn(N_TREATED, DX, config.hidden) * (1.0 / np.sqrt(DX)))
    c = nn.Parameter(torch.zeros(N_TREATED, config.hidden))
    v = nn.Parameter(torch.randn(N_TREATED, config.hidden) * 0.01)
    e = nn.Parameter(torch.zeros(N_TREATED))

    def predict(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.einsum("nd,kdh->nkh", z, w) + c)
        tau = torch.einsum("nkh,kh->nk", h, v) + e
        tau = torch.cat([torch.zeros_like(tau[:, :1]), tau], dim=1)
        return base(z).squeeze(-1) + tau.gather(1, a[:, None]).squeeze(1)

    opt = torch.optim.AdamW([*base.parameters(), w, c, v, e], lr=config.lr, weight_decay=config.weight_decay)
    best = (np.inf, None, -1)
    curve: list[float] = []
    best_err: np.ndarray | None = None
    t0 = time.perf_counter()
    stale = 0
    for epoch in range(config.epochs):
        perm = torch.as_tensor(rng.permutation(train_rows.size))
        for start in range(0, train_rows.size, config.batch_size):
            idx = perm[start:start + config.batch_size]
            loss = ((predict(zt[idx], at[idx]) - yt[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            err = ((predict(zh, ah) - yh) ** 2).numpy().astype(np.float64)
        curve.append(float(err.mean()))
        if best_err is None:
            better = True
        else:
            diff = best_err - err
            better = diff.mean() > diff.std() / np.sqrt(diff.size)
        if better:
            best_err = err
            best = (float(err.mean()), [t.detach().clone() for t in (w, c, v, e, *base.parameters())], epoch)
            stale = 0
        else:
            stale += 1
        if stale >= config.patience or time.perf_counter() - t0 > config.max_seconds:
            break
    bw, bc, bv, be, w0, c0, v0, e0 = (t.numpy().astype(np.float64) for t in best[1])
    raw = EffectNet(bw, bc, bv * y_sd, be * y_sd, 1.0)
    tau_sd = float(np.std(raw.tau(z_all)))
    base_net = (w0.T, c0, v0[0] * y_sd, float(e0[0]) * y_sd + y_mean)
    base_sd = float(np.std(np.maximum(z_all @ base_net[0] + base_net[1], 0.0) @ base_net[2]))
    effects = EffectNet(bw, bc, bv * y_sd, be * y_sd, 0.5 / max(tau_sd, 1e-8),
                        baseline=base_net if config.baseline_feature else None,
                        baseline_scale=0.5 / max(base_sd, 1e-8))
    report = {"best_epoch": best[2], "epochs_run": len(curve), "heldout_mse": best[0], "curve": curve,
              "tau_sd": tau_sd, "seconds": time.perf_counter() - t0}
    return effects, report


def train_shared_phi(logs: LoggedData, max_seconds: float = 60.0, seed: int = 0) -> PolicyArtifact:
    """The shared meta-training (:func:`policy.train.train`, kind ``"retention"``) on the raw reward.

    Treatment effects are a small part of the reward variance, so the held-out likelihood plateaus early
    while the interactions are still being learned: a higher learning rate and a longer patience than the
    ads defaults.
    """
    from policy.train import TrainConfig, train

    config = TrainConfig(d=16, hidden=64, epochs=200, lr=1e-2, patience=30, max_seconds=max_seconds, seed=seed,
                         device="cpu", kind="retention", source="policy.retention.history (randomised treatments)",
                         rows_per_segment=256, segments_per_batch=16)
    return train(logs, config)


def train_uplift_prior(logs: LoggedData, max_seconds: float = 60.0, seed: int = 0,
                       effects_config: EffectTrainConfig | None = None,
                       fit_config: UpliftFitConfig | None = None, shared_phi: bool = False) -> PolicyArtifact:
    """The retention artifact's uplift head: learned features (torch), then the head prior (EM).

    1. :func:`train_effects` learns ``tau_k(x)`` and a baseline ``b(x)`` on the randomised history (least
       squares with explicit treatment heads, so the effect is fitted as the treatment effect, not as a
       small part of the outcome).
    2. With ``shared_phi``, :func:`train_shared_phi` also learns the shared ``phi(x, a)`` of the ad
       policy's meta-training on the raw reward (the previous retention head), kept as more features.
    3. :func:`policy.retention.uplift.fit_uplift_head` builds ``phi(x, a)`` = baseline features, gated
       linear effects, the learned effects (and the shared ``phi``), and fits the prior of the segment head
       over all of it by marginal likelihood across the training segments.

    Measured (``metacart bench retention``, fraction of the oracle's incremental value, seeds 0 / 1 / 2):
    previous head (``policy.train.train`` on the raw reward) 0.440 / 0.437 / 0.523; this head 0.582 /
    0.367 / 0.520; this head with ``shared_phi`` 0.465 / 0.449 / 0.494. None of the differences is
    significant over three seeds; ``shared_phi`` is off by default (it costs the shared training's time).
    """
    t0 = time.perf_counter()
    effects_config = effects_config or EffectTrainConfig(seed=seed, max_seconds=max_seconds / (2 if shared_phi else 1))
    mean, sd = standardisation(logs.context)
    effects, report = train_effects(logs, mean, sd, effects_config)
    metrics = {"effects_best_epoch": float(report["best_epoch"]), "effects_epochs_run": float(report["epochs_run"]),
               "effects_heldout_mse": float(report["heldout_mse"]), "effects_seconds": float(report["seconds"]),
               "effects_tau_sd": float(report["tau_sd"])}
    shared = None
    if shared_phi:
        art = train_shared_phi(logs, max_seconds=max(1.0, max_seconds - (time.perf_counter() - t0)), seed=seed)
        shared = {k: getattr(art, k) for k in ("w1", "b1", "w2", "b2")}
        metrics.update({f"shared_{k}": float(v) for k, v in art.meta.metrics.items()})
    return fit_uplift_prior(logs, fit_config, effects=effects, mean=mean, sd=sd, extra_metrics=metrics,
                            curves={"effects_heldout_mse": [float(v) for v in report["curve"]]}, shared=shared)


@dataclass(frozen=True)
class BuildConfig:
    """The simulated world and history behind :func:`build_artifacts` (small enough for ~60 s on 2 cores)."""

    n_markets: int = 6
    n_cohorts: int = 5
    n_heldout: int = 5
    """Segments never trained on (the live simulator plays these)."""
    train_users_per_segment: int = 300
    train_rounds: int = 4
    warmup_rounds: int = 5
    window_days: int = 7


def build_artifacts(out_dir: "str | os.PathLike[str]", max_seconds: float = 60.0, seed: int = 0,
                    config: BuildConfig | None = None) -> Path:
    """Build a retention artifact directory from the simulator; returns ``out_dir``.

    Draws the world's segments, holds out ``config.n_heldout`` of them
    (:func:`policy.retention.history.heldout_split`, the benchmark's split), simulates the randomised
    treatment history of the others, then trains the churn-risk model (about a sixth of the time left)
    and the uplift meta-prior (the rest), all within about ``max_seconds`` wall-clock. The layout is the
    one :func:`policy.retention.artifacts.load_artifacts` reads; the manifest records the world so the
    live simulator can play the held-out segments.
    """
    from policy.retention.artifacts import save_artifacts
    from policy.retention.history import heldout_split, training_logs
    from policy.simulator.retention import draw_segments

    config = config or BuildConfig()
    t0 = time.perf_counter()
    names, params = draw_segments(config.n_markets, config.n_cohorts, seed=seed)
    heldout_idx, train_idx = heldout_split(len(names), config.n_heldout, seed)
    logs = training_logs(names, params, train_idx, config.train_users_per_segment, config.train_rounds,
                         config.warmup_rounds, seed, config.window_days)
    left = max(2.0, 0.92 * max_seconds - (time.perf_counter() - t0))
    risk = train_risk(logs, RiskTrainConfig(epochs=12, max_seconds=left / 6, seed=seed))
    left = max(1.0, 0.92 * max_seconds - (time.perf_counter() - t0))
    uplift = train_uplift_prior(logs, max_seconds=left, seed=seed)
    world = {
        "n_markets": config.n_markets, "n_cohorts": config.n_cohorts, "seed": seed,
        "heldout_segments": [names[i] for i in heldout_idx], "heldout_index": heldout_idx.tolist(),
        "window_days": config.window_days, "warmup_rounds": config.warmup_rounds,
    }
    return save_artifacts(out_dir, uplift, risk, {
        "world": world, "train_rows": len(logs), "risk": risk.meta,
        "seconds": round(time.perf_counter() - t0, 2),
    })


def train_retention(logs_path: "str | os.PathLike[str]", out_dir: "str | os.PathLike[str]",
                    max_seconds: float = 60.0, seed: int = 0) -> Path:
    """A retention artifact directory from a logged randomised treatment history (``policy.logs`` file).

    The logs need the retention layout (:mod:`policy.retention.history`: context = engagement features,
    candidates = the treatment encodings, reward = window value - cost, ``value`` = window purchase value).
    The manifest has no ``world`` block (the artifact was not trained on a simulated world).
    """
    from policy.logs import read_logs
    from policy.retention.artifacts import save_artifacts

    t0 = time.perf_counter()
    logs = read_logs(logs_path)
    risk = train_risk(logs, RiskTrainConfig(epochs=12, max_seconds=max_seconds / 6, seed=seed))
    left = max(1.0, 0.92 * max_seconds - (time.perf_counter() - t0))
    uplift = train_uplift_prior(logs, max_seconds=left, seed=seed)
    return save_artifacts(out_dir, uplift, risk, {"source": str(logs_path), "train_rows": len(logs),
                                                  "risk": risk.meta, "seconds": round(time.perf_counter() - t0, 2)})
