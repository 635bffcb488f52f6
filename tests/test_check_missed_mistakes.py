"""Wrong backwards the battery used to miss (issue 18, item 15): tiny gradients judged with an absolute
tolerance, backwards wrong only when some inputs need no gradient, and zero-stride grad_outputs and 0-d
inputs never tried. Each wrong Function is caught; each correct twin raises no alarm."""

from __future__ import annotations

import functools

import pytest
import torch

import customgrad

check = functools.partial(customgrad.check, compile=False, isolation="thread")


def _x(*shape: int, seed: int = 11) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _alarms(report) -> list:
    return [r for r in report.results if r.status in ("failed", "warning")]


# -- (a) tolerances relative to the gradient's own scale -----------------------------------------
class _ScaledSquare(torch.autograd.Function):
    """OFFSET + SCALE x^2 (class attributes read through ctx); backward returns FACTOR x the true gradient."""

    SCALE, OFFSET, FACTOR = 1.0, 0.0, 1.0

    @staticmethod
    def forward(ctx, x):
        cls = ctx._forward_cls
        ctx.save_for_backward(x)
        return cls.OFFSET + cls.SCALE * x * x

    @staticmethod
    def backward(ctx, grad_output):
        cls = ctx._forward_cls
        (x,) = ctx.saved_tensors
        return grad_output * (cls.FACTOR * 2 * cls.SCALE) * x


def _scaled_square(scale: float, offset: float, factor: float) -> type:
    return type("ScaledSquare", (_ScaledSquare,), {"SCALE": scale, "OFFSET": offset, "FACTOR": factor})


@pytest.mark.parametrize(("scale", "offset"), [(1e-7, 0.0), (1e-7, 1.0), (1e-12, 0.0), (1e7, 0.0)])
def test_a_gradient_twice_the_truth_is_caught_at_any_scale(scale, offset):
    report = check(_scaled_square(scale, offset, 2.0), _x(5), checks=["first_order"])
    assert report["first_order"].status == "failed", str(report)
    if offset == 0:  # with an offset, the finite differences' roundoff blurs the ratio the hint looks for
        assert "scaled: got = 2 x expected" in report["first_order"].message


@pytest.mark.parametrize(("scale", "offset"), [(1e-7, 0.0), (1e-7, 1.0), (1e-12, 0.0), (1e7, 0.0)])
def test_correct_gradients_at_any_scale_raise_no_alarm(scale, offset):
    report = check(_scaled_square(scale, offset, 1.0), _x(5))
    # torch.func needs setup_context (a warning): this old-style Function reads its constants through ctx.
    assert report.ok and not [r for r in _alarms(report) if r.name != "torch_func"], str(report)
