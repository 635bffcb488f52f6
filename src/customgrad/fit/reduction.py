"""The reduction of a least-squares block [J | r] to its small triangular factor R, one row per way.

[J | r] = Q R with R of size (p + 1) square: R's leading p x p block is the R of J and its last column
holds Q^T r, which is all a Levenberg-Marquardt step needs (||J_j|| = ||R_j||, J^T r = R^T Q^T r, the
singular values of J). The ways differ only in where the rows live:

- ``local``: one block of rows, an R-only Householder QR.
- ``batched``: a leading batch of independent blocks (one per curve), one batched QR.
- ``stacked``: the R's of several row shards (or chunks) stacked and QR-ed again (TSQR), so no shard
  ever sends its rows, and J^T J is never formed (it would square the condition number).

Each takes blocks of shape (..., rows, p + 1) and returns R of shape (..., p + 1, p + 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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


def reduce_stacked(factors: Iterable[torch.Tensor]) -> torch.Tensor:
    """R of the rows of several shards from their R's alone: QR of the stacked R's (TSQR)."""
    return reduce_local(torch.cat(list(factors), dim=-2))


REDUCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "local": reduce_local,
    "batched": reduce_batched,
    "stacked": reduce_stacked,
}
