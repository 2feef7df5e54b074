"""Small dense linear algebra written as loops (``np.linalg`` inside njit needs scipy)."""

from __future__ import annotations

import numpy as np

from kernels._jit import kernel

#: Relative diagonal jitter added before the Cholesky factorisation of the K x K score
#: covariance ``C``: ``delta = JITTER_REL * trace(C) / K``. It makes near-singular ``C`` (nearly
#: identical candidates) factorisable while perturbing draws by about ``sqrt(JITTER_REL) = 1e-5``
#: posterior standard deviations, far below anything the decision can resolve.
JITTER_REL = 1e-10


@kernel
def _cholesky_psd(C, L, k):  # pragma: no cover - compiled
    """Lower Cholesky factor of ``C[:k, :k] + delta I`` into ``L[:k, :k]`` (lower triangle read).

    ``delta = JITTER_REL * trace / k`` (0 when the trace is not positive). A pivot that is not
    positive - ``C`` is exactly zero (P = 0) or, through rounding, indefinite - sets its whole
    column of ``L`` to 0 (the semi-definite Cholesky convention), so the factor is always finite
    and ``L L^T`` equals ``C + delta I`` wherever ``C`` is positive semi-definite. Exactly
    identical candidates get a rank-1 ``C``; the jitter then gives each a tiny independent
    component, so ties between them are broken at random rather than always to the lowest index.
    """
    trace = 0.0
    for i in range(k):
        trace += C[i, i]
    delta = JITTER_REL * trace / k if trace > 0.0 else 0.0
    for j in range(k):
        piv = C[j, j] + delta
        for col in range(j):
            piv -= L[j, col] * L[j, col]
        if piv > 0.0:
            ljj = np.sqrt(piv)
            L[j, j] = ljj
            inv = 1.0 / ljj
            for i in range(j + 1, k):
                acc = C[i, j]
                for col in range(j):
                    acc -= L[i, col] * L[j, col]
                L[i, j] = acc * inv
        else:
            for i in range(j, k):
                L[i, j] = 0.0
