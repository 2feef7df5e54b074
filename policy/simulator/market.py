"""The simulated ad market that policies are meta-trained on and tested against.

Segments are ``market × cohort`` (default 8 × 25 = 200, named ``"m03-c11"``), drawn from one task
distribution so that they share structure yet differ:

- each segment has a latent taste vector ``theta_s`` in R^5,
  ``theta_s = theta_mean + market_effect[m] + cohort_effect[c] + idiosyncratic_s`` with
  ``theta_mean = [0.55, 0.1, 0.25, 0.15, 0.1]`` and normal effects of standard deviation 0.30, 0.35 and
  0.25 per coordinate;
- user context ``x`` (dx = 8): ``[taste_0, taste_1, taste_2, tenure, recency, spend, device, time_of_day]``.
  Taste, tenure, spend and device are fixed per user (a pool of ``users_per_segment`` users per segment,
  drawn around the cohort's centre, shifted a little by the market); recency ~ N(0, 1) and time of day
  vary by request. ``device`` is +1 (mobile) or -1 (desktop); ``time_of_day`` is ``sin(2 pi hour / 24)``;
- ad features ``a`` (da = 6): ``[cat_0, cat_1, cat_2, log_price, discount, brand]``; each market has a
  catalogue of ``n_ads`` ads in 12 categories (a 3-d category embedding around the category's centre), a
  standardised log price (``price = exp(3.4 + 0.8 log_price)``, median ~30 currency units), a discount in
  [0.05, 0.5] for 40 % of ads (0 otherwise) and a brand strength ~ N(0, 1). A request's K candidates are
  distinct ads of its market's catalogue, uniformly drawn, in random order.

Extra dimensions (``dx > 8`` or ``da > 6``) are N(0, 1) distractors that no outcome depends on.

Outcomes, with ``aff = taste . cat`` and ``z_disc = (discount - 0.1) / 0.15``::

    g(x, a) = [tanh(aff),                                   taste-category affinity
               log_price * tanh(spend),                     big spenders like premium items
               z_disc * sigmoid(-tenure - recency),         new or lapsing users chase deals
               brand * tanh(tenure),                        loyal users value brands
               (device * tanh(-log_price) + tod * tanh(2 cat_2)) / 2]   mobile impulse, time-of-day mix
    f(x, a) = 0.3 relu(aff) - 0.15 log_price^2 + 0.2 brand + 0.25 tanh(3 discount)
    P(click)              = sigmoid(b0 + theta_s . g(x, a) + f(x, a)),                      b0 = -3.55
    P(purchase | click)   = sigmoid(c0 + c_m + c_c + 0.5 tanh(aff) + 0.4 tanh(spend)
                                    + 3 discount - beta_s log_price),                         c0 = -3.1
    value | purchase      = price (1 - discount) LogNormal(-0.125, 0.5^2)   (mean price (1 - discount))
    click delay           ~ Exponential(mean click_delay_mean_s) after the impression
    purchase delay        ~ Exponential(mean purchase_delay_mean_s) after the click

``g`` and ``f`` are shared by every segment; ``theta_s`` decides *which* ads are best for whom, so a
learned representation ``phi(x, a)`` that spans ``[g, f, 1]`` makes every segment's click logit linear in
``phi`` — the structure the meta-learned prior exploits. ``c_m``, ``c_c`` (sd 0.3) and ``beta_s``
(0.4 + N(0, 0.25^2)) make purchases segment-dependent too.

Calibration, measured on the default config (world seed 0, 1,000 requests in each of the 200 segments,
request seed 1; oracle = argmax of the true click probability)::

    random candidate CTR          4.84 %  (per segment: 5th / 50th / 95th percentile 3.4 / 4.6 / 7.0 %,
                                           range 3.1–10.5 %)
    best candidate (oracle) CTR   14.4 %  (2.97x random; per segment 2.0x / 2.9x / 3.9x)
    pooled oracle CTR             12.2 %  (true g and f, but every segment given the training segments'
                                           mean theta: the lift left for per-segment adaptation)
    purchase | click              7.9 %   (random candidate); E[value | purchase] ~25
    best-ad agreement             46.5 %  (same request scored under two random segments' theta: how
                                           often both pick the same best candidate)

The Open Bandit Dataset (Saito, Aihara, Matsutani and Narita, NeurIPS 2021 Datasets and Benchmarks; ZOZO
Research, CC BY 4.0), whose uniform-random slices inspired the logged layout, shows a real CTR of ~0.4 %.
The simulator is about ten times higher on purpose: a benchmark of ~2,000 decisions per segment needs
enough clicks (~100 at 4.9 %) for policies to be told apart; at 0.4 % it would see ~8 and measure only
noise.

Randomness: the world (segments, catalogues, user pools, split, drift noise) comes from
``MarketConfig.seed``; request and outcome noise from the generator passed to :meth:`Market.sample_requests`
and :meth:`Market.respond`, which consume it identically whatever the outcomes. Everything is vectorised
over requests.

Drift: with ``drift_rate > 0`` each ``theta_s`` follows an Ornstein–Uhlenbeck process in event time
around its base value, ``d theta = -(theta - theta_base) / tau dt + drift_rate dW`` with t in hours and
``tau = 24 h`` (stationary sd ``drift_rate * sqrt(tau / 2)``); :meth:`Market.advance` moves it.
:meth:`Market.shift_segment` redraws one segment's theta abruptly (a demo of a sudden change).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policy.simulator.market_params import (BASE_DX, CLICK_BIAS, DRIFT_TAU_H, LOG_PRICE_MEAN, LOG_PRICE_SCALE,
                                            PURCHASE_BIAS, Q, TASK_SD, THETA_MEAN, VALUE_SIGMA, build_params,
                                            check_config, sample_subsets)


@dataclass(frozen=True)
class MarketConfig:
    """Everything that defines a market; the same config builds the same world."""

    seed: int = 0
    """Seeds the world (segments, catalogues, users, split, drift noise). Request and outcome noise comes
    from the generator passed to :meth:`Market.sample_requests` / :meth:`Market.respond`."""
    n_markets: int = 8
    """Number of markets; each has its own ad catalogue."""
    n_cohorts: int = 25
    """Number of user cohorts per market; segments are market × cohort."""
    dx: int = 8
    """User context dimension (>= 8; dimensions past 8 are distractors)."""
    da: int = 6
    """Ad feature dimension (>= 6; dimensions past 6 are distractors)."""
    n_ads: int = 300
    """Ads in each market's catalogue."""
    k_candidates: int = 10
    """Candidates per request, sampled without replacement from the market's catalogue."""
    heldout_fraction: float = 0.25
    """Fraction of segments held out from meta-training (a fixed, seeded split)."""
    click_delay_mean_s: float = 20.0
    """Mean of the exponential delay from impression to click, seconds of event time."""
    purchase_delay_mean_s: float = 300.0
    """Mean of the exponential delay from click to purchase, seconds of event time."""
    drift_rate: float = 0.0
    """Diffusion of each segment's theta, per sqrt(hour) of event time (0 = stationary world)."""
    users_per_segment: int = 2000
    """Size of each segment's user pool (user ids are global: ``segment * users_per_segment + j``)."""


