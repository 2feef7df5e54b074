"""The versioned policy artifact: what meta-training writes and serving loads (torch-free).

An artifact is a directory with two files:

``meta.json``
    :class:`ArtifactMeta` (pydantic, frozen, ``extra="forbid"``): version, kind, the feature spec
    (``dx``, ``da``, ``d``, ``hidden``), the reward spec, creation time, a summary of the training
    data and the training metrics.
``arrays.npz``
    float64 arrays ``w1[dx+da, hidden]``, ``b1[hidden]``, ``w2[hidden, d_z]``, ``b2[d_z]`` (the
    feature map ``phi``; input standardisation is folded into ``w1``/``b1``), ``prior_mean[d]``,
    ``prior_cov[d, d]`` and the scalar ``noise_var``. Schema 2 adds, all optional:
    ``raw_mean[dx+da]`` and ``raw_sd[dx+da]`` (the raw skip, when ``d_raw > 0``), ``item_ids`` int64[M]
    (sorted, distinct) with ``item_mean[M]`` (the pooled per-item score offsets), and the scalar
    ``item_prior_var`` (prior variance of a segment's per-item term; absent or 0 = no item terms).

The model (docs/ARCHITECTURE.md): ``u = [x, a]``, ``h = relu(w1^T u + b1)``, ``z = tanh(w2^T h + b2)``,
``phi = [z, (u - raw_mean) / raw_sd, 1]`` (the raw part only when ``d_raw > 0``, so
``d = d_z + d_raw + 1``); a segment's head ``w ~ N(prior_mean, prior_cov)``, its score
``w . phi + b_item`` and, by ``likelihood``, ``reward = score + e`` with ``e ~ N(0, noise_var)``
(``"gaussian"``) or ``click ~ Bernoulli(sigmoid(score))`` (``"bernoulli"``; ``noise_var`` unused).

Both files are written to a temporary directory next to the target and renamed into place, so a reader
never sees half an artifact. :func:`PolicyArtifact.load` checks everything it reads and raises
:class:`ArtifactError` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from policy.exceptions import PolicyError
from policy.features import raw_dim, raw_features

ARTIFACT_SCHEMA_VERSION = 2
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
ARRAY_NAMES = ("w1", "b1", "w2", "b2", "prior_mean", "prior_cov", "noise_var")
OPTIONAL_ARRAYS = ("raw_mean", "raw_sd", "item_ids", "item_mean", "item_prior_var")


class ArtifactError(PolicyError, ValueError):
    """An artifact is missing, malformed or inconsistent; the message says which part and why."""


class RewardSpec(BaseModel):
    """Which reward the policy maximises: ``click + value_weight * value`` (``value_weight=0``: clicks)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["click", "value", "mix", "custom"] = "click"
    value_weight: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)


class TrainingDataSummary(BaseModel):
    """Where the training data came from and how much of it there was."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="path of the logs or a description such as 'simulator seed=0'")
    n_events: int = Field(ge=0)
    n_segments: int = Field(ge=0)
    n_train_segments: int = Field(ge=0)
    n_heldout_segments: int = Field(ge=0)
    reward_mean: float = Field(allow_inf_nan=False)
    reward_std: float = Field(ge=0.0, allow_inf_nan=False)


class ServingSpec(BaseModel):
    """How the artifact should be served: exploration chosen (and evidenced) by training.

    ``scale`` multiplies the posterior covariance when sampling (0 = greedy on the posterior mean,
    1 = plain Thompson sampling); ``eps`` is the uniform mixing; ``item_capacity`` bounds the per-item
    terms one segment keeps (least recently used evicted).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    eps: float = Field(default=0.02, ge=0.0, le=1.0, allow_inf_nan=False)
    item_capacity: int = Field(default=0, ge=0, le=4096)
    evidence: dict[str, Any] = Field(default_factory=dict, description="how scale/eps were chosen")


