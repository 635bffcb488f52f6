"""Wrong backwards the battery used to miss (issue 18, item 15): tiny gradients judged with an absolute
tolerance, backwards wrong only when some inputs need no gradient, and zero-stride grad_outputs and 0-d
inputs never tried. Each wrong Function is caught; each correct twin raises no alarm."""

from __future__ import annotations

import functools

import pytest
import torch

import customgrad
from fixtures.correct_functions import MulBroadcast, Square  # the correct twins: x^2; x * y, y may be 0-d

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


# -- (b) ctx.needs_input_grad partly False -------------------------------------------------------
class MulSkippingWork(torch.autograd.Function):
    """x * y whose backward skips the gradients not needed, the usual optimisation, correctly."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y):
        return x * y

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad_output):
        x, y = ctx.saved_tensors
        grad_x = grad_output * y if ctx.needs_input_grad[0] else None
        grad_y = grad_output * x if ctx.needs_input_grad[1] else None
        return grad_x, grad_y


class MulWrongWhenAlone(MulSkippingWork):
    """Right when both need a gradient; a copy-paste slip in the branch for x alone (y as a constant)."""

    @staticmethod
    def backward(ctx, grad_output):
        x, y = ctx.saved_tensors
        if ctx.needs_input_grad[0] and ctx.needs_input_grad[1]:
            return grad_output * y, grad_output * x
        if ctx.needs_input_grad[0]:
            return grad_output * x, None
        return None, grad_output * x


class MulRaisingWhenAlone(MulSkippingWork):
    """Reads the other gradient, which is None when only one input needs a gradient."""

    @staticmethod
    def backward(ctx, grad_output):
        x, y = ctx.saved_tensors
        grad_x = grad_output * y if ctx.needs_input_grad[0] else None
        grad_y = grad_output * x if ctx.needs_input_grad[1] else None
        return grad_x, grad_y + 0 * grad_x


def test_a_backward_wrong_only_when_some_inputs_need_no_gradient_is_caught():
    report = check(MulWrongWhenAlone, _x(4), _x(4, seed=12), checks=["first_order"])
    message = report["first_order"].message
    assert report["first_order"].status == "failed", str(report)
    assert "gradient of 'x' when only 'x' needs a gradient (ctx.needs_input_grad = (True, False))" in message
    assert "when only 'y'" not in message  # that branch is right


def test_a_backward_raising_when_some_inputs_need_no_gradient_is_caught():
    report = check(MulRaisingWhenAlone, _x(4), _x(4, seed=12), checks=["first_order"])
    message = report["first_order"].message
    assert report["first_order"].status == "failed" and "backward raised TypeError" in message, str(report)
    assert "when only 'y' needs a gradient" in message


def test_a_backward_skipping_unneeded_gradients_correctly_raises_no_alarm():
    report = check(MulSkippingWork, _x(4), _x(4, seed=12))
    assert report.ok and not _alarms(report), str(report)
    assert "also with only some inputs needing a gradient" in report["first_order"].message


# -- (c) zero-stride grad_output and 0-d inputs ----------------------------------------------------
class _Square(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])


class ScalesGradOutputInPlace(_Square):
    """Writes into grad_output: fine for a fresh grad_output, an error for y.sum().backward()'s expanded one."""

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output.mul_(2 * x)


class AssumesOnesWhenExpanded(_Square):
    """A shortcut for 'loss = y.sum()': an expanded grad_output is taken to be all ones."""

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        if grad_output.dim() and all(stride == 0 for stride in grad_output.stride()):
            return 2 * x
        return grad_output * 2 * x


class WrongFor0d(_Square):
    """A scalar fast path that forgets the factor 2."""

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        if x.dim() == 0:
            return grad_output * x
        return grad_output * 2 * x


class BackwardRaisesFor0d(_Square):
    """The forward takes a 0-d input; the backward loops over its length, which a 0-d tensor has not."""

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return torch.stack([2 * x[i] * grad_output[i] for i in range(len(x))])


@pytest.mark.parametrize("function", [ScalesGradOutputInPlace, AssumesOnesWhenExpanded], ids=lambda f: f.__name__)
def test_a_backward_wrong_for_a_zero_stride_grad_output_is_caught(function):
    x = _x(5)
    y = function.apply(x.clone().requires_grad_(True))
    (grad,) = torch.autograd.grad(y.sum() * 0.75, y)  # the independent demonstration: what .sum() passes
    assert grad.stride() == (0,)
    report = check(function, x, checks=["layouts"])
    message = report["layouts"].message
    assert report["layouts"].status == "failed", str(report)
    assert "zero-stride grad_output (as y.sum().backward() passes)" in message


def test_a_backward_wrong_only_for_0d_inputs_is_caught():
    report = check(WrongFor0d, _x(5), checks=["layouts"])
    assert report["layouts"].status == "failed" and "0-d: gradient of 'x' is wrong" in report["layouts"].message


def test_a_backward_raising_for_0d_inputs_that_the_forward_accepts_is_caught():
    report = check(BackwardRaisesFor0d, _x(5), checks=["layouts"])
    message = report["layouts"].message
    assert report["layouts"].status == "failed", str(report)
    assert "0-d: the forward accepts this shape but the backward raised TypeError" in message


@pytest.mark.parametrize(
    ("function", "inputs"),
    [(Square, (_x(5),)), (MulBroadcast, (_x(4), _x(4, seed=12)))],
    ids=["Square", "MulBroadcast"],
)
def test_correct_functions_pass_with_zero_stride_grad_outputs_and_0d_inputs(function, inputs):
    report = check(function, *inputs)
    assert report.ok and not _alarms(report), str(report)
    tried = set(report["layouts"].details["tried"])
    assert {"0-d", "zero-stride grad_output (as y.sum().backward() passes)"} <= tried
    assert len(inputs) == 1 or "broadcast (4,) with 0-d" in tried


@pytest.mark.parametrize(("formula", "low"), [("(x - 1e6)**2", 1e6), ("x + 1e6", 0.0), ("log(x)", 1e6)])
def test_finite_differences_at_large_magnitudes_raise_no_alarm(formula, low):
    # x + h is not x + h exactly at |x| ~ 1e6 (off by up to 1e-4 of h): the step really taken is used.
    x = low + torch.rand(5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    report = check(customgrad.function(formula), x, checks=["first_order", "second_order", "layouts"])
    assert report.ok and not _alarms(report), str(report)


def test_a_small_relative_error_at_a_large_magnitude_is_still_caught():
    x = 1e6 + torch.rand(5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    report = check(_scaled_square(1.0, 0.0, 1.001), x, checks=["first_order"])
    assert report["first_order"].status == "failed", str(report)


class OneElementFor0d(_Square):
    """Flattens its input, so that a 0-d input gives an output of shape [1] (torch's ops keep 0-d)."""

    @staticmethod
    def forward(x):
        return x.reshape(-1) * x.reshape(-1)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return (grad_output * 2 * x.reshape(-1)).reshape(x.shape)


def test_a_0d_input_giving_a_1d_output_is_caught():
    report = check(OneElementFor0d, _x(5), checks=["layouts"])
    message = report["layouts"].message
    assert report["layouts"].status == "failed" and "0-d: output 0 has shape [1], expected []" in message, str(report)
