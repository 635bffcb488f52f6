"""A broadcast elementwise call as a rows x columns tile grid, read in place.

The output's dimensions are put in the memory order of the first full-size input (so a transposed or
channels-last input is read along its rows), dimensions of size 1 dropped, and neighbours merged where
every operand steps through them as through one (TensorIterator's coalescing). When at most two
dimensions remain, each input is one of

=====  ===========================================================
``v``  full: varies along both, unit column stride (vector loads)
``g``  full with any strides (transposed, sliced)
``o``  one value per row (an (R, 1) input: per-row parameters)
``i``  one value per column (a (C,) input broadcast over the rows)
``s``  one number (a 0-d tensor, a 1-element tensor, a stride-0 expansion)
=====  ===========================================================

and each output is stored full (``v``) or summed inside the kernel to its target shape (``s``, ``o``,
``i``: broadcasting's adjoint), when the target's elements follow the row (column) order.
Other broadcasts (three or more dimensions after merging) return None: the caller copies.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Indices up to this bound are computed in 32-bit integers (with room for a block past the end).
INT32_LIMIT = 2**31 - 2**16


@dataclass(frozen=True)
class Tiling:
    """How a kernel reads ``shape``'s elements: ``rows`` x ``columns`` in ``order`` (output dimensions
    outer to inner), one read pattern and (row, column) element strides per input, one store mode per output."""

    rows: int
    columns: int
    order: tuple[int, ...]
    reads: str
    strides: tuple[tuple[int, int], ...]
    stores: str
    wide: bool

    @property
    def count(self) -> int:
        return self.rows * self.columns


def tiling(tensors: Sequence[torch.Tensor], shape: torch.Size, targets: Sequence | None = None) -> Tiling | None:
    """The rows x columns view of an elementwise call over ``shape`` (module docstring), or None.

    Remembered per (shape, each input's shape and strides, targets): a training loop asks for the
    same few plans at every step, and a lookup costs a microsecond where the plan costs tens.
    """
    layouts = tuple((tuple(t.shape), t.stride()) for t in tensors)
    return _planned(tuple(shape), layouts, None if targets is None else tuple(tuple(t) for t in targets))


@functools.lru_cache(maxsize=1024)
def _planned(shape: tuple[int, ...], layouts: tuple, targets: tuple | None) -> Tiling | None:
    tensors = [torch.empty_strided(size, stride, device="meta") for size, stride in layouts]
    return _plan(tensors, torch.Size(shape), targets)


def _plan(tensors: Sequence[torch.Tensor], shape: torch.Size, targets: Sequence | None) -> Tiling | None:
    count = shape.numel()
    order = _memory_order(tensors, shape, count)
    kept = [d for d in order if shape[d] != 1]
    sizes = [shape[d] for d in kept]
    operands = [_strides(t, shape, kept) for t in tensors]
    groups = _groups(sizes, [*operands, _contiguous(sizes)])
    if len(groups) > 2:
        return None
    pairs = [_pair(s, sizes, groups) for s in operands]
    rows = _size(sizes, groups[-2]) if len(groups) == 2 else 1
    columns = _size(sizes, groups[-1]) if groups else 1
    reads = "".join(_read(t, pair, rows) for t, pair in zip(tensors, pairs, strict=True))
    stores = ""
    for target in targets or ():
        probe = _strides(torch.empty(tuple(target), device="meta"), shape, kept)
        stores += _store(torch.Size(target).numel(), _pair(probe, sizes, groups), count)
    extent = max([count, *(sum((n - 1) * s for n, s in zip(sizes, o, strict=True)) + 1 for o in operands)])
    return Tiling(rows, columns, tuple(order), reads, tuple(pairs), stores, extent > INT32_LIMIT)


def _memory_order(tensors: Sequence[torch.Tensor], shape: torch.Size, count: int) -> list[int]:
    """Output dimensions outer to inner in the memory order of the first full-size input (stable)."""
    reference = next((t for t in tensors if t.numel() == count and t.dim() == len(shape)), None)
    if reference is None or reference.is_contiguous():
        return list(range(len(shape)))
    strides = reference.stride()
    return sorted(range(len(shape)), key=lambda d: -strides[d])


def _strides(tensor: torch.Tensor, shape: torch.Size, order: list[int]) -> list[int]:
    if tensor.numel() == 1:
        return [0] * len(order)
    expanded = tensor.expand(shape).stride()
    return [expanded[d] for d in order]


def _contiguous(sizes: list[int]) -> list[int]:
    strides, step = [], 1
    for size in reversed(sizes):
        strides.append(step)
        step *= size
    return strides[::-1]


def _groups(sizes: list[int], operands: list[list[int]]) -> list[list[int]]:
    """Runs of neighbouring dimensions every operand steps through as through one."""
    groups: list[list[int]] = []
    for k in range(len(sizes)):
        if groups and all(s[k - 1] == s[k] * sizes[k] for s in operands):
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def _size(sizes: list[int], group: list[int]) -> int:
    size = 1
    for k in group:
        size *= sizes[k]
    return size


def _pair(strides: list[int], sizes: list[int], groups: list[list[int]]) -> tuple[int, int] | None:
    """(row, column) strides of an operand over the merged dimensions; None where it does not merge."""
    merged = []
    for group in groups:
        if any(strides[a] != strides[b] * sizes[b] for a, b in zip(group, group[1:], strict=False)):
            return None
        merged.append(strides[group[-1]])
    return tuple(([0, 0] + merged)[-2:])


def _read(tensor: torch.Tensor, pair: tuple[int, int], rows: int) -> str:
    row, column = pair
    if tensor.numel() == 1 or (row == 0 and column == 0):
        return "s"
    if rows > 1 and column == 0:
        return "o"
    if rows > 1 and row == 0:
        return "i"
    return "v" if column == 1 else "g"


def _store(numel: int, pair: tuple[int, int] | None, count: int) -> str:
    if numel == count or pair is None:
        return "v"  # full (a target that does not follow the rows: stored full, summed afterwards)
    if numel == 1:
        return "s"
    row, column = pair
    if column == 0 and row == 1:
        return "o"
    if row == 0 and column == 1:
        return "i"
    return "v"  # stored full, summed afterwards
