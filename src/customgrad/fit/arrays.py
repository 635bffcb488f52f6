"""The array operations `lm` runs its per-round arithmetic with: on torch tensors, or on numpy arrays.

The solver's state is a few (B, p) arrays, so at small B each operation costs its dispatch, not its
arithmetic: about 1-3 us for a torch call on the CPU against 0.2-0.7 us for numpy. `namespace` picks
numpy for small batches on the CPU (`fit`'s single problem: B = 1) and torch elsewhere (batches, GPU);
the solver is written once against either (`xp.where`, `xp.maximum`, ...). The model, its Jacobian and
its QR stay torch: `xp.asarray` and `xp.tensor` convert at that boundary (no copy on the CPU).
`SCALAR` is a batch of one without its batch axis (`fit`'s single problem, whose `lm.BatchProblem` takes
any arrays): a per-problem scalar is a numpy scalar (np.float64, np.bool_, np.int64: ~30 ns an operation,
not ~300 ns, with numpy's inf/NaN rules), a per-problem vector a (p,) array. The solver indexes the batch
axis only as ``[..., None]`` and ``[..., k]``, which mean the same on a numpy scalar.
``host``: whether reading a value costs no wait for a device (numpy): there the solver branches to skip
work that no problem of the round needs (a status test that fired nowhere, a restart nobody made).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

from .jacobi import LAPACK_BATCH, jacobi_svd
from .reduction import reduce_batched, reduce_local


def _numpy_svd(matrix: np.ndarray, rhs: np.ndarray, start=None):
    """`jacobi.jacobi_svd`'s contract by LAPACK (``start`` unused): s, V^T and diag(s) U^T rhs."""
    if len(matrix) == 1:  # a third less time than the stacked call
        u, values, vt = np.linalg.svd(matrix[0])
        return values[None], vt[None], values * (rhs @ u)  # (rhs (1, p): (U^T rhs)^T = rhs^T U)
    u, values, vt = np.linalg.svd(matrix)
    return values, vt, values * (u.swapaxes(-1, -2) @ rhs[..., None])[..., 0]


try:  # the gufuncs behind np.linalg.svd and qr: their Python wrappers cost as much as a small problem's LAPACK
    from numpy.linalg._umath_linalg import qr_r_raw as _qr_gufunc
    from numpy.linalg._umath_linalg import svd_f as _svd_gufunc
except ImportError:  # (a numpy without them: the public calls)
    _qr_gufunc = _svd_gufunc = None


def _scalar_householder(block: np.ndarray) -> np.ndarray:
    """R (q, q) of one block [J | r] (n, q) by LAPACK's Householder QR on the host, as
    `reduction.reduce_local` takes it by torch's (the same geqrf; no torch dispatch, no thread pool)."""
    rows, columns = block.shape
    if _qr_gufunc is None or rows < columns or block.dtype != np.float64:
        return reduce_local(torch.from_numpy(block)).numpy()
    factored = block.copy(order="K")  # (geqrf works in place: R above the diagonal, reflectors below)
    try:
        _qr_gufunc(factored, signature="d->d")
    except TypeError:  # a numpy whose private gufunc takes other arguments: the public path
        return reduce_local(torch.from_numpy(block)).numpy()
    upper = _UPPER.get(columns)
    if upper is None:
        upper = _UPPER[columns] = ~np.tri(columns, columns, -1, dtype=bool)
    return np.where(upper, factored[:columns], 0.0)  # (np.triu: the same, four times the time)


_UPPER: dict[int, np.ndarray] = {}  # the upper triangle's mask of each size


