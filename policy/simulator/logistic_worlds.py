"""Synthetic worlds with binary rewards through logistic functions of context and item features.

A family of contextual-bandit tasks of the kind used to evaluate meta-learned bandits (e.g. the
logistic tasks of Kveton et al., "Meta-Thompson Sampling", ICML 2021, and Wan, Ge and Song,
"Metadata-based Multi-Task Bandits with Bayesian Hierarchical Models", NeurIPS 2021); built by us.

With ``dx`` context and ``da`` item features, a world draws one mean interaction matrix
``W_mean ~ N(0, mean_sd^2)`` of shape ``(dx + 1, da + 1)``; each task has

- ``n_items`` items (uniform in [``min_items``, ``max_items``]) with features ``a_i ~ N(0, I_da)`` and an
  idiosyncratic effect ``delta_i ~ N(0, item_effect_sd^2)`` that no feature shows;
- its own ``W_task = W_mean + N(0, task_sd^2)`` and base ``b_task = bias + N(0, 0.3^2)``.

Every round a context ``x ~ N(0, I_dx)`` arrives, every item is a candidate (padding up to
``max_items``), and::

    P(click | x, i) = sigmoid(b_task + scale [x, 1]^T W_task [a_i, 1] / sqrt((dx + 1)(da + 1)) + delta_i)

Calibration, measured on the default config (:func:`calibration`, 200 rounds per task of all 220 tasks,
seed 1): random-item CTR 5.2 % (5th–95th percentile over tasks 2.9–9.2 %), oracle CTR 21 %.
The world is stationary; ``t`` is carried but unused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policy.simulator.world import WorldRequests, check_tasks, round_index, split_tasks


@dataclass(frozen=True)
class LogisticConfig:
    """Everything that defines a logistic world family; equal configs build equal worlds."""

    seed: int = 0
    n_tasks: int = 220
    n_heldout: int = 20
    dx: int = 5
    da: int = 4
    min_items: int = 10
    max_items: int = 20
    bias: float = -4.0
    """Mean base logit of the tasks."""
    scale: float = 1.5
    """Multiplies the normalised bilinear logit."""
    mean_sd: float = 0.6
    """Sd of the shared interaction matrix ``W_mean``."""
    task_sd: float = 0.6
    """Sd of each task's deviation from ``W_mean``."""
    item_effect_sd: float = 0.3


class LogisticWorld:
    """The logistic world family (module docstring); a :class:`policy.simulator.world.World`."""

    name = "logistic"
    has_views = False

    def __init__(self, config: LogisticConfig = LogisticConfig()) -> None:
        c = config
        if not 2 <= c.min_items <= c.max_items or c.dx < 1 or c.da < 1:
            raise ValueError("need 2 <= min_items <= max_items, dx >= 1, da >= 1")
        self.config = c
        world_seq, split_seq = np.random.SeedSequence(c.seed).spawn(2)
        rng = np.random.default_rng(world_seq)
        t_count, i_max = c.n_tasks, c.max_items
        self.n_items = rng.integers(c.min_items, c.max_items + 1, t_count).astype(np.int64)
        self._valid = np.arange(i_max)[None, :] < self.n_items[:, None]
        w_mean = rng.normal(0.0, c.mean_sd, (c.dx + 1, c.da + 1))
        self._w = w_mean + rng.normal(0.0, c.task_sd, (t_count, c.dx + 1, c.da + 1))
        self._bias = c.bias + rng.normal(0.0, 0.3, t_count)
        self._items = np.where(self._valid[:, :, None], rng.normal(0.0, 1.0, (t_count, i_max, c.da)), 0.0)
        self._delta = rng.normal(0.0, c.item_effect_sd, (t_count, i_max))
        self.segment_names = tuple(f"logistic-t{i:03d}" for i in range(t_count))
        self.train_tasks, self.heldout_tasks = split_tasks(t_count, c.n_heldout, split_seq)

    def sample_requests(self, tasks: np.ndarray, rng: np.random.Generator, t: np.ndarray | int = 0
                        ) -> WorldRequests:
        c = self.config
        seg = check_tasks(tasks, c.n_tasks)
        n = seg.shape[0]
        context = rng.normal(0.0, 1.0, (n, c.dx))
        valid = self._valid[seg]
        items = np.where(valid, seg[:, None] * c.max_items + np.arange(c.max_items)[None, :], -1)
        return WorldRequests(tasks=seg, t=round_index(t, n), context=context, candidates=self._items[seg].copy(),
                             items=items.astype(np.int64), k_valid=self.n_items[seg].copy())

    def click_prob(self, requests: WorldRequests) -> np.ndarray:
        """float64[n, K], the true click probability of every item (0 on padding)."""
        c = self.config
        seg = requests.tasks
        n, k = requests.candidates.shape[:2]
        x1 = np.concatenate([requests.context, np.ones((n, 1))], axis=1)
        a1 = np.concatenate([requests.candidates, np.ones((n, k, 1))], axis=2)
        xw = np.einsum("ni,nij->nj", x1, self._w[seg])
        bilinear = np.einsum("nj,nkj->nk", xw, a1) / np.sqrt((c.dx + 1) * (c.da + 1))
        logit = self._bias[seg][:, None] + c.scale * bilinear + self._delta[seg]
        return np.where(self._valid[seg], 1.0 / (1.0 + np.exp(-logit)), 0.0)


def calibration(world: LogisticWorld, per_task: int = 200, seed: int = 1) -> dict[str, float]:
    """Measured CTRs (fractions): random item, oracle; task 5th/95th percentiles of the random CTR."""
    tasks = np.repeat(np.arange(world.config.n_tasks), per_task)
    req = world.sample_requests(tasks, np.random.default_rng(seed))
    p = world.click_prob(req)
    random_ctr = p.sum(axis=1) / req.k_valid
    per_task_random = np.bincount(tasks, random_ctr) / per_task
    return {
        "random_ctr": float(random_ctr.mean()),
        "random_ctr_task_p05": float(np.percentile(per_task_random, 5)),
        "random_ctr_task_p95": float(np.percentile(per_task_random, 95)),
        "oracle_ctr": float(p.max(axis=1).mean()),
    }
