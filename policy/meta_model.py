"""The meta-model ``policy.train`` fits (torch): ``phi``, the Gaussian prior over segment heads, the noise, and
the two likelihoods its heads integrate out of.

The model (docs/ARCHITECTURE.md): ``reward = w_s . phi(x, a) + e``, ``e ~ N(0, noise_var)``, with one head
``w_s ~ N(mu0, Sigma0)`` per segment. For a Gaussian linear head the head integrates out in closed form, so
``phi``, ``mu0``, ``Sigma0`` and ``noise_var`` are fitted by gradient descent on a likelihood in which the
segment heads never appear as parameters (ALPaCA, Harrison, Sharma & Pavone 2018; the prior then drives
Thompson sampling as in Meta-Thompson Sampling, Kveton et al. 2021).

Two objectives (``TrainConfig.objective``), both computed with d×d matrices only:

``"predictive"`` (ALPaCA-style, :func:`predictive_nll`)
    For each sampled segment, shuffle ``n`` of its rows, take the first ``c`` (``c`` uniform in
    ``[0, n)``) as *context*, condition the head on them and score the remaining *query* rows by the
    posterior predictive ``N(phi^T m_c, noise_var + phi^T P_c phi)``. This trains exactly what online
    adaptation uses: predictions after a few observations.
``"marginal"`` (:func:`marginal_nll`)
    The segment's exact log marginal likelihood ``y ~ N(Phi mu0, Phi Sigma0 Phi^T + noise_var I)``,
    evaluated with the matrix determinant lemma and Woodbury identity.

Numerics work in whitened head coordinates ``w = mu0 + L v`` (``Sigma0 = L L^T``, ``v ~ N(0, I)``,
``psi = L^T phi``): the posterior precision of ``v`` is ``I + Psi^T Psi / noise_var`` which is always
well conditioned, and ``log det(Phi Sigma0 Phi^T + s I) = log det(I + Psi^T Psi / s) + n log s``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from policy.train_config import TrainConfig


LOG_2PI = math.log(2.0 * math.pi)



class MetaModel(nn.Module):
    """phi (MLP on standardised inputs) + whitened Gaussian prior + noise, in standardised reward units."""

    def __init__(self, d_in: int, hidden: int, d: int, config: TrainConfig) -> None:
        super().__init__()
        self.lin1 = nn.Linear(d_in, hidden)
        self.lin2 = nn.Linear(hidden, d - 1)
        self.mu0 = nn.Parameter(torch.zeros(d))
        # Sigma0 = L L^T, L lower triangular with a positive (softplus) diagonal.
        self.l_offdiag = nn.Parameter(torch.zeros(d, d))
        inv_softplus = math.log(math.expm1(config.init_prior_std))
        self.l_diag_raw = nn.Parameter(torch.full((d,), inv_softplus))
        self.log_noise = nn.Parameter(torch.tensor(math.log(config.init_noise_var)))
        self.d = d

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.lin2(torch.relu(self.lin1(u))))
        return torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)

    def chol_prior(self) -> torch.Tensor:
        return torch.tril(self.l_offdiag, -1) + torch.diag(nn.functional.softplus(self.l_diag_raw))

    def noise_var(self) -> torch.Tensor:
        return torch.exp(self.log_noise)



def posterior(
    model: MetaModel, phi: torch.Tensor, y: torch.Tensor, ctx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whitened posterior given the context rows ``ctx`` (bool [B, n]).

    Returns ``(psi, resid, chol_lambda, m_v, eta)`` where ``psi = Phi L``, ``resid = y - Phi mu0``,
    ``chol_lambda`` is the Cholesky factor of ``I + Psi_c^T Psi_c / s``, ``m_v = Lambda^-1 eta`` and
    ``eta = Psi_c^T resid_c / s``.
    """
    s = model.noise_var()
    psi = phi @ model.chol_prior()  # [B, n, d]  (row i is (L^T phi_i)^T)
    resid = y - phi @ model.mu0  # [B, n]
    w = ctx.to(phi.dtype)
    psi_c = psi * w.unsqueeze(-1)
    eye = torch.eye(model.d, dtype=phi.dtype, device=phi.device)
    lam = eye + psi_c.transpose(1, 2) @ psi_c / s
    chol = torch.linalg.cholesky(lam)
    eta = (psi_c.transpose(1, 2) @ (resid * w).unsqueeze(-1)) / s  # [B, d, 1]
    m_v = torch.cholesky_solve(eta, chol)  # [B, d, 1]
    return psi, resid, chol, m_v, eta



def predictive_nll(
    model: MetaModel, phi: torch.Tensor, y: torch.Tensor, ctx: torch.Tensor, query: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of query rows' posterior-predictive NLL given the context rows, and the number of query rows."""
    s = model.noise_var()
    psi, resid, chol, m_v, _ = posterior(model, phi, y, ctx)
    mean_resid = (psi @ m_v).squeeze(-1)  # [B, n]
    half = torch.linalg.solve_triangular(chol, psi.transpose(1, 2), upper=False)  # [B, d, n]
    var = s + (half * half).sum(dim=1)
    nll = 0.5 * (LOG_2PI + torch.log(var) + (resid - mean_resid) ** 2 / var)
    q = query.to(phi.dtype)
    return (nll * q).sum(), q.sum()



def marginal_nll(
    model: MetaModel, phi: torch.Tensor, y: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over segments of the negative log marginal likelihood, and the number of rows."""
    s = model.noise_var()
    _, resid, chol, m_v, eta = posterior(model, phi, y, valid)
    w = valid.to(phi.dtype)
    n_rows = w.sum(dim=1)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1) + n_rows * torch.log(s)
    quad = (resid * resid * w).sum(dim=1) / s - (eta * m_v).sum(dim=(1, 2))
    nll = 0.5 * (n_rows * LOG_2PI + logdet + quad)
    return nll.sum(), n_rows.sum()
