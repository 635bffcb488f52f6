"""A global fit's per-curve factors R_b of [J_b | r_b] straight from a formula model, by `global_rows.c`
in the model's native library: each curve's rows evaluated and reduced in one pass while they are in
the L1 cache, the curves in parallel, so the (B, N, P + 1) rows are never written to memory (10^4
Gaussians of 64 points: about 3x faster than the rows of all curves and then their reduction).

For what the native engine takes (formula models, CPU float64, a C compiler: `native.unavailable`);
`global_lm` keeps the model's own rows and `reduction` for everything else, and the two give the same
R_b to roundoff (up to the signs of its rows).
"""

from __future__ import annotations

import ctypes

import torch

from . import global_native
from .native import NativeSolver, _statistics_options
from .reduction import GRAM_PIVOT

_ARGUMENTS = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_double]


def factors(solver: NativeSolver, curves: torch.Tensor, theta: torch.Tensor, *, external: bool, workers=None):
    """R_b (b, p + 1, p + 1) of the curves ``curves`` (curve numbers, int64) at their parameters ``theta``
    (b, p) in the model's column order (internal coordinates; with ``external`` the values themselves,
    J then taken with respect to them), on ``workers`` threads (`global_native.threads`)."""
    entry = solver.library.global_factors
    if entry.argtypes is None:
        entry.argtypes, entry.restype = [*_ARGUMENTS, ctypes.c_void_p], ctypes.c_int
    count, p = theta.shape
    index = curves.to(torch.int64).contiguous()
    theta = theta.to(torch.float64).contiguous()
    upper = theta.new_empty(count, p + 1, p + 1)
    if count == 0:
        return upper
    threads = global_native.threads(count * solver.problem.y.shape[-1] * (p + 1), workers)
    done = entry(
        ctypes.byref(solver.struct), ctypes.byref(_statistics_options()), index.data_ptr(), count, threads,
        theta.data_ptr(), int(external), GRAM_PIVOT, upper.data_ptr(),
    )  # fmt: skip
    if done != 0:
        raise MemoryError("the global fit's native factors ran out of memory")
    return upper
