"""The one shared helper for comparing against an independent reference.

Every numerical test compares what customgrad computes with a reference computed another way
(eager autograd in float64, finite differences, SciPy, NIST certified values) through
`assert_matches_reference`, which on failure prints the worst and the first mismatching elements.
"""

from __future__ import annotations

import pytest
import torch


def assert_matches_reference(
    actual, expected, *, rtol: float, atol: float = 0.0, what: str = "value", max_report: int = 5
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise, NaN equal to NaN.

    Parameters
    ----------
    actual, expected : tensor, array or number
        What the code under test gave, and the independent reference. Compared in float64 on CPU,
        after broadcasting ``actual`` to ``expected``'s shape is *not* done: shapes must match.
    rtol, atol : float
        Relative and absolute tolerance.
    what : str
        Name of the compared quantity, used in the failure message.
    """
    actual_t = _as_float64(actual)
    expected_t = _as_float64(expected)
    assert actual_t.shape == expected_t.shape, (
        f"{what}: shape {tuple(actual_t.shape)} differs from the reference's {tuple(expected_t.shape)}"
    )
    both_nan = torch.isnan(actual_t) & torch.isnan(expected_t)
    same_inf = torch.isinf(expected_t) & (actual_t == expected_t)
    error = (actual_t - expected_t).abs()
    bound = atol + rtol * expected_t.abs()
    # An infinite reference needs the same infinity: its bound rtol * inf would accept anything but NaN.
    bad = ~(both_nan | same_inf | (torch.isfinite(expected_t) & (error <= bound)))
    if not bool(bad.any()):
        return
    indices = bad.nonzero().tolist()
    relative = torch.where(bad, error / expected_t.abs().clamp_min(1e-300), torch.zeros_like(error))
    worst = torch.nan_to_num(relative, nan=float("inf")).flatten().argmax().item()
    worst_index = list(torch.unravel_index(torch.tensor(worst), expected_t.shape)) if expected_t.dim() else []
    lines = [
        f"{what}: {len(indices)} of {expected_t.numel()} elements differ "
        f"(rtol={rtol:g}, atol={atol:g}); worst relative error {relative.flatten()[worst].item():.3g}"
        f" at index {[int(i) for i in worst_index]}"
    ]
    for index in indices[:max_report]:
        a, e = actual_t[tuple(index)].item(), expected_t[tuple(index)].item()
        lines.append(f"  at {index}: got {a!r}, expected {e!r}")
    raise AssertionError("\n".join(lines))


def _as_float64(value) -> torch.Tensor:
    # Python numbers and lists go straight to float64 (torch.as_tensor alone would round them to float32).
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


def _engines() -> list:
    from customgrad.backends.cpu import compiler

    native = pytest.param("native", marks=pytest.mark.skipif(compiler() is None, reason="needs a C compiler"))
    return [native, "torch"]


#: Both LM engines of fit and fit_batch: compiled C per curve, and Python/torch (each checked against references).
ENGINES = _engines()
