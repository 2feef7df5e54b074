"""One small protocol for every simulated world the adaptation benchmark plays, and its uniform logs.

A *world* is a distribution of tasks (a task is one segment: a market cohort, a shop, a user population)
split into training tasks (their uniform logs train the artifact) and held-out tasks (the benchmark plays
them). Every world answers three questions, vectorised over a batch of requests, one per task row:

- :meth:`World.sample_requests`: a user's context, the K candidate slots (``k_valid`` real ones, the
  rest zero padding), the candidates' identities ``items`` (-1 on padding) and, where the world has
  organic views, how often the user viewed each candidate (``views``);
- :meth:`World.click_prob`: the true probability that each candidate is clicked (0 on padding), which
  gives the oracle and the pseudo-regret;
- :meth:`World.respond`: a Bernoulli click of the shown candidate from one uniform per row.

Requests carry the round index ``t`` (one per row), so worlds whose users drift do so in event time,
the same for every policy. The generator passed to :meth:`World.sample_requests` is consumed identically
whatever the policy did, so every policy can be shown the same requests.

:class:`MarketWorld` adapts :class:`policy.simulator.market.Market` (tasks are its segments, items its
global ad ids, reward = click). :mod:`policy.simulator.recsys` and :mod:`policy.simulator.logistic_worlds`
are the two worlds built to be unlike metacart's own model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from policy.logs import LoggedData
from policy.simulator.market import Market, MarketConfig


@dataclass(frozen=True)
class WorldRequests:
    """A batch of n requests with K candidate slots. Padding slots (``>= k_valid``) are all zeros."""

    tasks: np.ndarray
    """int64[n], the task (segment) of each request."""
    t: np.ndarray
    """int64[n], round index of each request (event time of drifting worlds)."""
    context: np.ndarray
    """float64[n, dx]."""
    candidates: np.ndarray
    """float64[n, K, da]."""
    items: np.ndarray
    """int64[n, K], global identity of each candidate; -1 on padding."""
    k_valid: np.ndarray
    """int64[n], real candidates per request, in [1, K]."""
    views: np.ndarray | None = None
    """int64[n, K], the user's organic views of each candidate in this session (None: no views)."""
    latent: np.ndarray | None = None
    """World-private state of each row needed by :meth:`World.click_prob` (e.g. user ids)."""

    def __len__(self) -> int:
        return int(self.tasks.shape[0])

    def valid_mask(self) -> np.ndarray:
        """bool[n, K], True on real candidates."""
        return np.arange(self.candidates.shape[1])[None, :] < self.k_valid[:, None]


class World(Protocol):
    """What :mod:`metacart.bench.worlds` needs from a world family."""

    name: str
    """Short name used in reports (``"market"``, ``"recsys"``, ``"logistic"``)."""
    segment_names: tuple[str, ...]
    """One name per task; task ``i`` is ``segment_names[i]``."""
    train_tasks: np.ndarray
    """Sorted int64 task indices whose logs train the artifact."""
    heldout_tasks: np.ndarray
    """Sorted int64 task indices never trained on (disjoint from ``train_tasks``)."""
    has_views: bool
    """True when requests carry ``views`` (the per-user most-viewed heuristic applies)."""

    def sample_requests(self, tasks: np.ndarray, rng: np.random.Generator, t: np.ndarray | int = 0
                        ) -> WorldRequests: ...

    def click_prob(self, requests: WorldRequests) -> np.ndarray: ...


