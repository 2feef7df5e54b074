"""The retention artifact directory: what a worker loads to serve retention (torch-free).

Layout (written by :func:`policy.retention.train.build_artifacts`)::

    <dir>/retention.json   manifest: format, version, the simulated world it was trained on
    <dir>/uplift/          a policy.artifact.PolicyArtifact of kind "retention" (phi + segment-head prior)
    <dir>/risk/            a policy.retention.risk.RiskModel (risk.npz + risk.json)

The manifest's ``world`` block (markets, cohorts, seed, held-out segments, window) lets the live simulator
(:mod:`metacart.live.retention`) play the very segments the artifact never saw. Anything missing or
inconsistent raises :class:`policy.artifact.ArtifactError` naming the part and the fix; so does an artifact
that loads but does not serve (:func:`check_serves`: a probe batch scored before it may serve).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policy.adapter import check_serves as check_uplift_serves
from policy.artifact import ArtifactError, PolicyArtifact
from policy.retention.exceptions import RiskModelError
from policy.retention.features import DX, features_many, new_states, update_many
from policy.retention.risk import RiskModel
from policy.retention.schema import DA, PURCHASE, SESSION, EventBatch, treatment_encoding

MANIFEST = "retention.json"
UPLIFT_DIR = "uplift"
RISK_DIR = "risk"
FORMAT = 1


@dataclass(frozen=True)
class RetentionArtifacts:
    """The loaded retention artifact: uplift policy, churn-risk model, manifest."""

    uplift: PolicyArtifact
    risk: RiskModel
    manifest: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", self.uplift.version))

    @property
    def world(self) -> dict:
        """The simulated world the artifact was trained on (empty for artifacts from real logs)."""
        return dict(self.manifest.get("world", {}))


def save_artifacts(directory: str | os.PathLike[str], uplift: PolicyArtifact, risk: RiskModel,
                   manifest: dict) -> Path:
    """Write the three parts into ``directory`` (each part atomically; the manifest last)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    uplift.save(target / UPLIFT_DIR)
    risk.save(target / RISK_DIR)
    body = {"format": FORMAT, "version": uplift.version, **manifest}
    tmp = target / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True))
    os.replace(tmp, target / MANIFEST)
    return target


def load_artifacts(directory: str | os.PathLike[str]) -> RetentionArtifacts:
    """Load and check a retention artifact directory; raises ``ArtifactError`` with the reason."""
    path = Path(directory)
    hint = ("build one with policy.retention.train.build_artifacts(out_dir) "
            "or point METACART_RETENTION__ARTIFACT at one")
    if not path.is_dir():
        raise ArtifactError(f"no retention artifact directory at {path}: {hint}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"retention artifact {path} has no {MANIFEST}: {hint}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path}: unsupported format {manifest.get('format') if isinstance(manifest, dict) else manifest!r} "
                            f"(this worker reads format {FORMAT})")
    uplift = PolicyArtifact.load(path / UPLIFT_DIR)  # raises ArtifactError itself
    meta = uplift.meta
    if meta.kind != "retention" or meta.dx != DX or meta.da != DA:
        raise ArtifactError(f"{path / UPLIFT_DIR} is a {meta.kind} artifact with dx={meta.dx}, da={meta.da}; "
                            f"retention needs kind=retention, dx={DX}, da={DA}")
    try:
        risk = RiskModel.load(path / RISK_DIR)
    except RiskModelError as exc:
        raise ArtifactError(f"retention artifact {path}: {exc}") from exc
    if risk.dx != DX:
        raise ArtifactError(f"{path / RISK_DIR} expects {risk.dx} features; retention features have {DX}")
    return RetentionArtifacts(uplift, risk, manifest)


def probe_features(n: int = 64, seed: int = 0) -> np.ndarray:
    """float64[n, DX]: engagement features of ``n`` plausible users (seeded sessions and purchases over
    ten weeks), the probe batch of :func:`check_serves`."""
    rng = np.random.default_rng(seed)
    events = 12 * n
    user = rng.integers(0, n, events)
    t = np.sort(rng.uniform(0.0, 70.0, events))
    kind = np.where(rng.random(events) < 0.3, PURCHASE, SESSION)
    value = np.where(kind == PURCHASE, rng.gamma(2.0, 20.0, events), 0.0)
    states = update_many(new_states(n), EventBatch(user, t, kind, value))
    return features_many(states, np.full(n, 70.0 + rng.uniform(0.0, 14.0)))


RISK_LOGIT_LIMIT = 1e3
"""Largest churn logit a probe may get (a probability beyond 1 - 1e-400 is no prediction)."""


def check_serves(artifacts: RetentionArtifacts, n: int = 64, seed: int = 0) -> None:
    """Raise ``ArtifactError`` unless ``artifacts`` serve a probe batch: churn logits finite and within
    ``RISK_LOGIT_LIMIT``, risks in [0, 1],
    the uplift policy's scores, propensities and one learning step finite
    (:func:`policy.adapter.check_serves`, with the treatments as candidates)."""
    x = probe_features(n, seed)
    with np.errstate(all="ignore"):
        try:
            logit = artifacts.risk.logit_shared(x)
            risk = artifacts.risk.predict_many(["probe"] * n, x)
        except (ValueError, ArithmeticError) as exc:
            raise ArtifactError(f"retention artifact {artifacts.version}: the risk model fails on a probe "
                                f"batch: {exc}") from exc
    if not (np.isfinite(logit).all() and (np.abs(logit) <= RISK_LOGIT_LIMIT).all()
            and np.isfinite(risk).all() and ((risk >= 0) & (risk <= 1)).all()):
        raise ArtifactError(f"retention artifact {artifacts.version}: the risk model gives non-finite or "
                            "absurd churn logits on a probe batch")
    enc = treatment_encoding()
    check_uplift_serves(artifacts.uplift, x, np.broadcast_to(enc, (n, *enc.shape)), seed=seed)
