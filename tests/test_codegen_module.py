"""Emitted standalone modules against eager autograd in float64, first and second order."""

import functools
import inspect

import pytest
import torch

from corpus import CASES as CORPUS
from customgrad import function
from customgrad.codegen.module import emit_module
from reference import assert_matches_reference
from test_function import assert_close_float64, call_reference, derivatives

CASES = [
    ("a + b*P2(c*x + d)", lambda a, b, c, x, d: a + b * ((c * x + d) ** 2 + 2 * (c * x + d))),
    ("x*tanh(softplus(x))", lambda x: x * torch.tanh(torch.nn.functional.softplus(x))),
    ("where(x > 0, x, exp(x) - 1) * y", lambda x, y: torch.where(x > 0, x, torch.exp(x) - 1) * y),
    ("atan2(y, x) + sqrt(x**2 + y**2)", lambda x, y: torch.atan2(y, x) + torch.sqrt(x**2 + y**2)),
]


def load(source: str, name: str):
    namespace: dict = {}
    exec(compile(source, f"<emitted {name}>", "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize(("formula", "eager"), CASES, ids=[c[0] for c in CASES])
def test_emitted_module_matches_eager_to_second_order(formula, eager):
    generated = function(formula, inputs=list(inspect.signature(eager).parameters))
    emitted = load(emit_module(generated.spec), generated.spec.name)
    generator = torch.Generator().manual_seed(5)
    count = len(generated.input_names)
    inputs = [torch.randn(6, dtype=torch.float64, generator=generator).requires_grad_(True) for _ in range(count)]
    weights = [torch.randn(6, dtype=torch.float64, generator=generator) for _ in range(count)]
    results = []
    for fn in (emitted.apply, eager):
        out = fn(*inputs)
        first = torch.autograd.grad(out.sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum((w * g).sum() for w, g in zip(weights, first)), inputs, allow_unused=True)
        results.append((out, first, second))
    (out, first, second), (ref_out, ref_first, ref_second) = results
    assert_matches_reference(out, ref_out, rtol=1e-12, atol=1e-12, what="forward")
    for i in range(count):
        assert_matches_reference(first[i], ref_first[i], rtol=1e-10, atol=1e-12, what=f"first order, input {i}")
        ref = ref_second[i] if ref_second[i] is not None else torch.zeros(6, dtype=torch.float64)
        got = second[i] if second[i] is not None else torch.zeros(6, dtype=torch.float64)
        assert_matches_reference(got, ref, rtol=1e-10, atol=1e-12, what=f"second order, input {i}")


def test_emitted_module_keeps_a_declared_gradient_exactly():
    generated = function("round(x)", grads={"x": "1"}, inputs=["x"])
    emitted = load(emit_module(generated.spec), generated.spec.name)
    x = torch.randn(9, dtype=torch.float64, requires_grad=True) * 3
    upstream = torch.randn(9, dtype=torch.float64)
    (gradient,) = torch.autograd.grad(emitted.apply(x), x, upstream)
    assert torch.equal(gradient, upstream)
    assert torch.equal(emitted.apply(x.detach()), torch.round(x.detach()))


@functools.cache
def emitted_class(formula: str):
    generated = function(formula)
    return load(emit_module(generated.spec), generated.spec.name), generated.input_names


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.id)
def test_emitted_module_passes_the_corpus_to_second_order(case):
    emitted, names = emitted_class(case.formula)
    values = case.sample(3)
    actual = derivatives(lambda v: emitted.apply(*(v[n] for n in names)), values, 2, 4)
    expected = derivatives(functools.partial(call_reference, case), values, 2, 4)
    for level, (got, want) in enumerate(zip(actual, expected, strict=True)):
        for a, e in zip(got, want, strict=True):
            assert_close_float64(a, e, f"emitted {case.id} order {level}", level)
