"""The fixed, seeded parameters of a market (``policy.simulator.market``): its constants, how a config's
world is drawn (segment latents, user pools, ad catalogues), and the candidate sampling of requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from policy.simulator.market import MarketConfig

Q = 5
"""Dimension of the segment latent ``theta_s``."""
BASE_DX = 8
BASE_DA = 6
N_CATEGORIES = 12
THETA_MEAN = np.array([0.55, 0.1, 0.25, 0.15, 0.1])
MARKET_SD = 0.3
COHORT_SD = 0.35
IDIO_SD = 0.25
TASK_SD = float(np.sqrt(MARKET_SD**2 + COHORT_SD**2 + IDIO_SD**2))
CLICK_BIAS = -3.55
PURCHASE_BIAS = -3.1
VALUE_SIGMA = 0.5
LOG_PRICE_MEAN = 3.4
LOG_PRICE_SCALE = 0.8
DRIFT_TAU_H = 24.0


@dataclass
class MarketParams:
    """The fixed, seeded parameters of a market, drawn by :func:`build_params`."""

    segment_market: np.ndarray
    segment_cohort: np.ndarray
    theta_base: np.ndarray
    purchase_offset: np.ndarray
    purchase_price_beta: np.ndarray
    users: np.ndarray  # [S, U, 6]: taste(3), tenure, spend, device
    ads: np.ndarray  # [M, n_ads, da]



def check_config(c: MarketConfig) -> None:
    if c.n_markets < 1 or c.n_cohorts < 1:
        raise ValueError("n_markets and n_cohorts must be >= 1")
    if c.dx < BASE_DX or c.da < BASE_DA:
        raise ValueError(f"the market needs dx >= {BASE_DX} and da >= {BASE_DA}, got {c.dx}, {c.da}")
    if not 1 <= c.k_candidates <= c.n_ads:
        raise ValueError(f"k_candidates must be in [1, n_ads], got {c.k_candidates}")
    if not 0.0 <= c.heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {c.heldout_fraction}")
    if c.click_delay_mean_s <= 0 or c.purchase_delay_mean_s <= 0:
        raise ValueError("delay means must be > 0")
    if c.drift_rate < 0:
        raise ValueError("drift_rate must be >= 0")
    if c.users_per_segment < 1:
        raise ValueError("users_per_segment must be >= 1")



def build_params(c: MarketConfig, rng: np.random.Generator) -> MarketParams:
    m_count, c_count = c.n_markets, c.n_cohorts
    s_count = m_count * c_count
    seg_m = np.repeat(np.arange(m_count, dtype=np.int64), c_count)
    seg_c = np.tile(np.arange(c_count, dtype=np.int64), m_count)

    market_eff = rng.normal(0.0, MARKET_SD, (m_count, Q))
    cohort_eff = rng.normal(0.0, COHORT_SD, (c_count, Q))
    idio = rng.normal(0.0, IDIO_SD, (s_count, Q))
    theta = THETA_MEAN + market_eff[seg_m] + cohort_eff[seg_c] + idio

    purchase_offset = (rng.normal(0.0, 0.3, m_count)[seg_m] + rng.normal(0.0, 0.3, c_count)[seg_c])
    price_beta = 0.4 + rng.normal(0.0, 0.25, s_count)

    # Users: cohort centres, shifted a little by market.
    taste_centre = rng.normal(0.0, 0.8, (c_count, 3))
    taste_shift = rng.normal(0.0, 0.3, (m_count, 3))
    tenure_mu = rng.normal(0.0, 0.7, c_count)
    spend_mu = rng.normal(0.0, 0.7, c_count)
    spend_shift = rng.normal(0.0, 0.3, m_count)
    p_mobile = rng.uniform(0.3, 0.9, c_count)
    u_count = c.users_per_segment
    users = np.empty((s_count, u_count, 6))
    users[:, :, 0:3] = (taste_centre[seg_c] + taste_shift[seg_m])[:, None, :] + rng.normal(
        0.0, 0.7, (s_count, u_count, 3)
    )
    users[:, :, 3] = tenure_mu[seg_c][:, None] + rng.normal(0.0, 0.8, (s_count, u_count))
    users[:, :, 4] = (spend_mu[seg_c] + spend_shift[seg_m])[:, None] + rng.normal(0.0, 0.8, (s_count, u_count))
    users[:, :, 5] = np.where(rng.random((s_count, u_count)) < p_mobile[seg_c][:, None], 1.0, -1.0)

    # Catalogues.
    centres = rng.normal(0.0, 1.0, (m_count, N_CATEGORIES, 3))
    centres /= np.linalg.norm(centres, axis=2, keepdims=True)
    cat_price = rng.normal(0.0, 0.6, (m_count, N_CATEGORIES))
    category = rng.integers(0, N_CATEGORIES, (m_count, c.n_ads))
    ads = np.empty((m_count, c.n_ads, c.da))
    rows = np.arange(m_count)[:, None]
    ads[:, :, 0:3] = centres[rows, category] + rng.normal(0.0, 0.25, (m_count, c.n_ads, 3))
    ads[:, :, 3] = cat_price[rows, category] + rng.normal(0.0, 0.7, (m_count, c.n_ads))
    has_discount = rng.random((m_count, c.n_ads)) < 0.4
    ads[:, :, 4] = np.where(has_discount, rng.uniform(0.05, 0.5, (m_count, c.n_ads)), 0.0)
    ads[:, :, 5] = rng.normal(0.0, 1.0, (m_count, c.n_ads))
    if c.da > BASE_DA:
        ads[:, :, BASE_DA:] = rng.normal(0.0, 1.0, (m_count, c.n_ads, c.da - BASE_DA))

    return MarketParams(seg_m, seg_c, theta, purchase_offset, price_beta, users, ads)



def sample_subsets(rng: np.random.Generator, n: int, n_items: int, k: int) -> np.ndarray:
    """K distinct items out of ``n_items`` per row, uniformly over subsets and orders (Floyd's algorithm
    vectorised over rows, then a random order within each row)."""
    limits = np.arange(n_items - k + 1, n_items + 1)  # step i draws from [0, n_items - k + i]
    draws = np.floor(rng.random((n, k)) * limits).astype(np.int64)
    chosen = np.empty((n, k), dtype=np.int64)
    for i in range(k):
        t = draws[:, i]
        taken = (chosen[:, :i] == t[:, None]).any(axis=1)
        chosen[:, i] = np.where(taken, limits[i] - 1, t)
    order = np.argsort(rng.random((n, k)), axis=1)
    return np.take_along_axis(chosen, order, axis=1)
