"""Data-parallel fitting on torch.distributed: every rank holds a shard of the rows, all take the same steps.

Levenberg-Marquardt needs from the rows only R of [J | r] and sums over rows (the cost, J^T r''), so
the ranks exchange (p + 1)-square R's (all-gather, then QR of the stack: TSQR) and scalars
(all-reduce), never rows, and never J^T J. Every rank then holds the same R and the same costs and
makes the same decisions. Gradient-based solvers all-reduce the gradient of the summed cost.

Ranks that disagree on what they fit (formula, parameters, data columns, options) would hang or
diverge: `Shards.check_agreement` compares a checksum first, and every rank raises the same error.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..errors import FitError, UsageError
from .reduction import reduce_local, reduce_stacked


class Shards:
    """The collective operations of a fit whose rows are spread over the ranks of the default group."""

    def __init__(self):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise UsageError(
                "distributed=True needs an initialised process group: call "
                "torch.distributed.init_process_group(...) first, or start the program with torchrun"
            )
        self.dist = dist
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        # NCCL moves CUDA tensors only; gloo CPU ones
        nccl = dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def _collective(self, operation, *arguments, **options):
        """Run a collective; a lost or timed-out rank becomes one `FitError` that says so."""
        try:
            return operation(*arguments, **options)
        except RuntimeError as error:  # gloo/NCCL errors (DistBackendError is a RuntimeError)
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise FitError(
                f"rank {self.rank} of this distributed fit lost contact with the others (a rank died or did "
                f"not reach the same step within the process group timeout): {first_line}"
            ) from None

    def gather_objects(self, value) -> list:
        """Every rank's ``value`` (any picklable object), in rank order."""
        parts = [None] * self.world
        self._collective(self.dist.all_gather_object, parts, value)
        return parts

    def sum(self, value):
        """The sum over ranks of a float or an array (float64)."""
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float64), device=self.device).clone()
        self._collective(self.dist.all_reduce, tensor)
        summed = tensor.cpu().numpy()
        return float(summed) if summed.ndim == 0 else summed

    def minimum(self, value: float) -> float:
        """The smallest ``value`` over ranks."""
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        self._collective(self.dist.all_reduce, tensor, op=self.dist.ReduceOp.MIN)
        return float(tensor[0])

    def factor(self, augmented: torch.Tensor) -> torch.Tensor:
        """R of the rows of every rank's [J | r]: local R's all-gathered and QR-ed again (TSQR)."""
        local = reduce_local(augmented.to(torch.float64)).to(self.device)
        gathered = [torch.empty_like(local) for _ in range(self.world)]
        self._collective(self.dist.all_gather, gathered, local.contiguous())
        return reduce_stacked(gathered)

    def raise_together(
        self, failure: Exception | None, description: str, same: str = "only the rows may differ"
    ) -> None:
        """Raise on every rank when any rank's input failed, or when the ranks' ``description`` texts differ.

        One all-reduce of a checksum of ``description`` and a failure flag: a rank with bad input
        makes all ranks raise instead of leaving the others waiting in the next collective.
        """
        digest = int.from_bytes(hashlib.sha256(description.encode()).digest()[:7], "little")
        failed = self.rank + 1 if failure is not None else 0
        # min and max of the checksum (as min of it and of its negation), the last failing rank, and
        # whether every rank failed (the min of a flag)
        values = torch.tensor([digest, -digest, -failed, int(failed > 0)], dtype=torch.int64, device=self.device)
        self._collective(self.dist.all_reduce, values, op=self.dist.ReduceOp.MIN)
        if failure is not None:
            failure.rank_local = int(values[3]) == 0  # this rank's own input: say it here too
            raise failure
        if int(values[2]) != 0:
            raise UsageError(
                f"rank {-int(values[2]) - 1} of this distributed fit rejected its input (see its error); "
                "every rank stops"
            )
        if int(values[0]) != digest or int(-values[1]) != digest:
            raise UsageError(
                f"the {self.world} ranks of this distributed fit disagree on the model, parameters, data columns "
                f"or options (rank {self.rank} fits {description}); give every rank the same ones, {same}"
            )

    def all_reduce_gradient(self, leaf: torch.Tensor) -> None:
        """Sum ``leaf.grad`` over ranks (the cost is a sum over all rows)."""
        if leaf.grad is not None:
            grad = leaf.grad.to(self.device)
            self._collective(self.dist.all_reduce, grad)
            leaf.grad.copy_(grad.to(leaf.grad.device))


def local_shard(count: int, rank: int, world: int) -> slice:
    """Rows [start, stop) of ``count`` that rank ``rank`` of ``world`` holds: contiguous, sizes differing by <= 1."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))