def respond(world: World, requests: WorldRequests, choices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float64[n] Bernoulli clicks of the shown candidates (one uniform per row, whatever the choices)."""
    p = world.click_prob(requests)
    ch = np.asarray(choices, dtype=np.int64)
    if ch.shape != (len(requests),) or np.any(ch < 0) or np.any(ch >= requests.k_valid):
        raise ValueError("choices must be int[n] within each request's valid candidates")
    return (rng.random(ch.shape[0]) < p[np.arange(ch.shape[0]), ch]).astype(np.float64)


def check_tasks(tasks: np.ndarray, n_tasks: int) -> np.ndarray:
    """int64 copy of ``tasks`` after checking it is a 1-D integer array within ``[0, n_tasks)``."""
    seg = np.asarray(tasks)
    if seg.ndim != 1 or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"tasks must be a 1-D integer array, got {seg.dtype} {seg.shape}")
    if seg.size and (seg.min() < 0 or seg.max() >= n_tasks):
        raise ValueError(f"task indices must be in [0, {n_tasks})")
    return seg.astype(np.int64)


def round_index(t: np.ndarray | int, n: int) -> np.ndarray:
    """int64[n] round index from a scalar or an array of n."""
    out = np.broadcast_to(np.asarray(t, dtype=np.int64), (n,)).copy()
    if np.any(out < 0):
        raise ValueError("round indices must be >= 0")
    return out


def split_tasks(n_tasks: int, n_heldout: int, seed_seq: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split into (train, held-out) sorted int64 task indices."""
    if not 1 <= n_heldout < n_tasks:
        raise ValueError(f"need 1 <= n_heldout < n_tasks, got {n_heldout} of {n_tasks}")
    perm = np.random.default_rng(seed_seq).permutation(n_tasks)
    return np.sort(perm[n_heldout:]).astype(np.int64), np.sort(perm[:n_heldout]).astype(np.int64)


def uniform_logs(world: World, tasks: np.ndarray, n_per_task: int, seed: int,
                 dtype: type = np.float32) -> LoggedData:
    """Uniform-random logs of ``n_per_task`` rounds in each of ``tasks`` (rows interleaved across tasks).

    Each task's rows have round indices ``0 .. n_per_task - 1``. The log holds ``candidate_ids`` and
    ``k_valid``; ``reward`` = ``click``; ``propensity`` = 1 / k_valid. Context and candidates are stored
    as ``dtype`` (float32 by default, to keep million-row logs in memory).
    """
    if n_per_task < 1:
        raise ValueError(f"n_per_task must be >= 1, got {n_per_task}")
    tasks = np.asarray(tasks, dtype=np.int64)
    if tasks.ndim != 1 or tasks.size == 0:
        raise ValueError("tasks must be a non-empty 1-D array")
    rng = np.random.default_rng(seed)
    n = tasks.size * n_per_task
    order = rng.permutation(n)
    seg = np.repeat(tasks, n_per_task)[order]
    t = np.tile(np.arange(n_per_task, dtype=np.int64), tasks.size)[order]
    parts = []
    chunk = 200_000
    for lo in range(0, n, chunk):
        req = world.sample_requests(seg[lo:lo + chunk], rng, t[lo:lo + chunk])
        action = np.floor(rng.random(len(req)) * req.k_valid).astype(np.int64)
        click = respond(world, req, action, rng)
        parts.append((req.context.astype(dtype), req.candidates.astype(dtype), req.items, req.k_valid,
                      action, click))
    cols = [np.concatenate(c) for c in zip(*parts)]
    context, candidates, items, k_valid, action, click = cols
    return LoggedData(
        segment=seg,
        segment_names=tuple(world.segment_names),
        context=context,
        candidates=candidates,
        action=action,
        reward=click,
        propensity=1.0 / k_valid.astype(np.float64),
        click=click,
        candidate_ids=items,
        k_valid=k_valid,
    )


class MarketWorld:
    """:class:`Market` as a :class:`World`: tasks are segments, items the global ad ids, reward a click.

    The market is stationary here (``drift_rate`` of the config is used as given; ``t`` is ignored).
    """

    name = "market"
    has_views = False

    def __init__(self, config: MarketConfig = MarketConfig()) -> None:
        self.market = Market(config)
        self.segment_names = tuple(self.market.segment_names)
        self.train_tasks = self.market.train_segments.copy()
        self.heldout_tasks = self.market.heldout_segments.copy()

    def sample_requests(self, tasks: np.ndarray, rng: np.random.Generator, t: np.ndarray | int = 0
                        ) -> WorldRequests:
        seg = check_tasks(tasks, self.market.n_segments)
        req = self.market.sample_requests(seg, rng)
        n, k = req.ad_ids.shape
        return WorldRequests(tasks=seg, t=round_index(t, n), context=req.context, candidates=req.candidates,
                             items=req.ad_ids.astype(np.int64), k_valid=np.full(n, k, dtype=np.int64))

    def click_prob(self, requests: WorldRequests) -> np.ndarray:
        return self.market.click_prob(requests.tasks, requests.context, requests.candidates)
