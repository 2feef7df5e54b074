"""Target policies named on the command line: ``[NAME=]SPEC``.

=========================  ==============================================================================
SPEC                       policy
=========================  ==============================================================================
``uniform``                uniform over the row's real candidates (exact propensities)
``scratch_raw``            per-segment linear Thompson sampling on raw standardised ``[x, a, 1]``, vague
                           prior, adapting by replay (standardisation and noise variance from the log's
                           first chunk)
``ARTIFACT``               the artifact served as the workers serve it (:class:`policy.adapter.Adapter`),
                           frozen: decides from the prior (segments' posteriors never move)
``ARTIFACT@replay``        the same, adapting by replay on the rows where its pick equals the logged one
``pooled@ARTIFACT``        one posterior shared by all segments (learned phi + prior), adapting by replay
``scratch_phi@ARTIFACT``   learned phi, vague prior, per-segment, adapting by replay
=========================  ==============================================================================

Thompson-sampling policies report Monte-Carlo propensities (``n_draws`` posterior draws per row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policy.adapter import Adapter
from policy.artifact import PolicyArtifact
from policy.baselines import RandomPolicy, RawLinearTS, pooled, scratch_phi
from policy.features import build_inputs
from policy.logs import LoggedData
from policy.ope.evaluate import Target
from policy.ope.exceptions import OpeError


@dataclass(frozen=True)
class ServingParams:
    """How the workers serve (``METACART_POLICY__*``): exploration, draws, forgetting, seed."""

    eps: float | None = None  # None: the artifact's trained choice (meta.serving)
    n_draws: int = 64
    forget: float = 1.0
    scale: float | None = None
    seed: int = 0


def raw_standardisation(data: LoggedData, max_rows: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of ``[x, a]`` over the real (non-padding) candidates of ``data``'s first ``max_rows`` rows."""
    data = data.take(np.arange(min(len(data), max_rows)))
    u = build_inputs(data.context, data.candidates).astype(np.float64)
    real = (np.arange(data.k)[None, :] < data.valid_k()[:, None]).reshape(-1)
    return u[real].mean(axis=0), u[real].std(axis=0)


def load_artifact_checked(path: str | Path, dx: int, da: int) -> PolicyArtifact:
    art = PolicyArtifact.load(path)
    if art.meta.dx != dx or art.meta.da != da:
        raise OpeError(f"artifact {path} expects dx={art.meta.dx}, da={art.meta.da}; the log has dx={dx}, da={da}")
    return art


def make_target(spec: str, first_chunk: LoggedData, serving: ServingParams = ServingParams()) -> Target:
    """Build the target named by ``spec`` (grammar in the module docstring)."""
    name, _, body = spec.rpartition("=") if "=" in spec else ("", "", spec)
    p = serving
    dx, da = first_chunk.dx, first_chunk.da
    if body == "uniform":
        return Target(name or "uniform", RandomPolicy(seed=p.seed))
    if body == "scratch_raw":
        mean, sd = raw_standardisation(first_chunk)
        noise = max(float(first_chunk.reward.var()), 1e-3)
        policy = RawLinearTS(mean, sd, noise_var=noise, eps=0.02 if p.eps is None else p.eps, n_draws=p.n_draws,
                             seed=p.seed)
        return Target(name or "scratch_raw", policy, adapt=True)
    kind, sep, path = body.partition("@")
    if sep and kind in ("pooled", "scratch_phi"):
        art = load_artifact_checked(path, dx, da)
        make = pooled if kind == "pooled" else scratch_phi
        return Target(name or kind, make(art, eps=p.eps, n_draws=p.n_draws, seed=p.seed), adapt=True)
    path, sep, mode = body.partition("@")
    if sep and mode != "replay":
        raise OpeError(f"unknown policy spec {spec!r}: after @ only 'replay' is known")
    if not Path(path).is_dir():
        raise OpeError(f"unknown policy {spec!r}: not uniform, scratch_raw, pooled@DIR, scratch_phi@DIR "
                       "or an artifact directory")
    art = load_artifact_checked(path, dx, da)
    adapter = Adapter(art, eps=p.eps, n_draws=p.n_draws, forget=p.forget, scale=p.scale, seed=p.seed)
    default = art.version + ("@replay" if sep else "")
    return Target(name or default, adapter, adapt=bool(sep))
