"""The Triton backend's kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``): the libdevice
stand-ins of `backends.triton_interpreter` against torch in float64, broadcast and strided inputs read
in place, broadcast gradients summed inside the kernel, mixed and half dtypes, odd layouts, and the
launch-configuration tuner with a fake candidate set and a fake timer.

Sizes stay small: the interpreter runs every block op by op in numpy.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import customgrad
from reference import assert_matches_reference

pytest.importorskip("triton")

INF, NAN = float("inf"), float("nan")


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


#: formula -> its torch reference; sinh and cosh by numpy, which does not overflow before the true value.
STAND_INS = {
    "acos(x)": torch.acos,
    "asin(x)": torch.asin,
    "atan(x)": torch.atan,
    "tan(x)": torch.tan,
    "sinh(x)": lambda x: torch.from_numpy(np.sinh(x.numpy())),
    "cosh(x)": lambda x: torch.from_numpy(np.cosh(x.numpy())),
    "asinh(x)": torch.asinh,
    "acosh(x)": torch.acosh,
    "atanh(x)": torch.atanh,
    "erfc(x)": torch.erfc,
    "round(x)": torch.round,
}
POINTS = [0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1.0, -1.0, 1 - 1e-12, 1 + 1e-12, 1e-300, 1e-8, -3e-20, 0.99]
POINTS += [2.0, 5.0, 26.0, -26.0, 20.5, 700.0, 710.0, -710.0, 2.0**28, 2.0**29, 1e10, 1e300, -1e300, INF, -INF, NAN]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("formula", list(STAND_INS))
def test_interpreted_libdevice_functions_match_torch_in_float64(formula, dtype):
    x = torch.cat([torch.linspace(-30, 30, 601, dtype=torch.float64), torch.tensor(POINTS, dtype=torch.float64)])
    x = x.to(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        exact = STAND_INS[formula](x.double()).to(dtype)  # the correctly rounded value, within an ulp
    got = customgrad.function(formula, backend="triton").apply(x.to(device())).cpu()
    assert got.dtype == dtype
    # erfc is a continued fraction past 2 (25 float64 ulps); the others a few ulps (libdevice on a GPU:
    # up to 4 float32 ulps, CUDA's documented bounds)
    ulps = 32 if formula == "erfc(x)" else 8 if torch.cuda.is_available() else 4
    assert_matches_reference(got, exact, rtol=ulps * torch.finfo(dtype).eps, atol=1e-300, what=f"{formula} {dtype}")


def test_interpreted_atan2_matches_torch_at_signed_zeros_and_infinities():
    values = torch.tensor([0.0, -0.0, 1.0, -1.0, INF, -INF, 1e-300, -3.0, NAN], dtype=torch.float64)
    y, x = (t.flatten() for t in torch.meshgrid(values, values, indexing="ij"))
    noise = torch.randn(2, 500, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 10
    y, x = torch.cat([y, noise[0]]), torch.cat([x, noise[1]])
    got = customgrad.function("atan2(y, x)", backend="triton").apply(y.to(device()), x.to(device())).cpu()
    want = torch.atan2(y, x)
    assert_matches_reference(got, want, rtol=4 * torch.finfo(torch.float64).eps, what="atan2")
    assert torch.equal(torch.signbit(got[want == 0]), torch.signbit(want[want == 0])), "sign of zero"


GAUSSIAN = "exp(-(x - m)**2/(2*s**2))/s"


@pytest.fixture
def small_blocks(monkeypatch):
    """Launches of 64 elements per program (a fake one-candidate tuner), so that every in-kernel sum
    runs over several programs' partial sums even at test sizes (kept small: the interpreter runs
    each program op by op)."""
    from customgrad.backends import triton as backend
    from customgrad.backends.triton_tuning import LaunchTuner

    tuner = LaunchTuner(candidates=[(64, 1)], timer=lambda run: run() and 0.0, everywhere=True)
    monkeypatch.setattr(backend, "TUNER", tuner)


def forward_and_gradients(formula: str, backend: str, values: list[torch.Tensor], upstream_seed: int = 5):
    """Output and input gradients of ``formula`` at ``values`` with a random upstream gradient."""
    generated = customgrad.function(formula, backend=backend)
    leaves = [v.detach().clone().requires_grad_() if v.is_floating_point() else v for v in values]
    output = generated.apply(*leaves)
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    return output, torch.autograd.grad(output, wanted, upstream.to(output.dtype).to(output.device))


def assert_like_float64_eager(formula: str, values: list[torch.Tensor], rtol: float) -> None:
    """The triton backend's output and gradients (in the inputs' own layouts and dtypes) against eager
    float64 autograd at the same values."""
    got, got_gradients = forward_and_gradients(formula, "triton", [v.to(device()) for v in values])
    want, want_gradients = forward_and_gradients(formula, "eager", [v.double() for v in values])
    assert got.shape == want.shape
    assert_matches_reference(got.cpu(), want, rtol=rtol, atol=rtol, what=f"{formula} forward")
    for k, (g, w) in enumerate(zip(got_gradients, want_gradients, strict=True)):
        assert g.shape == w.shape and g.dtype == values[k].dtype
        scale = max(w.abs().max().item() if w.numel() else 0.0, 1.0)
        assert_matches_reference(g.cpu(), w, rtol=rtol, atol=rtol * scale, what=f"d/d{k}")


def leaves(*shapes, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=generator, dtype=torch.float64).add(0.5).to(dtype) for shape in shapes]


@pytest.mark.parametrize(
    "shapes",
    [
        [(6, 150), (150,), (6, 1)],  # per-column and per-row parameters
        [(3, 2, 70), (70,), (3, 2, 1)],  # leading dimensions merged into rows
        [(3, 4, 70), (4, 1), (3, 1, 1)],  # three dimensions after merging: copied, then one row
        [(700,), (1,), ()],  # a 1-element and a 0-d tensor: numbers
        [(), (), ()],
    ],
    ids=str,
)
def test_broadcast_inputs_and_their_gradients_match_eager(shapes, small_blocks):
    assert_like_float64_eager(GAUSSIAN, leaves(*shapes), rtol=1e-12)


def test_broadcast_inputs_are_read_where_they_live_and_their_gradients_summed_in_the_kernel(small_blocks, monkeypatch):
    from customgrad.backends import triton as backend

    launched = []
    original = backend.TritonKernel.launch

    def spy(self, plan, tensors, shape, dtype, targets):
        launched.append((plan, [t.data_ptr() for t in tensors]))
        return original(self, plan, tensors, shape, dtype, targets)

    monkeypatch.setattr(backend.TritonKernel, "launch", spy)
    monkeypatch.setattr(backend, "flat_operand", lambda *a: pytest.fail("an input was copied to full shape"))
    values = leaves((6, 150), (150,), (6, 1), dtype=torch.float32)
    values[0] = values[0].half()  # mixed dtypes: loaded in their own dtype
    inputs = [v.to(device()).requires_grad_() for v in values]
    customgrad.function(GAUSSIAN, backend="triton").apply(*inputs).sum().backward()
    forward, backward = launched[0], launched[-1]
    assert forward[0].reads == "vio" and forward[1] == [v.data_ptr() for v in inputs]
    assert backward[0].stores == "vio", "the gradients of m and s were not summed inside the kernel"
    assert_like_float64_eager(GAUSSIAN, values, rtol=2e-3)


def test_in_kernel_sums_are_within_float32_summation_error_and_reproducible(small_blocks):
    # float32 sums of 300 terms per row and 8 per column; the bound is n * eps * sum of |terms|
    x, m, s = leaves((8, 300), (300,), (8, 1), dtype=torch.float32, seed=2)
    _, got = forward_and_gradients(GAUSSIAN, "triton", [x, m, s])
    _, again = forward_and_gradients(GAUSSIAN, "triton", [x, m, s])
    assert all(torch.equal(a, b) for a, b in zip(got, again, strict=True)), "not bitwise reproducible"
    full = [x.double(), m.double().expand(8, 300).clone(), s.double().expand(8, 300).clone()]
    _, terms = forward_and_gradients(GAUSSIAN, "eager", full)  # the per-element terms of each sum
    for k, (g, term, target) in enumerate(zip(got, terms, (x, m, s), strict=True)):
        exact = term.sum_to_size(target.shape)
        bound = 300 * torch.finfo(torch.float32).eps * term.abs().sum_to_size(target.shape) + 1e-30
        error = (g.double().cpu() - exact).abs()
        assert (error <= bound).all(), f"input {k}: error {error.max().item():.3g} above the summation bound"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_with_per_row_parameters_match_float64_within_their_precision(dtype, small_blocks):
    values = leaves((5, 70), (70,), (5, 1), dtype=dtype, seed=4)
    # float32 computation, then one rounding to the half type
    assert_like_float64_eager(GAUSSIAN, values, rtol=40 * torch.finfo(dtype).eps)


def odd_layouts():
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 0.5
    bias = torch.rand(1, 3, 1, 1, dtype=torch.float64) + 0.5
    return {
        "channels-last with per-channel": [x.to(memory_format=torch.channels_last), bias, torch.tensor(0.7).double()],
        "transposed": [x[0, 0].t(), torch.rand(5, 1, dtype=torch.float64) + 0.5, torch.tensor(1.5).double()],
        "sliced": [x[:, :, ::2, 1:], x[0, :, :1, :1] + 1.0, torch.tensor(0.9).double()],
        "stride-0 expanded": [x[0, 0, 0].expand(7, 5), x[0, 0, :, :1].expand(4, 5)[:1].expand(7, 5), x[1, 1, 1, :1]],
        "0-d": [torch.tensor(0.3).double(), torch.tensor(0.2).double(), torch.tensor(1.1).double()],
        "empty rows": [torch.rand(0, 5).double(), torch.rand(5).double(), torch.rand(0, 1).double()],
        "empty broadcast": [torch.rand(4, 0).double(), torch.rand(1, 1).double(), torch.tensor(1.0).double()],
    }


@pytest.mark.parametrize("case", list(odd_layouts()))
def test_odd_layouts_give_eagers_results(case, small_blocks):
    assert_like_float64_eager(GAUSSIAN, odd_layouts()[case], rtol=1e-12)


def test_inputs_on_different_devices_are_an_error_naming_both():
    other = torch.ones(3, device="meta")
    with pytest.raises(customgrad.errors.UsageError, match=r"'x' on cpu, 'm' on meta"):
        customgrad.function("x*m", backend="triton").apply(torch.ones(3), other)
    # a 0-d CPU tensor goes with any device, as in torch
    got = customgrad.function("x*m", backend="triton").apply(torch.ones(3, device=device()), torch.tensor(2.0))
    assert got.tolist() == [2.0, 2.0, 2.0]


class FakeTimer:
    """Times each run by the order it is asked in (``seconds``), after really running it."""

    def __init__(self, seconds):
        self.seconds, self.calls = list(seconds), 0

    def __call__(self, run):
        run()
        self.calls += 1
        return self.seconds[(self.calls - 1) % len(self.seconds)]


def tuned_call(tuner, monkeypatch, size: int):
    from customgrad.backends import triton as backend

    monkeypatch.setattr(backend, "TUNER", tuner)
    x = torch.linspace(-2, 2, size, dtype=torch.float64)
    got = customgrad.function("x*sin(x) + 1", backend="triton").apply(x.to(device())).cpu()
    assert_matches_reference(got, x * torch.sin(x) + 1, rtol=1e-14, what="tuned launch")


def test_the_tuner_measures_each_candidate_once_and_remembers_the_fastest_on_disk(monkeypatch):
    from customgrad.backends.triton_tuning import LaunchTuner

    candidates = [(16, 1), (32, 2), (64, 1)]
    timer = FakeTimer([3e-3, 1e-3, 2e-3])
    tuner = LaunchTuner(candidates, timer, everywhere=True)
    tuned_call(tuner, monkeypatch, 200)
    assert timer.calls == 3 and list(tuner.known.values()) == [(32, 2)]
    tuned_call(tuner, monkeypatch, 250)  # the same size class: no new measurement
    assert timer.calls == 3
    tuned_call(tuner, monkeypatch, 2000)  # a new size class is measured
    assert timer.calls == 6
    fresh_timer = FakeTimer([1.0])
    fresh = LaunchTuner(candidates, fresh_timer, everywhere=True)  # as another process: the disk cache
    tuned_call(fresh, monkeypatch, 200)
    assert fresh_timer.calls == 0 and list(fresh.known.values()) == [(32, 2)]


def test_out_of_memory_while_tuning_falls_back_to_the_default_with_one_warning(monkeypatch):
    from customgrad.backends.triton_tuning import DEFAULT, LaunchTuner

    def exhausted(run):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    tuner = LaunchTuner([(16, 1), (32, 2)], exhausted, everywhere=True)
    with pytest.warns(RuntimeWarning, match="out of memory.*default configuration") as caught:
        tuned_call(tuner, monkeypatch, 300)
        tuned_call(tuner, monkeypatch, 3000)
    assert len(caught) == 1 and set(tuner.known.values()) == {DEFAULT}


def test_indices_are_32_bit_below_2_to_the_31_and_64_bit_above():
    from customgrad.backends.tiling import tiling

    def plan(*shapes):
        tensors = [torch.empty(shape, device="meta") for shape in shapes]
        return tiling(tensors, torch.broadcast_shapes(*shapes))

    assert not plan((2**15, 2**15), (2**15, 1)).wide
    assert plan((2**16, 2**15 + 1), (2**16, 1)).wide
    assert plan((3, 2**31), (3, 1)).wide
    assert not plan((2**20,), ()).wide


def compiled_ptx(formula: str, reads: str, stores: str, pointer: str, block: tuple[int, int], vector: int) -> str:
    """PTX of a generated kernel compiled for an H100 (sm_90) by Triton's own compiler and ptxas, no GPU
    needed; the JIT's specialisation emulated: 16-byte aligned pointers, integer arguments of 1000 or 1e6."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from customgrad.backends.triton import TritonKernel, _load_module
    from customgrad.codegen.triton import stride_names
    from customgrad.derive import backward_spec

    spec = customgrad.function(formula, backend="eager").spec
    if len(reads) > len(spec.input_names):
        spec, _ = backward_spec(spec, tuple(range(len(spec.input_names))), 9)
    two_d = block[0] > 1
    kernel = _load_module(TritonKernel(spec).triton_source(reads, stores, "float32", two_d))
    signature = {"R": "i32", "C": "i32"}
    for k, read in enumerate(reads):
        signature[f"in{k}"] = f"*{pointer}"
        signature.update({f"in{k}_{name}": "i32" for name in stride_names(read, two_d)})
    signature.update({f"out{k}": f"*{pointer}" if mode == "v" else "*fp32" for k, mode in enumerate(stores)})
    constants = {"BLOCK_R": block[0], "BLOCK_C": block[1], "WIDE": False, "VEC": vector}
    signature.update(dict.fromkeys(constants, "constexpr"))
    aligned = {
        (k,): [["tt.divisibility", 16]] for k, name in enumerate(kernel.arg_names) if name.startswith(("in", "out"))
    }
    aligned = {key: value for key, value in aligned.items() if signature[kernel.arg_names[key[0]]].startswith("*")}
    source = ASTSource(kernel, signature, constexprs=constants, attrs=aligned)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]


