"""Defects an outside tester found on the define side (probing round): each test failed before its fix.

References are independent of the code under test: eager torch autograd in float64.
"""

from __future__ import annotations

import warnings

import torch

import customgrad
from customgrad.backends import compile as compile_backend

F64 = torch.float64


# The compile backend keeps working past Dynamo's recompile limit (it ran into a hard failure).


def test_compile_backend_falls_back_to_plain_code_past_the_recompile_limit(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    torch._dynamo.reset()
    monkeypatch.setattr(compile_backend, "_warned", [], raising=False)
    swish = customgrad.function("x*sigmoid(x)", backend="compile")
    for x in (torch.randn(5, dtype=F64), torch.randn(2, 3, dtype=F64), torch.randn(4, dtype=torch.float32)):
        leaf = x.clone().requires_grad_()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = swish(leaf)
            (gradient,) = torch.autograd.grad(value.sum(), leaf)
        ours = [w for w in caught if "customgrad backend 'compile'" in str(w.message)]
        assert len(ours) == (1 if x.dim() == 2 else 0)  # once per process, at the first call past the limit
        reference = x.double().requires_grad_()
        expected = reference * torch.sigmoid(reference)
        (expected_gradient,) = torch.autograd.grad(expected.sum(), reference)
        tolerance = 1e-12 if x.dtype == F64 else 1e-6
        torch.testing.assert_close(value.double(), expected.detach(), rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(gradient.double(), expected_gradient, rtol=tolerance, atol=tolerance)
    torch._dynamo.reset()
