"""A recommendation world unlike metacart's model: latent interests, organic views as context, rare clicks.

Built by us in the spirit of RecoGym (Rohde, Bonner, Dunlop, Vasile and Karatzoglou, "RecoGym: A
Reinforcement Learning Environment for the Problem of Product Recommendation in Online Advertising",
2018): users browse products organically, then are shown one recommendation and click it or not; what a
user viewed is the signal, clicks are rare and follow a squashing link of a latent match. No RecoGym code
is used.

A task (one shop) has ``P`` products (``P`` uniform in [``min_products``, ``max_products``]) and a pool of
users. With latent dimension ``L``:

- product ``p`` has a view embedding ``e_p ~ N(0, I_L)``, a view popularity ``pop_p ~ N(0, 0.7^2)``, a
  click embedding ``c_p`` equal to ``e_p``, except for a ``misleading_fraction`` of products whose ``c_p``
  is drawn independently (their clicks do not follow their views), a click bias ``beta_p ~ N(0, 0.5^2)``
  (a per-product effect no feature shows) and a device effect ``gamma_p ~ N(0, 0.4^2)``;
- what the shop knows about a product (its metadata) is ``o_p = 0.6 e_p + N(0, 0.8^2 I_L)`` and
  ``pop_p`` (the observed popularity);
- user ``u`` has interests ``z_u = mu_task + N(0, I_L)`` (``mu_task ~ N(0, 0.6^2 I_L)``) that drift in
  rounds: ``z_u(t) = z_u + drift_sd (cos(w t + phase_u) a_u + sin(w t + phase_u) b_u)`` with
  ``a_u, b_u ~ N(0, I_L)``, ``phase_u`` uniform and a task period ``2 pi / w`` log-uniform in
  ``drift_period``; and a device ``+-1``.

A request is one user after an organic session of ``1 + Poisson(session_mean - 1)`` views, drawn from
``softmax_p(view_scale z_u(t) . e_p / sqrt(L) + pop_p)``. Every product of the task is a candidate
(padding up to ``max_products``). Features::

    context    x = [log(1 + n_views), distinct viewed / n_views, top product's share, device]
    candidate  a = [log(1 + views_p), views_p / n_views, o_p (L values), pop_p]

    P(click) = sigmoid(b_task + click_scale z_u(t) . c_p / sqrt(L) + beta_p + gamma_p device)
    b_task   = click_bias + N(0, 0.3^2)

Calibration, measured on the default config (:func:`calibration`, 200 requests per task of all 220 tasks,
request seed 1): random-candidate CTR 1.96 % (5th–95th percentile over tasks 1.1–3.4 %), oracle CTR
8.3 %, the most-viewed product 5.0 %, misleading products 25 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policy.simulator.world import WorldRequests, check_tasks, round_index, split_tasks


@dataclass(frozen=True)
class RecsysConfig:
    """Everything that defines a recommendation world; equal configs build equal worlds."""

    seed: int = 0
    """Seeds products, users and the train/held-out split."""
    n_tasks: int = 220
    """Number of tasks (shops)."""
    n_heldout: int = 20
    """Tasks held out from training."""
    min_products: int = 10
    max_products: int = 20
    """Products per task, uniform in [min_products, max_products]; every product is a candidate."""
    latent_dim: int = 4
    """Dimension L of interests and embeddings."""
    users_per_task: int = 1000
    session_mean: float = 6.0
    """Mean organic views per request (1 + Poisson(session_mean - 1))."""
    view_scale: float = 1.5
    click_scale: float = 0.7
    click_bias: float = -4.5
    misleading_fraction: float = 0.25
    """Fraction of products whose click embedding is independent of their view embedding."""
    drift_sd: float = 0.5
    """Amplitude of each interest coordinate's drift."""
    drift_period: tuple[float, float] = (2000.0, 20000.0)
    """Range of the tasks' drift periods in rounds (log-uniform)."""


