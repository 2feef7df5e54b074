"""Churn risk, served without torch: a shared network plus a per-segment offset that adapts online.

Churn means *no purchase in the next outcome window without treatment*. The model::

    logit P(churn | x, s) = g(x) + b_s,   g(x) = v . relu(W^T z + c) + v0,   z = (x - mean) / sd
    b_s ~ N(0, tau2)                                                       (the prior every segment adapts)

``g`` and ``tau2`` are trained offline across segments (:mod:`policy.retention.train`, torch, with the
offsets as random effects). Online, each segment keeps a Gaussian belief ``N(m_s, v_s)`` over its offset,
starting at ``N(0, tau2)``, and updates it on every labelled outcome with one Newton step of the log
posterior (assumed-density filtering)::

    p = sigmoid(g(x) + m_s);   v_s <- 1 / (1 / v_s + p (1 - p));   m_s <- m_s + v_s (y - p)

Predictions integrate the offset uncertainty with the probit approximation
``sigmoid((g + m_s) / sqrt(1 + pi v_s / 8))``.

Files: ``risk.npz`` (arrays) + ``risk.json`` (version, feature names, metrics), written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policy.retention.exceptions import RiskModelError

ARRAYS = ("mean", "sd", "w1", "b1", "w2", "b2", "tau2")
_STATE = struct.Struct("<4sqdd")
_MAGIC = b"MCRK"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(eq=False)
class RiskModel:
    """Churn-risk model with per-segment online offsets (see the module docstring).

    Attributes
    ----------
    mean, sd : float64[dx]      input standardisation
    w1 : float64[dx, H], b1 : float64[H], w2 : float64[H], b2 : float   the shared network g
    tau2 : float                prior variance of a segment offset
    meta : dict                 version, feature names, training metrics
    """

    mean: np.ndarray
    sd: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: float
    tau2: float
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("mean", "sd", "w1", "b1", "w2"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float64))
        self.b2 = float(self.b2)
        self.tau2 = float(self.tau2)
        dx, h = self.w1.shape if self.w1.ndim == 2 else (-1, -1)
        if self.mean.shape != (dx,) or self.sd.shape != (dx,) or self.b1.shape != (h,) or self.w2.shape != (h,):
            raise RiskModelError("risk model arrays have inconsistent shapes")
        arrays = [self.mean, self.sd, self.w1, self.b1, self.w2, np.array([self.b2, self.tau2])]
        if not all(np.all(np.isfinite(a)) for a in arrays) or np.any(self.sd <= 0) or self.tau2 <= 0:
            raise RiskModelError("risk model arrays must be finite, with sd > 0 and tau2 > 0")
        self._offsets: dict[Hashable, list[float]] = {}  # segment -> [m, v, n]

    @property
    def dx(self) -> int:
        return int(self.w1.shape[0])

    # ------------------------------------------------------------------ scoring
    def logit_shared(self, x: np.ndarray) -> np.ndarray:
        """float64[n]: ``g(x)``, the logit before the segment offset."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dx:
            raise RiskModelError(f"risk model expects x [n, {self.dx}], got {x.shape}")
        z = (x - self.mean) / self.sd
        return np.maximum(z @ self.w1 + self.b1, 0.0) @ self.w2 + self.b2

    def _offset_arrays(self, segments: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
        m = np.empty(len(segments))
        v = np.empty(len(segments))
        for i, s in enumerate(segments):
            st = self._offsets.get(s)
            m[i], v[i] = (0.0, self.tau2) if st is None else (st[0], st[1])
        return m, v

    def predict_many(self, segments: Sequence[Hashable], x: np.ndarray) -> np.ndarray:
        """float64[n]: churn probability of each user in its segment."""
        g = self.logit_shared(x)
        if len(segments) != g.shape[0]:
            raise RiskModelError(f"{len(segments)} segments for {g.shape[0]} rows")
        m, v = self._offset_arrays(list(segments))
        return _sigmoid((g + m) / np.sqrt(1.0 + np.pi * v / 8.0))

    def adapt_many(self, segments: Sequence[Hashable], x: np.ndarray, churned: np.ndarray) -> None:
        """Absorb observed outcomes (``churned`` 1/0, of untreated users) into the segment offsets, in order."""
        g = self.logit_shared(x)
        y = np.asarray(churned, dtype=np.float64).reshape(-1)
        if y.shape != g.shape or len(segments) != g.shape[0]:
            raise RiskModelError("segments, x and churned must have one entry per row")
        for s, gi, yi in zip(segments, g, y):
            st = self._offsets.setdefault(s, [0.0, self.tau2, 0])
            p = float(_sigmoid(np.float64(gi + st[0])))
            st[1] = 1.0 / (1.0 / st[1] + p * (1.0 - p))
            st[0] += st[1] * (yi - p)
            st[2] += 1

    def offset(self, segment: Hashable) -> tuple[float, float, int]:
        """The segment's offset belief ``(mean, variance, n_updates)``."""
        st = self._offsets.get(segment)
        return (0.0, self.tau2, 0) if st is None else (st[0], st[1], int(st[2]))

    def evict(self, segment: Hashable) -> bool:
        """Drop a segment's offset from memory (the caller keeps :meth:`state_bytes` to :meth:`load_state` it
        back); an evicted segment seen again starts from the prior offset. False if it held none."""
        return self._offsets.pop(segment, None) is not None

    def state_bytes(self, segment: Hashable) -> bytes:
        m, v, n = self.offset(segment)
        return _STATE.pack(_MAGIC, n, m, v)

    def load_state(self, segment: Hashable, raw: bytes) -> None:
        try:
            magic, n, m, v = _STATE.unpack(raw)
        except struct.error as exc:
            raise RiskModelError(f"bad risk state: {exc}") from exc
        if magic != _MAGIC or n < 0 or not (np.isfinite(m) and np.isfinite(v) and v > 0):
            raise RiskModelError("bad risk state contents")
        self._offsets[segment] = [m, v, n]

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``risk.npz`` and ``risk.json`` into ``directory`` (atomically replaced)."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".risk-", dir=target.parent))
        arrays = {k: np.asarray(getattr(self, k), dtype=np.float64) for k in ARRAYS}
        np.savez(tmp / "risk.npz", **arrays)
        (tmp / "risk.json").write_text(json.dumps(self.meta, sort_keys=True, indent=2))
        if target.exists():
            for name in ("risk.npz", "risk.json"):
                os.replace(tmp / name, target / name)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
        return target

    @staticmethod
    def load(directory: str | os.PathLike[str]) -> "RiskModel":
        path = Path(directory)
        try:
            with np.load(path / "risk.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in ARRAYS}
            meta = json.loads((path / "risk.json").read_text())
        except (OSError, KeyError, ValueError) as exc:
            raise RiskModelError(f"cannot read risk model in {path}: {exc}") from exc
        return RiskModel(
            mean=arrays["mean"],
            sd=arrays["sd"],
            w1=arrays["w1"],
            b1=arrays["b1"],
            w2=arrays["w2"],
            b2=float(arrays["b2"]),
            tau2=float(arrays["tau2"]),
            meta=meta,
        )
