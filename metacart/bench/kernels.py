"""Benchmark of the online-adaptation kernels: one Thompson decision + one posterior update.

Setup (defaults): K = 10 candidates, d = 32 features (d_out = 31 plus the constant), n_draws = 64
Monte-Carlo draws for the propensities, eps = 0.05. Every timing is taken after
:func:`kernels.warm_up` and is the median over many calls, timed one call at a time with
``time.perf_counter_ns`` (so each includes ~50 ns of timer overhead).

- ``decide_update_us``: the public ``thompson_one`` (including its propensities) followed by the
  public ``update_one`` on the chosen candidate, argument validation included. The standard
  normals and uniforms are drawn beforehand (their numpy cost is reported as ``rng_us``).
- ``numpy_ref_us``: the same work with the readable numpy references in ``kernels.reference``.
- ``batch_decisions_per_s``: ``decide_many`` on B = 1024 requests across S = 100 segments,
  *including* drawing the (B, n_draws, K) normals and (B, 2) uniforms with numpy's default
  Generator (PCG64) in every repeat; ``batch_decisions_per_s_kernel_only`` excludes that. Batch
  timings are CPU time of the calling thread (``time.thread_time_ns``): a batch runs for
  milliseconds, and on a shared machine wall time would mostly measure the scheduler
  (``batch_decisions_per_s_wall`` is the wall-clock figure).
- ``phi_many_us_per_candidate``: the feature MLP (d_in = 24, H = 64, d_out = 31) on B * K rows.
- ``glm_decide_update_us`` (and ``..._d46``): the v2 head (:mod:`kernels.glm`), the bernoulli likelihood
  with per-item terms (a 64-slot table per segment): one ``item_offsets`` lookup + one
  ``glm_decide_many`` (B = 1, K = 10) + one ``glm_update_many`` of a 0/1 click, public wrappers
  included, at d = 32 and at d = 46 (what the market artifact serves: 31 learned + 14 raw + 1). At B = 1
  about half of it is the three wrappers' argument checks and numba's dispatch;
  ``glm_batch_decide_update_us`` is the same work in batches of B = 1024 over S = 100 segments, per
  decision (thread CPU time) - what a worker, which decides in batches, pays.

Run: ``metacart bench kernels --out FILE`` or ``python -c "from metacart.bench.kernels import run; run()"``.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np

import kernels
from kernels import reference

K = 10
D = 32
N_DRAWS = 64
EPS = 0.05
NOISE_VAR = 0.25
BATCH = 1024
SEGMENTS = 100
D_IN, HIDDEN = 24, 64


def _median_us(fn: Callable[[int], object], repeats: int, clock: Callable[[], int] = time.perf_counter_ns) -> float:
    """Median time of ``fn(i)`` for i in range(repeats), in microseconds (wall clock by default)."""
    times = []
    for i in range(repeats):
        t0 = clock()
        fn(i)
        times.append(clock() - t0)
    return statistics.median(times) / 1e3


def _posterior(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal((d, d))
    P = a @ a.T / d + 0.1 * np.eye(d)
    return 0.5 * (P + P.T), rng.standard_normal(d) * 0.1


def _features(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    z = np.tanh(rng.standard_normal(shape))
    z[..., -1] = 1.0
    return z


def _decide_update(repeats: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    P, m = _posterior(rng, D)
    w_true = rng.standard_normal(D) * 0.3
    phis = [_features(rng, (K, D)) for _ in range(64)]
    normals = [rng.standard_normal((N_DRAWS, K)) for _ in range(64)]
    unif = [rng.random(2) for _ in range(64)]
    noise = rng.normal(scale=np.sqrt(NOISE_VAR), size=64)

    def step(module, P, m):
        def call(i: int) -> None:
            j = i % 64
            choice, _ = module.thompson_one(phis[j], P, m, normals[j], unif[j], EPS)
            phi = phis[j][choice]
            module.update_one(P, m, phi, float(phi @ w_true + noise[j]), NOISE_VAR)

        return call

    fast = _median_us(step(kernels, P.copy(), m.copy()), repeats)
    ref = _median_us(step(reference, P.copy(), m.copy()), max(50, repeats // 10))
    thompson = _median_us(lambda i: kernels.thompson_one(phis[i % 64], P, m, normals[i % 64], unif[i % 64], EPS), repeats)
    P2, m2 = P.copy(), m.copy()
    update = _median_us(lambda i: kernels.update_one(P2, m2, phis[i % 64][0], float(noise[i % 64]), NOISE_VAR), repeats)
    ucb = _median_us(lambda i: kernels.ucb_one(phis[i % 64], P, m, 1.0, unif[i % 64], EPS), repeats)
    gen = np.random.default_rng(seed + 1)
    rng_us = _median_us(lambda i: (gen.standard_normal((N_DRAWS, K)), gen.random(2)), repeats)
    return {
        "decide_update_us": fast,
        "numpy_ref_us": ref,
        "speedup": ref / fast,
        "thompson_one_us": thompson,
        "update_one_us": update,
        "ucb_one_us": ucb,
        "rng_us": rng_us,
    }


def _glm_decide_update(repeats: int, seed: int, d: int) -> float:
    from kernels.glm import BERNOULLI, glm_decide_many, glm_update_many, item_offsets

    rng = np.random.default_rng(seed)
    P, m = _posterior(rng, d)
    P, m = P[None].copy(), m[None].copy()
    cap = 64
    tables = (np.full((1, cap), -1, dtype=np.int64), np.zeros((1, cap)), np.zeros((1, cap)),
              np.zeros((1, cap), dtype=np.int64))
    phis = [_features(rng, (1, K, d)) for _ in range(64)]
    items = [rng.integers(0, 200, (1, K)).astype(np.int64) for _ in range(64)]
    normals = [rng.standard_normal((1, N_DRAWS, K)) for _ in range(64)]
    unif = [rng.random((1, 2)) for _ in range(64)]
    clicks = [np.array([float(c)]) for c in rng.random(64) < 0.05]
    seg, kv, prior = np.zeros(1, dtype=np.int64), np.full(1, K, dtype=np.int64), np.zeros((1, K))
    tick = [0]

    def call(i: int) -> None:
        j = i % 64
        off_m, off_v = item_offsets(seg, items[j], kv, tables[0], tables[1], tables[2], prior, 0.1)
        choice, _, _ = glm_decide_many(phis[j], P, m, seg, kv, off_m, off_v, normals[j], unif[j], EPS, 1.0)
        c = int(choice[0])
        glm_update_many(P, m, seg, phis[j][:, c], items[j][:, c], prior[:, c], 0.1, tables, clicks[j], BERNOULLI,
                        tick=tick[0])
        tick[0] += 1

    return _median_us(call, repeats)


def _glm_batch(repeats: int, seed: int, d: int) -> float:
    """Microseconds per decision + click update of the v2 head in batches of BATCH over SEGMENTS (thread CPU)."""
    from kernels.glm import BERNOULLI, glm_decide_many, glm_update_many, item_offsets

    rng = np.random.default_rng(seed)
    pairs = [_posterior(rng, d) for _ in range(SEGMENTS)]
    P = np.stack([p for p, _ in pairs])
    m = np.stack([mm for _, mm in pairs])
    cap = 64
    tables = (np.full((SEGMENTS, cap), -1, dtype=np.int64), np.zeros((SEGMENTS, cap)), np.zeros((SEGMENTS, cap)),
              np.zeros((SEGMENTS, cap), dtype=np.int64))
    phis = _features(rng, (BATCH, K, d))
    items = rng.integers(0, 500, (BATCH, K)).astype(np.int64)
    seg = rng.integers(0, SEGMENTS, size=BATCH)
    kv = np.full(BATCH, K, dtype=np.int64)
    prior = np.zeros((BATCH, K))
    normals = rng.standard_normal((BATCH, N_DRAWS, K))
    unif = rng.random((BATCH, 2))
    clicks = (rng.random(BATCH) < 0.05).astype(np.float64)
    rows = np.arange(BATCH)

    def call(i: int) -> None:
        off_m, off_v = item_offsets(seg, items, kv, tables[0], tables[1], tables[2], prior, 0.1)
        choice, _, _ = glm_decide_many(phis, P, m, seg, kv, off_m, off_v, normals, unif, EPS, 1.0)
        glm_update_many(P, m, seg, np.ascontiguousarray(phis[rows, choice]), items[rows, choice],
                        prior[rows, choice], 0.1, tables, clicks, BERNOULLI, tick=i * BATCH)

    return _median_us(call, repeats, time.thread_time_ns) / BATCH


def _batch(repeats: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    pairs = [_posterior(rng, D) for _ in range(SEGMENTS)]
    P = np.stack([p for p, _ in pairs])
    m = np.stack([mm for _, mm in pairs])
    phis = _features(rng, (BATCH, K, D))
    seg = rng.integers(0, SEGMENTS, size=BATCH)
    k_valid = np.full(BATCH, K, dtype=np.int64)

    def with_rng(_: int) -> None:
        normals = rng.standard_normal((BATCH, N_DRAWS, K))
        unif = rng.random((BATCH, 2))
        kernels.decide_many(phis, P, m, seg, k_valid, normals, unif, EPS)

    normals = rng.standard_normal((BATCH, N_DRAWS, K))
    unif = rng.random((BATCH, 2))

    def kernel_only(_: int) -> None:
        kernels.decide_many(phis, P, m, seg, k_valid, normals, unif, EPS)

    cpu = time.thread_time_ns  # a batch takes milliseconds: on a shared machine the scheduler
    total = _median_us(with_rng, repeats, cpu)  # preempts it, so CPU time of this thread is the
    just_kernel = _median_us(kernel_only, repeats, cpu)  # fair "one core" measure; wall kept too
    total_wall = _median_us(with_rng, repeats)
    rewards = rng.normal(size=BATCH)
    chosen = np.ascontiguousarray(phis[:, 0])
    Pu, mu = P.copy(), m.copy()
    update_many = _median_us(lambda _: kernels.update_many(Pu, mu, seg, chosen, rewards, NOISE_VAR), repeats, cpu)
    return {
        "batch_decisions_per_s": BATCH / (total * 1e-6),
        "batch_decisions_per_s_kernel_only": BATCH / (just_kernel * 1e-6),
        "batch_decisions_per_s_wall": BATCH / (total_wall * 1e-6),
        "batch_rng_us_per_decision": (total - just_kernel) / BATCH,
        "update_many_per_s": BATCH / (update_many * 1e-6),
    }


def _phi(repeats: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((BATCH * K, D_IN))
    w1 = rng.standard_normal((D_IN, HIDDEN)) / np.sqrt(D_IN)
    b1 = rng.standard_normal(HIDDEN) * 0.1
    w2 = rng.standard_normal((HIDDEN, D - 1)) / np.sqrt(HIDDEN)
    b2 = rng.standard_normal(D - 1) * 0.1
    fast = _median_us(lambda _: kernels.phi_many(u, w1, b1, w2, b2), repeats)
    ref = _median_us(lambda _: reference.phi_many(u, w1, b1, w2, b2), repeats)
    return {
        "phi_many_us_per_candidate": fast / u.shape[0],
        "phi_many_numpy_ref_us_per_candidate": ref / u.shape[0],
    }


def run(out: pathlib.Path | None = None, repeats: int = 2000, seed: int = 0, show: bool = True) -> dict:
    """Time the kernels; return the results and, if ``out`` is given, write them there as JSON.

    Parameters
    ----------
    out : pathlib.Path, optional
        Where to write the JSON.
    repeats : int, default 2000
        Calls per single-event median (the numpy reference gets a tenth, at least 50); the batch
        and phi timings use ``max(10, repeats // 100)`` repeats.
    seed : int, default 0
    show : bool, default True
        Print a table (rich) of the results.

    Returns
    -------
    dict
        ``decide_update_us``, ``numpy_ref_us``, ``speedup``, ``batch_decisions_per_s`` and extras.
    """
    warm = kernels.warm_up()
    result: dict = {}
    result.update(_decide_update(repeats, seed))
    result["glm_decide_update_us"] = _glm_decide_update(repeats, seed, D)
    result["glm_decide_update_us_d46"] = _glm_decide_update(repeats, seed, 46)
    result["glm_batch_decide_update_us"] = _glm_batch(max(10, repeats // 100), seed, D)
    result["glm_batch_decide_update_us_d46"] = _glm_batch(max(10, repeats // 100), seed, 46)
    few = max(10, repeats // 100)
    result.update(_batch(few, seed))
    result.update(_phi(few, seed))
    result["config"] = {
        "K": K, "d": D, "n_draws": N_DRAWS, "eps": EPS, "batch": BATCH, "segments": SEGMENTS,
        "phi_mlp": [D_IN, HIDDEN, D - 1], "repeats": repeats, "seed": seed, "warm_up_s": warm,
        "numba": numba.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpus_visible": len(os.sched_getaffinity(0)),
        "load_avg_1min": os.getloadavg()[0],
    }
    if out is not None:
        out = pathlib.Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if show:
        _print(result)
    return result


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg = result["config"]
    table = Table(title=f"kernels: K={cfg['K']}, d={cfg['d']}, n_draws={cfg['n_draws']} (median, one core)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    rows = [
        ("decide + update (numba)", f"{result['decide_update_us']:.2f} µs", "≤ 10 µs"),
        ("decide + update (numpy reference)", f"{result['numpy_ref_us']:.2f} µs", ""),
        ("speedup", f"{result['speedup']:.1f}×", "≥ 5×"),
        ("  thompson_one", f"{result['thompson_one_us']:.2f} µs", ""),
        ("  update_one", f"{result['update_one_us']:.2f} µs", ""),
        ("  ucb_one", f"{result['ucb_one_us']:.2f} µs", ""),
        ("  numpy draws for one decision", f"{result['rng_us']:.2f} µs", ""),
        ("v2 head: decide + click update, bernoulli + item terms", f"{result['glm_decide_update_us']:.2f} µs",
         "≤ 10 µs"),
        ("  the same at d = 46 (market artifact)", f"{result['glm_decide_update_us_d46']:.2f} µs", ""),
        (f"  in batches of {cfg['batch']} (what a worker pays), per decision", 
         f"{result['glm_batch_decide_update_us']:.2f} µs", "≤ 10 µs"),
        ("  in batches, d = 46", f"{result['glm_batch_decide_update_us_d46']:.2f} µs", ""),
        (
            f"decide_many B={cfg['batch']}, S={cfg['segments']} incl. RNG",
            f"{result['batch_decisions_per_s']:,.0f} /s",
            "≥ 200,000 /s",
        ),
        ("  kernel only", f"{result['batch_decisions_per_s_kernel_only']:,.0f} /s", ""),
        ("  wall clock incl. RNG", f"{result['batch_decisions_per_s_wall']:,.0f} /s", ""),
        ("  numpy RNG per decision", f"{result['batch_rng_us_per_decision']:.2f} µs", ""),
        ("update_many", f"{result['update_many_per_s']:,.0f} /s", ""),
        ("phi_many per candidate", f"{result['phi_many_us_per_candidate']:.3f} µs", ""),
        ("  numpy reference", f"{result['phi_many_numpy_ref_us_per_candidate']:.3f} µs", ""),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":  # pragma: no cover
    run()
