"""SVD A = U diag(s) V^T of a batch of small square matrices by one-sided Jacobi rotations (Hestenes).

Rotations of column pairs orthogonalise A's columns: A V = U diag(s). Each rotation is a few
elementwise operations on all matrices of the batch at once, so a batch of 10^4 4 x 4 matrices costs
a few milliseconds, where LAPACK called once per matrix costs tens. One-sided Jacobi also finds small
singular values to high relative accuracy.

Layout: one tensor (p, 2p, B) holds in slot k a column of A V above the same column of V, with the
batch innermost (long contiguous runs for every elementwise operation and sum). Each round rotates
slot k against slot k + p/2 (two slices, no gather), then reorders the slots by the circle method
(one concatenation of whole slots) so that a sweep of p - 1 rounds meets every pair once. The
column order does not matter: the singular values are sorted at the end, and V's columns with them.
"""

from __future__ import annotations

import torch

# Sweeps over all column pairs; converged batches stop early (quadratic convergence: 6-10 sweeps).
MAX_SWEEPS = 30
# Batches of at most this many matrices on the CPU go to LAPACK (`torch.linalg.svd`), a few microseconds per
# matrix, where a round of rotations costs tens of microseconds of dispatch whatever the batch (`fit`'s
# single problem: B = 1; the last few curves of a batch).
LAPACK_BATCH = 8


def jacobi_svd(
    matrix: torch.Tensor, rhs: torch.Tensor, start: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Singular values s (B, p) in decreasing order, V^T (B, p, p), and diag(s) U^T rhs (B, p).

    ``rhs`` (B, p) is projected on the left singular vectors times their singular values,
    (A V)^T rhs, which needs no division (a zero singular value gives 0, not NaN). ``start``: an
    orthogonal V (B, p, p) near the answer (the previous iteration's), which saves most sweeps.
    """
    p = matrix.shape[-1]
    if matrix.device.type == "cpu" and matrix.shape[:-2].numel() <= LAPACK_BATCH:
        u, values, vt = torch.linalg.svd(matrix)
        return values, vt, values * (u.transpose(-1, -2) @ rhs.unsqueeze(-1)).squeeze(-1)
    if start is None:
        start = torch.eye(p, dtype=matrix.dtype, device=matrix.device).expand(*matrix.shape[:-2], p, p)
    else:
        matrix = matrix @ start
    slots = torch.cat([matrix, start], dim=-2).permute(2, 1, 0)  # (p, 2p, B)
    if p % 2:  # an odd count gets an empty slot (a zero column never rotates)
        slots = torch.cat([slots, slots.new_zeros(1, 2 * p, slots.shape[-1])])
    slots = slots.contiguous()
    order, permutation = _circle(len(slots))
    half = len(slots) // 2
    runs = _runs(permutation, half)
    # off-diagonal level counted as converged: a few roundoffs (a tighter test can cycle on roundoff)
    eps = p * torch.finfo(matrix.dtype).eps
    # converged when a sweep's worth of consecutive rounds (any p - 1 of them meet every pair) rotates nothing
    sweep, quiet = len(slots) - 1, 0
    for _ in range(MAX_SWEEPS * sweep):
        halves = slots[:half], slots[half:]
        rotation = _rotation(slots[:, :p], half, eps)
        if rotation is None:
            quiet += 1
            if quiet >= sweep:
                break
        else:
            quiet = 0
            c, s = rotation
            a, b = halves
            halves = torch.addcmul(c * a, s, b, value=-1), torch.addcmul(c * b, s, a)
        # the next round's slots, in one copy of whole runs of slots
        slots = torch.cat([halves[part][begin:end] for part, begin, end in runs])
        order = [order[k] for k in permutation]
    return _sorted(slots, order, p, rhs)


def _rotation(columns: torch.Tensor, half: int, eps: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """cos and sin (half, 1, B) of the rotations that make the columns (slots, p, B) of slot k and k + half
    orthogonal, or None when every pair already is."""
    squares = (columns * columns).sum(1, keepdim=True)
    alpha, beta = squares[:half], squares[half:]
    gamma = (columns[:half] * columns[half:]).sum(1, keepdim=True)
    rotate = gamma.abs() > eps * torch.sqrt(alpha * beta)
    if not bool(rotate.any()):
        return None
    safe = torch.where(rotate, gamma, 1.0)
    zeta = (beta - alpha) / (2 * safe)
    t = torch.copysign(1 / (zeta.abs() + torch.sqrt(1 + zeta * zeta)), zeta)
    t = torch.where(rotate, t, 0.0)
    c = torch.rsqrt(1 + t * t)
    return c, c * t


def _sorted(slots: torch.Tensor, order: list[int], p: int, rhs: torch.Tensor):
    """Values, V^T and projections from the slots, in decreasing order of the singular values."""
    where = {column: slot for slot, column in enumerate(order)}
    slots = slots[torch.tensor([where[column] for column in range(p)], device=slots.device)]  # padding dropped
    columns = slots[:, :p]  # (column, entry, B)
    values = torch.sqrt((columns * columns).sum(1)).T.contiguous()
    projected = (columns * rhs.T.unsqueeze(0)).sum(1).T.contiguous()
    vectors = slots[:, p:].permute(2, 1, 0)  # (B, entry, column)
    ranking = torch.argsort(values, dim=-1, descending=True)
    values = values.gather(-1, ranking)
    projected = projected.gather(-1, ranking)
    v = vectors.gather(-1, ranking.unsqueeze(-2).expand_as(vectors))
    return values, v.transpose(-1, -2), projected


def _circle(slots: int) -> tuple[list[int], list[int]]:
    """The slots' initial column ids, and the slot permutation of the circle method.

    Slot k meets slot k + slots/2. As players on a circle: the pairs are (P[i], P[-1 - i]); the next
    round keeps P[0] and turns the rest by one. Slot k holds P[k] for k < slots/2, else P[slots/2 - 1 - k].
    """
    half = slots // 2
    to_player = list(range(half)) + [slots - 1 - (k - half) for k in range(half, slots)]
    to_slot = {player: slot for slot, player in enumerate(to_player)}
    # after the turn, player position q holds who was at q - 1 (q >= 2), position 1 who was last
    came_from = [0, slots - 1, *range(1, slots - 1)]
    permutation = [to_slot[came_from[to_player[k]]] for k in range(slots)]
    return list(range(slots)), permutation


def _runs(permutation: list[int], half: int) -> list[tuple[int, int, int]]:
    """The gather ``slots[permutation]`` as runs (half, begin, end) of consecutive slots within one half."""
    runs: list[list[int]] = []
    for source in permutation:
        part, position = divmod(source, half)
        if runs and runs[-1][0] == part and runs[-1][2] == position:
            runs[-1][2] += 1
        else:
            runs.append([part, position, position + 1])
    return [tuple(run) for run in runs]
