"""Compile (or load from the on-disk cache) every kernel before a worker takes traffic."""

from __future__ import annotations

import time

import numpy as np

from kernels.glm import BERNOULLI, GAUSSIAN, glm_decide_many, glm_update_many, item_offsets
from kernels.mlp import features_into, phi_many
from kernels.posterior import update_many, update_one
from kernels.rng import standard_normals
from kernels.scoring import decide_many, thompson_one, ucb_one


def warm_up(dtypes: tuple[type, ...] = (np.float32, np.float64)) -> float:
    """Call every public kernel once per float dtype on tiny inputs; return the seconds it took.

    For each dtype in ``dtypes`` the float inputs (u and weights, phis, normals, rewards) all
    have that dtype; P, m and uniforms are float64 and index arrays int64, as the contracts
    require. The first process after a code change compiles (seconds); later processes load the
    cached machine code (milliseconds per kernel). Anything else is a different numba type and
    compiles on first use: mixed float32/float64 inputs, and read-only arrays (e.g. straight from
    ``np.frombuffer``) - copy those, or call the kernels on such inputs once here.
    """
    start = time.perf_counter()
    d, kk, n_draws, n_seg = 3, 2, 4, 2
    for dt in dtypes:
        u = np.ones((2, 2), dtype=dt)
        phi_many(u, np.ones((2, 3), dt), np.zeros(3, dt), np.ones((3, d - 1), dt), np.zeros(d - 1, dt))
        P = np.tile(np.eye(d), (n_seg, 1, 1))
        m = np.zeros((n_seg, d))
        phis = np.ones((kk, d), dtype=dt)
        update_one(P[0], m[0], phis[0], 1.0, 1.0, 0.9)
        update_many(P, m, np.array([0, 1]), phis, np.ones(2, dtype=dt), 1.0, 1.0)
        uniforms = np.array([0.5, 0.5])
        thompson_one(phis, P[0], m[0], np.ones((n_draws, kk), dtype=dt), uniforms, 0.1)
        ucb_one(phis, P[0], m[0], 1.0, uniforms, 0.1)
        decide_many(
            np.ones((2, kk, d), dtype=dt), P, m, np.array([0, 1]), np.array([kk, 1]),
            np.ones((2, n_draws, kk), dtype=dt), np.full((2, 2), 0.5), 0.1,
        )
        seg = np.array([0, 1])
        ids = np.array([[1, 2], [3, -1]])
        tables = (np.full((n_seg, 2), -1, dtype=np.int64), np.zeros((n_seg, 2)), np.zeros((n_seg, 2)),
                  np.zeros((n_seg, 2), dtype=np.int64))
        off_m, off_v = item_offsets(seg, ids, np.array([kk, 1]), tables[0], tables[1], tables[2],
                                    np.zeros((2, kk)), 0.1)
        glm_decide_many(np.ones((2, kk, d), dtype=dt), P, m, seg, np.array([kk, 1]), off_m, off_v,
                        np.ones((2, n_draws, kk), dtype=dt), np.full((2, 2), 0.5), 0.1, 1.0)
        for lik in (GAUSSIAN, BERNOULLI):
            glm_update_many(P, m, seg, phis, ids[:, 0].copy(), np.zeros(2), 0.1, tables, np.ones(2, dtype=dt), lik)
    standard_normals(np.random.default_rng(0), np.empty(2))
    for raw in (0, 3):  # float64 only: the adapter's deciding path
        features_into(np.ones((1, 1)), np.ones((1, 2, 2)), np.ones((3, 2)), np.zeros(2), np.ones((2, 2)),
                      np.zeros(2), np.zeros(raw), np.ones(raw), np.empty((1, 2, 3 + raw)))
    return time.perf_counter() - start