class DPRecord(BaseModel):
    """The differential-privacy guarantee of a DP-trained artifact (:mod:`policy.dp`); None when not DP.

    ``(epsilon, delta)`` per segment (add/remove one segment's whole data) for what ``covered`` lists,
    composed over every mechanism by the accountant; ``not_covered`` says what the metadata holds outside it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    epsilon: float = Field(ge=0.0, allow_inf_nan=False, description="composed epsilon spent")
    delta: float = Field(gt=0.0, lt=1.0)
    target_epsilon: float = Field(gt=0.0, allow_inf_nan=False)
    unit: Literal["segment"] = "segment"
    adjacency: str = "add/remove one segment's whole data"
    accountant: str = "rdp (opacus)"
    sample_rate: float = Field(gt=0.0, le=1.0)
    steps: int = Field(ge=1, description="DP-SGD steps planned")
    steps_run: int = Field(ge=0, description="DP-SGD steps run (charged)")
    clip: float = Field(gt=0.0, allow_inf_nan=False)
    sgd_noise_multiplier: float = Field(gt=0.0, allow_inf_nan=False)
    stats_releases: int = Field(ge=0)
    stats_noise_multiplier: float = Field(ge=0.0, allow_inf_nan=False)
    stats_share: float = Field(gt=0.0, lt=1.0)
    n_segments: int = Field(ge=1, description="training segments (treated as public)")
    covered: list[str] = Field(default_factory=list)
    not_covered: list[str] = Field(default_factory=list)


class ArtifactMeta(BaseModel):
    """Metadata of a policy artifact (``meta.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1, 2] = ARTIFACT_SCHEMA_VERSION
    version: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._+\-]+$")
    kind: Literal["ads", "retention"] = "ads"
    dx: int = Field(ge=1, le=4096)
    da: int = Field(ge=0, le=4096)
    d: int = Field(ge=2, le=1024, description="feature dimension including the constant")
    hidden: int = Field(ge=1, le=8192)
    likelihood: Literal["gaussian", "bernoulli"] = "gaussian"
    d_raw: int = Field(default=0, ge=0, le=8192, description="raw standardised inputs appended to phi")
    raw_interactions: bool = Field(default=False, description="the raw skip includes context x candidate products")
    serving: ServingSpec = ServingSpec()
    reward: RewardSpec = RewardSpec()
    created_at: datetime
    training_data: TrainingDataSummary
    metrics: dict[str, float] = Field(default_factory=dict)
    curves: dict[str, list[float]] = Field(
        default_factory=dict, description="per-epoch learning curves, e.g. train_nll / heldout_nll"
    )
    config: dict[str, Any] = Field(default_factory=dict, description="the training configuration")
    report: dict[str, Any] = Field(
        default_factory=dict, description="what training measured on held-out segments against its baselines"
    )
    dp: DPRecord | None = Field(default=None, description="the differential-privacy guarantee, None: not DP")

    @field_validator("created_at")
    @classmethod
    def _tz_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("created_at must be timezone-aware")
        return value

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        for key, v in value.items():
            if not np.isfinite(v):
                raise ValueError(f"metric {key!r} is not finite: {v}")
        return value


