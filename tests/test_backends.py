"""Every kernel backend against eager autograd of the corpus' independent torch references.

The fused backends ("cpu": C loops; "compile": torch.compile) must give the same values, gradients
and second derivatives as the float64 references, keep inf/NaN behaviour and the low-precision error
of same-dtype eager torch, and handle sizes, layouts and numbers as the eager backend does.
"""

from __future__ import annotations

import functools
import shutil
import warnings

import pytest
import torch

import customgrad
from corpus import CASES, CASES_BY_ID
from customgrad import UsageError, function
from customgrad.errors import BackendError
from reference import assert_matches_reference
from test_function import assert_close_float64, call_reference, derivatives

needs_compiler = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
GELU = "0.5*x*(1 + tanh(0.7978845608028654*(x + 0.044715*x**3)))"


@functools.cache
def built(formula: str, backend: str) -> type[torch.autograd.Function]:
    return function(formula, backend=backend)


def compare_orders(case, backend: str, order: int = 2, seed: int = 0) -> None:
    values = case.sample(seed)
    generated = built(case.formula, backend)

    def call(named):
        return generated.apply(*(named[name] for name in generated.input_names))

    actual = derivatives(call, values, order, seed + 1)
    expected = derivatives(functools.partial(call_reference, case), values, order, seed + 1)
    for level, (got, want) in enumerate(zip(actual, expected, strict=True)):
        labels = ["forward"] if level == 0 else [f"order {level} d/d{name}" for name in values]
        for label, a, e in zip(labels, got, want, strict=True):
            assert_close_float64(a, e, f"{backend} {case.id} {label}", level)


@needs_compiler
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cpu_backend_corpus_to_second_order(case):
    compare_orders(case, "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["gelu_tanh", "mish", "rational_3_inputs", "blog_model"])
def test_compile_backend_matches_eager_autograd_to_second_order(case_id):
    compare_orders(CASES_BY_ID[case_id], "compile")


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("formula", [GELU, "x*tanh(softplus(x))", "(5*x**3 - 3*x)/2"])
def test_cpu_low_precision_is_as_accurate_as_same_dtype_eager(formula, dtype):
    # Large enough for the threaded, vectorised loop and its remainder.
    x = torch.linspace(-6, 6, 40_001, dtype=torch.float64).to(dtype)
    eager_function = built(formula, "eager")
    exact = derivatives(lambda v: eager_function.apply(v["x"]), {"x": x.double()}, 1, 3)
    eager = derivatives(lambda v: eager_function.apply(v["x"]), {"x": x}, 1, 3)
    fused = built(formula, "cpu")
    actual = derivatives(lambda v: fused.apply(v["x"]), {"x": x}, 1, 3)
    eps = torch.finfo(dtype).eps
    for level in range(2):
        got, same_dtype, want = actual[level][0], eager[level][0], exact[level][0]
        assert got.dtype == dtype
        tolerance = 4 * (same_dtype.double() - want).abs() + 8 * eps * (want.abs().max().item() + eps)
        assert_matches_reference(got.double(), want, rtol=0, atol=tolerance.max().item(), what=f"order {level}")


@needs_compiler
@pytest.mark.parametrize(
    "formula", [GELU, "x*tanh(softplus(x))", "sigmoid(x)*exp(-x**2)", "max(x, 0.5)", "atan2(x, 2)"]
)
def test_cpu_keeps_inf_and_nan_like_eager(formula):
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 1e30, -1e30, 88.0, -104.0] * 5)
    for dtype in (torch.float32, torch.float64):
        x = special.to(dtype).requires_grad_()
        reference = x.detach().clone().requires_grad_()
        got = built(formula, "cpu").apply(x)
        want = built(formula, "eager").apply(reference)
        assert_matches_reference(got, want, rtol=1e-6, atol=1e-30, what=f"{formula} {dtype}")
        (gradient,) = torch.autograd.grad(got.sum(), x)
        (expected,) = torch.autograd.grad(want.sum(), reference)
        assert_matches_reference(gradient, expected, rtol=1e-5, atol=1e-30, what=f"d/dx {formula} {dtype}")


