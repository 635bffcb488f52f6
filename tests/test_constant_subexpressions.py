"""Constant subexpressions shared by CSE (log(2), sqrt(pi), ...) in generated code of every printer.

A temporary holding a constant used to be a Python float that torch.square/sqrt/exp/log were called
on (TypeError). Values and derivatives to third order against eager float64 autograd of plain torch
references written here, and the fit engine's numpy/torch Jacobian rows against autograd.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

import customgrad
from customgrad.fit.formula_model import formula_model
from reference import assert_matches_reference

T = torch
LN2, LN3 = math.log(2), math.log(3)
#: formula -> independent torch reference: squares, roots, exps and logs of constants, shared.
FORMULAS = {
    "N0*exp(-log(2)*t/thalf)": lambda N0, t, thalf: N0 * T.exp(-LN2 * t / thalf),
    "x*log(2)**2 + exp(x*log(2))*y": lambda x, y: x * LN2**2 + T.exp(x * LN2) * y,
    "sqrt(log(3))*x**2 + sqrt(x*log(3))*y": lambda x, y: math.sqrt(LN3) * x**2 + T.sqrt(x * LN3) * y,
    "exp(1/3)*exp(x*y/3) + log(2*pi)*x": lambda x, y: math.exp(1 / 3) * T.exp(x * y / 3) + math.log(2 * math.pi) * x,
    "x*exp(-x**2/sqrt(pi))/sqrt(2*pi) + y*log(x*sqrt(2*pi))": lambda x, y: (
        x * T.exp(-(x**2) / math.sqrt(math.pi)) / math.sqrt(2 * math.pi) + y * T.log(x * math.sqrt(2 * math.pi))
    ),
}
needs_compiler = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
BACKENDS = ["eager", pytest.param("cpu", marks=needs_compiler), "triton"]


def derivatives(call, values: list[torch.Tensor], order: int) -> list[torch.Tensor]:
    """The output and the gradients of order 1..order of weighted sums (each order from the last)."""
    leaves = [v.clone().requires_grad_() for v in values]
    out = call(*leaves)
    results, scalar = [out.detach()], out.sum()
    for level in range(1, order + 1):
        grads = torch.autograd.grad(scalar, leaves, create_graph=level < order, materialize_grads=True)
        results += [g.detach() for g in grads]
        scalar = sum(((i + level) * g).sum() for i, g in enumerate(grads))
    return results


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text", FORMULAS)
def test_constant_subexpressions_to_third_order_match_eager_autograd(text, backend, monkeypatch):
    if backend == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    generated = customgrad.function(text, backend=backend)
    generator = torch.Generator().manual_seed(5)
    values = [0.5 + torch.rand(4, generator=generator, dtype=torch.float64) for _ in generated.input_names]
    actual = derivatives(generated.apply, values, order=3)
    expected = derivatives(FORMULAS[text], values, order=3)
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert_matches_reference(got, want, rtol=1e-10, atol=1e-12, what=f"{backend} {text} result {index}")


#: Fit formulas (parameters b1, b2; data x) with constant subexpressions, for the Jacobian rows.
FIT_FORMULAS = {
    "b1*exp(-log(2)*x/b2)": lambda x, b1, b2: b1 * T.exp(-LN2 * x / b2),
    "b1*log(2)**2*x + sqrt(log(3))*b2*sqrt(x*log(3))": lambda x, b1, b2: (
        b1 * LN2**2 * x + math.sqrt(LN3) * b2 * T.sqrt(x * LN3)
    ),
}


@pytest.mark.parametrize("language", ["torch", "numpy"])
@pytest.mark.parametrize("text", FIT_FORMULAS)
def test_fit_rows_with_constant_subexpressions_match_eager_autograd(text, language):
    x = torch.linspace(0.2, 1.8, 9, dtype=torch.float64)
    compiled = formula_model(text)
    names = ("b1", "b2")
    rows = compiled.linearization(names, language)
    values = {"b1": 0.7, "b2": 1.3}
    arguments = [x if n == "x" else torch.tensor(values[n], dtype=torch.float64) for n in compiled.names]
    out = np.empty((3, len(x))) if language == "numpy" else torch.empty(3, len(x), dtype=torch.float64)
    rows(out, *(a.numpy() if language == "numpy" else a for a in arguments))
    out = torch.as_tensor(out)
    theta = torch.tensor([values[n] for n in names], dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda t: FIT_FORMULAS[text](x, *t.unbind(0)), theta)
    assert_matches_reference(out[-1], FIT_FORMULAS[text](x, *theta.unbind(0)), rtol=1e-13, what=f"{text} value")
    assert_matches_reference(out[:-1].T, jacobian, rtol=1e-12, atol=1e-14, what=f"{text} jacobian ({language})")
