"""The uplift head of the retention policy: treatment-effect features and their meta-learned prior (torch-free).

Retention rewards are mostly *whether a user comes back at all*; the treatment effect is a small part of
their variance, so a representation trained on the raw reward spends itself on the baseline (measured:
0.44 of the oracle's incremental value, ``metacart bench retention``). This head separates the two
explicitly, in the shared model ``reward = w_s . phi(x, a) + noise`` that the :class:`policy.adapter.Adapter`
adapts online::

    phi(x, a) = [ f(z),                     baseline: what the user is worth without treatment
                  1[a = k] f(z),  k = 1..4  treatment-effect slopes, one block per treatment
                  1[a = k] c,     k = 1..4  treatment-effect intercepts
                  1 ]                       the shared bias
    z = (x - mean) / sd,   f(z) = tanh(slope * z)   (soft-clipped standardised features)

so for every user ``w . phi(x, a) - w . phi(x, none)`` is exactly the treatment-effect part of ``a``:
the baseline and the bias cancel and cannot leak into the uplift (an explicit treatment-effect head, the
S-learner with interactions of Kunzel et al. 2019 "Metalearners for estimating heterogeneous treatment
effects", PNAS). The features are built by the artifact's own MLP layout (``h = relu(W1 u + b1)``,
``phi = [tanh(W2 h + b2), 1]``) with fixed weights: ``1[a = k] z_j`` is ``relu(z_j + M a_k - M) -
relu(-z_j + M a_k - M)`` for ``|z_j| < M``, so serving, the kernels and the state layout are the ones
that place ads.

The prior over ``w_s`` is meta-learned on the training segments by maximising their marginal likelihood
(type-II maximum likelihood, the EM algorithm of a Gaussian random-effects model): a shared mean ``mu0``
(the pooled fit), a diagonal between-segment covariance ``Sigma0`` (how much each coefficient differs from
segment to segment) and one noise variance. A new segment starts at ``N(mu0, Sigma0)`` and learns its own
treatment gains from its outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policy.artifact import ArtifactMeta, PolicyArtifact, RewardSpec, TrainingDataSummary, now_utc
from policy.logs import LoggedData
from policy.retention.features import DX
from policy.retention.schema import DA, K, treatment_encoding

N_TREATED = K - 1
"""Treatments other than none (each gets a block of slopes and an intercept)."""
D_LINEAR = DX + N_TREATED * DX + N_TREATED + 1
"""Feature dimension of the uplift head without learned effects, the constant included."""


def dimension(effects: "EffectNet | None", shared: "dict[str, np.ndarray] | None" = None) -> int:
    """Feature dimension of the head: ``D_LINEAR``, plus the learned effects (one per treatment and the
    baseline), plus the outputs of a shared learned ``phi`` (:func:`policy.train.train`'s MLP, without its
    constant)."""
    return (D_LINEAR + (0 if effects is None else effects.n_features)
            + (0 if shared is None else int(shared["w2"].shape[1])))
_BIG = 1.0e3
"""Gate offset ``M``: standardised features are far inside ``(-M, M)``."""


@dataclass(frozen=True)
class EffectNet:
    """Learned treatment effects ``tau_k(z) = v_k . relu(W_k^T z + c_k) + e_k`` (k = 1..4), trained offline.

    Attributes
    ----------
    w : float64[N_TREATED, DX, H]
    c : float64[N_TREATED, H]
    v : float64[N_TREATED, H]
    e : float64[N_TREATED]
    scale : float     ``phi`` holds ``tanh(scale * tau_k(z))`` for the candidate's treatment ``k``
    baseline : (w[DX, Hb], c[Hb], v[Hb], e) or None
        The trained untreated outcome ``b(z) = v . relu(w^T z + c) + e``; when given, ``phi`` also holds
        ``tanh(baseline_scale * (b(z) - e))`` for every candidate (it cancels in every uplift).
    baseline_scale : float
    """

    w: np.ndarray
    c: np.ndarray
    v: np.ndarray
    e: np.ndarray
    scale: float
    baseline: tuple | None = None
    baseline_scale: float = 1.0

    @property
    def n_features(self) -> int:
        return N_TREATED + (0 if self.baseline is None else 1)

    @property
    def baseline_hidden(self) -> int:
        return 0 if self.baseline is None else int(self.baseline[1].shape[0])

    def base(self, z: np.ndarray) -> np.ndarray:
        """float64[n]: ``b(z) - e`` (zeros without a baseline)."""
        if self.baseline is None:
            return np.zeros(z.shape[0])
        w, c, v, _ = self.baseline
        return np.maximum(z @ w + c, 0.0) @ v

    @property
    def hidden(self) -> int:
        return int(self.c.shape[1])

    def tau(self, z: np.ndarray) -> np.ndarray:
        """float64[n, N_TREATED]: ``tau_k(z)`` of standardised features ``z[n, DX]``."""
        h = np.maximum(np.einsum("nd,kdh->nkh", z, self.w) + self.c[None], 0.0)
        return np.einsum("nkh,kh->nk", h, self.v) + self.e[None]


@dataclass(frozen=True)
class UpliftFitConfig:
    """Settings of :func:`fit_uplift_prior`."""

    slope: float = 0.5
    """``f(z) = tanh(slope * z)``: the soft clip of the standardised features."""
    intercept: float = 1.0
    """Value of a treatment's intercept feature when that treatment is the candidate."""
    em_iterations: int = 200
    """EM iterations of the marginal-likelihood fit."""
    tol: float = 1e-7
    """Stop when the relative change of the marginal log likelihood per row falls below this."""
    ridge: float = 1.0
    """Ridge penalty of the pooled least-squares fit that starts EM (keeps it defined when a coefficient
    has no data)."""
    var_floor: float = 1e-6
    """Smallest between-segment variance of a coefficient."""


