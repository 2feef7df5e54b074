"""Random, well-posed inputs for the kernel tests (seeded; shapes are arguments)."""

from __future__ import annotations

import numpy as np


def posterior(rng: np.random.Generator, d: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A random symmetric positive-definite covariance (exactly symmetric) and a mean."""
    a = rng.standard_normal((d, d))
    P = scale * (a @ a.T / d + 0.1 * np.eye(d))
    P = 0.5 * (P + P.T)
    return P, rng.standard_normal(d)


def segments(rng: np.random.Generator, n_seg: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Stacked posteriors ``P[S, d, d]``, ``m[S, d]`` with different scales per segment."""
    pairs = [posterior(rng, d, scale=float(rng.uniform(0.1, 3.0))) for _ in range(n_seg)]
    return np.stack([p for p, _ in pairs]), np.stack([m for _, m in pairs])


def features(rng: np.random.Generator, shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
    """Features shaped like phi: tanh of normals with a trailing constant 1."""
    z = np.tanh(rng.standard_normal(shape))
    z[..., -1] = 1.0
    return np.ascontiguousarray(z, dtype=dtype)


def uniforms(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Uniforms in [0, 1) of shape ``shape + (2,)``."""
    return rng.random((*shape, 2))
