"""The dense stacked global fit as people write it by hand: one residual over all curves, parameters
[shared..., local of curve 0..., local of curve 1...], solved by SciPy's least_squares with the exact
dense Jacobian; standard errors from (J^T J)^-1 s^2, s^2 = sum r^2 / (points - parameters)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares


def dense_global_fit(model, gradient, x, y, shared_start, local_start, *, method="lm"):
    """``model(x, shared, local)`` -> (B, N) predictions, ``gradient(x, shared, local)`` -> (d/dshared (S, B, N),
    d/dlocal (L, B, N)); returns shared (S,), local (B, L), their stderr, the cost and the SciPy result."""
    batch, size = y.shape
    S, L = len(shared_start), local_start.shape[1]

    def unpack(p):
        return p[:S], p[S:].reshape(batch, L)

    def residuals(p):
        shared, local = unpack(p)
        return (model(x, shared, local) - y).ravel()

    def jacobian(p):
        shared, local = unpack(p)
        d_shared, d_local = gradient(x, shared, local)
        dense = np.zeros((batch * size, S + batch * L))
        dense[:, :S] = d_shared.reshape(S, -1).T
        for b in range(batch):
            dense[b * size : (b + 1) * size, S + b * L : S + (b + 1) * L] = d_local[:, b, :].T
        return dense

    start = np.concatenate([shared_start, local_start.ravel()])
    tight = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=100000)
    solution = least_squares(residuals, start, jac=jacobian, method=method, **tight)
    dense = jacobian(solution.x)
    cost = float(np.sum(solution.fun**2))
    variance = cost / (batch * size - len(start))
    q, r = np.linalg.qr(dense)
    inverse_r = np.linalg.inv(r)
    covariance = variance * inverse_r @ inverse_r.T
    stderr = np.sqrt(np.diag(covariance))
    shared, local = unpack(solution.x)
    shared_error, local_error = unpack(stderr)
    return shared, local, shared_error, local_error, cost, covariance, solution


def decays(x, shared, local):
    """a_b exp(-k x) + c_b, k shared."""
    (k,), (a, c) = shared, local.T
    return a[:, None] * np.exp(-k * x)[None, :] + c[:, None]


def decays_gradient(x, shared, local):
    (k,), a = shared, local[:, 0]
    e = np.exp(-k * x)[None, :] * np.ones((len(a), 1))
    return (-a[:, None] * x * e)[None], np.stack([e, np.ones_like(e)])


def gaussians(x, shared, local):
    """a_b exp(-(x - m_b)^2 / (2 s^2)) + c_b, width s shared."""
    (s,), (a, m, c) = shared, local.T
    return a[:, None] * np.exp(-((x[None, :] - m[:, None]) ** 2) / (2 * s**2)) + c[:, None]


def gaussians_gradient(x, shared, local):
    (s,), a, m = shared, local[:, 0], local[:, 1]
    d = x[None, :] - m[:, None]
    e = np.exp(-(d**2) / (2 * s**2))
    return (a[:, None] * e * d**2 / s**3)[None], np.stack([e, a[:, None] * e * d / s**2, np.ones_like(e)])


def two_decays(x, shared, local):
    """a_b exp(-k x) + c_b exp(-q x), both rates k and q shared."""
    (k, q), (a, c) = shared, local.T
    return a[:, None] * np.exp(-k * x)[None, :] + c[:, None] * np.exp(-q * x)[None, :]


def two_decays_gradient(x, shared, local):
    (k, q), (a, c) = shared, local.T
    slow, fast = np.exp(-k * x)[None, :] * np.ones((len(a), 1)), np.exp(-q * x)[None, :] * np.ones((len(a), 1))
    return np.stack([-a[:, None] * x * slow, -c[:, None] * x * fast]), np.stack([slow, fast])
