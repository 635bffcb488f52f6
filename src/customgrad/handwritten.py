"""The hand-written originals of the built-ins, the way the blog and the tutorial write them (bugs fixed).

References for tests and examples of what `customgrad.check` accepts; `customgrad.library` exposes
them beside the generated built-ins.
"""

from __future__ import annotations

import torch


class P2Handwritten(torch.autograd.Function):
    """Quadratic P2(x) = x^2 + 2x, with the hand-written backward grad * (2x + 2).

    The blog's Function, with its ``inptu`` typo fixed.
    """

    @staticmethod
    def forward(ctx, input):  # noqa: A002 - the blog's own name
        ctx.save_for_backward(input)
        return input**2 + 2 * input

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        # d/dx (x^2 + 2x) = 2x + 2
        return grad_output * (2 * input + 2)


class LegendreP3Handwritten(torch.autograd.Function):
    """Legendre polynomial P3(x) = (5x^3 - 3x) / 2, with backward grad * 1.5 (5x^2 - 1).

    From PyTorch's "polynomial_custom_function" tutorial.
    """

    @staticmethod
    def forward(ctx, input):  # noqa: A002
        ctx.save_for_backward(input)
        return 0.5 * (5 * input**3 - 3 * input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        # d/dx (5x^3 - 3x) / 2 = 1.5 (5x^2 - 1)
        return grad_output * 1.5 * (5 * input**2 - 1)


class IdentityWithSquareGradHandwritten(torch.autograd.Function):
    """Identity forward f(x) = x with an intentional custom (surrogate) backward grad * 2x.

    The blog's second example. The backward is deliberately *not* the true derivative (which is 1):
    it is the derivative of x^2, a surrogate gradient. Use it where a gradient other than the
    true one is wanted (straight-through style estimators); checks must be told so, by declaring
    ``custom_gradient={"x": "2*x"}``.
    """

    @staticmethod
    def forward(ctx, input):  # noqa: A002
        ctx.save_for_backward(input)
        return input.clone()

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        # surrogate, not d/dx x = 1: the gradient of x^2
        return grad_output * 2 * input