@dataclass(frozen=True)
class Requests:
    """A batch of ad requests, one per row. Shapes: n requests, K candidates."""

    segment: np.ndarray
    """int64[n], segment index."""
    context: np.ndarray
    """float64[n, dx], user context."""
    candidates: np.ndarray
    """float64[n, K, da], candidate ad features."""
    ad_ids: np.ndarray
    """int64[n, K], global ad ids (``market * n_ads + local id``)."""
    user_ids: np.ndarray
    """int64[n], global user ids."""

    def __len__(self) -> int:
        return int(self.segment.shape[0])


@dataclass(frozen=True)
class Outcomes:
    """What happened after each shown ad. Delays are 0 where the event did not happen."""

    click: np.ndarray
    """bool[n]."""
    click_delay_s: np.ndarray
    """float64[n], impression → click (0 when no click)."""
    purchase: np.ndarray
    """bool[n], only possible after a click."""
    purchase_delay_s: np.ndarray
    """float64[n], click → purchase (0 when no purchase)."""
    value: np.ndarray
    """float64[n], purchase value (0 when no purchase)."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class Market:
    """A seeded ad market: segments, requests, true outcome probabilities, delayed outcomes, drift.

    Parameters
    ----------
    config
        The world's definition; two markets with equal configs are identical.

    Attributes
    ----------
    segment_names
        ``"mMM-cCC"`` per segment; segment ``s`` is market ``s // n_cohorts``, cohort ``s % n_cohorts``.
    train_segments, heldout_segments
        Sorted int64 segment indices of a fixed, seeded split (disjoint, covering all segments).
    time_s
        Event time in seconds, moved by :meth:`advance`.
    """

    def __init__(self, config: MarketConfig = MarketConfig()) -> None:
        check_config(config)
        self.config = config
        world_seq, split_seq, drift_seq = np.random.SeedSequence(config.seed).spawn(3)
        self._world = build_params(config, np.random.default_rng(world_seq))
        self._theta = self._world.theta_base.copy()
        self._drift_rng = np.random.default_rng(drift_seq)
        self.time_s = 0.0

        n_seg = config.n_markets * config.n_cohorts
        self.segment_names: list[str] = [
            f"m{m:02d}-c{c:02d}" for m in range(config.n_markets) for c in range(config.n_cohorts)
        ]
        n_heldout = int(round(config.heldout_fraction * n_seg))
        perm = np.random.default_rng(split_seq).permutation(n_seg)
        self.heldout_segments = np.sort(perm[:n_heldout]).astype(np.int64)
        self.train_segments = np.sort(perm[n_heldout:]).astype(np.int64)

    # ------------------------------------------------------------------ structure
    @property
    def n_segments(self) -> int:
        return len(self.segment_names)

    @property
    def segment_market(self) -> np.ndarray:
        """int64[S], the market of each segment."""
        return self._world.segment_market.copy()

    @property
    def segment_cohort(self) -> np.ndarray:
        """int64[S], the cohort of each segment."""
        return self._world.segment_cohort.copy()

    @property
    def theta(self) -> np.ndarray:
        """float64[S, Q], the segments' current latent vectors (a copy)."""
        return self._theta.copy()

    def segment_index(self, name: str) -> int:
        """Index of a segment given its name (``"m03-c11"``)."""
        try:
            return self.segment_names.index(name)
        except ValueError:
            raise KeyError(f"unknown segment {name!r}") from None

    # ------------------------------------------------------------------ requests
    def sample_requests(self, segments: np.ndarray, rng: np.random.Generator) -> Requests:
        """One request per entry of ``segments`` (int[n]): a user of that segment and K candidates."""
        c = self.config
        seg = self._check_segments(segments)
        n = seg.shape[0]
        w = self._world
        j = rng.integers(0, c.users_per_segment, n)
        user_ids = seg * c.users_per_segment + j
        static = np.take(w.users.reshape(-1, w.users.shape[2]), user_ids, axis=0)
        context = np.empty((n, c.dx))
        context[:, 0:4] = static[:, 0:4]
        context[:, 4] = rng.normal(0.0, 1.0, n)
        context[:, 5:7] = static[:, 4:6]
        context[:, 7] = np.sin(2.0 * np.pi * rng.random(n))
        if c.dx > BASE_DX:
            context[:, BASE_DX:] = rng.normal(0.0, 1.0, (n, c.dx - BASE_DX))
        local = sample_subsets(rng, n, c.n_ads, c.k_candidates)
        ad_ids = w.segment_market[seg][:, None] * c.n_ads + local
        candidates = np.take(w.ads.reshape(-1, c.da), ad_ids, axis=0)
        return Requests(segment=seg, context=context, candidates=candidates, ad_ids=ad_ids, user_ids=user_ids)

    # ------------------------------------------------------------------ true model
    def click_prob(self, segments: np.ndarray, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """float64[n, K], ``sigmoid(b0 + theta_s . g(x, a) + f(x, a))`` with the current theta."""
        seg, x, a = self._check_inputs(segments, context, candidates)
        return _sigmoid(self._click_logit(seg, x, a))

    def purchase_prob(self, segments: np.ndarray, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """float64[n, K], probability of a purchase given a click."""
        seg, x, a = self._check_inputs(segments, context, candidates)
        return _sigmoid(self._purchase_logit(seg, x, a))

    def expected_value(self, segments: np.ndarray, context: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """float64[n, K], ``E[value | purchase] = price * (1 - discount)``."""
        _, _, a = self._check_inputs(segments, context, candidates)
        return self._price(a) * (1.0 - a[:, :, 4])

    def expected_reward(
        self,
        segments: np.ndarray,
        context: np.ndarray,
        candidates: np.ndarray,
        value_weight: float = 0.0,
    ) -> np.ndarray:
        """float64[n, K], ``click_prob + value_weight * click_prob * purchase_prob * expected_value``."""
        p_click = self.click_prob(segments, context, candidates)
        if value_weight == 0.0:
            return p_click
        p_buy = self.purchase_prob(segments, context, candidates)
        value = self.expected_value(segments, context, candidates)
        return p_click + value_weight * p_click * p_buy * value

    def oracle_choice(self, requests: Requests, value_weight: float = 0.0) -> np.ndarray:
        """int64[n], the candidate with the highest expected reward (first on ties)."""
        r = self.expected_reward(requests.segment, requests.context, requests.candidates, value_weight)
        return np.argmax(r, axis=1).astype(np.int64)

    def regret(self, requests: Requests, choices: np.ndarray, value_weight: float = 0.0) -> np.ndarray:
        """float64[n], expected reward of the oracle's choice minus that of ``choices``."""
        r = self.expected_reward(requests.segment, requests.context, requests.candidates, value_weight)
        ch = self._check_choices(choices, r.shape)
        return r.max(axis=1) - r[np.arange(r.shape[0]), ch]

    # ------------------------------------------------------------------ outcomes
    def respond(self, requests: Requests, choices: np.ndarray, rng: np.random.Generator) -> Outcomes:
        """Draw the outcomes of showing ``candidates[i, choices[i]]`` for every request ``i``.

        The generator is consumed identically whatever the outcomes (five arrays of n draws), so a stream
        is reproducible from its seed.
        """
        n = len(requests)
        k = requests.candidates.shape[1]
        ch = self._check_choices(choices, (n, k))
        shown = requests.candidates[np.arange(n), ch][:, None, :]
        seg, x, shown = self._check_inputs(requests.segment, requests.context, shown)
        p_click = _sigmoid(self._click_logit(seg, x, shown))[:, 0]
        p_buy = _sigmoid(self._purchase_logit(seg, x, shown))[:, 0]
        mean_value = (self._price(shown) * (1.0 - shown[:, :, 4]))[:, 0]

        u_click = rng.random(n)
        click_delay = rng.exponential(self.config.click_delay_mean_s, n)
        u_buy = rng.random(n)
        buy_delay = rng.exponential(self.config.purchase_delay_mean_s, n)
        noise = rng.normal(0.0, 1.0, n)

        click = u_click < p_click
        purchase = click & (u_buy < p_buy)
        value = mean_value * np.exp(VALUE_SIGMA * noise - 0.5 * VALUE_SIGMA**2)
        return Outcomes(
            click=click,
            click_delay_s=np.where(click, click_delay, 0.0),
            purchase=purchase,
            purchase_delay_s=np.where(purchase, buy_delay, 0.0),
            value=np.where(purchase, value, 0.0),
        )

    # ------------------------------------------------------------------ drift
    def advance(self, dt_s: float) -> None:
        """Move event time by ``dt_s`` seconds; with ``drift_rate > 0`` every theta takes an exact
        Ornstein–Uhlenbeck step (mean reversion to its base over ``tau = 24 h``)."""
        if dt_s < 0:
            raise ValueError(f"dt_s must be >= 0, got {dt_s}")
        self.time_s += float(dt_s)
        rate = self.config.drift_rate
        if rate == 0.0 or dt_s == 0:
            return
        decay = np.exp(-(dt_s / 3600.0) / DRIFT_TAU_H)
        stationary_sd = rate * np.sqrt(DRIFT_TAU_H / 2.0)
        base = self._world.theta_base
        step_sd = stationary_sd * np.sqrt(1.0 - decay**2)
        self._theta = base + (self._theta - base) * decay + self._drift_rng.normal(0.0, step_sd, base.shape)

    def shift_segment(self, segment: int, seed: int | None = None) -> np.ndarray:
        """Abrupt drift: give ``segment`` a fresh theta drawn from the task distribution (its base moves
        too, so drift reverts to the new value). Returns the new theta. Deterministic given ``seed``."""
        s = int(self._check_segments(np.array([segment]))[0])
        rng = np.random.default_rng(seed) if seed is not None else self._drift_rng
        new = THETA_MEAN + rng.normal(0.0, TASK_SD, Q)
        self.set_theta(s, new)
        return new.copy()

    def set_theta(self, segment: int, theta: np.ndarray) -> None:
        """Set one segment's theta (current and base) to ``theta`` (float[Q])."""
        s = int(self._check_segments(np.array([segment]))[0])
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (Q,) or not np.all(np.isfinite(theta)):
            raise ValueError(f"theta must be finite float[{Q}], got shape {theta.shape}")
        self._world.theta_base[s] = theta
        self._theta[s] = theta

    # ------------------------------------------------------------------ internals
    def _click_logit(self, seg: np.ndarray, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        aff = np.einsum("nj,nkj->nk", x[:, 0:3], a[:, :, 0:3])
        tenure, recency, spend = x[:, 3:4], x[:, 4:5], x[:, 5:6]
        device, tod = x[:, 6:7], x[:, 7:8]
        log_price, discount, brand = a[:, :, 3], a[:, :, 4], a[:, :, 5]
        th = self._theta[seg]
        z_disc = (discount - 0.1) / 0.15
        g_theta = (
            th[:, 0:1] * np.tanh(aff)
            + th[:, 1:2] * log_price * np.tanh(spend)
            + th[:, 2:3] * z_disc * _sigmoid(-tenure - recency)
            + th[:, 3:4] * brand * np.tanh(tenure)
            + th[:, 4:5] * 0.5 * (device * np.tanh(-log_price) + tod * np.tanh(2.0 * a[:, :, 2]))
        )
        f = 0.3 * np.maximum(aff, 0.0) - 0.15 * log_price**2 + 0.2 * brand + 0.25 * np.tanh(3.0 * discount)
        return CLICK_BIAS + g_theta + f

    def _purchase_logit(self, seg: np.ndarray, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        w = self._world
        aff = np.einsum("nj,nkj->nk", x[:, 0:3], a[:, :, 0:3])
        return (
            PURCHASE_BIAS
            + w.purchase_offset[seg][:, None]
            + 0.5 * np.tanh(aff)
            + 0.4 * np.tanh(x[:, 5])[:, None]
            + 3.0 * a[:, :, 4]
            - w.purchase_price_beta[seg][:, None] * a[:, :, 3]
        )

    @staticmethod
    def _price(a: np.ndarray) -> np.ndarray:
        return np.exp(LOG_PRICE_MEAN + LOG_PRICE_SCALE * a[:, :, 3])

    def _check_segments(self, segments: np.ndarray) -> np.ndarray:
        seg = np.asarray(segments)
        if seg.ndim != 1 or not np.issubdtype(seg.dtype, np.integer):
            raise ValueError(f"segments must be a 1-D integer array, got {seg.dtype} {seg.shape}")
        if seg.size and (seg.min() < 0 or seg.max() >= self.n_segments):
            raise ValueError(f"segment indices must be in [0, {self.n_segments})")
        return seg.astype(np.int64, copy=False)

    def _check_inputs(
        self, segments: np.ndarray, context: np.ndarray, candidates: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seg = self._check_segments(segments)
        x = np.asarray(context, dtype=np.float64)
        a = np.asarray(candidates, dtype=np.float64)
        n = seg.shape[0]
        if x.shape != (n, self.config.dx):
            raise ValueError(f"context must be [{n}, {self.config.dx}], got {x.shape}")
        if a.ndim != 3 or a.shape[0] != n or a.shape[2] != self.config.da:
            raise ValueError(f"candidates must be [{n}, K, {self.config.da}], got {a.shape}")
        return seg, x, a

    @staticmethod
    def _check_choices(choices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        ch = np.asarray(choices)
        n, k = shape
        if ch.shape != (n,) or not np.issubdtype(ch.dtype, np.integer):
            raise ValueError(f"choices must be int[{n}], got {ch.dtype} {ch.shape}")
        if n and (ch.min() < 0 or ch.max() >= k):
            raise ValueError(f"choices must be in [0, {k})")
        return ch.astype(np.int64, copy=False)
