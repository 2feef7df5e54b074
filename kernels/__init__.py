"""Online adaptation maths for metacart, in numba and numpy only (no torch, faust or kafka).

Public API (contracts pinned in ``docs/ARCHITECTURE.md``):

- :func:`phi_many` - the feature-map MLP.
- :func:`update_one`, :func:`update_many` - rank-1 posterior updates of a segment's linear head.
- :func:`thompson_one`, :func:`ucb_one`, :func:`decide_many` - eps-mixed decisions with propensities.
- :func:`warm_up` - compile everything before taking traffic.
- :func:`kernels.rng.standard_normals` - numpy's standard normals, filled in numba (Thompson draws).

Readable numpy versions of each kernel live in :mod:`kernels.reference`.
"""

from kernels.exceptions import KernelInputError
from kernels.mlp import phi_many
from kernels.posterior import update_many, update_one
from kernels.scoring import decide_many, thompson_one, ucb_one
from kernels.warmup import warm_up

__all__ = [
    "KernelInputError",
    "decide_many",
    "phi_many",
    "thompson_one",
    "ucb_one",
    "update_many",
    "update_one",
    "warm_up",
]
