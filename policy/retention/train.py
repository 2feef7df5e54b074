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

import time
from dataclasses import dataclass

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
