"""Physics formulas (1-9 inputs): values, gradients and second derivatives against eager torch autograd."""

import pytest
import torch

import customgrad
from physics_formulas import PHYSICS
from reference import assert_matches_reference


def test_the_set_spans_one_to_nine_inputs():
    counts = {len(customgrad.parse_formula(formula).names) for formula in PHYSICS.values()}
    assert min(counts) == 1 and max(counts) == 9 and len(PHYSICS) >= 50


@pytest.mark.parametrize("name", sorted(PHYSICS))
def test_first_and_second_derivatives_match_eager_autograd(name):
    generated = customgrad.function(PHYSICS[name])
    generator = torch.Generator().manual_seed(len(name))
    # Inputs in [0.5, 1.5]: inside most formulas' domains (NaN where not, equally on both sides).
    values = [0.5 + torch.rand(4, generator=generator, dtype=torch.float64) for _ in generated.input_names]
    results = []
    for call in (generated.apply, generated.eager):  # eager: the formula as torch ops, autograd's derivatives
        leaves = [v.clone().requires_grad_() for v in values]
        out = call(*leaves)
        grads = torch.autograd.grad(out.sum(), leaves, create_graph=True, allow_unused=True, materialize_grads=True)
        weighted = sum((g * (i + 1)).sum() for i, g in enumerate(grads))
        second = torch.autograd.grad(weighted, leaves, allow_unused=True, materialize_grads=True)
        results.append([out, *grads, *second])
    for index, (actual, expected) in enumerate(zip(*results, strict=True)):
        assert_matches_reference(actual, expected, rtol=1e-10, atol=1e-12, what=f"{name} output {index}")


def test_a_high_power_of_a_sum_defines_and_differentiates_twice_in_seconds():
    # Issue 13 item 10: simplification used to expand (x + y + z + 1)**29 (19 s to define, 68 s for the
    # first second-order backward). The bound leaves room for a loaded 2-core machine.
    import time

    begin = time.perf_counter()
    generated = customgrad.function("(x + y + z + 1)**30")
    leaves = [torch.full((3,), 0.01 * (i + 1), dtype=torch.float64, requires_grad=True) for i in range(3)]
    grads = torch.autograd.grad(generated.apply(*leaves).sum(), leaves, create_graph=True)
    second = torch.autograd.grad(sum(g.sum() for g in grads), leaves)
    assert time.perf_counter() - begin < 10.0
    s = sum(leaf.detach() for leaf in leaves) + 1
    for g in second:
        assert_matches_reference(g, 3 * 30 * 29 * s**28, rtol=1e-12, what="second derivative")