def _scalar_svd(matrix: np.ndarray, rhs: np.ndarray, start=None):
    """`_numpy_svd` of one matrix (p, p) and rhs (p,), no batch axis."""
    if _svd_gufunc is not None and matrix.dtype == np.float64:
        try:
            u, values, vt = _svd_gufunc(matrix, signature="d->ddd")
        except TypeError:  # a numpy whose private gufunc takes other arguments: the public path
            values = np.array([np.nan])
        if len(values) == 0 or values[0] == values[0]:  # (not NaN: LAPACK did not fail; else np.linalg.svd raises)
            return values, vt, values * (rhs @ u)
    u, values, vt = np.linalg.svd(matrix)
    return values, vt, values * (rhs @ u)


def _batched_products(total) -> dict:
    """Products of the solver's small matrices over a batch (B, ...), as elementwise products and sums
    ``total(x, axis)`` (for TORCH, also on a GPU); `SCALAR` multiplies its unbatched matrices by BLAS."""
    return {
        # sum_i c_i M_ij: (B, k), (B, k, q) -> (B, q)
        "vecmat": lambda c, matrix: total(matrix * c[..., None], -2),
        # M c: (B, q, k), (B, k) -> (B, q)
        "matvec": lambda matrix, c: (matrix @ c[..., None])[..., 0],
        # J v from the columns of J in the model's layout: (p, B, n), (B, p) -> (B, n)
        "combine_columns": lambda columns, v: total(columns * v.T[..., None], 0),
        # J^T w: (p, B, n), (B, n) -> (B, p)
        "project_on_columns": lambda columns, w: total(columns * w, -1).T,
    }


def _numpy_put(target: np.ndarray, index: np.ndarray, part: np.ndarray) -> None:
    target[index] = part


NUMPY = SimpleNamespace(
    where=np.where,
    maximum=np.maximum,
    minimum=np.minimum,
    clamp_min=np.maximum,
    sqrt=np.sqrt,
    isfinite=np.isfinite,
    all_finite=lambda x: np.logical_and.reduce(np.isfinite(x).reshape(len(x), -1), -1),  # (B, ...) -> (B,)
    within=lambda x, low, high: np.logical_and.reduce((x > low) & (x < high), -1),  # low < x < high, (B, k) -> (B,)
    isin=lambda x, values: (x[..., None] == np.asarray(values)).any(-1),  # (np.isin sorts: ~20 us)
    sum=np.add.reduce,  # (the methods .sum, .all go through Python wrappers)
    all=np.logical_and.reduce,
    any=np.logical_or.reduce,
    zeros_like=lambda x: np.zeros(x.shape, x.dtype),  # (np.zeros_like: a Python wrapper, ~2 us)
    amax=np.maximum.reduce,
    norm=lambda x: np.sqrt(np.add.reduce(x * x, -1)),
    flatnonzero=lambda x: x.nonzero()[0],
    take=lambda x, index: x[index],
    put=_numpy_put,
    concat=lambda parts, axis: np.concatenate(parts, axis=axis),
    columns_first=lambda x: x.transpose((x.ndim - 1, *range(x.ndim - 1))),
    expand=lambda x, dims=1: x[..., None] if dims == 1 else x[..., None, None],  # (B,) against (B, ...)
    eye=lambda p, like: np.eye(p, dtype=like.dtype),
    zeros=lambda shape, like, dtype=None: np.zeros(shape, dtype=like.dtype if dtype is None else dtype),
    integer=np.int64,
    boolean=np.bool_,
    **_batched_products(np.add.reduce),
    svd=_numpy_svd,
    householder=lambda blocks: reduce_batched(torch.from_numpy(blocks)).numpy(),  # R of each block [J | r]
    warm_start=False,  # LAPACK starts from scratch
    host=True,  # bool(array) reads host memory: the solver may skip work that no problem needs
    copy=np.copy,
    arange=lambda n, like: np.arange(n),
    asarray=lambda tensor: tensor.detach().numpy(),
    tensor=torch.from_numpy,
    of_batch=lambda tensor: tensor.detach().numpy(),  # (B, ...) tensor -> the solver's array
    batch_of=torch.from_numpy,  # the solver's array -> (B, ...) tensor
)

