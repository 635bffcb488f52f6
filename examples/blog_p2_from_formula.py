"""The blog's fit with P2 defined by its formula: customgrad derives the backward, nothing to get wrong.

Run: ``python examples/blog_p2_from_formula.py``.
"""

import math

import torch

import customgrad

P2 = customgrad.function("x**2 + 2*x", name="P2")  # backward: grad * (2x + 2), derived


def main(seed: int = 0) -> None:
    x = torch.linspace(-math.pi, math.pi, 2000)
    y = torch.tan(x)
    torch.manual_seed(seed)
    a, b, c, d = (torch.randn((), requires_grad=True) for _ in range(4))
    for t in range(2000):
        loss = (a + b * P2(c * x + d) - y).pow(2).sum()
        if t % 100 == 99:
            print(t, loss.item())
        loss.backward()
        with torch.no_grad():
            for parameter in (a, b, c, d):
                parameter -= 1e-6 * parameter.grad
                parameter.grad = None
    print(f"Result: y = {a.item()} + {b.item()} * P2({c.item()} x + {d.item()})")


if __name__ == "__main__":
    main()