def network(mean: np.ndarray, sd: np.ndarray, config: UpliftFitConfig | None = None,
            effects: EffectNet | None = None, shared: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The fixed MLP weights ``w1, b1, w2, b2`` of the uplift features (see the module docstring).

    Parameters
    ----------
    mean, sd : float[DX]
        Standardisation of the engagement features (``sd > 0``).

    Returns
    -------
    dict
        ``w1[DX + DA, H]``, ``b1[H]``, ``w2[H, d - 1]``, ``b2[d - 1]`` with ``H = DX + 2 N_TREATED DX +
        N_TREATED`` (+ ``N_TREATED * effects.hidden``) and ``d = dimension(effects)``.
    """
    config = config or UpliftFitConfig()
    mean = np.asarray(mean, dtype=np.float64)
    sd = np.asarray(sd, dtype=np.float64)
    if mean.shape != (DX,) or sd.shape != (DX,) or np.any(sd <= 0):
        raise ValueError(f"mean and sd must be float[{DX}] with sd > 0")
    d_in = DX + DA
    base_hidden = DX + 2 * N_TREATED * DX + N_TREATED
    learned_hidden = 0 if effects is None else N_TREATED * effects.hidden + effects.baseline_hidden
    hidden = base_hidden + learned_hidden + (0 if shared is None else int(shared["b1"].shape[0]))
    d = dimension(effects, shared)
    w1 = np.zeros((d_in, hidden))
    b1 = np.zeros(hidden)
    w2 = np.zeros((hidden, d - 1))
    b2 = np.zeros(d - 1)
    cols = np.arange(DX)
    # z_j = (x_j - mean_j) / sd_j, as rows of w1 and b1 for the unit that reads +z or -z
    scale = 1.0 / sd
    shift = -mean / sd
    # baseline block: h = z_j + M (always positive), out = slope * (h - M)
    w1[cols, cols] = scale
    b1[cols] = shift + _BIG
    w2[cols, cols] = config.slope
    b2[cols] = -config.slope * _BIG
    for k in range(N_TREATED):
        gate = DX + 1 + k  # the one-hot column of treatment k + 1 in u = [x, a]
        pos = DX + 2 * k * DX + cols
        neg = pos + DX
        out = DX + k * DX + cols
        w1[cols, pos] = scale
        w1[cols, neg] = -scale
        w1[gate, pos] = _BIG
        w1[gate, neg] = _BIG
        b1[pos] = shift - _BIG
        b1[neg] = -shift - _BIG
        w2[pos, out] = config.slope
        w2[neg, out] = -config.slope
        unit = DX + 2 * N_TREATED * DX + k
        w1[gate, unit] = 1.0
        w2[unit, DX + N_TREATED * DX + k] = config.intercept
        if effects is not None:
            # gated hidden units relu(W_k^T z + c_k + M a_k - M), read by output D_LINEAR - 1 + k
            units = base_hidden + k * effects.hidden + np.arange(effects.hidden)
            out_k = D_LINEAR - 1 + k
            w1[:DX, units] = effects.w[k] * scale[:, None]
            w1[gate, units] = _BIG
            b1[units] = effects.c[k] + shift @ effects.w[k] - _BIG
            w2[units, out_k] = effects.scale * effects.v[k]
            w2[unit, out_k] = effects.scale * effects.e[k]  # the gated intercept unit carries e_k
    if effects is not None and effects.baseline is not None:
        bw, bc, bv, _ = effects.baseline
        units = base_hidden + N_TREATED * effects.hidden + np.arange(effects.baseline_hidden)
        w1[:DX, units] = bw * scale[:, None]
        b1[units] = bc + shift @ bw
        w2[units, D_LINEAR - 1 + N_TREATED] = effects.baseline_scale * bv
    if shared is not None:
        # the shared phi's own units, reading u = [x, a] as it does in its artifact
        units = base_hidden + learned_hidden + np.arange(shared["b1"].shape[0])
        outs = dimension(effects) - 1 + np.arange(shared["w2"].shape[1])
        w1[:, units] = shared["w1"]
        b1[units] = shared["b1"]
        w2[np.ix_(units, outs)] = shared["w2"]
        b2[outs] = shared["b2"]
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


def features_reference(x: np.ndarray, action: np.ndarray, mean: np.ndarray, sd: np.ndarray,
                       config: UpliftFitConfig | None = None, effects: EffectNet | None = None,
                       shared: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Readable numpy ``phi(x, a)`` (float64[n, d]) for users ``x[n, DX]`` and treatments ``action[n]``."""
    config = config or UpliftFitConfig()
    x = np.asarray(x, dtype=np.float64)
    action = np.asarray(action, dtype=np.int64)
    z = (x - mean) / sd
    f = np.tanh(config.slope * z)
    n = x.shape[0]
    phi = np.zeros((n, dimension(effects, shared)))
    if shared is not None:
        u = np.hstack([x, treatment_encoding()[action]])
        h = np.maximum(u @ shared["w1"] + shared["b1"], 0.0)
        phi[:, dimension(effects) - 1:-1] = np.tanh(h @ shared["w2"] + shared["b2"])
    if effects is not None:
        tau = np.tanh(effects.scale * effects.tau(z))
        for k in range(N_TREATED):
            on = action == k + 1
            phi[on, D_LINEAR - 1 + k] = tau[on, k]
        if effects.baseline is not None:
            phi[:, D_LINEAR - 1 + N_TREATED] = np.tanh(effects.baseline_scale * effects.base(z))
    phi[:, :DX] = f
    for k in range(N_TREATED):
        on = action == k + 1
        phi[on, DX + k * DX: DX + (k + 1) * DX] = f[on]
        phi[on, DX + N_TREATED * DX + k] = np.tanh(config.intercept)
    phi[:, -1] = 1.0
    return phi


@dataclass(frozen=True)
class PriorFit:
    """The marginal-likelihood fit of the head prior."""

    prior_mean: np.ndarray
    prior_var: np.ndarray
    noise_var: float
    loglik_per_row: float
    iterations: int
    segments: np.ndarray
    """int64[S]: the segment ids of the rows, in the order of ``segment_means``."""
    segment_means: np.ndarray
    """float64[S, d]: each training segment's posterior mean of its head under the fitted prior."""


def _sufficient(phi: np.ndarray, reward: np.ndarray, segment: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    segs = np.unique(segment)
    d = phi.shape[1]
    a = np.empty((segs.size, d, d))
    b = np.empty((segs.size, d))
    rr = np.empty(segs.size)
    n = np.empty(segs.size)
    for i, s in enumerate(segs):
        rows = segment == s
        p, r = phi[rows], reward[rows]
        a[i], b[i], rr[i], n[i] = p.T @ p, p.T @ r, r @ r, rows.sum()
    return a, b, rr, n


def em_prior(phi: np.ndarray, reward: np.ndarray, segment: np.ndarray,
             config: UpliftFitConfig | None = None) -> PriorFit:
    """Type-II maximum likelihood of ``w_s ~ N(mu0, diag(v))``, ``r = w_s . phi + N(0, s2)`` over segments.

    EM on the random effects: E-step ``P_s = (diag(1/v) + A_s / s2)^-1``, ``m_s = P_s (mu0 / v + b_s / s2)``
    with ``A_s = Phi_s^T Phi_s``, ``b_s = Phi_s^T r_s``; M-step ``mu0 = mean_s m_s``, ``v = mean_s (diag P_s + (m_s - mu0)^2)`` floored, ``s2 = sum_s
    (|r_s - Phi_s m_s|^2 + tr(A_s P_s)) / N``.
    """
    config = config or UpliftFitConfig()
    a, b, rr, n = _sufficient(np.asarray(phi, dtype=np.float64), np.asarray(reward, dtype=np.float64),
                              np.asarray(segment))
    n_seg, d = b.shape
    total = float(n.sum())
    pooled_a, pooled_b = a.sum(axis=0), b.sum(axis=0)
    s2 = float(np.var(reward))
    mu0 = np.linalg.solve(pooled_a + config.ridge * np.eye(d), pooled_b)
    v = np.full(d, max(float(np.mean(mu0**2)), config.var_floor))
    last = -np.inf
    it = 0
    loglik = -np.inf
    for it in range(1, config.em_iterations + 1):
        m = np.empty((n_seg, d))
        pdiag = np.empty((n_seg, d))
        resid = 0.0
        loglik = 0.0
        for i in range(n_seg):
            prec = np.diag(1.0 / v) + a[i] / s2
            chol = np.linalg.cholesky(prec)
            p = np.linalg.inv(prec)
            m[i] = p @ (mu0 / v + b[i] / s2)
            pdiag[i] = np.diag(p)
            fit = rr[i] - 2.0 * m[i] @ b[i] + m[i] @ a[i] @ m[i]
            resid += fit + float(np.sum(a[i] * p))
            # log marginal likelihood of segment i (Gaussian, via the matrix determinant lemma)
            dm = m[i] - mu0
            loglik += -0.5 * (n[i] * np.log(2 * np.pi * s2) + 2.0 * np.log(np.diag(chol)).sum()
                              + np.log(v).sum() + fit / s2 + dm @ (dm / v))
        loglik /= total
        mu0 = m.mean(axis=0)
        v = np.maximum(np.mean(pdiag + (m - mu0) ** 2, axis=0), config.var_floor)
        s2 = max(resid / total, 1e-12)
        if abs(loglik - last) < config.tol * max(1.0, abs(loglik)):
            break
        last = loglik
    return PriorFit(mu0, v, s2, float(loglik), it, np.unique(np.asarray(segment)), m)


def standardisation(context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, sd)`` of the engagement features (a constant column gets sd 1)."""
    x = np.asarray(context, dtype=np.float64)
    sd = x.std(axis=0)
    return x.mean(axis=0), np.where(sd > 1e-8, sd, 1.0)


def fit_uplift_prior(logs: LoggedData, config: UpliftFitConfig | None = None, **kwargs) -> PolicyArtifact:
    """:func:`fit_uplift_head`'s artifact alone."""
    return fit_uplift_head(logs, config, **kwargs)[0]


def fit_uplift_head(logs: LoggedData, config: UpliftFitConfig | None = None, version: str | None = None,
                     source: str = "policy.retention.history (randomised treatments)",
                     effects: EffectNet | None = None, mean: np.ndarray | None = None,
                     sd: np.ndarray | None = None, extra_metrics: dict[str, float] | None = None,
                     curves: dict[str, list[float]] | None = None,
                     shared: dict[str, np.ndarray] | None = None) -> tuple[PolicyArtifact, PriorFit]:
    """A ``kind="retention"`` artifact (the uplift features and their prior fitted on ``logs``) and the fit.

    ``logs`` is a randomised treatment history (:mod:`policy.retention.history` layout): context = the
    engagement features, action = the treatment, reward = window value - realised cost.
    """
    config = config or UpliftFitConfig()
    if logs.dx != DX or logs.da != DA:
        raise ValueError(f"retention logs need dx={DX}, da={DA}; got dx={logs.dx}, da={logs.da}")
    x = np.asarray(logs.context, dtype=np.float64)
    if mean is None or sd is None:
        mean, sd = standardisation(x)
    phi = features_reference(x, logs.action, mean, sd, config, effects, shared)
    fit = em_prior(phi, logs.reward, logs.segment, config)
    arrays = network(mean, sd, config, effects, shared)
    seg_present = np.unique(logs.segment)
    meta = ArtifactMeta(
        version=version or f"retention-uplift-{len(logs)}-{seg_present.size}",
        kind="retention",
        dx=DX,
        da=DA,
        d=dimension(effects, shared),
        hidden=int(arrays["b1"].shape[0]),
        reward=RewardSpec(name="value"),
        created_at=now_utc(),
        training_data=TrainingDataSummary(
            source=source, n_events=len(logs), n_segments=int(seg_present.size),
            n_train_segments=int(seg_present.size), n_heldout_segments=0,
            reward_mean=float(logs.reward.mean()), reward_std=float(logs.reward.std()),
        ),
        metrics={"loglik_per_row": fit.loglik_per_row, "em_iterations": float(fit.iterations),
                 "noise_var": fit.noise_var, **(extra_metrics or {})},
        curves=dict(curves or {}),
        config={"head": "uplift", "learned_effects": effects is not None, "shared_phi": shared is not None, "slope": config.slope, "intercept": config.intercept, "ridge": config.ridge,
                "em_iterations": config.em_iterations},
    )
    artifact = PolicyArtifact(prior_mean=fit.prior_mean, prior_cov=np.diag(fit.prior_var), noise_var=fit.noise_var,
                              meta=meta, **arrays)
    return artifact, fit
