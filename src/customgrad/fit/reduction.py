"""The reduction of a least-squares block [J | r] to its small triangular factor R, one row per way.

[J | r] = Q R with R of size (p + 1) square: R's leading p x p block is the R of J and its last column
holds Q^T r, which is all a Levenberg-Marquardt step needs (||J_j|| = ||R_j||, J^T r = R^T Q^T r, the
singular values of J). The ways differ only in where the rows live:

- ``local``: one block of rows, an R-only Householder QR.
- ``batched``: a leading batch of independent blocks (one per curve), one batched QR.
- ``gram``: a batch of blocks through their small Gram matrices and Cholesky (CholeskyQR), about five
  times faster than Householder on a CPU; the squared condition number is checked per block on the
  column-scaled Gram (unit diagonal), and blocks where its smallest scaled pivot is below `GRAM_PIVOT`
  (or where Cholesky fails) are redone by Householder QR.
- ``stacked``: the R's of several row shards (or chunks) stacked and QR-ed again (TSQR), so no shard
  ever sends its rows, and J^T J is never formed (it would square the condition number).

Each takes blocks of shape (..., rows, p + 1) and returns R of shape (..., p + 1, p + 1).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _padded(block: torch.Tensor) -> torch.Tensor:
    """Zero rows appended so that rows >= columns (a square R even for fewer rows than parameters)."""
    rows, columns = block.shape[-2:]
    if rows >= columns:
        return block
    return torch.cat([block, block.new_zeros(*block.shape[:-2], columns - rows, columns)], dim=-2)


def reduce_local(block: torch.Tensor) -> torch.Tensor:
    """R of one block [J | r] (rows, p + 1) by Householder QR."""
    return torch.linalg.qr(_padded(block), mode="r").R


def reduce_batched(blocks: torch.Tensor) -> torch.Tensor:
    """R of each of a batch of blocks (B, rows, p + 1), one batched Householder QR (LAPACK geqrf per curve)."""
    padded = _padded(blocks)
    # geqrf alone (no Q formed); its upper triangle is R
    factored, _ = torch.geqrf(padded)
    columns = padded.shape[-1]
    return factored[..., :columns, :].triu()


# A column-scaled Cholesky factor's smallest diagonal entry below this means a condition number above
# about its inverse: squared, more digits than float64 can spare would be lost. Those blocks use QR.
GRAM_PIVOT = 1e-4


def reduce_gram(blocks: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
    """R of each of a batch of blocks (B, rows, p + 1) by Cholesky of D^-1 A^T A D^-1 (QR where ill-conditioned).

    ``gram``, where given, is A^T A (B, p + 1, p + 1) already formed by the caller (overwritten).
    """
    gram = blocks.transpose(-1, -2) @ blocks if gram is None else gram
    # (elementwise work on the small (B, p + 1, p + 1) tensors in place and contiguous: ~1 ms of 8 per 10^4)
    norms = torch.sqrt(torch.diagonal(gram, dim1=-2, dim2=-1).clone())
    scale = torch.where(norms > 0, norms, 1.0)
    inverse = 1 / scale
    scaled = gram.mul_(inverse.unsqueeze(-1)).mul_(inverse.unsqueeze(-2))
    factor, info = torch.linalg.cholesky_ex(scaled, upper=True)
    pivots = torch.diagonal(factor, dim1=-2, dim2=-1)
    poor = (info != 0) | ~(pivots >= GRAM_PIVOT).all(-1)
    upper = factor.mul_(scale.unsqueeze(-2))
    redo = poor.nonzero().flatten()
    if len(redo):
        upper[redo] = reduce_batched(blocks[redo])
    return upper


def reduce_stacked(factors: Iterable[torch.Tensor]) -> torch.Tensor:
    """R of the rows of several shards from their R's alone: QR of the stacked R's (TSQR)."""
    return reduce_local(torch.cat(list(factors), dim=-2))