@needs_compiler
@pytest.mark.parametrize(
    "shapes",
    [[(0,), (0,), ()], [(1,), (3, 1), ()], [(1023,), (1023,), ()], [(5, 1, 3), (4, 1), (1, 3)], [(), (), ()]],
    ids=str,
)
def test_cpu_sizes_broadcasting_and_numbers_match_eager(shapes):
    generator = torch.Generator().manual_seed(5)
    values = [torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5 for shape in shapes]
    for fused_values in (values, [values[0], values[1], 2.5]):
        fused = built("a*exp(-b*x) + x/(a + b)", "cpu")
        eager = built("a*exp(-b*x) + x/(a + b)", "eager")
        leaves = [v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for v in fused_values]
        copies = [v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for v in fused_values]
        got, want = fused.apply(*leaves), eager.apply(*copies)
        assert_matches_reference(got, want, rtol=1e-13, what="forward")
        tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
        if got.numel():
            grads = torch.autograd.grad(got.sum(), tensors)
            expected = torch.autograd.grad(want.sum(), [v for v in copies if isinstance(v, torch.Tensor)])
            for g, e, t in zip(grads, expected, tensors, strict=True):
                assert g.shape == t.shape
                assert_matches_reference(g, e, rtol=1e-13, what="gradient")


@needs_compiler
def test_cpu_reads_non_contiguous_inputs():
    base = torch.linspace(-2, 2, 200, dtype=torch.float32).reshape(10, 20)
    x = base.t()  # transposed: not contiguous
    assert_matches_reference(built(GELU, "cpu").apply(x), built(GELU, "eager").apply(x), rtol=1e-6, atol=1e-7)


@needs_compiler
def test_declared_gradients_are_the_same_on_every_backend():
    x = torch.linspace(-3, 3, 9, dtype=torch.float64)
    for backend in ("eager", "cpu", "auto"):
        straight = function("round(x)", grads={"x": "1"}, backend=backend)
        leaf = x.clone().requires_grad_()
        (gradient,) = torch.autograd.grad(straight.apply(leaf).sum(), leaf)
        assert_matches_reference(gradient, torch.ones_like(x), rtol=0, what=f"{backend} straight-through")


@needs_compiler
def test_check_passes_on_a_cpu_backend_function():
    generated = function("x*tanh(softplus(x)) + y**2", backend="cpu")
    report = customgrad.check(generated, torch.randn(6, dtype=torch.float64), torch.randn(6), compile=False)
    assert report.ok, str(report)


def test_explicit_backend_on_the_wrong_device_names_device_and_backends(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu_only = function("x + 1", backend="cpu")
    with pytest.raises(UsageError, match=r"backend 'cpu' runs on cpu tensors, but an input is on meta.*'eager'"):
        cpu_only.apply(torch.empty(3, device="meta"))
    try:
        on_gpu = function("x + 1", backend="triton")
    except BackendError as error:  # Triton is not installed: said when the function is made
        assert "Triton is not installed" in str(error)
        return
    with pytest.raises(UsageError, match=r"backend 'triton' runs on cuda tensors, but an input is on cpu"):
        on_gpu.apply(torch.ones(3))


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError, match=r"backend must be one of .*'cpu'.*got 'gpu'"):
        function("x", backend="gpu")


@needs_compiler
def test_a_function_the_cpu_backend_cannot_print_names_function_and_backend():
    from customgrad.library import P2Handwritten
    from customgrad.registry import register

    register("HandP2", P2Handwritten)
    with pytest.raises(BackendError, match=r"backend 'cpu' cannot print it \(no C translation for HandP2\)"):
        function("HandP2(x) + 1", name="UsesHandP2", backend="cpu")


def test_auto_without_a_compiler_falls_back_to_eager_with_one_warning(monkeypatch):
    from customgrad import backends
    from customgrad.backends import cpu

    monkeypatch.setattr(cpu, "compiler", lambda: None)
    monkeypatch.setattr(backends, "_warned", set())
    generated = function("x**2 + 2*x", backend="auto")
    x = torch.linspace(-1, 1, backends.AUTO_CPU_MIN_SIZE, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="falls back to 'eager'.*no C compiler") as caught:
        first = generated.apply(x)
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generated.apply(x)
    assert_matches_reference(first, x**2 + 2 * x, rtol=1e-15)