class RecsysWorld:
    """The recommendation world (module docstring); a :class:`policy.simulator.world.World`."""

    name = "recsys"
    has_views = True
    views_column = 0
    """Candidate feature that grows with the user's views of the candidate (``log(1 + views_p)``)."""

    def __init__(self, config: RecsysConfig = RecsysConfig()) -> None:
        c = config
        if not 2 <= c.min_products <= c.max_products:
            raise ValueError("need 2 <= min_products <= max_products")
        if c.latent_dim < 1 or c.users_per_task < 1 or c.session_mean < 1.0:
            raise ValueError("latent_dim, users_per_task must be >= 1 and session_mean >= 1")
        if not 0.0 <= c.misleading_fraction <= 1.0 or c.drift_sd < 0:
            raise ValueError("misleading_fraction must be in [0, 1] and drift_sd >= 0")
        self.config = c
        world_seq, split_seq = np.random.SeedSequence(c.seed).spawn(2)
        rng = np.random.default_rng(world_seq)
        t_count, p_max, lat, u_count = c.n_tasks, c.max_products, c.latent_dim, c.users_per_task
        self.n_products = rng.integers(c.min_products, c.max_products + 1, t_count).astype(np.int64)
        self._valid = np.arange(p_max)[None, :] < self.n_products[:, None]
        e = rng.normal(0.0, 1.0, (t_count, p_max, lat))
        self.misleading = (rng.random((t_count, p_max)) < c.misleading_fraction) & self._valid
        self._e = e
        self._c = np.where(self.misleading[:, :, None], rng.normal(0.0, 1.0, e.shape), e)
        self._pop = rng.normal(0.0, 0.7, (t_count, p_max))
        self._beta = rng.normal(0.0, 0.5, (t_count, p_max))
        self._gamma = rng.normal(0.0, 0.4, (t_count, p_max))
        self._meta = 0.6 * e + rng.normal(0.0, 0.8, e.shape)
        self._bias = c.click_bias + rng.normal(0.0, 0.3, t_count)
        mu = rng.normal(0.0, 0.6, (t_count, lat))
        self._z = mu[:, None, :] + rng.normal(0.0, 1.0, (t_count, u_count, lat))
        self._drift_a = rng.normal(0.0, 1.0, (t_count, u_count, lat))
        self._drift_b = rng.normal(0.0, 1.0, (t_count, u_count, lat))
        self._phase = rng.uniform(0.0, 2.0 * np.pi, (t_count, u_count))
        lo, hi = np.log(c.drift_period[0]), np.log(c.drift_period[1])
        self._omega = 2.0 * np.pi / np.exp(rng.uniform(lo, hi, t_count))
        self._device = np.where(rng.random((t_count, u_count)) < 0.6, 1.0, -1.0)
        self.segment_names = tuple(f"recsys-t{i:03d}" for i in range(t_count))
        self.train_tasks, self.heldout_tasks = split_tasks(t_count, c.n_heldout, split_seq)

    @property
    def dx(self) -> int:
        return 4

    @property
    def da(self) -> int:
        return 3 + self.config.latent_dim

    def interests(self, tasks: np.ndarray, users: np.ndarray, t: np.ndarray) -> np.ndarray:
        """float64[n, L], the users' drifted interests ``z_u(t)``."""
        ang = self._omega[tasks] * t + self._phase[tasks, users]
        drift = np.cos(ang)[:, None] * self._drift_a[tasks, users] + np.sin(ang)[:, None] * self._drift_b[tasks, users]
        return self._z[tasks, users] + self.config.drift_sd * drift

    def sample_requests(self, tasks: np.ndarray, rng: np.random.Generator, t: np.ndarray | int = 0
                        ) -> WorldRequests:
        c = self.config
        seg = check_tasks(tasks, c.n_tasks)
        n, p_max, lat = seg.shape[0], c.max_products, c.latent_dim
        t_row = round_index(t, n)
        users = rng.integers(0, c.users_per_task, n)
        z = self.interests(seg, users, t_row)
        valid = self._valid[seg]
        logit = c.view_scale * np.einsum("nl,npl->np", z, self._e[seg]) / np.sqrt(lat) + self._pop[seg]
        logit = np.where(valid, logit, -np.inf)
        logit -= logit.max(axis=1, keepdims=True)
        pv = np.exp(logit)
        pv /= pv.sum(axis=1, keepdims=True)
        n_views = 1 + rng.poisson(c.session_mean - 1.0, n)
        views = rng.multinomial(n_views, pv).astype(np.int64)
        device = self._device[seg, users]
        share = views / n_views[:, None]
        context = np.column_stack([np.log1p(n_views), (views > 0).sum(axis=1) / n_views, share.max(axis=1), device])
        cand = np.zeros((n, p_max, self.da))
        cand[:, :, 0] = np.log1p(views)
        cand[:, :, 1] = share
        cand[:, :, 2:2 + lat] = self._meta[seg]
        cand[:, :, 2 + lat] = self._pop[seg]
        cand[~valid] = 0.0
        items = np.where(valid, seg[:, None] * p_max + np.arange(p_max)[None, :], -1)
        return WorldRequests(tasks=seg, t=t_row, context=context, candidates=cand, items=items.astype(np.int64),
                             k_valid=self.n_products[seg].copy(), views=np.where(valid, views, 0),
                             latent=np.column_stack([z, device]))

    def click_prob(self, requests: WorldRequests) -> np.ndarray:
        """float64[n, K], the true click probability of every candidate (0 on padding)."""
        seg, lat = requests.tasks, self.config.latent_dim
        z, device = requests.latent[:, :lat], requests.latent[:, lat]
        logit = (self._bias[seg][:, None]
                 + self.config.click_scale * np.einsum("nl,npl->np", z, self._c[seg]) / np.sqrt(lat)
                 + self._beta[seg] + self._gamma[seg] * device[:, None])
        return np.where(self._valid[seg], 1.0 / (1.0 + np.exp(-logit)), 0.0)


def calibration(world: RecsysWorld, per_task: int = 200, seed: int = 1) -> dict[str, float]:
    """Measured CTRs (fractions): random candidate, oracle, most viewed; task 5th/95th percentiles."""
    tasks = np.repeat(np.arange(world.config.n_tasks), per_task)
    req = world.sample_requests(tasks, np.random.default_rng(seed), np.arange(tasks.size) % 5000)
    p = world.click_prob(req)
    random_ctr = p.sum(axis=1) / req.k_valid
    jitter = np.random.default_rng(seed + 1).random(req.views.shape) * 1e-3
    viewed = np.argmax(np.where(req.valid_mask(), req.views + jitter, -1.0), axis=1)
    per_task_random = np.bincount(tasks, random_ctr) / per_task
    return {
        "random_ctr": float(random_ctr.mean()),
        "random_ctr_task_p05": float(np.percentile(per_task_random, 5)),
        "random_ctr_task_p95": float(np.percentile(per_task_random, 95)),
        "oracle_ctr": float(p.max(axis=1).mean()),
        "most_viewed_ctr": float(p[np.arange(p.shape[0]), viewed].mean()),
        "misleading_fraction": float(world.misleading.sum() / world.n_products.sum()),
    }