def now_utc() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True, eq=False)
class PolicyArtifact:
    """A trained policy: the feature map ``phi``, the Gaussian prior over segment heads, the metadata.

    Arrays are float64 and C-contiguous after construction (``__post_init__`` converts and validates).

    Attributes
    ----------
    w1 : float64[dx + da, hidden]   first layer, input standardisation folded in
    b1 : float64[hidden]
    w2 : float64[hidden, d - 1]
    b2 : float64[d - 1]
    prior_mean : float64[d]          mu0
    prior_cov : float64[d, d]        Sigma0, symmetric positive definite
    noise_var : float                reward noise variance, > 0 (gaussian likelihood)
    meta : ArtifactMeta
    raw_mean, raw_sd : float64[dx + da] or None     the raw skip's standardisation (``meta.d_raw > 0``)
    item_ids : int64[M] or None      sorted ids with a pooled offset ``item_mean[M]``
    item_prior_var : float           prior variance of a segment's per-item term (0 = none)
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    prior_mean: np.ndarray
    prior_cov: np.ndarray
    noise_var: float
    meta: ArtifactMeta
    raw_mean: np.ndarray | None = None
    raw_sd: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    item_mean: np.ndarray | None = None
    item_prior_var: float = 0.0

    def __post_init__(self) -> None:
        for name in ARRAY_NAMES[:-1] + ("raw_mean", "raw_sd", "item_mean"):
            if getattr(self, name) is None:
                continue
            raw = getattr(self, name)
            try:
                arr = np.ascontiguousarray(np.asarray(raw, dtype=np.float64))
            except (TypeError, ValueError) as exc:
                raise ArtifactError(f"array {name!r} is not numeric: {exc}") from exc
            object.__setattr__(self, name, arr)
        try:
            noise_var = float(np.asarray(self.noise_var, dtype=np.float64).reshape(()))
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"noise_var must be one number: {exc}") from exc
        object.__setattr__(self, "noise_var", noise_var)
        if self.item_ids is not None:
            ids = np.asarray(self.item_ids)
            if ids.dtype.kind not in "iu":
                raise ArtifactError(f"item_ids must be integers, got {ids.dtype}")
            object.__setattr__(self, "item_ids", np.ascontiguousarray(ids, dtype=np.int64))
        try:
            object.__setattr__(self, "item_prior_var", float(np.asarray(self.item_prior_var).reshape(())))
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"item_prior_var must be one number: {exc}") from exc
        if not isinstance(self.meta, ArtifactMeta):
            raise ArtifactError("meta must be an ArtifactMeta")
        _validate_arrays(self)

    # ------------------------------------------------------------------ properties
    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def d(self) -> int:
        return self.meta.d

    @property
    def d_in(self) -> int:
        return self.meta.dx + self.meta.da

    @property
    def bernoulli(self) -> bool:
        """True when the head is logistic (clicks), False for the gaussian head."""
        return self.meta.likelihood == "bernoulli"

    @property
    def has_items(self) -> bool:
        """True when segments keep per-item terms."""
        return self.item_prior_var > 0.0 and self.meta.serving.item_capacity > 0

    def arrays(self) -> dict[str, np.ndarray]:
        """The numeric content as a dict of arrays (``noise_var`` as a 0-d array; optional ones if set)."""
        out = {name: getattr(self, name) for name in ARRAY_NAMES[:-1]}
        out["noise_var"] = np.asarray(self.noise_var, dtype=np.float64)
        for name in ("raw_mean", "raw_sd", "item_ids", "item_mean"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.item_prior_var > 0.0:
            out["item_prior_var"] = np.asarray(self.item_prior_var, dtype=np.float64)
        return out

    def item_prior_means(self, items: np.ndarray) -> np.ndarray:
        """float64 pooled offsets of ``items`` (any shape; 0 for ids the artifact does not know or -1)."""
        items = np.asarray(items, dtype=np.int64)
        if self.item_ids is None or self.item_ids.size == 0:
            return np.zeros(items.shape)
        at = np.minimum(np.searchsorted(self.item_ids, items), self.item_ids.size - 1)
        hit = self.item_ids[at] == items
        return np.where(hit, self.item_mean[at], 0.0)

    def phi_numpy(self, u: np.ndarray) -> np.ndarray:
        """Readable numpy ``phi(u)`` for ``u[n, dx+da]`` -> ``[n, d]`` (serving uses ``kernels.phi_many``)."""
        u = np.asarray(u, dtype=np.float64)
        h = np.maximum(u @ self.w1 + self.b1, 0.0)
        z = np.tanh(h @ self.w2 + self.b2)
        parts = [z]
        if self.meta.d_raw:
            parts.append(raw_features(u, self.meta.dx, self.raw_mean, self.raw_sd, self.meta.raw_interactions))
        return np.concatenate(parts + [np.ones((z.shape[0], 1))], axis=1)

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``meta.json`` and ``arrays.npz`` into ``directory`` atomically; returns the path.

        The files are written into a fresh temporary sibling directory which then replaces
        ``directory`` (an existing artifact there is replaced as a whole).
        """
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with open(tmp / ARRAYS_FILE, "wb") as fh:
                np.savez(fh, **self.arrays())
                fh.flush()
                os.fsync(fh.fileno())
            with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
                fh.write(self.meta.model_dump_json(indent=2, exclude=None if self.meta.dp is not None else {"dp"}))
                fh.flush()
                os.fsync(fh.fileno())
            if target.exists():
                old = target.parent / f".{target.name}.old-{os.getpid()}"
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "PolicyArtifact":
        """Read and validate an artifact directory; raises :class:`ArtifactError` on any problem."""
        path = Path(directory)
        if not path.is_dir():
            raise ArtifactError(f"artifact directory not found: {path}")
        meta_path, arrays_path = path / META_FILE, path / ARRAYS_FILE
        for p in (meta_path, arrays_path):
            if not p.is_file():
                raise ArtifactError(f"artifact {path} is missing {p.name}")
        try:
            raw_meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{meta_path} is not valid JSON: {exc}") from exc
        try:
            meta = ArtifactMeta.model_validate(raw_meta)
        except ValidationError as exc:
            raise ArtifactError(f"{meta_path} does not match ArtifactMeta: {exc}") from exc
        try:
            with np.load(arrays_path, allow_pickle=False) as npz:
                missing = [n for n in ARRAY_NAMES if n not in npz.files]
                extra = [n for n in npz.files if n not in ARRAY_NAMES + OPTIONAL_ARRAYS]
                if missing or extra:
                    raise ArtifactError(
                        f"{arrays_path} has wrong arrays: missing={missing} unexpected={extra}"
                    )
                arrays = {n: np.array(npz[n]) for n in ARRAY_NAMES + OPTIONAL_ARRAYS if n in npz.files}
        except ArtifactError:
            raise
        except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError ...
            raise ArtifactError(f"{arrays_path} could not be read as npz: {exc}") from exc
        for name, arr in arrays.items():
            if arr.dtype.kind not in "fiu":
                raise ArtifactError(f"array {name!r} has non-numeric dtype {arr.dtype}")
        if arrays["noise_var"].shape not in ((), (1,)):
            raise ArtifactError(f"noise_var must be a scalar, got shape {arrays['noise_var'].shape}")
        return cls(
            w1=arrays["w1"],
            b1=arrays["b1"],
            w2=arrays["w2"],
            b2=arrays["b2"],
            prior_mean=arrays["prior_mean"],
            prior_cov=arrays["prior_cov"],
            noise_var=float(arrays["noise_var"].reshape(())),
            meta=meta,
            raw_mean=arrays.get("raw_mean"),
            raw_sd=arrays.get("raw_sd"),
            item_ids=arrays.get("item_ids"),
            item_mean=arrays.get("item_mean"),
            item_prior_var=float(arrays["item_prior_var"].reshape(())) if "item_prior_var" in arrays else 0.0,
        )


