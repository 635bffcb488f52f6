"""float16 and bfloat16 on the cpu backend: the C kernel reads and writes half storage itself (no float32
copies of the inputs or results) and computes in float32, as accurate as same-dtype eager torch."""

from __future__ import annotations

import functools
import shutil

import pytest
import torch

from customgrad import function
from customgrad.backends import cpu
from reference import assert_matches_reference
from test_function import derivatives

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
HALF = [torch.float16, torch.bfloat16]
INF, NAN = float("inf"), float("nan")
FORMULAS = {
    "P2": "x**2 + 2*x",
    "GELU-tanh": "0.5*x*(1 + tanh(0.7978845608028654*(x + 0.044715*x**3)))",
    "Mish": "x*tanh(softplus(x))",
}
# inf, NaN, values whose square or cube overflows float16 (300, 65504) or bfloat16 and float32 (1e20, 1e30),
# the softplus threshold, float16 subnormals and signed zeros.
SPECIAL = [INF, -INF, NAN, 0.0, -0.0, 300.0, -300.0, 65504.0, -65504.0, 1e20, -1e30, 20.0, -20.0, 6e-8, -3e-6]


@functools.cache
def built(formula: str, backend: str):
    return function(formula, backend=backend)


def special_input(dtype: torch.dtype) -> torch.Tensor:
    """70 000 random values (threaded loop and its remainder) with the special values spread and at the end."""
    x = torch.empty(70_000, dtype=torch.float64).uniform_(-8, 8, generator=torch.Generator().manual_seed(0))
    special = torch.tensor(SPECIAL, dtype=torch.float64)
    x[torch.arange(len(SPECIAL)) * 4099 + 3] = special
    x[-len(SPECIAL) :] = special
    return x.to(dtype)


class KernelCalls:
    """Records the storage each kernel was built for and the data pointers it was called with."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        original = cpu.CpuKernel.function

        def spy(kernel, single, layouts, reductions="", storage=""):
            loaded = original(kernel, single, layouts, reductions, storage)
            return lambda *arguments: (self.calls.append((storage, arguments[3:])), loaded(*arguments))[1]

        monkeypatch.setattr(cpu.CpuKernel, "function", spy)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", list(FORMULAS))
def test_half_kernels_read_and_write_the_tensors_storage_without_float32_copies(name, dtype, monkeypatch):
    spy = KernelCalls(monkeypatch)
    x = special_input(dtype).requires_grad_()
    y = built(FORMULAS[name], "cpu").apply(x)
    (gradient,) = torch.autograd.grad(y.sum(), x)
    assert y.dtype == gradient.dtype == dtype
    forward, backward = spy.calls
    expected_storage = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    assert forward[0] == backward[0] == expected_storage
    # The kernel read x's own storage and wrote straight into the returned tensors.
    assert forward[1] == (x.data_ptr(), y.data_ptr())
    assert x.data_ptr() in backward[1] and gradient.data_ptr() == backward[1][-1]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", list(FORMULAS))
def test_half_kernels_match_same_dtype_eager_torch_at_inf_nan_and_overflow(name, dtype):
    x = special_input(dtype)
    eager = built(FORMULAS[name], "eager")
    exact = derivatives(lambda v: eager.apply(v["x"]), {"x": x.double()}, 1, 2)
    same_dtype = derivatives(lambda v: eager.apply(v["x"]), {"x": x}, 1, 2)
    got = derivatives(lambda v: built(FORMULAS[name], "cpu").apply(v["x"]), {"x": x}, 1, 2)
    eps = torch.finfo(dtype).eps
    for level in range(2):
        what = f"{name} {dtype} order {level}"
        a, s, e = got[level][0], same_dtype[level][0], exact[level][0]
        assert a.dtype == dtype, what
        a, s, e = a.detach().double(), s.detach().double(), e.detach()
        # inf and NaN exactly where same-dtype eager has them (overflow included); elsewhere within 4x its
        # error against float64 plus 8 ulps of the largest entry.
        in_range = torch.isfinite(s) & torch.isfinite(e)
        assert_matches_reference(a[~in_range], s[~in_range], rtol=0, what=f"{what} inf/NaN")
        scale = e[in_range].abs().max().item()
        tolerance = 4 * (s - e)[in_range].abs().max().item() + 8 * eps * scale
        assert_matches_reference(a[in_range], e[in_range], rtol=0, atol=tolerance, what=what)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_conversions_are_bit_exact_for_every_bit_pattern(dtype):
    # Every 16-bit pattern: widened exactly, squared in float32 and rounded to nearest even exactly as
    # torch rounds x*x (overflow to inf, subnormals, NaN stays NaN).
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = torch.cat([x, x[:4000]])  # past the vectorised body into the remainder
    got = built("x**2", "cpu").apply(x)
    want = x * x
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))
