"""Offline training for retention (torch): the churn-risk model and the uplift meta-prior.

- :func:`train_risk` fits the shared network ``g`` of :class:`policy.retention.risk.RiskModel` on untreated
  rows of the history (churn = no purchase in the window) with one offset per training segment as a
  random effect (an L2 penalty = Gaussian prior); the prior variance ``tau2`` of a new segment's offset is
  then estimated from the fitted offsets (empirical Bayes, with a floor).
- :func:`train_uplift_prior` calls the shared :func:`policy.train.train` (kind ``"retention"``) on the
  same logs: ``phi(x, a)`` over user features and treatment encodings, and the Gaussian prior over each
  segment's linear head, exactly as for ads. Serving loads both without torch.
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
from policy.retention.features import FEATURE_NAMES
from policy.retention.risk import RiskModel
from policy.train import TrainConfig, train


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


def train_uplift_prior(
    logs: LoggedData, max_seconds: float = 60.0, seed: int = 0, d: int = 16, hidden: int = 64, epochs: int = 200
) -> PolicyArtifact:
    """Meta-train ``phi(x, a)`` and the segment-head prior on retention logs with :func:`policy.train.train`.

    Treatment effects are a small part of the reward variance (most of it is whether a user comes back at
    all), so the held-out likelihood plateaus early while the interactions are still being learned: a
    higher learning rate and a long patience than the ads defaults.
    """
    config = TrainConfig(
        d=d,
        hidden=hidden,
        epochs=epochs,
        lr=1e-2,
        patience=30,
        max_seconds=max_seconds,
        seed=seed,
        device="cpu",
        kind="retention",
        source="policy.retention.history (randomised treatments)",
        rows_per_segment=256,
        segments_per_batch=16,
    )
    return train(logs, config)


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
