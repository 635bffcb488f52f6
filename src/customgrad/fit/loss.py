"""Robust losses rho(z) of squared residuals z = r^2, with rho' and rho'' (SciPy's ``least_squares`` set).

The fit minimises cost = sum_i rho(r_i^2); ``linear`` is ordinary least squares.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import UsageError

Rho = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _soft_l1(z):
    # rho(z) = 2 (sqrt(1 + z) - 1); below z = 1 as 2 z / (sqrt(1 + z) + 1), free of the cancellation
    # that made it 0 for z < 1e-16 (residuals of 1e-8 data); above, as written (z = inf stays inf)
    s = torch.sqrt(1 + z)
    return torch.where(z < 1, 2 * z / (s + 1), 2 * (s - 1)), 1 / s, -0.5 / (s * s * s)


def _huber(z):
    # rho(z) = z for z <= 1, 2 sqrt(z) - 1 beyond
    s = torch.sqrt(z.clamp_min(1.0))
    inside = z <= 1
    return (
        torch.where(inside, z, 2 * s - 1),
        torch.where(inside, 1.0, 1 / s),
        torch.where(inside, 0.0, -0.5 / (s * s * s)),
    )


def _cauchy(z):
    # rho(z) = log(1 + z)
    t = 1 / (1 + z)
    return torch.log1p(z), t, -t * t


# "linear" (rho(z) = z) is least squares itself: no rho
LOSSES: dict[str, Rho | None] = {"linear": None, "soft_l1": _soft_l1, "huber": _huber, "cauchy": _cauchy}


def get_loss(name: str) -> Rho | None:
    """The rho function for ``name`` in {"linear", "soft_l1", "huber", "cauchy"}; None for linear."""
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}: choose one of {{{', '.join(LOSSES)}}}")
    return LOSSES[name]


def robust_cost(rho: Rho | None, r: torch.Tensor) -> float:
    """cost = sum rho(r^2) (sum of squares when ``rho`` is None)."""
    if rho is None:
        if r.device.type == "cpu" and not r.requires_grad:
            array = r.numpy()  # a numpy dot costs a fraction of a torch dispatch on small problems
            return float(array @ array)
        return float(r @ r)
    return float(rho(r * r)[0].sum())


def robust_linearization(rho: Rho, r: torch.Tensor, jacobian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals and Jacobian scaled so that a Gauss-Newton step minimises sum rho(r^2) (Triggs).

    With z = r^2: J <- sqrt(rho' + 2 rho'' z) J and r <- rho' r / sqrt(rho' + 2 rho'' z), so that
    J^T r = J^T rho' r, the gradient of cost / 2.
    """
    z = r * r
    _, d1, d2 = rho(z)
    scale = torch.sqrt((d1 + 2 * d2 * z).clamp_min(torch.finfo(r.dtype).eps))
    return d1 * r / scale, jacobian * scale.unsqueeze(-1)
