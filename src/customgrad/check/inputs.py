"""Input variants the battery derives from the example inputs: float64 copies, other random points,
non-contiguous layouts, other sizes and dtypes. Non-floating tensors and non-tensors are kept as given.
"""

from __future__ import annotations

from typing import Any

import torch

from .subject import Subject, make_generator


def float64_copies(subject: Subject) -> list[Any]:
    """The example inputs with every floating tensor copied to float64 (values unchanged)."""
    return subject.with_values(
        {p: subject.example_inputs[p].detach().to(torch.float64).clone() for p in subject.differentiable_positions}
    )


#: Random points, as (label, how to draw a value from the example tensor in float64).
POINTS = (
    ("example values", lambda x, g: x.clone()),
    ("random (both signs)", lambda x, g: random_like(x.shape, g, x.device)),
    ("near zero", lambda x, g: 0.05 * random_like(x.shape, g, x.device)),
)


def sample_points(subject: Subject, seed: int = 0) -> list[tuple[str, list[Any]]]:
    """The example point and other random points (both signs, near zero) in float64."""
    generator = make_generator(seed)
    base = float64_copies(subject)
    return [
        (label, subject.with_values({p: draw(base[p], generator) for p in subject.differentiable_positions}))
        for label, draw in POINTS
    ]


def non_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout: transposed storage (2-D and up) or every other element."""
    if tensor.dim() >= 2:
        return tensor.detach().transpose(-1, -2).contiguous().transpose(-1, -2)
    if tensor.dim() == 1:
        storage = torch.zeros(2 * tensor.shape[0], dtype=tensor.dtype, device=tensor.device)
        view = storage[::2]
        view.copy_(tensor.detach())
        return view
    return tensor.detach().clone()


def random_like(shape: tuple[int, ...], generator: torch.Generator, device=None) -> torch.Tensor:
    """Standard normal float64 values, drawn on the CPU (reproducible) and moved to ``device``."""
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device)


def values_not_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Values with bits below float32's resolution, so that float32 rounding changes them."""
    return tensor + tensor.abs().clamp_min(1e-3) * 1e-9 * (
        1 + torch.arange(tensor.numel(), device=tensor.device).reshape(tensor.shape)
    )
