"""The battery over every Function in PyTorch's own ``torch/testing/_internal/autograd_function_db.py``.

Every flag is either a real defect, demonstrated here by an independent computation, or an intentional
custom gradient that passes once declared. The remaining warning everywhere is torch.compile's: Dynamo
cannot trace autograd.Functions that define a ``jvp`` staticmethod (all of these do).
"""

from __future__ import annotations

import functools

import pytest
import torch

import customgrad
from reference import assert_matches_reference

#: In this process: these Functions do not crash, and a worker per Function would cost its start-up each.
check = functools.partial(customgrad.check, isolation="thread")

db = pytest.importorskip("torch.testing._internal.autograd_function_db")

#: OpInfo name -> (check, status) it must flag; not listed: the battery passes it (compile aside).
FLAGGED = {
    "NumpyCubeNotComposableAutogradFunction": {
        "first_order": "failed",
        "linearity": "failed",
        "layouts": "failed",
        "hygiene": "failed",
        "second_order": "skipped",
        "torch_func": "warning",
    },
    "NumpySortAutogradFunction": {"first_order": "failed"},
    "CubeGenVmapAutogradFunction": {"first_order": "failed", "linearity": "failed", "second_order": "failed"},
    "ScaleGradGenVmapAutogradFunction": {"first_order": "failed"},
    "ZeroGradientsGenVmapAutogradFunction": {"first_order": "failed"},
}
#: Intentional custom gradients, declared: they must then pass.
DECLARED = {
    "ScaleGradGenVmapAutogradFunction": {"x": 3.14},
    "ZeroGradientsGenVmapAutogradFunction": {"x": 0, "y": 0},
}


def _sample(op):
    return next(iter(op.sample_inputs("cpu", torch.float64, requires_grad=False)))


@pytest.mark.parametrize("op", db.autograd_function_db, ids=lambda op: op.name)
def test_battery_flags_exactly_the_known_problems(op):
    sample = _sample(op)
    report = check(op.op, sample.input, *sample.args, compile=False)
    flagged = {r.name: r.status for r in report.results if r.status != "passed"}
    expected = FLAGGED.get(op.name, {})
    for name, status in expected.items():
        assert flagged.get(name) == status, str(report)
    unexpected = {k: v for k, v in flagged.items() if k not in expected and k not in ("compile", "layouts")}
    assert not unexpected, str(report)


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_intentional_custom_gradients_pass_once_declared(name):
    op = next(o for o in db.autograd_function_db if o.name == name)
    sample = _sample(op)
    report = check(op.op, sample.input, *sample.args, compile=False, custom_gradient=DECLARED[name])
    assert report.ok, str(report)


def test_cube_gen_vmap_backward_is_wrong():
    # y = (x^3, 3x^2): d/dx <g0, x^3> + <g1, 3x^2> = 3x^2 g0 + 6x g1, but backward returns g0 3x^2 + 6 (3x^2).
    x = torch.tensor([1.3, -0.7], dtype=torch.float64, requires_grad=True)
    g0, g1 = torch.tensor([0.5, -1.5], dtype=torch.float64), torch.tensor([2.0, 0.25], dtype=torch.float64)
    (got,) = torch.autograd.grad(db.CubeGenVmap.apply(x), x, (g0, g1))
    expected = 3 * x.detach() ** 2 * g0 + 6 * x.detach() * g1
    with pytest.raises(AssertionError):
        assert_matches_reference(got, expected, rtol=1e-9, what="CubeGenVmap gradient")
    assert_matches_reference(
        got, g0 * 3 * x.detach() ** 2 + 6 * 3 * x.detach() ** 2, rtol=1e-12, what="what CubeGenVmap returns"
    )


def test_numpy_cube_not_composable_ignores_grad_output_and_aliases_its_input():
    x = torch.tensor([1.5, -0.5], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([2.0, -3.0], dtype=torch.float64)
    (got,) = torch.autograd.grad(db.NumpyCubeNotComposable.apply(x)[0], x, g)
    with pytest.raises(AssertionError):
        assert_matches_reference(got, g * 3 * x.detach() ** 2, rtol=1e-9, what="gradient with grad_output")
    assert_matches_reference(got, 3 * x.detach() ** 2, rtol=1e-12, what="gradient ignoring grad_output")
    # ctx.input_np shares memory with the input: an in-place change after forward silently changes backward.
    y = x.detach().clone().requires_grad_(True)
    source = y.clone()
    out = db.NumpyCubeNotComposable.apply(source)[0]
    with torch.no_grad():
        source.add_(1.0)
    (stale,) = torch.autograd.grad(out, y, torch.ones(2, dtype=torch.float64))
    assert_matches_reference(stale, 3 * (x.detach() + 1) ** 2, rtol=1e-12, what="stale gradient")


def test_numpy_sort_does_not_sort_but_backward_unpermutes():
    x = torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    y, _, _ = db.NumpySort.apply(x, 1)
    assert torch.equal(y.detach(), x.detach())  # forward returns its input unsorted
    g = torch.tensor([[10.0, 20.0, 30.0]], dtype=torch.float64)
    (got,) = torch.autograd.grad(y, x, g)
    # The true gradient of the identity is g; backward permutes it as if the output were sorted.
    with pytest.raises(AssertionError):
        assert_matches_reference(got, g, rtol=1e-12, what="NumpySort gradient")


@pytest.mark.slow
def test_fullgraph_compile_refuses_functions_with_jvp():
    import torch._dynamo

    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: db.MulGenVmap.apply(t, t), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="custom jvp"):
        compiled(x)