#: (formula, reads, stores, pointer type, tile): the kernels compiled for sm_90 below.
GPU_KERNELS = {
    "gelu forward": ("0.5*x*(1 + tanh(0.7978845608028654*(x + 0.044715*x**3)))", "v", "v", "fp32", (1, 1024)),
    "mish backward bf16": ("x*tanh(softplus(x))", "vv", "v", "bf16", (1, 1024)),  # x and the upstream gradient
    "per-row backward fp16": ("a*exp(-(x - m)**2/(2*s**2))", "ovoov", "vooo", "fp16", (2, 1024)),  # a, m, s summed
}


@pytest.fixture(scope="module")
def gpu_accesses(tmp_path_factory):
    """Each kernel's global loads and stores in its sm_90 PTX, compiled in a process without the
    interpreter (Triton chooses interpreted or compiled functions at import); None where it cannot compile."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton.backends.nvidia")
    script = (
        "import json, sys\n"
        "from test_triton_kernels import GPU_KERNELS, compiled_ptx\n"
        "out = {}\n"
        "for name, case in GPU_KERNELS.items():\n"
        "    ptx = compiled_ptx(*case, vector=8)\n"
        "    out[name] = [line.strip() for line in ptx.splitlines() if '.global' in line]\n"
        "print(json.dumps(out))\n"
    )
    root = Path(__file__).resolve().parent.parent
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    environment.update(PYTHONPATH=f"{root / 'src'}{os.pathsep}{root / 'tests'}", TRITON_DEFAULT_FP_FUSION="1")
    environment["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=600)
    if done.returncode:
        if "ptxas" in done.stderr or "LLVM" in done.stderr:
            pytest.skip(f"Triton cannot compile for sm_90 here: {done.stderr[-300:]}")
        raise AssertionError(done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", list(GPU_KERNELS))
def test_kernels_compile_for_the_gpu_with_vector_accesses(name, gpu_accesses):
    # The CUDA path cannot run here, but Triton compiles it: libdevice calls, the tile grid, in-kernel sums,
    # and 128-bit loads and stores of rows of 1000 elements (VEC = 8 divides them)
    accesses = "\n".join(gpu_accesses[name])
    assert re.search(r"ld\.global(\.\w+)*\.v4\.b32", accesses), f"no 128-bit loads:\n{accesses}"
    assert re.search(r"st\.global(\.\w+)*\.v[24]\.b32", accesses), f"no vector stores:\n{accesses}"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_a_cuda_tensor_with_a_cpu_tensor_is_an_error_naming_both(backend):
    with pytest.raises(customgrad.errors.UsageError, match=r"'x' on cuda:0, 'm' on cpu"):
        customgrad.function("x*m", backend=backend).apply(torch.ones(3, device="cuda"), torch.ones(3))


@pytest.mark.gpu
def test_more_than_2_to_the_31_elements_use_64_bit_indices_and_match_eager():
    count = 2**31 + 5
    try:
        x = torch.empty(count, dtype=torch.float16, device="cuda").uniform_(-2, 2)
        got = customgrad.function("x**2 + 2*x", backend="triton").apply(x)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory for two 4.3 GB tensors")
    for part in (slice(0, 4096), slice(2**31 - 2048, 2**31 + 5)):  # both ends of the 32-bit range
        want = (x[part].double() ** 2 + 2 * x[part].double()).half()
        assert_matches_reference(got[part].cpu(), want.cpu(), rtol=1e-3, atol=1e-3, what=f"elements {part}")
