"""Defined Functions at the edges (issue 13): the points, names, shapes and dtypes where a generated
Function could silently differ from eager torch. References: eager torch autograd in float64, SciPy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import curve_fit

import customgrad
from customgrad.codegen.module import emit_module
from reference import assert_matches_reference
from test_codegen_module import load

F64 = torch.float64


def leaves(*values) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=F64).requires_grad_() for v in values]


def first_and_second(fn, inputs: list[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    """[output, d/d each input, d/d each input of a random-weighted sum of the first derivatives]."""
    output = fn(*inputs)
    first = torch.autograd.grad(output.sum(), inputs, create_graph=True, allow_unused=True, materialize_grads=True)
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(g.shape, generator=generator, dtype=F64) for g in first]
    weighted = sum((w * g).sum() for w, g in zip(weights, first, strict=True))
    if weighted.requires_grad:
        second = torch.autograd.grad(weighted, inputs, allow_unused=True, materialize_grads=True)
    else:
        second = [torch.zeros_like(t) for t in inputs]
    return [output, *first, *second]


def assert_same_as_eager(generated, eager, inputs, what: str) -> None:
    got, want = first_and_second(generated, inputs), first_and_second(eager, inputs)
    for index, (a, e) in enumerate(zip(got, want, strict=True)):
        assert_matches_reference(a, e, rtol=1e-12, atol=1e-12, what=f"{what} [{index}]")


# 7. Generated code never shares names with the user's.

@pytest.mark.parametrize("names", [("torch", "float"), ("numpy", "Tensor"), ("inf", "nan")])
def test_inputs_may_be_called_like_modules_and_builtins(names):
    first, second = names
    generated = customgrad.function(f"exp({first}) * {second} + sqrt({second})")
    a, b = leaves([0.5, -1.0], [2.0, 3.0])
    assert_same_as_eager(generated.apply, lambda p, q: torch.exp(p) * q + torch.sqrt(q), [a, b], str(names))
    emitted = load(emit_module(generated.spec), generated.spec.name)
    assert_same_as_eager(emitted.apply, lambda p, q: torch.exp(p) * q + torch.sqrt(q), [a, b], f"emitted {names}")


def test_an_overflowing_constant_prints_without_builtins():
    generated = customgrad.function("float*exp(800) + 0*float")
    assert torch.equal(generated.apply(torch.tensor([1.0, -1.0])), torch.tensor([float("inf"), float("-inf")]))


def test_fit_parameters_may_be_called_torch_and_numpy():
    x = np.linspace(0, 1, 20)
    y = 2 * np.exp(-3 * x) + 0.01 * np.sin(7 * x)
    result = customgrad.fit("torch*exp(-numpy*x)", x=x, y=y, params={"torch": 1, "numpy": 1})
    reference, _ = curve_fit(lambda x, a, k: a * np.exp(-k * x), x, y, p0=[1, 1])
    np.testing.assert_allclose([result.params["torch"], result.params["numpy"]], reference, rtol=1e-6)
