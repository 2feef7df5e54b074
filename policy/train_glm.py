"""Meta-training of the logistic (bernoulli) head: clicks as clicks (torch for ``phi``, numpy for the prior).

The model served online (``kernels.glm``, docs/ARCHITECTURE.md)::

    score = w_s . phi(x, a) + b_s(item),  click ~ Bernoulli(sigmoid(score))
    phi   = [tanh(W2 relu(W1 u + b1) + b2), r, 1]   u = [x, a],  r = z or [z, z_x (x) z_a],  z = (u - u_mean) / u_sd
    w_s ~ N(mu0, Sigma0),  b_s(item) ~ N(beta_item, tau2)

Training has three stages, each checked on segments it never trained on:

1. **Representation** (torch): a hierarchical logistic regression, ``logit = (mu0 + delta_s) . phi(u)``,
   fitted by Adam on the training segments' rows with a Gaussian penalty on the per-segment deviations
   ``delta_s`` (precision ``segment_l2``).
   The deviations make ``phi`` span the directions in which segments *differ*, not only the pooled
   predictor. Early stopping on the held-out segments' NLL accepts an epoch only when it improves on the
   best by more than twice the standard error of the paired per-row difference: click noise at 1 % CTR
   cannot fool it.
2. **Prior** (numpy): with ``phi`` fixed, ``mu0`` and the full ``Sigma0`` are fitted by empirical Bayes
   (Laplace EM over the training segments: each segment's Laplace posterior, then ``mu0 = mean(w_s)``,
   ``Sigma0 = mean((w_s - mu0)(w_s - mu0)^T + H_s^-1)``); then the pooled item offsets ``beta_item`` and
   the per-segment item variance ``tau2`` by empirical Bayes over a grid (``policy.glm_prior``). These are
   the widths the data support, so Thompson sampling from them is not far too wide; where the data show no
   item effects the variances come out 0 and the item terms switch off.
3. **Exploration** (``policy.training_report``): offline replay on held-out segments chooses the sampling
   width; **the report** compares the adapted model on held-out segments with its initialisation, the
   pooled model and the prior mean alone (prequential log loss), and says plainly whether training learned.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from policy.artifact import (ArtifactMeta, DPRecord, PolicyArtifact, RewardSpec, ServingSpec, TrainingDataSummary,
                             default_version, jsonable, now_utc)
from policy.dp import DPPlan, dp_prior, dp_standardisation, plan_budget, stats_releases
from policy.features import build_inputs, raw_dim
from policy.glm_prior import fit_offsets, fit_prior, segment_posteriors
from policy.train_config import TrainConfig, TrainingError
from policy.training_report import ClickData, calibrate_exploration, gate_report

ProgressFn = Callable[[dict[str, float]], None]


def click_data(logs: Any, y: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> ClickData:
    """The chosen candidates' inputs, clicks, segments and item ids, in logged order."""
    segment = np.asarray(logs.segment, dtype=np.int64)
    action = np.asarray(logs.action, dtype=np.int64)
    n = segment.shape[0]
    rows = np.arange(n)
    if config.max_events is not None and n > config.max_events:
        rows = np.sort(rng.choice(n, size=config.max_events, replace=False))
    context = np.asarray(logs.context)[rows]
    candidates = np.asarray(logs.candidates)[rows]
    chosen = candidates[np.arange(rows.size), action[rows]]
    u = build_inputs(context, chosen[:, None, :]).astype(np.float32)
    if not np.all(np.isfinite(u)):
        raise TrainingError("context/candidates contain NaN or inf")
    ids = getattr(logs, "candidate_ids", None)
    item = (np.asarray(ids, dtype=np.int64)[rows, action[rows]] if ids is not None and config.item_terms
            else np.full(rows.size, -1, dtype=np.int64))
    kv = getattr(logs, "k_valid", None)
    return ClickData(
        u=u, y=y[rows], segment=segment[rows], item=item, context=context, candidates=candidates,
        action=action[rows], propensity=np.asarray(logs.propensity, dtype=np.float64)[rows],
        candidate_ids=None if ids is None or not config.item_terms else np.asarray(ids, dtype=np.int64)[rows],
        k_valid=None if kv is None else np.asarray(kv, dtype=np.int64)[rows],
    )


