"""Settings of meta-training (``policy.train.train``), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from policy.exceptions import PolicyError


class TrainingError(PolicyError, ValueError):
    """Training cannot run on the given data or configuration (the message says why)."""


@dataclass
class TrainConfig:
    """Settings of :func:`train`. Every field has a default that works on the simulator's logs."""

    d: int = 32
    """Feature dimension of ``phi`` including the constant 1 (so the MLP outputs ``d - 1`` values)."""
    hidden: int = 64
    """Width of the MLP's hidden ReLU layer."""
    objective: Literal["predictive", "marginal"] = "marginal"
    """``"predictive"``: ALPaCA context/query posterior-predictive NLL; ``"marginal"``: exact marginal
    likelihood of each sampled segment batch."""
    reward: Literal["logged", "click", "value", "mix"] = "logged"
    """Which reward to fit: the logs' ``reward`` column, ``click``, ``value``, or
    ``click + value_weight * value`` (``"mix"``; needs the optional click/value columns)."""
    value_weight: float = 0.0
    """Weight of purchase value in the ``"mix"`` reward."""
    heldout_fraction: float = 0.2
    """Fraction of segments held out (never trained on) for early stopping and the held-out NLL curve."""
    segments_per_batch: int = 32
    """Segments per gradient step."""
    rows_per_segment: int = 256
    """Rows sampled (without replacement) from each segment per step; fewer if the segment is smaller."""
    epochs: int = 60
    """Maximum number of epochs; an epoch is ``steps_per_epoch`` gradient steps then one evaluation."""
    steps_per_epoch: int = 50
    """Gradient steps between evaluations of the held-out NLL."""
    lr: float = 3e-3
    """Adam learning rate."""
    weight_decay: float = 1e-5
    """Adam (decoupled, AdamW) weight decay on the MLP weights."""
    patience: int = 6
    """Stop after this many epochs without a held-out improvement; the best epoch's weights are kept."""
    init_prior_std: float = 0.1
    """Initial prior standard deviation of each head coefficient (in standardised reward units)."""
    init_noise_var: float = 0.9
    """Initial noise variance (in standardised reward units, where the reward variance is 1)."""
    eval_rows_per_segment: int = 512
    """Rows of each held-out segment used for the held-out NLL."""
    eval_context_sizes: tuple[int, ...] = (0, 8, 32, 128)
    """Context sizes at which the held-out posterior-predictive NLL is evaluated and averaged."""
    max_events: int | None = None
    """If set, train on a uniform random subset of at most this many logged events."""
    max_seconds: float | None = None
    """If set, stop training (keeping the best epoch so far) after this many seconds."""
    seed: int = 0
    """Seed of numpy and torch (segment split, minibatches, initialisation)."""
    device: str = "auto"
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or any torch device string."""
    threads: int = 2
    """torch intra-op CPU threads."""
    jitter: float = 1e-6
    """Added to the diagonal of the prior covariance (standardised units) so it stays positive definite."""
    calibrate_prior_scales: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03, 0.01)
    """Candidate multipliers of the learned prior covariance, scored by offline replay of the Thompson
    policy on the logs (see :func:`replay_rewards`). The largest scale whose replayed reward is within one
    standard error of the best is folded into ``prior_cov`` (wider priors adapt more over long horizons,
    so ties go to them). Empty: keep 1."""
    calibrate_max_events: int = 4000
    """Logged events per segment replayed for each candidate scale (in logged order)."""
    calibrate_segments: int = 50
    """At most this many segments (a seeded random subset) are replayed, to bound the time."""
    calibrate_eps: float = 0.01
    """Uniform exploration of the replayed Thompson policy."""
    calibrate_n_draws: int = 16
    """Posterior draws per replayed decision."""
    likelihood: Literal["auto", "gaussian", "bernoulli"] = "auto"
    """Head likelihood: ``"bernoulli"`` (logistic, for 0/1 clicks), ``"gaussian"`` (any reward), or
    ``"auto"``: bernoulli when the fitted reward is 0/1, else gaussian."""
    raw_skip: bool = True
    """Bernoulli head: append the standardised raw inputs ``[x, a]`` to ``phi`` so a segment can learn
    beyond the learned features (its prior is estimated like the rest of the head's)."""
    raw_interactions: Literal["auto", "on", "off"] = "auto"
    """Bernoulli head: include the context x candidate products ``x (x) a`` in the raw skip (a segment can
    then learn any bilinear preference); ``"auto"``: on when ``dx + da + dx * da <= raw_budget``."""
    raw_budget: int = 40
    """Largest raw skip ``"auto"`` accepts with the products (the head's cost grows with ``d^2``)."""
    item_terms: bool = True
    """Bernoulli head: per-item score offsets (pooled, from ``candidate_ids`` in the logs) and per-segment
    item terms online; needs the logs' ``candidate_ids`` column (ignored without it)."""
    item_capacity: int = 64
    """Per-item terms one segment keeps while serving (least recently used evicted)."""
    segment_l2: float = 10.0
    """Bernoulli head: precision of the per-training-segment deviations while learning ``phi``."""
    batch_rows: int = 4096
    """Bernoulli head: rows per gradient step."""
    eb_iters: int = 4
    """Bernoulli head: empirical-Bayes (Laplace EM) iterations that fit the prior over segment heads."""
    explore_scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1)
    """Posterior-width multipliers compared by offline replay on held-out segments (0 would be greedy: left
    out by default, since it logs near-zero propensities and replay horizons are short); the first is the
    reference, and another replaces it only when its paired 95 % interval against it is above zero."""
    gate_z: float = 1.96
    """Paired interval half-width (in standard errors) of the held-out gains that training must show."""
    kind: Literal["ads", "retention"] = "ads"
    """Artifact kind recorded in the metadata."""
    version: str | None = None
    """Artifact version; default ``<kind>-<UTC time>-<hash of the arrays>``."""
    source: str | None = None
    """Description of the training data for the metadata; default: the log path or ``"in-memory"``."""
    extra_meta: dict[str, Any] = field(default_factory=dict)
    """Free-form entries merged into the metadata's ``config`` record."""
    dp_epsilon: float | None = None
    """Segment-level differential privacy (:mod:`policy.dp`, bernoulli head only): the ``epsilon`` of the
    whole artifact's serving parameters per segment; None: no DP."""
    dp_delta: float = 1e-5
    """``delta`` of the DP guarantee."""
    dp_clip: float = 1.0
    """DP-SGD: L2 bound of one segment's gradient (mean over its sampled rows) of the shared parameters."""
    dp_sample_rate: float = 0.25
    """DP-SGD: probability that a training segment is in a step's batch (Poisson sampling)."""
    dp_steps: int = 150
    """DP-SGD: steps (replaces ``epochs * steps_per_epoch``; no early stopping, the last step is kept)."""
    dp_stats_share: float = 0.25
    """Share of ``dp_epsilon`` for the one-shot releases (standardisation, base rate, prior)."""
    dp_standardise: bool = True
    """With DP: estimate the input standardisation (two more noisy releases); off: inputs are used as they
    come (mean 0, sd 1), so give them on a unit scale, standardised with public statistics."""
    dp_input_clip: float = 1.5
    """With ``dp_standardise``: bound of a segment's mean input and mean squared input, per coordinate
    (times ``sqrt(dim)``)."""
    dp_head_clip: float = 1.0
    """Bound of a segment's head deviation from the shared head, in units of ``sqrt(d / segment_l2)``."""
    dp_item_prior_var: float = 0.0
    """With DP: the per-segment item-term variance (a setting, not learned; 0 = no item terms)."""
    dp_explore_scale: float = 0.25
    """With DP: the serving posterior-width multiplier (a setting: replay on held-out segments would make
    the served policy depend on their data). Without DP, replay chose 0.1 on the logistic world."""


def config_from_mapping(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from ``base`` (or the defaults) with ``values`` applied, validated.

    Values may be strings from a command line (``"0.5"``, ``"[1, 0.5]"``, ``"true"``): anything that is not
    of the field's type is parsed as JSON first. Raises :class:`TrainingError` naming an unknown field or a
    value that does not fit its field.
    """
    import dataclasses
    import json

    from pydantic import TypeAdapter, ValidationError

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    current = dataclasses.asdict(base or TrainConfig())
    for key, raw in values.items():
        if key not in fields:
            close = [name for name in fields if name.startswith(key[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise TrainingError(f"unknown training setting {key!r}{hint}; see `metacart train --help`")
        value = raw
        if isinstance(raw, str) and fields[key].type not in ("str", "str | None"):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        current[key] = value
    try:
        return TypeAdapter(TrainConfig).validate_python(current)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TrainingError(f"training setting {where}: {first['msg']}") from None


def config_from_file(path: Any) -> dict[str, Any]:
    """The mapping in a JSON or TOML file of training settings (``{"epochs": 20, ...}``)."""
    import json
    import tomllib
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no training config file at {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise TrainingError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise TrainingError(f"{path} must hold a table of settings")
    return data
