"""The blog's program, fixed: fit y = a + b*P2(c*x + d) to tan(x) by gradient descent.

P2(x) = x^2 + 2x is a custom torch.autograd.Function with a hand-written backward. The blog's
three bugs are fixed: ``inptu`` (backward), ``c.item`` not called, and a missing parenthesis
(final print). Run: ``python examples/blog_p2.py``. ``customgrad fit`` runs the same experiment.
"""

import math

import torch


class P2(torch.autograd.Function):
    """P2(x) = x^2 + 2x, backward grad * (2x + 2)."""

    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)  # kept for the backward
        return input**2 + 2 * input

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return grad_output * (2 * input + 2)  # was: (2 * inptu + 2)


def main(seed: int = 0) -> None:
    dtype = torch.float
    x = torch.linspace(-math.pi, math.pi, 2000, dtype=dtype)
    y = torch.tan(x)
    torch.manual_seed(seed)
    a = torch.randn((), dtype=dtype, requires_grad=True)
    b = torch.randn((), dtype=dtype, requires_grad=True)
    c = torch.randn((), dtype=dtype, requires_grad=True)
    d = torch.randn((), dtype=dtype, requires_grad=True)

    learning_rate = 1e-6
    p2 = P2.apply
    for t in range(2000):
        y_pred = a + b * p2(c * x + d)
        loss = (y_pred - y).pow(2).sum()
        if t % 100 == 99:
            print(t, loss.item())
        loss.backward()
        with torch.no_grad():
            for parameter in (a, b, c, d):
                parameter -= learning_rate * parameter.grad
                parameter.grad = None
    # was: {c.item} and a missing ")"
    print(f"Result: y = {a.item()} + {b.item()} * P2({c.item()} x + {d.item()})")


if __name__ == "__main__":
    main()