# numpy's scalar type for a Python constant chosen by `SCALAR`'s where (0.0 -> np.float64(0.0))
_NUMPY_SCALAR = {float: np.float64, int: np.int64, bool: np.bool_}


def _scalar_where(condition, a, b):
    """np.where(condition, a, b), by a Python branch where ``condition`` is one problem's numpy bool."""
    if type(condition) is np.ndarray:
        return np.where(condition, a, b)
    chosen, other = (a, b) if condition else (b, a)
    kind = _NUMPY_SCALAR.get(type(chosen))
    if kind is None:
        return chosen
    if type(other) is np.ndarray:
        return np.zeros(other.shape, other.dtype) if chosen == 0 else np.full(other.shape, chosen, other.dtype)
    return kind(chosen)


def _scalar_reduction(ufunc):
    """``ufunc``.reduce over an axis of an array; a numpy scalar (one problem's value) is its own reduction."""
    return lambda x, axis: ufunc.reduce(x, axis) if type(x) is np.ndarray else x


def _scalar_sum(x, axis):
    """np.add.reduce(x, axis); of a vector by Python's sum, a third of the time (in the same order for
    fewer than 8 entries; beyond, numpy sums pairwise: the same up to roundoff)."""
    if x.ndim == 1:
        return np.float64(sum(x.tolist()))
    return np.add.reduce(x, axis)


def _scalar_extreme(ufunc, pick):
    """``ufunc`` (np.maximum or np.minimum), by a Python comparison ``pick(a, b)`` where both are scalars
    (NaN kept: neither comparison holds, and a + b is NaN)."""

    def extreme(a, b):
        if type(a) is np.ndarray or type(b) is np.ndarray:
            return ufunc(a, b)
        if pick(a, b):
            return a
        return b if pick(b, a) else a + b

    return extreme


def _scalar_within(x: np.ndarray, low: float, high: float):
    """low < x_i < high for every entry of one problem's vector, from its extremes (NaN fails, as in numpy)."""
    values = x.tolist()
    total = sum(values)  # (NaN where an entry is NaN: min and max may skip it)
    return np.bool_(total == total and low < min(values) and max(values) < high)


def _scalar_clamp_min(x, low):
    """max(x, low), NaN kept, as np.maximum does."""
    if type(x) is np.ndarray:
        return np.maximum(x, low)
    return x.dtype.type(low) if x < low else x


def _scalar_zeros(shape, like, dtype=None):
    """Zeros of ``shape`` less its leading batch axis (of one): a numpy scalar for (1,)."""
    kind = like.dtype.type if dtype is None else dtype  # (a numpy scalar type: np.float64, np.bool_, ...)
    return np.zeros(shape[1:], kind) if len(shape) > 1 else kind(0)


_ONE, _NONE = np.arange(1), np.arange(0)

SCALAR = SimpleNamespace(
    **{
        **vars(NUMPY),
        "where": _scalar_where,
        "expand": lambda x, dims=1: x,  # (a scalar broadcasts as it is)
        "clamp_min": _scalar_clamp_min,
        "maximum": _scalar_extreme(np.maximum, lambda a, b: a >= b),
        "minimum": _scalar_extreme(np.minimum, lambda a, b: a <= b),
        "isfinite": lambda x: np.isfinite(x) if type(x) is np.ndarray else np.bool_(math.isfinite(x)),
        "isin": lambda x, values: np.bool_(x in values),
        "within": _scalar_within,
        # (a finite sum has finite terms: one reduction, and the test of every entry only where it overflowed)
        "all_finite": lambda x: (
            np.True_ if math.isfinite(np.add.reduce(x, None)) else np.logical_and.reduce(np.isfinite(x), None)
        ),
        "sum": _scalar_sum,
        "all": _scalar_reduction(np.logical_and),
        "any": _scalar_reduction(np.logical_or),
        "amax": _scalar_reduction(np.maximum),
        "zeros_like": lambda x: np.zeros(x.shape, x.dtype) if type(x) is np.ndarray else x.dtype.type(0),
        "norm": lambda x: np.sqrt(x.dot(x)),  # (of a vector (p,): a fifth of the reduction's time)
        "flatnonzero": lambda x: _ONE if x else _NONE,
        "take": lambda x, index: x[None][index],  # (only to log accepted costs: the batch is all or none)
        "zeros": _scalar_zeros,
        "svd": _scalar_svd,
        "householder": _scalar_householder,
        "vecmat": lambda c, matrix: c @ matrix,
        "matvec": lambda matrix, c: matrix @ c,
        "combine_columns": lambda columns, v: v @ columns,
        "project_on_columns": lambda columns, w: columns @ w,
        "copy": lambda x: np.copy(x) if type(x) is np.ndarray else x,
        "arange": lambda n, like: _ONE,
        "of_batch": lambda tensor: tensor.detach().numpy()[0],
        "batch_of": lambda array: torch.from_numpy(np.asarray(array)[None]),
    }
)

