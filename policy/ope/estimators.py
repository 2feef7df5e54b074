"""Off-policy estimators as ratios of streamed sums, with 95 % intervals and diagnostics.

For logged rows ``i`` (context ``x_i``, chosen action ``a_i``, logged propensity ``p_i = mu(a_i | x_i)``,
reward ``r_i``), a target policy ``pi`` and a reward model ``q(x, k)``::

    w_i   = pi(a_i | x_i) / p_i                                   importance weight
    IPS   = sum_i w_i r_i / n                                     (Horvitz & Thompson 1952)
    SNIPS = sum_i w_i r_i / sum_i w_i                             self-normalised IPS
    DM    = sum_i sum_k pi(k | x_i) q(x_i, k) / n                 direct method
    DR    = sum_i [DM_i + w_i (r_i - q(x_i, a_i))] / n            doubly robust (Dudik et al. 2011)
    DR-os = sum_i [DM_i + v_i (r_i - q(x_i, a_i))] / n,  v_i = lam w_i / (w_i^2 + lam)
                                                              DR with optimistic shrinkage (Su et al. 2020)

Every estimator is ``V = sum(num) / sum(den)`` of two per-row columns (``den`` = 1 except for SNIPS).
Its asymptotic standard error is the delta method's,
``se^2 = Var(num_i - V den_i) / (n mean(den)^2)``, and a paired difference ``V_a - V_b`` of two
policies on the same rows uses the difference of their influence terms, so the rows' shared noise
cancels. Poisson-bootstrap replicates, when kept, give percentile intervals too.

DR-os picks its shrinkage ``lam`` from a grid by the smallest estimated mean squared error with the bias
replaced by a high-confidence upper bound, ``(|b| + z se(b))^2 + Var``, where ``b`` is the estimate's
distance to DR (unbiased when the logged propensities are right), as Su et al. tune ``lam`` with a bias
bound; the exact bound is ours. The interval of the chosen ``lam`` does not account for its bias or the
choice.

Diagnostics per policy: the effective sample size ``ESS = (sum w)^2 / sum w^2`` (Kish), the share of
the total weight held by the largest 1 % of rows, and a warning when ``ESS < min_ess``.

Target propensities ``pi(k | x)`` of Thompson-sampling policies are Monte-Carlo estimates (the share of
posterior draws that pick ``k``); the estimators use them as ``pi`` as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policy.ope.exceptions import OpeError
from policy.ope.moments import Moments, TopWeights

ESTIMATORS = ("ips", "snips", "dm", "dr", "dr_os")
"""Names of the estimators, in report order."""
Z95 = 1.959963984540054
DROS_LAMBDAS = tuple(float(4.0**j) for j in range(-2, 11))
"""Shrinkage grid of DR-os (``lam`` from 1/16 to ~1e6; ``lam -> inf`` is DR, also a candidate)."""
LOGGED = "__logged__"


def policy_columns(name: str) -> list[str]:
    """The per-row columns a policy ``name`` contributes (see :func:`policy_rows`)."""
    return [f"{name}|w", f"{name}|ips", f"{name}|dm", f"{name}|dr"] + [
        f"{name}|dros{j}" for j in range(len(DROS_LAMBDAS))
    ]


def shared_columns() -> list[str]:
    """Columns every evaluation has: the constant 1 and the logged reward."""
    return ["one", "reward"]


def policy_rows(pi: np.ndarray, action: np.ndarray, propensity: np.ndarray, reward: np.ndarray,
                q: np.ndarray | None) -> np.ndarray:
    """Per-row columns of one target policy, float[n, len(policy_columns(...))].

    Parameters
    ----------
    pi : float[n, K]
        Target action distribution on each row (padding slots 0).
    action : int[n]
        Logged action.
    propensity : float[n]
        Logged propensity of ``action``.
    reward : float[n]
        Observed reward.
    q : float[n, K] or None
        Reward model predictions (None: 0, so DM = 0 and DR = IPS).
    """
    n = action.shape[0]
    rows = np.arange(n)
    w = pi[rows, action] / propensity
    if q is None:
        q = np.zeros_like(pi)
    dm = np.einsum("ik,ik->i", pi, q)
    resid = reward - q[rows, action]
    lam = np.asarray(DROS_LAMBDAS)[None, :]
    shrunk = lam * w[:, None] / (w[:, None] ** 2 + lam)
    cols = [w, w * reward, dm, dm + w * resid]
    return np.column_stack(cols + [dm[:, None] + shrunk * resid[:, None]])


@dataclass(frozen=True)
class Estimate:
    """One estimate: value, 95 % interval (asymptotic; bootstrap when kept), standard error, ESS."""

    value: float
    lo: float
    hi: float
    se: float
    ess: float
    boot_lo: float | None = None
    boot_hi: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, float | str | None]:
        out: dict[str, float | str | None] = {"value": self.value, "lo": self.lo, "hi": self.hi,
                                             "se": self.se, "ess": self.ess}
        if self.boot_lo is not None:
            out["boot_lo"], out["boot_hi"] = self.boot_lo, self.boot_hi
        if self.detail:
            out["detail"] = self.detail
        return out


class Summary:
    """Estimates read off a :class:`Moments` holding :func:`shared_columns` and each policy's columns."""

    def __init__(self, moments: Moments, alpha: float = 0.05) -> None:
        if not 0.0 < alpha < 1.0:
            raise OpeError(f"alpha must be in (0, 1), got {alpha}")
        self.m = moments
        self.z = Z95 if alpha == 0.05 else _normal_quantile(1.0 - alpha / 2.0)
        self.alpha = alpha
        self._mean = moments.mean()
        self._cov = moments.cov()

    # ------------------------------------------------------------------ building blocks
    def _ratio(self, num: str, den: str) -> tuple[float, np.ndarray]:
        """``(V, g)``: the estimate and its influence coefficients (``Var(V) = g' C g / n``)."""
        a, b = self.m.col(num), self.m.col(den)
        md = self._mean[b]
        if md <= 0.0:
            raise OpeError(f"{den!r} sums to {self.m.s1[b]}: the target never takes a logged action")
        v = float(self._mean[a] / md)
        g = np.zeros(len(self.m.columns))
        g[a] += 1.0 / md
        g[b] -= v / md
        return v, g

    def _se(self, g: np.ndarray) -> float:
        return math.sqrt(max(float(g @ self._cov @ g), 0.0) / self.m.n)

    def _boot(self, num: str, den: str) -> np.ndarray | None:
        if not self.m.n_bootstrap:
            return None
        a, b = self.m.col(num), self.m.col(den)
        den_b = self.m.boot_s1[:, b]
        return np.where(den_b > 0, self.m.boot_s1[:, a] / np.where(den_b > 0, den_b, 1.0), np.nan)

    def _pair(self, policy: str, estimator: str) -> tuple[str, str]:
        if policy == LOGGED:
            return "reward", "one"
        if estimator == "dr_os":
            return f"{policy}|dros{self.dros_index(policy)}", "one"
        try:
            return {"ips": (f"{policy}|ips", "one"), "snips": (f"{policy}|ips", f"{policy}|w"),
                    "dm": (f"{policy}|dm", "one"), "dr": (f"{policy}|dr", "one")}[estimator]
        except KeyError:
            raise OpeError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}") from None

    # ------------------------------------------------------------------ public
    def dros_index(self, policy: str) -> int | None:
        """Index into ``DROS_LAMBDAS`` of DR-os's shrinkage for ``policy`` (None: plain DR is best)."""
        dr = self.m.col(f"{policy}|dr")
        best, best_mse = None, float(self._cov[dr, dr]) / self.m.n
        for j in range(len(DROS_LAMBDAS)):
            c = self.m.col(f"{policy}|dros{j}")
            bias = float(self._mean[c] - self._mean[dr])
            var_bias = float(self._cov[c, c] - 2 * self._cov[c, dr] + self._cov[dr, dr]) / self.m.n
            bound = abs(bias) + self.z * math.sqrt(max(var_bias, 0.0))
            mse = bound * bound + float(self._cov[c, c]) / self.m.n
            if mse < best_mse:
                best, best_mse = j, mse
        return best

    def ess(self, policy: str) -> float:
        """Kish effective sample size of the policy's importance weights (n for the logged policy)."""
        if policy == LOGGED:
            return float(self.m.n)
        j = self.m.col(f"{policy}|w")
        s2 = self.m.s2[j, j]
        return float(self.m.s1[j] ** 2 / s2) if s2 > 0 else 0.0

    def estimate(self, policy: str, estimator: str) -> Estimate:
        """The estimate of ``policy``'s value (``LOGGED``: the logging policy's, on-policy)."""
        if estimator == "dr_os" and policy != LOGGED and self.dros_index(policy) is None:
            num, den = f"{policy}|dr", "one"
        else:
            num, den = self._pair(policy, estimator)
        v, g = self._ratio(num, den)
        se = self._se(g)
        boot = self._boot(num, den)
        blo = bhi = None
        if boot is not None:
            blo, bhi = _percentiles(boot, self.alpha)
        detail = ""
        if estimator == "dr_os" and policy != LOGGED:
            j = self.dros_index(policy)
            detail = "lambda=inf (plain DR)" if j is None else f"lambda={DROS_LAMBDAS[j]:g}"
        return Estimate(v, v - self.z * se, v + self.z * se, se, self.ess(policy), blo, bhi, detail)

    def difference(self, policy_a: str, policy_b: str, estimator: str) -> Estimate:
        """Paired estimate of ``V(a) - V(b)`` on the same rows (either may be ``LOGGED``)."""
        pairs = []
        for p in (policy_a, policy_b):
            if estimator == "dr_os" and p != LOGGED and self.dros_index(p) is None:
                pairs.append((f"{p}|dr", "one"))
            else:
                pairs.append(self._pair(p, estimator))
        (va, ga), (vb, gb) = (self._ratio(*pairs[0]), self._ratio(*pairs[1]))
        se = self._se(ga - gb)
        d = va - vb
        ba, bb = self._boot(*pairs[0]), self._boot(*pairs[1])
        blo = bhi = None
        if ba is not None and bb is not None:
            blo, bhi = _percentiles(ba - bb, self.alpha)
        ess = min(self.ess(policy_a), self.ess(policy_b))
        return Estimate(d, d - self.z * se, d + self.z * se, se, ess, blo, bhi)


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    ok = values[np.isfinite(values)]
    if ok.size < 2:
        return None, None
    lo, hi = np.quantile(ok, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF by bisection on ``erf`` (only for alpha other than 0.05)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def top_share(top: TopWeights, moments: Moments, policy: str, fraction: float = 0.01) -> float:
    """Share of the policy's total importance weight held by its largest ``fraction`` of rows."""
    total = moments.s1[moments.col(f"{policy}|w")]
    count = max(1, int(math.ceil(fraction * moments.n)))
    return float(top.top_sum(count) / total) if total > 0 else float("nan")


def estimate_arrays(
    reward: np.ndarray,
    propensity: np.ndarray,
    action: np.ndarray,
    targets: dict[str, np.ndarray],
    q: np.ndarray | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> Summary:
    """Every estimator for in-memory arrays: ``targets`` maps a name to its ``pi`` (float[n, K]).

    A convenience over :class:`Moments` for logs that fit in memory (tests, the benchmark).
    """
    reward = np.asarray(reward, dtype=np.float64)
    propensity = np.asarray(propensity, dtype=np.float64)
    action = np.asarray(action, dtype=np.int64)
    n = reward.shape[0]
    if propensity.shape != (n,) or action.shape != (n,):
        raise OpeError(f"reward, propensity and action must all be [n={n}]")
    names: list[str] = shared_columns()
    blocks = [np.ones(n), reward]
    for name, pi in targets.items():
        pi = np.asarray(pi, dtype=np.float64)
        if pi.ndim != 2 or pi.shape[0] != n:
            raise OpeError(f"target {name!r}: pi must be [n={n}, K], got {pi.shape}")
        names += policy_columns(name)
        blocks.append(policy_rows(pi, action, propensity, reward, q))
    moments = Moments(names, n_bootstrap=n_bootstrap, seed=seed)
    moments.add_many(np.column_stack(blocks))
    return Summary(moments)


def check_names(names: Sequence[str]) -> None:
    """Policy names must be non-empty, distinct, and free of ``|`` (the column separator)."""
    if len(set(names)) != len(names):
        raise OpeError("policy names must be distinct")
    for n in names:
        if not n or "|" in n or n == LOGGED:
            raise OpeError(f"bad policy name {n!r}")
