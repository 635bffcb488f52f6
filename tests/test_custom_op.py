"""``F.as_custom_op``: the generated Function as a torch.library operator, against eager float64 autograd."""

from __future__ import annotations

import itertools

import pytest
import torch

from customgrad import UsageError, function
from reference import assert_matches_reference

_names = itertools.count()


def reference(a, b, x):
    return a * torch.exp(-b * x) + x**2


def inputs():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    a = torch.randn(3, generator=generator, dtype=torch.float64)
    b = torch.tensor(0.5, dtype=torch.float64)
    return [t.requires_grad_() for t in (a, b, x)]


@pytest.fixture(params=["eager", "cpu"])
def operator(request):
    generated = function("a*exp(-b*x) + x**2", backend=request.param)
    return generated.as_custom_op(f"customgrad_test::model_{request.param}_{next(_names)}")


def test_custom_op_values_and_gradients_match_eager_autograd(operator):
    leaves, copies = inputs(), inputs()
    got, want = operator(*leaves), reference(*copies)
    assert_matches_reference(got, want, rtol=1e-13, what="forward")
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for g, e in zip(
        torch.autograd.grad((got * weights).sum(), leaves), torch.autograd.grad((want * weights).sum(), copies)
    ):
        assert_matches_reference(g, e, rtol=1e-12, atol=1e-14, what="gradient")


def test_opcheck_passes(operator):
    torch.library.opcheck(operator, inputs())


@pytest.mark.slow
def test_custom_op_compiles_with_fullgraph(operator):
    leaves, copies = inputs(), inputs()
    compiled = torch.compile(lambda *t: operator(*t).sin(), fullgraph=True)
    got, want = compiled(*leaves), reference(*copies).sin()
    assert_matches_reference(got, want, rtol=1e-13, what="compiled forward")
    got.sum().backward()
    want.sum().backward()
    for leaf, copy in zip(leaves, copies):
        assert_matches_reference(leaf.grad, copy.grad, rtol=1e-12, atol=1e-14, what="compiled gradient")


def test_bad_custom_op_name_is_a_usage_error():
    with pytest.raises(UsageError, match="needs a name like 'mylib::p2'"):
        function("x**2").as_custom_op("no_namespace")


def test_custom_op_exports():
    operator = function("x**2 + 2*x", backend="cpu").as_custom_op(f"customgrad_test::p2_{next(_names)}")

    class Model(torch.nn.Module):
        def forward(self, x):
            return operator(x) * 2

    x = torch.linspace(-2, 2, 5, dtype=torch.float64)
    exported = torch.export.export(Model(), (x,))
    assert_matches_reference(exported.module()(x), 2 * (x**2 + 2 * x), rtol=1e-15, what="exported")
