"""Built-in Functions against eager autograd of the same expressions in float64."""

import pytest
import torch

from customgrad.library import (
    P2,
    IdentityWithSquareGrad,
    IdentityWithSquareGradHandwritten,
    LegendreP3,
    LegendreP3Handwritten,
    P2Handwritten,
)
from reference import assert_matches_reference

EAGER = {
    "P2": lambda x: x**2 + 2 * x,
    "LegendreP3": lambda x: 0.5 * (5 * x**3 - 3 * x),
}
CASES = [(P2, "P2"), (P2Handwritten, "P2"), (LegendreP3, "LegendreP3"), (LegendreP3Handwritten, "LegendreP3")]


@pytest.mark.parametrize(("function", "name"), CASES, ids=lambda v: getattr(v, "__name__", v))
def test_backward_matches_eager_autograd_in_float64(function, name):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(257, dtype=torch.float64, generator=generator, requires_grad=True)
    upstream = torch.randn(257, dtype=torch.float64, generator=generator)
    got = torch.autograd.grad(function.apply(x), x, upstream)[0]
    reference_x = x.detach().clone().requires_grad_(True)
    expected = torch.autograd.grad(EAGER[name](reference_x), reference_x, upstream)[0]
    assert_matches_reference(function.apply(x), EAGER[name](x.detach()), rtol=1e-14, atol=1e-14, what="forward")
    assert_matches_reference(got, expected, rtol=1e-13, atol=1e-13, what=f"{name} gradient")


@pytest.mark.parametrize(("function", "name"), CASES, ids=lambda v: getattr(v, "__name__", v))
def test_passes_torch_gradcheck(function, name):
    x = torch.randn(11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(function.apply, (x,))


@pytest.mark.parametrize("function", [IdentityWithSquareGrad, IdentityWithSquareGradHandwritten])
def test_custom_gradient_example_returns_exactly_grad_times_2x(function):
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(50, dtype=torch.float64)
    y = function.apply(x)
    assert torch.equal(y, x.detach())
    (gradient,) = torch.autograd.grad(y, x, upstream)
    assert torch.equal(gradient, upstream * 2 * x.detach())
