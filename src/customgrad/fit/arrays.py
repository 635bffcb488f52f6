"""The array operations `lm` runs its per-round arithmetic with: on torch tensors, or on numpy arrays.

The solver's state is a few (B, p) arrays, so at small B each operation costs its dispatch, not its
arithmetic: about 1-3 us for a torch call on the CPU against 0.2-0.7 us for numpy. `namespace` picks
numpy for small batches on the CPU (`fit`'s single problem: B = 1) and torch elsewhere (batches, GPU);
the solver is written once against either (`xp.where`, `xp.maximum`, ...). The model, its Jacobian and
its QR stay torch: `xp.asarray` and `xp.tensor` convert at that boundary (no copy on the CPU).
``host``: whether reading a value costs no wait for a device (numpy): there the solver branches to skip
work that no problem of the round needs (a status test that fired nowhere, a restart nobody made).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from .jacobi import LAPACK_BATCH, jacobi_svd


def _numpy_svd(matrix: np.ndarray, rhs: np.ndarray, start=None):
    """`jacobi.jacobi_svd`'s contract by LAPACK (``start`` unused): s, V^T and diag(s) U^T rhs."""
    if len(matrix) == 1:  # a third less time than the stacked call
        u, values, vt = np.linalg.svd(matrix[0])
        return values[None], vt[None], values * (rhs @ u)  # (rhs (1, p): (U^T rhs)^T = rhs^T U)
    u, values, vt = np.linalg.svd(matrix)
    return values, vt, values * (u.swapaxes(-1, -2) @ rhs[..., None])[..., 0]


def _numpy_put(target: np.ndarray, index: np.ndarray, part: np.ndarray) -> None:
    target[index] = part


NUMPY = SimpleNamespace(
    name="numpy",
    where=np.where,
    maximum=np.maximum,
    minimum=np.minimum,
    clamp_min=np.maximum,
    sqrt=np.sqrt,
    isfinite=np.isfinite,
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
    permute=lambda x, axes: x.transpose(axes),
    eye=lambda p, like: np.eye(p, dtype=like.dtype),
    zeros=lambda shape, like, dtype=None: np.zeros(shape, dtype=like.dtype if dtype is None else dtype),
    ones=lambda shape, like, dtype=None: np.ones(shape, dtype=like.dtype if dtype is None else dtype),
    integer=np.int64,
    boolean=np.bool_,
    svd=_numpy_svd,
    warm_start=False,  # LAPACK starts from scratch
    host=True,  # bool(array) reads host memory: the solver may skip work that no problem needs
    copy=np.copy,
    arange=lambda n, like: np.arange(n),
    asarray=lambda tensor: tensor.detach().numpy(),
    tensor=torch.from_numpy,
)

TORCH = SimpleNamespace(
    name="torch",
    where=torch.where,
    maximum=torch.maximum,
    minimum=torch.minimum,
    clamp_min=torch.clamp_min,
    sqrt=torch.sqrt,
    isfinite=torch.isfinite,
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
    permute=lambda x, axes: x.permute(*axes),
    eye=lambda p, like: torch.eye(p, dtype=like.dtype, device=like.device),
    zeros=lambda shape, like, dtype=None: torch.zeros(shape, dtype=dtype or like.dtype, device=like.device),
    ones=lambda shape, like, dtype=None: torch.ones(shape, dtype=dtype or like.dtype, device=like.device),
    integer=torch.long,
    boolean=torch.bool,
    svd=jacobi_svd,
    warm_start=True,  # Jacobi rotations from the previous V: most sweeps saved
    host=False,  # bool(tensor) waits for the device: the solver branches on values only where it must
    copy=torch.clone,
    arange=lambda n, like: torch.arange(n, device=like.device),
    asarray=lambda tensor: tensor,
    tensor=lambda array: array,
)


def namespace(theta: torch.Tensor) -> SimpleNamespace:
    """`NUMPY` for a batch of at most `jacobi.LAPACK_BATCH` problems on the CPU (whose SVDs go to LAPACK
    either way), else `TORCH`."""
    small = theta.device.type == "cpu" and theta.shape[0] <= LAPACK_BATCH and theta.dtype == torch.float64
    return NUMPY if small else TORCH


def namespace_of(array) -> SimpleNamespace:
    """`NUMPY` for a numpy array, `TORCH` for a tensor."""
    return NUMPY if isinstance(array, np.ndarray) else TORCH
