"""A fit's model with its Jacobian held one chunk of rows at a time: [J | r] -> R accumulated by TSQR.

For data too long for an n x (p + 1) Jacobian in memory: each chunk's block is reduced to its
(p + 1)-square R and stacked onto the running R (QR again), so memory is O(chunk p + n) instead of
O(n p). What a fit needs from J follows from R: the Levenberg-Marquardt step, column norms, the
singular values and V for standard errors. The geodesic acceleration (which needs J v row by row) is
not used with chunks.
"""

from __future__ import annotations

import torch

from .model import Model
from .reduction import reduce_local, reduce_stacked


class ChunkedModel(Model):
    """A single fit's `model.Model` over all rows, whose `augmented` and `jacobian` give R instead of J.

    Parameters
    ----------
    chunk_size : int
        Rows per chunk.
    """

    def __init__(self, function, data, y, weights, specs, text, chunk_size: int):
        super().__init__(function, data, y, weights, specs, text)
        self.chunks = [
            Model(
                function,
                {name: column[:, start : start + chunk_size] for name, column in data.items()},
                y[:, start : start + chunk_size],
                None if weights is None else weights[:, start : start + chunk_size],
                specs,
                text,
            )
            for start in range(0, max(y.shape[-1], 1), chunk_size)
        ]

    def __reduce__(self):
        """Pickled as what it is built from, its chunks' size included (`model.Model.__reduce__`)."""
        rebuild, (kind, arguments, _, pointwise) = super().__reduce__()
        return rebuild, (kind, arguments, {"chunk_size": self.chunks[0].size}, pointwise)

    def augmented(self, theta: torch.Tensor, index=None, *, external: bool = False) -> torch.Tensor:
        """R of [J | r] over all rows, (p + 1) square, built chunk by chunk (``theta`` (p,))."""
        running = None
        for chunk in self.chunks:
            factor = reduce_local(chunk.augmented(theta, external=external))
            running = factor if running is None else reduce_stacked([running, factor])
        return running

    def jacobian(self, theta: torch.Tensor, *, external: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals r (n,) and R of J (p x p) in place of J: same column norms, singular values and V."""
        residuals, running = [], None
        for chunk in self.chunks:
            r, jacobian = chunk.jacobian(theta, external=external)
            residuals.append(r)
            factor = reduce_local(jacobian)
            running = factor if running is None else reduce_stacked([running, factor])
        return torch.cat(residuals), running

    def check_pointwise(self, theta: torch.Tensor) -> None:
        """As `Model.check_pointwise`, on the first chunk; its verdict holds for all."""
        first = self.chunks[0]
        first.check_pointwise(theta)
        self.pointwise = first.pointwise
        for chunk in self.chunks:
            chunk.pointwise = first.pointwise
