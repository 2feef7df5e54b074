"""The versioned policy artifact: what meta-training writes and serving loads (torch-free).

An artifact is a directory with two files:

``meta.json``
    :class:`ArtifactMeta` (pydantic, frozen, ``extra="forbid"``): version, kind, the feature spec
    (``dx``, ``da``, ``d``, ``hidden``), the reward spec, creation time, a summary of the training
    data and the training metrics.
``arrays.npz``
    float64 arrays ``w1[dx+da, hidden]``, ``b1[hidden]``, ``w2[hidden, d-1]``, ``b2[d-1]`` (the
    feature map ``phi``; input standardisation is folded into ``w1``/``b1``), ``prior_mean[d]``,
    ``prior_cov[d, d]`` and the scalar ``noise_var``.

The model (docs/ARCHITECTURE.md): ``u = [x, a]``, ``h = relu(w1^T u + b1)``, ``z = tanh(w2^T h + b2)``,
``phi = [z, 1]``; a segment's head ``w ~ N(prior_mean, prior_cov)`` and ``reward = w . phi + e``,
``e ~ N(0, noise_var)``.

Both files are written to a temporary directory next to the target and renamed into place, so a reader
never sees half an artifact. :func:`PolicyArtifact.load` checks everything it reads and raises
:class:`ArtifactError` with the reason.
"""

from __future__ import annotations

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

ARTIFACT_SCHEMA_VERSION = 1
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
ARRAY_NAMES = ("w1", "b1", "w2", "b2", "prior_mean", "prior_cov", "noise_var")


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


class ArtifactMeta(BaseModel):
    """Metadata of a policy artifact (``meta.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = ARTIFACT_SCHEMA_VERSION
    version: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._+\-]+$")
    kind: Literal["ads", "retention"] = "ads"
    dx: int = Field(ge=1, le=4096)
    da: int = Field(ge=0, le=4096)
    d: int = Field(ge=2, le=1024, description="feature dimension including the constant")
    hidden: int = Field(ge=1, le=8192)
    reward: RewardSpec = RewardSpec()
    created_at: datetime
    training_data: TrainingDataSummary
    metrics: dict[str, float] = Field(default_factory=dict)
    curves: dict[str, list[float]] = Field(
        default_factory=dict, description="per-epoch learning curves, e.g. train_nll / heldout_nll"
    )
    config: dict[str, Any] = Field(default_factory=dict, description="the training configuration")

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
    noise_var : float                reward noise variance, > 0
    meta : ArtifactMeta
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    prior_mean: np.ndarray
    prior_cov: np.ndarray
    noise_var: float
    meta: ArtifactMeta

    def __post_init__(self) -> None:
        for name in ARRAY_NAMES[:-1]:
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

    def arrays(self) -> dict[str, np.ndarray]:
        """The numeric content as a dict of arrays (``noise_var`` as a 0-d array)."""
        out = {name: getattr(self, name) for name in ARRAY_NAMES[:-1]}
        out["noise_var"] = np.asarray(self.noise_var, dtype=np.float64)
        return out

    def phi_numpy(self, u: np.ndarray) -> np.ndarray:
        """Readable numpy ``phi(u)`` for ``u[n, dx+da]`` -> ``[n, d]`` (serving uses ``kernels.phi_many``)."""
        h = np.maximum(np.asarray(u, dtype=np.float64) @ self.w1 + self.b1, 0.0)
        z = np.tanh(h @ self.w2 + self.b2)
        return np.concatenate([z, np.ones((z.shape[0], 1))], axis=1)

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
                fh.write(self.meta.model_dump_json(indent=2))
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
                extra = [n for n in npz.files if n not in ARRAY_NAMES]
                if missing or extra:
                    raise ArtifactError(
                        f"{arrays_path} has wrong arrays: missing={missing} unexpected={extra}"
                    )
                arrays = {n: np.array(npz[n]) for n in ARRAY_NAMES}
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
        )


def load_artifact(directory: str | os.PathLike[str]) -> PolicyArtifact:
    """Shorthand for :meth:`PolicyArtifact.load`."""
    return PolicyArtifact.load(directory)


def _validate_arrays(art: PolicyArtifact) -> None:
    meta = art.meta
    d_in, hidden, d_out, d = meta.dx + meta.da, meta.hidden, meta.d - 1, meta.d
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