def raw_interactions(config: TrainConfig, dx: int, da: int) -> bool:
    """Whether the raw skip carries the context x candidate products (``TrainConfig.raw_interactions``)."""
    if config.raw_interactions == "auto":
        return raw_dim(dx, da, True) <= config.raw_budget
    return config.raw_interactions == "on"


class _Hierarchical(nn.Module):
    """``logit = (mu0 + delta_s) . phi(u)`` with ``phi = [tanh(MLP(u)), u?, 1]``."""

    def __init__(self, d_in: int, hidden: int, d_z: int, raw: bool, n_train_segments: int, base_logit: float,
                 dx: int = 0, interactions: bool = False) -> None:
        super().__init__()
        self.lin1 = nn.Linear(d_in, hidden)
        self.lin2 = nn.Linear(hidden, d_z)
        self.raw = raw
        self.dx = dx
        self.interactions = interactions
        d = d_z + (raw_dim(dx, d_in - dx, interactions) if raw else 0) + 1
        mu0 = torch.zeros(d)
        mu0[-1] = base_logit
        self.mu0 = nn.Parameter(mu0)
        self.delta = nn.Parameter(torch.zeros(n_train_segments, d))
        self.d = d

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.lin2(torch.relu(self.lin1(u))))
        parts = [z]
        if self.raw:
            parts.append(u)
            if self.interactions:
                zx, za = u[:, : self.dx], u[:, self.dx:]
                parts.append((zx[:, :, None] * za[:, None, :]).reshape(u.shape[0], -1))
        parts.append(torch.ones_like(z[:, :1]))
        return torch.cat(parts, dim=1)

    def logits(self, u: torch.Tensor, seg: torch.Tensor | None) -> torch.Tensor:
        head = self.mu0 if seg is None else self.mu0 + self.delta[seg]
        return (self.phi(u) * head).sum(dim=1)

    def forward(self, u: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """``phi(u) . head`` (what :func:`torch.func.functional_call` runs for the DP per-segment gradients)."""
        return (self.phi(u) * head).sum(dim=1)


def _row_nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")


class DPStep:
    """One DP-SGD step of stage 1 at a time (:mod:`policy.dp`): Poisson-sampled segments, per-segment clipping.

    For each training segment in the batch (each one independently with probability ``q``), ``rows_per_segment``
    of its rows are sampled and its loss is ``mean_rows nll + segment_l2 |delta_s|^2 / (2 n_s)`` (``n_s``: its
    rows). The gradient of that loss in the shared parameters (``lin1``, ``lin2``, ``mu0``) is clipped to L2
    norm ``C``; the clipped gradients are summed, ``N(0, (sigma C)^2)`` is added to every coordinate and the
    sum divided by the expected batch ``q N``. ``delta_s`` gets its own gradient unclipped: it is never
    released and depends only on segment ``s``'s rows and the (private) shared parameters. Per-segment
    gradients come from :func:`torch.func.vmap` over segments (rows padded and masked).
    """

    def __init__(self, model: "_Hierarchical", plan: DPPlan, tr: np.ndarray, seg_index: np.ndarray,
                 u_t: torch.Tensor, y_t: torch.Tensor, config: TrainConfig, device: torch.device) -> None:
        from torch.func import functional_call, grad, vmap

        self.model, self.plan, self.u_t, self.y_t, self.device = model, plan, u_t, y_t, device
        self.rows = [tr[seg_index[tr] == s] for s in range(plan.n_segments)]
        self.m = max(1, min(config.rows_per_segment, max(r.size for r in self.rows)))
        self.n_rows = torch.as_tensor([float(max(r.size, 1)) for r in self.rows], device=device)
        self.l2 = float(config.segment_l2)
        self.names = [n for n, _ in model.named_parameters() if n != "delta"]
        self.noise = torch.Generator(device=device).manual_seed(config.seed + 104_729)
        self.steps_run = 0

        def loss(params: dict[str, torch.Tensor], delta_s: torch.Tensor, u: torch.Tensor, y: torch.Tensor,
                 w: torch.Tensor, n_s: torch.Tensor) -> torch.Tensor:
            logits = functional_call(model, params, (u, params["mu0"] + delta_s))
            nll = (_row_nll(logits, y) * w).sum() / w.sum().clamp(min=1.0)
            return nll + self.l2 * (delta_s ** 2).sum() / (2.0 * n_s)

        self._grads = vmap(grad(loss, argnums=(0, 1)), in_dims=(None, 0, 0, 0, 0, 0))
        self._loss = loss

    def per_segment(self, segs: np.ndarray, rng: np.random.Generator
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
        """Unclipped gradients ``({name: [B, ...]}, delta grads [B, d], mean nll)`` of segments ``segs``."""
        idx = np.zeros((segs.size, self.m), dtype=np.int64)
        mask = np.zeros((segs.size, self.m), dtype=np.float32)
        for j, s in enumerate(segs):
            r = self.rows[s]
            take = r if r.size <= self.m else rng.choice(r, self.m, replace=False)
            idx[j, : take.size], mask[j, : take.size] = take, 1.0
        i = torch.as_tensor(idx, device=self.device)
        w = torch.as_tensor(mask, device=self.device)
        s_t = torch.as_tensor(segs, device=self.device)
        params = {n: p.detach() for n, p in self.model.named_parameters() if n != "delta"}
        g_params, g_delta = self._grads(params, self.model.delta.detach()[s_t], self.u_t[i], self.y_t[i], w,
                                        self.n_rows[s_t])
        with torch.no_grad():
            head = params["mu0"] + self.model.delta.detach()[s_t]
            logits = (self.model.phi(self.u_t[i].reshape(-1, self.u_t.shape[1])).reshape(segs.size, self.m, -1)
                      * head[:, None, :]).sum(dim=2)
            nll = float((_row_nll(logits, self.y_t[i]) * w).sum() / w.sum().clamp(min=1.0))
        return g_params, g_delta, nll

    def clipped_sum(self, segs: np.ndarray, rng: np.random.Generator
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, float]:
        """``sum_s clip(g_s, C)`` over segments ``segs`` (no noise), their delta gradients and mean nll."""
        shared = {n: p for n, p in self.model.named_parameters() if n != "delta"}
        if segs.size == 0:
            return {n: torch.zeros_like(p) for n, p in shared.items()}, None, 0.0
        g_params, g_delta, nll = self.per_segment(segs, rng)
        norms = torch.sqrt(sum(g_params[n].reshape(segs.size, -1).pow(2).sum(dim=1) for n in self.names))
        factor = (self.plan.clip / norms.clamp(min=1e-12)).clamp(max=1.0)
        total = {n: (g_params[n] * factor.reshape(-1, *([1] * p.dim()))).sum(dim=0) for n, p in shared.items()}
        return total, g_delta, nll

    def set_grads(self, rng: np.random.Generator) -> float:
        """Sample a batch, write the privatised gradients into ``.grad``; returns the batch's mean nll."""
        plan = self.plan
        segs = np.flatnonzero(rng.random(plan.n_segments) < plan.sample_rate)
        scale = 1.0 / (plan.sample_rate * plan.n_segments)
        total, g_delta, nll = self.clipped_sum(segs, rng)
        for name, p in self.model.named_parameters():
            if name == "delta":
                p.grad = torch.zeros_like(p)
                if g_delta is not None:
                    p.grad[torch.as_tensor(segs, device=self.device)] = g_delta
                continue
            noise = torch.normal(0.0, plan.sgd_noise_multiplier * plan.clip, size=p.shape, generator=self.noise,
                                 device=self.device)
            p.grad = (total[name] + noise) * scale
        self.steps_run += 1
        return nll


def train_bernoulli(logs: Any, y: np.ndarray, config: TrainConfig, source: str, out_dir: Any = None,
                    progress: ProgressFn | None = None, device: torch.device | None = None) -> PolicyArtifact:
    """Stages 1-3 of the module docstring; returns the artifact (saved to ``out_dir`` when given)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    device = device or torch.device("cpu")
    data = click_data(logs, y, config, rng)
    counts = np.bincount(data.segment)
    present = np.flatnonzero(counts >= 2)
    if present.size < 2:
        raise TrainingError("need at least two segments with two or more events each")
    n_hold = min(max(int(round(config.heldout_fraction * present.size)), 1), present.size - 1)
    perm = rng.permutation(present)
    heldout_segs, train_segs = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    is_train = np.isin(data.segment, train_segs)
    tr, ho = np.flatnonzero(is_train), np.flatnonzero(np.isin(data.segment, heldout_segs))

    plan: DPPlan | None = None
    if config.dp_epsilon is not None:
        plan = plan_budget(config.dp_epsilon, config.dp_delta, config.dp_sample_rate, config.dp_steps,
                           config.dp_clip, train_segs.size, stats_releases(config), config.dp_stats_share)
        noise_rng = np.random.default_rng([config.seed, 7919])
        u_mean, u_sd, rate = dp_standardisation(data.u, data.y, data.segment, train_segs, plan, config, noise_rng)
    else:
        u_mean = data.u[tr].astype(np.float64).mean(axis=0)
        u_sd = data.u[tr].astype(np.float64).std(axis=0)
        u_sd = np.where(u_sd > 1e-8, u_sd, 1.0)
        rate = float(np.clip(data.y[tr].mean(), 1e-4, 1 - 1e-4))
    u_std = ((data.u - u_mean) / u_sd).astype(np.float32)
    seg_index = np.searchsorted(train_segs, data.segment)
    d_z = config.d - 1
    dx = int(np.asarray(logs.context).shape[1])
    interactions = raw_interactions(config, dx, u_std.shape[1] - dx)
    model = _Hierarchical(u_std.shape[1], config.hidden, d_z, config.raw_skip, train_segs.size,
                          math.log(rate / (1 - rate)), dx, interactions).to(device)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    u_t = torch.as_tensor(u_std, device=device)
    y_t = torch.as_tensor(data.y.astype(np.float32), device=device)
    s_t = torch.as_tensor(seg_index, device=device)
    decay = [model.lin1.weight, model.lin2.weight]
    rest = [p for n, p in model.named_parameters() if n not in ("lin1.weight", "lin2.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=config.lr)
    eval_rows = ho if ho.size <= 200_000 else np.sort(rng.choice(ho, 200_000, replace=False))
    ev = torch.as_tensor(eval_rows, device=device)

    def heldout_rows() -> np.ndarray:
        with torch.no_grad():
            return _row_nll(model.logits(u_t[ev], None), y_t[ev]).cpu().double().numpy()

    best_rows = heldout_rows()
    curves: dict[str, list[float]] = {"train_nll": [], "heldout_nll": [float(best_rows.mean())]}
    best = ({k: v.detach().clone() for k, v in model.state_dict().items()}, 0)
    init_nll, stale, epochs_run = float(best_rows.mean()), 0, 0
    n_tr = float(tr.size)
    dp_step = None if plan is None else DPStep(model, plan, tr, seg_index, u_t, y_t, config, device)
    n_epochs = config.epochs if plan is None else -(-config.dp_steps // config.steps_per_epoch)
    for epoch in range(1, n_epochs + 1):
        running = 0.0
        n_steps = config.steps_per_epoch if dp_step is None else min(config.steps_per_epoch,
                                                                       config.dp_steps - dp_step.steps_run)
        for _ in range(n_steps):
            if dp_step is not None:
                opt.zero_grad(set_to_none=True)
                running += dp_step.set_grads(rng)
                opt.step()
                continue
            rows = torch.as_tensor(tr[rng.integers(0, tr.size, min(config.batch_rows, tr.size))], device=device)
            nll = _row_nll(model.logits(u_t[rows], s_t[rows]), y_t[rows]).mean()
            penalty = config.segment_l2 * (model.delta ** 2).sum() / (2 * n_tr)
            loss = nll + penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(nll.detach())
        running *= config.steps_per_epoch / max(n_steps, 1)
        epochs_run = epoch
        rows_now = heldout_rows()
        diff = best_rows - rows_now  # > 0: better than the best so far
        se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("inf")
        curves["train_nll"].append(running / config.steps_per_epoch)
        curves["heldout_nll"].append(float(rows_now.mean()))
        if dp_step is not None:  # DP: no selection on held-out data, the last step is released
            best_rows, best = rows_now, ({k: v.detach().clone() for k, v in model.state_dict().items()}, epoch)
        elif diff.mean() > 2.0 * se:
            best_rows, best, stale = rows_now, ({k: v.detach().clone() for k, v in model.state_dict().items()}, epoch), 0
        else:
            stale += 1
        elapsed = time.perf_counter() - t0
        if progress is not None:
            progress({"epoch": float(epoch), "train_nll": curves["train_nll"][-1],
                      "heldout_nll": curves["heldout_nll"][-1], "elapsed_s": elapsed})
        if stale >= config.patience or (config.max_seconds is not None and elapsed > config.max_seconds):
            break
    model.load_state_dict(best[0])
    arrays = _export(model, u_mean, u_sd, config)
    t_fit = time.perf_counter()

    # Stage 2: the prior over segment heads, then pooled item offsets and per-segment item terms (numpy).
    art0 = _artifact(arrays, config, data, logs, source, train_segs, heldout_segs, {}, {}, ServingSpec())
    phi_all = art0.phi_numpy(data.u)
    groups = [tr[data.segment[tr] == s] for s in train_segs]
    cov_start = np.eye(art0.d) / config.segment_l2
    if plan is not None:
        mu0, cov0 = dp_prior(segment_posteriors(phi_all, data.y, groups, arrays["prior_mean"], config.segment_l2),
                             arrays["prior_mean"], plan, config, noise_rng)
    else:
        mu0, cov0, heads = fit_prior(phi_all, data.y, np.zeros(data.y.size), groups, arrays["prior_mean"],
                                     cov_start, config.eb_iters, config.jitter)
    arrays["prior_mean"], arrays["prior_cov"] = mu0, cov0
    tau2, pooled_var = 0.0, 0.0
    has = tr[data.item[tr] >= 0] if config.item_terms and plan is None else tr[:0]
    if plan is not None and config.item_terms and np.any(data.item >= 0):
        tau2 = float(config.dp_item_prior_var)  # a setting: nothing about items is learned from the data
    if has.size:
        base = np.einsum("nd,nd->n", phi_all[has], heads[np.searchsorted(train_segs, data.segment[has])])
        ids, by_item = np.unique(data.item[has], return_inverse=True)
        pooled_var, beta = fit_offsets(data.y[has], base, by_item.astype(np.int64))
        if pooled_var > 0:
            arrays["item_ids"], arrays["item_mean"] = ids, beta
            base = base + beta[by_item]
        _, by_pair = np.unique(data.segment[has] * (int(data.item.max()) + 2) + data.item[has], return_inverse=True)
        tau2, _ = fit_offsets(data.y[has], base, by_pair.astype(np.int64))
    arrays["item_prior_var"] = tau2
    prior_seconds = time.perf_counter() - t_fit

    # Stage 3: exploration by replay, then the report against the baselines (held-out segments).
    capacity = config.item_capacity if tau2 > 0 else 0
    art1 = _artifact(arrays, config, data, logs, source, train_segs, heldout_segs, {}, {},
                     ServingSpec(scale=1.0, eps=config.calibrate_eps, item_capacity=capacity))
    if plan is None:
        explore = calibrate_exploration(art1, data, heldout_segs, config)
    else:  # DP: the scale is a setting, so the held-out segments do not shape what is served
        explore = {"chosen_scale": float(config.dp_explore_scale), "reference_scale": float(config.dp_explore_scale),
                   "rule": "differential privacy: the setting dp_explore_scale, not chosen by replay"}
    serving = ServingSpec(scale=explore["chosen_scale"], eps=config.calibrate_eps, item_capacity=capacity,
                          evidence=explore)
    init_arrays = _export_state(model, init_state, u_mean, u_sd, config)
    init_arrays["prior_cov"] = np.eye(art0.d) * config.init_prior_std ** 2
    art_init = _artifact(init_arrays, config, data, logs, source, train_segs, heldout_segs, {}, {},
                         ServingSpec(scale=1.0, eps=config.calibrate_eps, item_capacity=0))
    art2 = _artifact(arrays, config, data, logs, source, train_segs, heldout_segs, {}, {}, serving)
    report = gate_report(art2, art_init, data, train_segs, heldout_segs, config)
    metrics = {
        "heldout_nll_initial": init_nll,
        "heldout_nll": float(best_rows.mean()),
        "best_epoch": float(best[1]),
        "epochs_run": float(epochs_run),
        "fit_seconds": t_fit - t0,
        "prior_seconds": prior_seconds,
        "item_prior_var": float(tau2),
        "item_pooled_var": float(pooled_var),
        "prior_scale": 1.0,
        "exploration_scale": float(explore["chosen_scale"]),
        "train_seconds": time.perf_counter() - t0,
    }
    dp_record = None
    if plan is not None and dp_step is not None:
        dp_record = plan.record(dp_step.steps_run)
        metrics.update(dp_epsilon=dp_record["epsilon"], dp_delta=plan.delta,
                       dp_noise_multiplier=plan.sgd_noise_multiplier, dp_steps=float(dp_step.steps_run))
    artifact = _artifact(arrays, config, data, logs, source, train_segs, heldout_segs, metrics, curves, serving,
                         report, dp_record)
    if out_dir is not None:
        artifact.save(out_dir)
    return artifact


def _export(model: _Hierarchical, u_mean: np.ndarray, u_sd: np.ndarray, config: TrainConfig) -> dict[str, Any]:
    """Fold the input standardisation into layer 1; the raw skip keeps its own standardisation."""
    with torch.no_grad():
        w1_std = model.lin1.weight.detach().cpu().double().numpy().T
        b1_std = model.lin1.bias.detach().cpu().double().numpy()
        arrays: dict[str, Any] = {
            "w1": w1_std / u_sd[:, None],
            "b1": b1_std - (u_mean / u_sd) @ w1_std,
            "w2": model.lin2.weight.detach().cpu().double().numpy().T,
            "b2": model.lin2.bias.detach().cpu().double().numpy(),
            "prior_mean": model.mu0.detach().cpu().double().numpy().copy(),
            "prior_cov": np.eye(model.d) / config.segment_l2,
            "noise_var": 1.0,
        }
        if config.raw_skip:
            arrays["raw_mean"], arrays["raw_sd"] = u_mean, u_sd
    return arrays


def _export_state(model: _Hierarchical, state: dict[str, torch.Tensor], u_mean: np.ndarray, u_sd: np.ndarray,
                  config: TrainConfig) -> dict[str, Any]:
    """Arrays of the model as it was at ``state`` (its initialisation), without touching the model."""
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    try:
        return _export(model, u_mean, u_sd, config)
    finally:
        model.load_state_dict(current)


def _artifact(arrays: dict[str, Any], config: TrainConfig, data: ClickData, logs: Any, source: str,
              train_segs: np.ndarray, heldout_segs: np.ndarray, metrics: dict[str, float],
              curves: dict[str, list[float]], serving: ServingSpec, report: dict[str, Any] | None = None,
              dp: dict[str, Any] | None = None) -> PolicyArtifact:

    dx = int(np.asarray(logs.context).shape[1])
    da = data.u.shape[1] - dx
    interactions = raw_interactions(config, dx, da)
    d_raw = raw_dim(dx, da, interactions) if config.raw_skip else 0
    d = config.d + d_raw
    version = config.version or default_version(config.kind, {k: v for k, v in arrays.items() if k != "item_ids"})
    meta = ArtifactMeta(
        version=version, kind=config.kind, dx=int(np.asarray(logs.context).shape[1]),
        da=int(np.asarray(logs.candidates).shape[2]), d=d, hidden=config.hidden, likelihood="bernoulli",
        d_raw=d_raw, raw_interactions=bool(interactions and config.raw_skip), serving=serving,
        reward=RewardSpec(name="click"), created_at=now_utc(),
        training_data=TrainingDataSummary(
            source=source, n_events=int(data.y.size), n_segments=int(train_segs.size + heldout_segs.size),
            n_train_segments=int(train_segs.size), n_heldout_segments=int(heldout_segs.size),
            reward_mean=float(data.y.mean()), reward_std=float(data.y.std()),
        ),
        metrics=metrics, curves=curves, config=jsonable(asdict(config)), report=jsonable(report or {}),
        dp=None if dp is None else DPRecord(**dp),
    )
    return PolicyArtifact(meta=meta, **arrays)
