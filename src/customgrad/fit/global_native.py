"""The per-curve linear algebra of a global fit in C (`global_native.c`): R_b of each curve's rows, the
damping rows eliminated from R_b, and the local steps, each one pass per curve over both cores instead
of ~10 small torch operations over all curves (each its own pass through memory).

For CPU float64 tensors where a C compiler is found; `global_lm` keeps its torch path for everything
else (GPU, float32, no compiler), and the two give the same answers to roundoff. The library is built
once (about 1 s of gcc) and cached on disk like every kernel. Each takes ``workers``, the threads over
the curves (one for a small problem: `threads`).

`factors` takes R_b straight from a formula model that the native engine takes (`native.unavailable`),
by `global_factors` in the model's native library: each curve's rows evaluated and reduced in one pass
while they are in the L1 cache, the curves in parallel, so the (B, N, P + 1) rows are never written to
memory (10^4 Gaussians of 64 points: about 3x faster than the rows of all curves and then their
reduction); the same R_b as from the model's own rows to roundoff (up to the signs of its rows).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from ..backends.cpu import PARALLEL_MIN_SIZE, shared_library
from ..errors import BackendError
from .native import NativeSolver, _statistics_options
from .native_library import FLAGS
from .reduction import GRAM_PIVOT

_INT, _POINTER, _THREADS = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
# `global_native.c`'s BLOCK: curves side by side in its rotations (one small remainder R each in `global_damp`).
_BLOCK = 8
_SIGNATURES = {
    "global_reduce": [_INT, _INT, _INT, _POINTER, ctypes.c_double, _POINTER, _POINTER, _THREADS],
    "global_damp": [_INT, _INT, _INT, _POINTER, _POINTER, _POINTER, _POINTER, _THREADS],
    "global_local_step": [_INT, _INT, _INT, *[_POINTER] * 6, _THREADS],
    "global_local_inverse": [_INT, _INT, _INT, _POINTER, ctypes.c_double, _POINTER, _POINTER, _THREADS],
    "global_local_weights": [_INT, _INT, _INT, *[_POINTER] * 4, _THREADS],
    "global_local_covariance": [_INT, _INT, _INT, *[_POINTER] * 3, ctypes.c_double, *[_POINTER] * 3, _THREADS],
    "global_costs": [_INT, _INT, _POINTER, _POINTER, _POINTER],
    "global_linearize": [_INT, _INT, _INT, *[_POINTER] * 6],
}


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built `global_native.c`, or None where no C compiler works."""
    try:
        library = shared_library([(Path(__file__).parent / "global_native.c").read_text()], "global fit", FLAGS)
    except BackendError:
        return None
    for name, arguments in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes, function.restype = arguments, None
    library.global_damp_chunks.argtypes, library.global_damp_chunks.restype = [_INT], _INT
    return library


def usable(tensor: torch.Tensor) -> bool:
    """True where the C kernels take ``tensor``'s curves: CPU float64, with a working compiler."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.float64 and _library() is not None


def threads(entries: int, workers: int) -> int:
    """The threads for C work over ``entries`` numbers: ``workers``, or one for a small problem."""
    return workers if entries >= PARALLEL_MIN_SIZE else 1


def _call(name: str, *arguments) -> None:
    """C function ``name`` of the library on ``arguments``, tensors passed by their data (made contiguous)."""
    held = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in arguments]  # alive during the call
    getattr(_library(), name)(*(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in held))


def reduce_rows(rows: torch.Tensor, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """R_b (b, q, q) of each curve's rows ``rows`` (q, b, N) by CholeskyQR, and (b,) True where it is
    to be redone by Householder QR (Cholesky failed, or a column-scaled pivot below `GRAM_PIVOT`)."""
    q, count, points = rows.shape
    upper, poor = rows.new_empty(count, q, q), torch.empty(count, dtype=torch.int64)
    _call("global_reduce", count, points, q, rows, GRAM_PIVOT, upper, poor, threads(rows.numel(), workers))
    return upper, poor.bool()


def eliminate_damping(upper: torch.Tensor, root_scale: torch.Tensor, sizes: tuple[int, int], workers: int) -> tuple:
    """R_b's first L rows (b, L, q) after appending diag(``root_scale`` (b, L)) to its local columns, and
    rows (m, S + 1) whose R has the first S rows of the R of the remainder rows of every curve (R_b's
    last S rows and what is left of the damping rows, in the shared and r columns): the first S rows of
    small R's of many curves each, stacked (the last row, the residual's norm, not formed)."""
    L, S = sizes
    count = upper.shape[0]
    rows = upper.new_empty(count, L, L + S + 1)
    remainder = upper.new_empty(_library().global_damp_chunks(count) * _BLOCK * S, S + 1)
    _call("global_damp", count, L, S, upper, root_scale, rows, remainder, threads(upper.numel(), workers))
    return rows, remainder


def local_steps(upper, rows, local_scale, d_shared, sizes, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d_b (b, L) from the damped local rows ``rows`` (b, L, q) once d_phi ``d_shared`` (S,) is known, and
    per curve (b, 3): ||R_b d||^2, (R_b d).q_b and ||D_b d_b||^2."""
    L, S = sizes
    count = upper.shape[0]
    d_local, parts = upper.new_empty(count, L), upper.new_empty(count, 3)
    inputs = (upper, rows, local_scale, d_shared)
    _call("global_local_step", count, L, S, *inputs, d_local, parts, threads(upper.numel(), workers))
    return d_local, parts