def load_artifact(directory: str | os.PathLike[str]) -> PolicyArtifact:
    """Shorthand for :meth:`PolicyArtifact.load`."""
    return PolicyArtifact.load(directory)


def _validate_arrays(art: PolicyArtifact) -> None:
    meta = art.meta
    d_in, hidden, d, d_raw = meta.dx + meta.da, meta.hidden, meta.d, meta.d_raw
    d_out = d - 1 - d_raw
    want_raw = raw_dim(meta.dx, meta.da, meta.raw_interactions)
    if d_raw not in (0, want_raw):
        raise ArtifactError(f"d_raw must be 0 or {want_raw} (dx={meta.dx}, da={meta.da}, "
                            f"interactions={meta.raw_interactions}), got {d_raw}")
    if d_out < 1:
        raise ArtifactError(f"d={d} leaves no learned features after the raw skip ({d_raw}) and the constant")
    expected = {
        "w1": (d_in, hidden),
        "b1": (hidden,),
        "w2": (hidden, d_out),
        "b2": (d_out,),
        "prior_mean": (d,),
        "prior_cov": (d, d),
    }
    for name, shape in expected.items():
        arr = getattr(art, name)
        if arr.shape != shape:
            raise ArtifactError(
                f"array {name!r} has shape {arr.shape}, expected {shape} "
                f"(dx={meta.dx}, da={meta.da}, hidden={hidden}, d={d})"
            )
        if not np.all(np.isfinite(arr)):
            raise ArtifactError(f"array {name!r} contains NaN or inf")
    if d_raw:
        for name in ("raw_mean", "raw_sd"):
            arr = getattr(art, name)
            if arr is None or arr.shape != (d_in,) or not np.all(np.isfinite(arr)):
                raise ArtifactError(f"d_raw={d_raw} needs a finite {name}[{d_in}]")
        if np.any(art.raw_sd <= 0.0):
            raise ArtifactError("raw_sd must be > 0")
    if (art.item_ids is None) != (art.item_mean is None):
        raise ArtifactError("item_ids and item_mean come together")
    if art.item_ids is not None:
        ids, means = art.item_ids, art.item_mean
        if ids.ndim != 1 or means.shape != ids.shape:
            raise ArtifactError(f"item_ids {ids.shape} and item_mean {means.shape} must be 1-D of one length")
        if ids.size and (np.any(np.diff(ids) <= 0) or ids[0] < 0):
            raise ArtifactError("item_ids must be sorted, distinct and >= 0")
        if not np.all(np.isfinite(means)):
            raise ArtifactError("item_mean contains NaN or inf")
    if not (np.isfinite(art.item_prior_var) and art.item_prior_var >= 0.0):
        raise ArtifactError(f"item_prior_var must be finite and >= 0, got {art.item_prior_var}")
    if not np.isfinite(art.noise_var) or art.noise_var <= 0.0:
        raise ArtifactError(f"noise_var must be finite and > 0, got {art.noise_var}")
    cov = art.prior_cov
    scale = max(float(np.max(np.abs(cov))), 1e-300)
    if not np.allclose(cov, cov.T, rtol=1e-9, atol=1e-12 * scale):
        raise ArtifactError("prior_cov is not symmetric")
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError as exc:
        raise ArtifactError("prior_cov is not positive definite") from exc


def default_version(kind: str, arrays: dict[str, Any]) -> str:
    """``<kind>-<UTC time>-<first 8 hex of a SHA-256 over the arrays>``: an artifact's version when none is given."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(np.ascontiguousarray(np.asarray(arrays[name], dtype=np.float64)).tobytes())
    return f"{kind}-{now_utc().strftime('%Y%m%dT%H%M%SZ')}-{digest.hexdigest()[:8]}"


def jsonable(value: Any) -> Any:
    """``value`` with dict keys as strings and anything not JSON (paths, enums, arrays) as its ``str``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