def test_auto_warns_once_when_the_compiler_fails_in_forward_and_backward(monkeypatch, tmp_path):
    from customgrad import backends
    from customgrad.backends import cpu

    failing = tmp_path / "cc"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu, "compiler", lambda: str(failing))
    monkeypatch.setattr(backends, "_warned", set())
    x = torch.linspace(-1, 1, backends.AUTO_CPU_MIN_SIZE, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for formula in ("x*sin(x) + 0.25", "x*cos(x) - 0.75"):  # two Functions, forward and backward each
            function(formula, backend="auto").apply(x).sum().backward()
    fallbacks = [w for w in caught if "falls back to 'eager'" in str(w.message)]
    assert len(fallbacks) == 1, [str(w.message) for w in fallbacks]
    assert "C compiler failed" in str(fallbacks[0].message)
    expected = torch.sin(x) + x * torch.cos(x) + torch.cos(x) - x * torch.sin(x)
    assert_matches_reference(x.grad, expected.detach(), rtol=1e-12, atol=1e-14)


@needs_compiler
def test_cpu_kernels_are_cached_on_disk_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(tmp_path))
    from customgrad.backends import cpu

    formula = "x**3 - 7.25*x"
    function(formula, backend="cpu").apply(torch.ones(3))
    assert list((tmp_path / "cpu-kernels").iterdir())
    builds = []
    monkeypatch.setattr(cpu, "_build", lambda *a: builds.append(a))
    again = function(formula, backend="cpu").apply(torch.full((3,), 2.0))
    assert builds == []
    assert_matches_reference(again, torch.full((3,), 8.0 - 14.5), rtol=1e-7)