TORCH = SimpleNamespace(
    where=torch.where,
    maximum=torch.maximum,
    minimum=torch.minimum,
    clamp_min=torch.clamp_min,
    sqrt=torch.sqrt,
    isfinite=torch.isfinite,
    all_finite=lambda x: torch.isfinite(x).reshape(len(x), -1).all(-1),
    within=lambda x, low, high: ((x > low) & (x < high)).all(-1),
    isin=lambda x, values: torch.isin(x, torch.as_tensor(values, device=x.device)),
    zeros_like=torch.zeros_like,
    sum=torch.sum,
    any=torch.any,
    all=torch.all,
    amax=lambda x, axis: x.amax(axis),
    norm=lambda x: torch.linalg.vector_norm(x, dim=-1),
    flatnonzero=lambda x: x.nonzero().flatten(),
    take=lambda x, index: x.index_select(0, index),  # about twice as fast as x[index]
    put=lambda target, index, part: target.index_copy_(0, index, part),
    concat=lambda parts, axis: torch.cat(parts, dim=axis),
    columns_first=lambda x: x.movedim(-1, 0),
    expand=lambda x, dims=1: x[..., None] if dims == 1 else x[..., None, None],
    eye=lambda p, like: torch.eye(p, dtype=like.dtype, device=like.device),
    zeros=lambda shape, like, dtype=None: torch.zeros(shape, dtype=dtype or like.dtype, device=like.device),
    integer=torch.long,
    boolean=torch.bool,
    **_batched_products(torch.sum),
    svd=jacobi_svd,
    householder=reduce_batched,
    warm_start=True,  # Jacobi rotations from the previous V: most sweeps saved
    host=False,  # bool(tensor) waits for the device: the solver branches on values only where it must
    copy=torch.clone,
    arange=lambda n, like: torch.arange(n, device=like.device),
    asarray=lambda tensor: tensor,
    tensor=lambda array: array,
    of_batch=lambda tensor: tensor,
    batch_of=lambda array: array,
)


def namespace(theta: torch.Tensor, unbatched: bool = False) -> SimpleNamespace:
    """`NUMPY` for a batch of at most `jacobi.LAPACK_BATCH` problems on the CPU (whose SVDs go to LAPACK
    either way), `SCALAR` there for a batch of one where ``unbatched`` (its problem takes arrays without
    the batch axis), else `TORCH`."""
    small = theta.device.type == "cpu" and theta.shape[0] <= LAPACK_BATCH and theta.dtype == torch.float64
    if not small:
        return TORCH
    return SCALAR if unbatched and theta.shape[0] == 1 else NUMPY


def namespace_of(array) -> SimpleNamespace:
    """`NUMPY` for a numpy array, `TORCH` for a tensor, `SCALAR` for a numpy scalar (one problem's value)."""
    if isinstance(array, np.ndarray):
        return NUMPY
    return SCALAR if isinstance(array, np.generic) else TORCH
