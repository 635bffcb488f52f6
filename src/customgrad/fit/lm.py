"""Levenberg-Marquardt: minimise cost = ||r(theta)||^2 by trust-region steps
delta = -(J^T J + lambda D^2)^-1 J^T r, with ||D delta|| <= Delta (More's MINPACK variant).

Per iteration: one exact Jacobian, a QR of it and an SVD of the small R factor, then as many trial
steps as the trust region needs, each costing one residual evaluation and no new factorisation
(lambda is solved from the singular values). The step uses only R and Q^T r, pieces a batch or a
sharded data set can assemble (stacked QRs), and never forms J^T J, which squares the condition number.
D holds running maxima of the Jacobian's column norms, so the method is invariant to parameter scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

EPS = float(np.finfo(np.float64).eps)


@dataclass
class Outcome:
    """What a solver hands back: internal coordinates, status key (see `result.TERMINATION`), counts."""

    theta: torch.Tensor
    status: str
    cost: float
    evaluations: int
    jacobians: int
    steps: int
    history: list[float] = field(default_factory=list)


def factorize(jacobian: torch.Tensor, r: torch.Tensor, scale: torch.Tensor):
    """Singular values s, right vectors V^T and U^T r of J D^-1, via J = QR then svd(R D^-1)."""
    q, upper = torch.linalg.qr(jacobian)
    u, s, vt = torch.linalg.svd(upper / scale)
    return s.numpy(), vt.numpy(), (u.T @ (q.T @ r)).numpy()


def lm_parameter(s: np.ndarray, utr: np.ndarray, radius: float) -> tuple[float, np.ndarray]:
    """lambda >= 0 with ||delta_s(lambda)|| within 10% of ``radius``, and the step's V-coordinates.

    delta_s(lambda) = -V diag(s / (s^2 + lambda)) U^T r; lambda = 0 (Gauss-Newton, pseudo-inverse)
    when that step already fits. Newton's method on 1/||delta_s|| (Hebden), which converges from below.
    """
    a = s * utr
    keep = s > s[0] * EPS * len(s) if s[0] > 0 else np.zeros_like(s, dtype=bool)
    gauss_newton = np.where(keep, -utr / np.where(keep, s, 1.0), 0.0)
    norm = math.sqrt(float(gauss_newton @ gauss_newton))
    if norm <= 1.1 * radius:
        return 0.0, gauss_newton
    lam = 0.0 if keep.all() else EPS * s[0] ** 2
    for _ in range(60):
        denominator = s * s + lam
        coefficients = a / denominator
        q = math.sqrt(float(coefficients @ coefficients))
        if abs(q - radius) <= 0.1 * radius or q == 0:
            break
        derivative = -float((coefficients * coefficients) @ (1 / denominator)) / q
        lam = max(lam + (q - q * q / radius) / derivative, 0.0)
    return lam, -a / (s * s + lam)


def levenberg_marquardt(
    residuals: Callable,
    linearize: Callable,
    cost_of: Callable,
    theta: torch.Tensor,
    *,
    ftol: float = 1e-15,
    xtol: float = 1e-15,
    gtol: float = 1e-15,
    max_steps: int = 1000,
    factor: float = 100.0,
    on_step: Callable | None = None,
) -> Outcome:
    """Minimise cost_of(residuals(theta)) from ``theta`` (MINPACK's lmder logic, SVD-based lmpar).

    Parameters
    ----------
    residuals : callable
        theta -> r.
    linearize : callable
        (theta, r) -> (r_effective, J_effective), the residuals and Jacobian of the local
        least-squares model (plain r, J for the linear loss).
    cost_of : callable
        r -> cost = sum rho(r^2).
    ftol, xtol, gtol : float
        Stop when the actual and predicted relative reductions of the cost are both below ``ftol``,
        the trust radius is below ``xtol * ||D theta||``, or the cosine between r and every column of
        J is below ``gtol``.
    max_steps : int
        Maximum number of Jacobian evaluations (outer iterations).
    """
    r = residuals(theta)
    cost = cost_of(r)
    evaluations, jacobians, steps = 1, 0, 0
    history = [cost]
    scale = radius = None
    status = "max_steps"
    while jacobians < max_steps:
        r_eff, jacobian = linearize(theta, r)
        jacobians += 1
        if not bool(torch.isfinite(jacobian).all()):
            status = "nonfinite"
            break
        column_norms = torch.linalg.vector_norm(jacobian, dim=0)
        if scale is None:
            scale = torch.where(column_norms > 0, column_norms, 1.0)
            radius = factor * float(torch.linalg.vector_norm(scale * theta)) or factor
        else:
            scale = torch.maximum(scale, column_norms)
        if cost == 0:
            status = "exact"
            break
        gradient = (jacobian.T @ r_eff) / (column_norms * math.sqrt(cost))
        gradient_cosine = float(torch.nan_to_num(gradient, nan=0.0).abs().max()) if len(gradient) else 0.0
        if gradient_cosine <= gtol:
            status = "gtol"
            break
        s, vt, utr = factorize(jacobian, r_eff, scale)
        scale_np = scale.numpy()
        theta_norm = float(np.linalg.norm(scale_np * theta.numpy()))
        while True:
            lam, coordinates = lm_parameter(s, utr, radius)
            step_scaled = vt.T @ coordinates
            step_norm = float(np.linalg.norm(step_scaled))
            if steps == 0 and jacobians == 1:
                radius = min(radius, step_norm)
            trial = theta + torch.from_numpy(step_scaled / scale_np)
            r_trial = residuals(trial)
            evaluations += 1
            cost_trial = cost_of(r_trial)
            finite = math.isfinite(cost_trial)
            actual = (
                1 - cost_trial / cost if finite and 0.1 * math.sqrt(cost_trial) < math.sqrt(cost) else -1.0
            )
            linear_part = float(np.sum((s * coordinates) ** 2)) / cost
            damping_part = lam * step_norm**2 / cost
            predicted = linear_part + 2 * damping_part
            directional = -(linear_part + damping_part)
            ratio = actual / predicted if predicted != 0 else 0.0
            if ratio <= 0.25:
                shrink = 0.5 if actual >= 0 else 0.5 * directional / (directional + 0.5 * actual)
                if not finite or 0.1 * math.sqrt(cost_trial) >= math.sqrt(cost) or shrink < 0.1:
                    shrink = 0.1
                radius = shrink * min(radius, step_norm / 0.1)
            elif lam == 0 or ratio >= 0.75:
                radius = step_norm / 0.5
            accepted = ratio >= 1e-4
            if accepted:
                theta, r, cost = trial, r_trial, cost_trial
                theta_norm = float(np.linalg.norm(scale_np * theta.numpy()))
                steps += 1
                history.append(cost)
                if on_step is not None:
                    on_step(steps, cost)
            if abs(actual) <= ftol and predicted <= ftol and 0.5 * ratio <= 1:
                status = "ftol"
            elif radius <= xtol * theta_norm:
                status = "xtol"
            elif (abs(actual) <= EPS and predicted <= EPS and 0.5 * ratio <= 1) or radius <= EPS * theta_norm:
                status = "roundoff"
            elif cost == 0:
                status = "exact"
            elif not finite and radius <= EPS * max(theta_norm, 1.0):
                status = "nonfinite"
            else:
                status = ""
            if status or accepted:
                break
        if status:
            break
    else:
        status = "max_steps"
    return Outcome(
        theta=theta,
        status=status,
        cost=cost,
        evaluations=evaluations,
        jacobians=jacobians,
        steps=steps,
        history=history,
    )