@pytest.fixture
def triton_interpreter(monkeypatch):
    """Triton kernels on CPU tensors through Triton's interpreter (no GPU needed)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


#: Corpus formulas (float64, to 1e-10) whose functions Triton's interpreter runs exactly: it has no
#: libdevice, and the stand-ins for tanh, log1p, expm1 are float32-accurate (tested below in float32).
TRITON_CASES = ["legendre_p4", "rational_3_inputs", "elu_where", "silu", "max3_min", "blog_model", "lorentzian"]


@pytest.mark.parametrize("case_id", TRITON_CASES)
def test_triton_backend_matches_eager_autograd_to_second_order(case_id, triton_interpreter):
    compare_orders(CASES_BY_ID[case_id], "triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("formula", [GELU, "x*tanh(softplus(x))", "a*tanh(x) + x**2"])
def test_triton_low_precision_is_as_accurate_as_same_dtype_eager(formula, dtype, triton_interpreter):
    x = torch.linspace(-4, 4, 3000, dtype=torch.float64).to(dtype)

    def call(generated, value):
        named = {"a": 1.5, "x": value}
        return generated.apply(*(named[name] for name in generated.input_names))

    got = call(built(formula, "triton"), x)
    exact = call(built(formula, "eager"), x.double())
    eager = call(built(formula, "eager"), x).double()
    tolerance = 4 * (eager - exact).abs().max().item() + 8 * torch.finfo(dtype).eps * exact.abs().max().item()
    assert got.dtype == dtype
    assert_matches_reference(got, exact, rtol=0, atol=tolerance, what=f"triton {formula} {dtype}")


@needs_compiler
@pytest.mark.parametrize(
    "shapes",
    [
        [(300, 257), (257,), (300, 1)],
        [(3, 40, 700), (700,), (3, 40, 1)],
        [(3, 40, 700), (40, 1), (3, 1, 1)],
        [(70000,), (1,), ()],
    ],
    ids=str,
)
@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_cpu_reads_row_and_column_broadcasts_in_place_and_sums_their_gradients(shapes, backend, monkeypatch):
    # Large enough for the threaded loop; m varies along the trailing, s along the leading dimensions,
    # and their gradients are summed inside the backward kernel ("auto" too: it picks the cpu kernel).
    from customgrad.backends.cpu import CpuKernel

    summed_to = []
    original = CpuKernel.reduced

    def spy(self, tensors, targets):
        summed_to.append(targets)
        return original(self, tensors, targets)

    monkeypatch.setattr(CpuKernel, "reduced", spy)
    generator = torch.Generator().manual_seed(9)
    values = [torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5 for shape in shapes]
    formula = "exp(-(x - m)**2/(2*s**2))/s"
    leaves = [v.clone().requires_grad_() for v in values]
    copies = [v.clone().requires_grad_() for v in values]
    fused, eager = function(formula, backend=backend), built(formula, "eager")  # fused: built after the spy
    got, want = fused.apply(*leaves), eager.apply(*copies)
    assert_matches_reference(got, want, rtol=1e-13, what="forward")
    for g, e in zip(torch.autograd.grad(got.sum(), leaves), torch.autograd.grad(want.sum(), copies), strict=True):
        assert_matches_reference(g, e, rtol=1e-11, what="gradient")
    wanted = [tuple(shape) for shape in shapes]
    assert any(t is not None and [tuple(s) for s in t] == wanted for t in summed_to), "not summed in the loop"


@pytest.mark.gpu
@pytest.mark.parametrize("case_id", ["gelu_tanh", "mish", "rational_3_inputs", "blog_model", "gaussian_4"])
def test_triton_on_cuda_matches_eager_autograd_on_cpu(case_id):
    pytest.importorskip("triton")
    case = CASES_BY_ID[case_id]
    generated = built(case.formula, "triton")
    values = {name: value.float() for name, value in case.sample(4).items()}
    cuda = derivatives(
        lambda v: generated.apply(*(v[n] for n in generated.input_names)),
        {n: v.cuda() for n, v in values.items()},
        1,
        5,
    )
    exact = derivatives(functools.partial(call_reference, case), {n: v.double() for n, v in values.items()}, 1, 5)
    for level in range(2):
        for got, want in zip(cuda[level], exact[level], strict=True):
            scale = want.abs().max().item() + 1
            assert_matches_reference(got.cpu(), want, rtol=1e-5, atol=1e-5 * scale, what=f"{case_id} order {level}")


@pytest.mark.gpu
def test_explicit_cpu_backend_on_cuda_tensors_is_a_usage_error():
    with pytest.raises(UsageError, match=r"backend 'cpu' runs on cpu tensors, but an input is on cuda"):
        function("x + 1", backend="cpu").apply(torch.ones(3, device="cuda"))


@needs_compiler
def test_vmap_and_grad_transforms_run_on_the_cpu_backend():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(6, generator=generator, dtype=torch.float64)
    fused = built("x*tanh(softplus(x)) + y", "cpu")
    mapped = torch.func.vmap(fused.apply, in_dims=(0, None))(x, y)
    assert_matches_reference(mapped, CASES_BY_ID["mish"].reference(x=x) + y, rtol=1e-13, what="vmap")
    gradient = torch.func.grad(lambda a: fused.apply(a, y).sum())(x)
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad((CASES_BY_ID["mish"].reference(x=leaf) + y).sum(), leaf)
    assert_matches_reference(gradient, expected, rtol=1e-12, what="torch.func.grad")


@pytest.mark.slow
def test_compile_backend_does_not_recompile_for_new_sizes():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    generated = function("x*tanh(softplus(x)) + 1", backend="compile")
    for size in (10, 20, 37, 1000):
        x = torch.linspace(-3, 3, size, dtype=torch.float64, requires_grad=True)
        (gradient,) = torch.autograd.grad(generated.apply(x).sum(), x)
        leaf = x.detach().clone().requires_grad_()
        (expected,) = torch.autograd.grad(CASES_BY_ID["mish"].reference(x=leaf).sum(), leaf)
        assert_matches_reference(gradient, expected, rtol=1e-12, what=f"size {size}")
    assert counters["stats"]["unique_graphs"] == 2  # the forward kernel and the backward kernel, once each


def test_cpu_kernels_divide_by_per_row_parameters_once_per_row():
    # exp(-(x - m)**2/(2*s**2))/s with s per row: 1/s and -1/(2 s^2) are computed before the inner loop,
    # which then only multiplies (a division per element costs as much as the rest of the loop)
    from customgrad.backends.cpu import CpuKernel

    source = CpuKernel(function("exp(-(x - m)**2/(2*s**2))/s", backend="eager").spec).c_source(True, "vrc")
    inner = source.split("for (int64_t j = 0; j < inner; j++) {")[1].split("}")[0]
    assert "v_x" in inner and "/" not in inner, inner


@needs_compiler
@pytest.mark.parametrize("shape", [(200, 300), (70, 2100)], ids=str)
def test_cpu_float32_in_loop_sums_are_within_float32_summation_error(shape):
    # per-column sums over blocks of 64 rows, per-row sums over chunks of 1024 columns, both in float then
    # added in double; bound: n * eps * (sum of |terms|), n the count summed
    rows, columns = shape
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(rows, columns, generator=generator)
    m = torch.randn(columns, generator=generator)
    s = torch.rand(rows, 1, generator=generator) + 0.5
    upstream = torch.randn(rows, columns, generator=generator)
    formula = "exp(-(x - m)**2/(2*s**2))/s"
    leaves = [t.clone().requires_grad_() for t in (x, m, s)]
    got = torch.autograd.grad(function(formula, backend="cpu").apply(*leaves), leaves[1:], upstream)
    full = [x.double(), m.double().expand(rows, columns).clone(), s.double().expand(rows, columns).clone()]
    full = [t.requires_grad_() for t in full]
    terms = torch.autograd.grad(built(formula, "eager").apply(*full), full[1:], upstream.double())
    for g, term, target, count in zip(got, terms, (m, s), (rows, columns), strict=True):
        exact = term.sum_to_size(target.shape)
        bound = count * torch.finfo(torch.float32).eps * term.abs().sum_to_size(target.shape)
        assert ((g.double() - exact).abs() <= bound).all(), f"sum over {count} off by more than float32 summation"