def costs(upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """||r_b||^2 (b,) of each curve from its R_b (b, q, q) (its last column's squared norm), and (2,) their
    sum (0 where any is not finite) and how many are not finite."""
    count, q = upper.shape[:2]
    cost, total = upper.new_empty(count), upper.new_empty(2)
    _call("global_costs", count, q, upper, cost, total)
    return cost, total


def linearize(upper: torch.Tensor, previous: torch.Tensor | None, local: torch.Tensor, sizes: tuple[int, int]):
    """From R_b (b, q, q), columns local, shared, r: D_b (b, L), the running maximum of ``previous`` (or
    none) and the local column norms (1 where zero); (J^T r) (b, L) of the local columns; and (2 S + 3):
    the shared columns' squared norms and J^T r summed over the curves, how many entries of R_b are not
    finite, sum_b ||D_b theta_b||^2 at ``local`` (b, L), and max |J_j^T r| / D_j over the local columns."""
    L, S = sizes
    count = upper.shape[0]
    scale, gradient, totals = upper.new_empty(count, L), upper.new_empty(count, L), upper.new_empty(2 * S + 3)
    _call("global_linearize", count, L, S, upper, previous, local.to(upper), scale, gradient, totals)
    return scale, gradient, totals


def local_inverse(upper: torch.Tensor, local: int, limit: float, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """R_AA^-1 (b, L, L) of each curve's leading ``local`` x ``local`` block of R_b (b, q, q), from its
    column-scaled copy R_AA D^-1 (D the safe column norms), and (b,) True where the bound
    ||R_AA D^-1||_F ||(R_AA D^-1)^-1||_F on its condition number is not below ``limit``."""
    count, q = upper.shape[:2]
    pseudo, doubtful = upper.new_empty(count, local, local), torch.empty(count, dtype=torch.int64)
    workers = threads(upper.numel(), workers)
    _call("global_local_inverse", count, local, q, upper, limit, pseudo, doubtful, workers)
    return pseudo, doubtful.bool()


def local_weights(upper: torch.Tensor, pseudo: torch.Tensor, sizes: tuple[int, int], workers: int) -> tuple:
    """W_b = R_AA^+ R_AC (b, L, S) of each curve, from R_b (b, q, q) and R_AA^+ ``pseudo`` (b, L, L), and
    R_AC - R_AA W_b (b, L, S)."""
    L, S = sizes
    count = upper.shape[0]
    weights, outside = upper.new_empty(count, L, S), upper.new_empty(count, L, S)
    _call("global_local_weights", count, L, S, upper, pseudo, weights, outside, threads(upper.numel(), workers))
    return weights, outside


def local_covariance(pseudo, weights, core: torch.Tensor, variance: float, workers: int) -> tuple:
    """Per curve: cov(theta_b) = s^2 (R_AA^+ R_AA^+T + W_b C W_b^T) (b, L, L), cov(theta_b, phi) = -s^2 W_b C
    (b, L, S) and sqrt |cov(theta_b)_jj| (b, L), from ``pseudo`` R_AA^+, ``weights`` W_b, ``core`` C (S, S)."""
    count, L, S = weights.shape
    local, cross, stderr = pseudo.new_empty(count, L, L), pseudo.new_empty(count, L, S), pseudo.new_empty(count, L)
    inputs, workers = (pseudo, weights, core, variance), threads(pseudo.numel() * 4, workers)
    _call("global_local_covariance", count, L, S, *inputs, local, cross, stderr, workers)
    return local, cross, stderr


def factors(solver: NativeSolver, curves: torch.Tensor, theta: torch.Tensor, *, external: bool, workers: int):
    """R_b (b, p + 1, p + 1) of the curves ``curves`` (curve numbers, int64) at their parameters ``theta``
    (b, p) in the model's column order (internal coordinates; with ``external`` the values themselves,
    J then taken with respect to them), on ``workers`` threads (`threads`)."""
    entry = solver.library.global_factors
    if entry.argtypes is None:
        arguments = [_POINTER, _POINTER, _POINTER, _INT, _THREADS, _POINTER, _INT, ctypes.c_double, _POINTER]
        entry.argtypes, entry.restype = arguments, ctypes.c_int
    count, p = theta.shape
    index = curves.to(torch.int64).contiguous()
    theta = theta.to(torch.float64).contiguous()
    upper = theta.new_empty(count, p + 1, p + 1)
    if count == 0:
        return upper
    workers = threads(count * solver.problem.y.shape[-1] * (p + 1), workers)
    struct, options = ctypes.byref(solver.struct), ctypes.byref(_statistics_options())
    arguments = (index.data_ptr(), count, workers, theta.data_ptr(), int(external), GRAM_PIVOT, upper.data_ptr())
    if entry(struct, options, *arguments) != 0:
        raise MemoryError("the global fit's native factors ran out of memory")
    return upper
