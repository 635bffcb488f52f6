"""The GPU native engine (`fit.cuda_engine`): `native_lm.c` compiled for CUDA from the CPU engine's source.

Without a GPU: the CUDA source of a few formulas compiles with nvcc (and with NVRTC where its library
is installed), the generated kernels become device code, the chunking over free GPU memory covers every
curve once (with a fake kernel), and "auto" falls back to the torch engine with one warning. With a GPU
(``gpu`` marker): every curve equals the CPU native engine's fit of it.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import types
import warnings

import numpy as np
import pytest
import torch

from customgrad import UsageError, fit_batch
from customgrad.codegen.c import device_source
from customgrad.fit import cuda_engine
from customgrad.fit.cuda_engine import CudaSolver, chunk_curves, cuda_source
from customgrad.fit.formula_model import formula_model
from customgrad.fit.native import _Problem
from reference import assert_matches_reference

GAUSSIAN = "a*exp(-(x-m)**2/(2*s**2))+c"
START = {"a": 1.0, "m": 0.0, "s": 1.0, "c": 0.0}
# Gpufit's benchmark model: a 2D Gaussian on a 5 x 5 grid, 5 parameters
GAUSSIAN_2D = "a*exp(-((u-x0)**2 + (v-y0)**2)/(2*s**2)) + b"
# helpers (sigmoid, softplus), a piecewise function and a power: every kind of generated line
HELPERS = "a*sigmoid(k*x) + softplus(b*x) + where(x > c, abs(x)**1.5, erf(x)) + max(x, c)"


def _source(text: str, data: tuple[str, ...]) -> str:
    model = formula_model(text)
    free = tuple(name for name in model.names if name not in data)
    layouts = "".join("v" if name in data else "s" for name in model.names)
    return cuda_source(model, free, layouts)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")
def test_the_gpu_solver_compiles_with_nvcc_for_several_formulas(tmp_path):
    sources = {"gaussian": _source(GAUSSIAN, ("x",)), "gpufit": _source(GAUSSIAN_2D, ("u", "v"))}
    sources["helpers"] = _source(HELPERS, ("x",))
    runs = {}
    for name, source in sources.items():  # all at once: each takes seconds
        path = tmp_path / f"{name}.cu"
        path.write_text(source)
        command = ["nvcc", "--ptx", "-arch=sm_90", "-fmad=false", "-x", "cu", "-o", str(tmp_path / f"{name}.ptx")]
        runs[name] = subprocess.Popen([*command, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for name, run in runs.items():
        output = run.communicate(timeout=600)[0].decode()
        assert run.returncode == 0, f"{name}:\n{output}"
        ptx = (tmp_path / f"{name}.ptx").read_text()
        for entry in cuda_engine.ENTRIES:
            assert f".entry {entry}(" in ptx, (name, entry)


@pytest.mark.skipif(not cuda_engine.nvrtc_available(), reason="needs an NVRTC library")
def test_the_gpu_solver_compiles_with_nvrtc_without_cuda_headers():
    binary = cuda_engine.nvrtc_compile(_source(GAUSSIAN, ("x",)), "90")
    assert binary[:4] == b"\x7fELF"


def test_generated_kernels_become_device_functions():
    model = formula_model(HELPERS)
    free = tuple(name for name in model.names if name != "x")
    layouts = "".join("v" if name == "x" else "s" for name in model.names)
    host = model.c_source(free, False, layouts)
    device = device_source(host)
    assert "#pragma omp" in host and "#include" in host and "restrict" in host  # what is removed is there
    assert "#pragma" not in device and "#include" not in device and " restrict " not in device
    assert "double exp(double);" not in device  # the libmvec prototypes would redeclare CUDA's exp
    assert "static __device__ void kernel(" in device
    assert "static __device__ inline real cg_softplus" in device
    # the loop body is the host's, line for line
    body = [line for line in host.splitlines() if line.strip().startswith(("const real", "out"))]
    assert body and all(line in device.splitlines() for line in body)


@pytest.mark.parametrize(
    ("count", "curve_bytes", "free", "expected"),
    [
        (1000, 8000, 10**9, 1000),  # all fit
        (10**7, 8000, 8 * 10**9, 499968),  # half of 8 GB / 8 kB = 500000, rounded down to blocks of 64
        (10**7, 8000, 10**6, 62),  # less than a block fits
        (10, 8000, 100, 1),  # not even one: one at a time
    ],
)
def test_chunks_fit_half_the_free_memory_in_whole_blocks(count, curve_bytes, free, expected):
    assert chunk_curves(count, curve_bytes, free) == expected


def _fake_solver(monkeypatch, free_bytes: int, words: int):
    """A `CudaSolver` on the CPU whose kernels are Python fakes: each writes its curves' numbers into
    the per-curve outputs, so that the chunking can be checked without a GPU."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 2 * free_bytes))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    launches = []

    def work_words(grid, block, args):
        args[2].fill_(words)

    def fit(grid, block, args):
        _, _, index, count, workspace, size, theta, cost, counts, history, recorded = args
        assert grid[0] * block[0] >= count and size == words and workspace.numel() >= count * words
        launches.append(index[:count].tolist())
        theta[:count] += 1
        cost[:count] = index[:count].double()
        counts[:count] = torch.tensor([1, 3, 2, 1, 0])
        history[:count, 0] = 10.0
        recorded[:count] = 1

    def errors(grid, block, args):
        launches.append(args[2][: args[3]].tolist())
        args[-1][: args[3]] = args[2][: args[3]].double()

    solver = object.__new__(CudaSolver)
    solver.device, solver.dtype, solver.scales = torch.device("cpu"), torch.float32, None
    solver.struct = _Problem()
    solver.kernels = {"cg_work_words": work_words, "cg_lm_batch": fit, "cg_lm_errors": errors}
    return solver, launches


def test_a_batch_larger_than_the_free_memory_runs_in_chunks_covering_every_curve_once(monkeypatch):
    # 1000 words (8 kB) per curve, 1 MB free: 62 curves per launch (half the memory), 17 launches
    solver, launches = _fake_solver(monkeypatch, 10**6, 1000)
    index = torch.arange(5, 1005)
    outcome = solver.solve(index, torch.zeros(1000, 3), ftol=1e-8, xtol=1e-8, gtol=1e-8, max_steps=10)
    assert [len(launch) for launch in launches] == [62] * 16 + [8]
    assert sum(launches, []) == index.tolist()
    assert outcome.cost.tolist() == [float(i) for i in index]
    assert outcome.theta.dtype == torch.float32 and bool((outcome.theta == 1).all())
    assert outcome.status == ["ftol"] * 1000 and outcome.evaluations.tolist() == [3] * 1000
    assert outcome.history(7) == [10.0] and not bool(outcome.saturated.any())
    launches.clear()
    stderr, cost = solver.errors(torch.zeros(100, 3), torch.full((100,), 5))
    assert len(launches) == 2 and cost.tolist() == list(range(100)) and cost.dtype == torch.float32


def _cuda_problem(dtype=torch.float64):
    """What `cuda_engine` reads of a batch on a (pretended) CUDA device."""
    y = types.SimpleNamespace(device=torch.device("cuda"), dtype=dtype)
    return types.SimpleNamespace(function=formula_model(GAUSSIAN), y=y)


def test_without_nvrtc_auto_falls_back_to_torch_with_one_warning_and_native_says_why(monkeypatch):
    monkeypatch.setattr(cuda_engine, "nvrtc_available", lambda: False)
    monkeypatch.setattr(cuda_engine, "_warned", set())
    with pytest.warns(UserWarning, match="torch engine: the GPU native engine is unavailable .no NVRTC library"):
        assert cuda_engine.engine_for(_cuda_problem(), "auto", build=True, what="fit this batch") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per reason
        assert cuda_engine.engine_for(_cuda_problem(), "auto", build=True, what="fit this batch") is None
        assert cuda_engine.engine_for(_cuda_problem(), "torch", build=True, what="fit this batch") is None
    with pytest.raises(UsageError, match="engine='native' cannot fit this batch: no NVRTC library found"):
        cuda_engine.engine_for(_cuda_problem(), "native", build=True, what="fit this batch")
    assert "not CUDA float32 or float64" in cuda_engine.unavailable(_cuda_problem(torch.float16))


def _curves(count: int, points: int = 64, seed: int = 5):
    """Noisy Gaussians plus offset, with a few NaN points and one curve that is all NaN but one point."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-3, 3, points)
    truth = np.stack([rng.uniform(1, 3, count), rng.uniform(-1, 1, count), rng.uniform(0.4, 1.2, count)], 1)
    y = truth[:, :1] * np.exp(-((x - truth[:, 1:2]) ** 2) / (2 * truth[:, 2:3] ** 2)) + 0.3
    y = y + 0.05 * rng.standard_normal((count, points))
    y[rng.uniform(size=y.shape) < 0.05] = np.nan
    return x, y


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_curve_equals_its_cpu_native_fit(dtype):
    x, y = _curves(300)
    sigma = np.random.default_rng(6).uniform(0.5, 2.0, y.shape)
    params = {"a": 1.0, "m": 0.0, "s": {"value": 1.0, "min": 0.05, "max": 5.0}, "c": 0.0}
    cpu = fit_batch(GAUSSIAN, x, y, params=params, sigma=sigma, engine="native")
    gpu = fit_batch(GAUSSIAN, x, y, params=params, sigma=sigma, engine="native", device="cuda", dtype=dtype)
    rtol = 1e-8 if dtype == torch.float64 else 1e-4
    for name in START:
        assert_matches_reference(gpu.params[name], cpu.params[name], rtol=rtol, what=name)
        assert_matches_reference(gpu.stderr[name], cpu.stderr[name], rtol=100 * rtol, what=f"stderr {name}")
    assert_matches_reference(gpu.cost, cpu.cost, rtol=rtol, what="cost")
    assert gpu.success.tolist() == cpu.success.tolist()


@pytest.mark.gpu
def test_fixed_parameters_and_cuda_data_are_fitted_on_their_gpu(monkeypatch):
    x, y = _curves(64)
    params = {**START, "c": {"value": np.full(64, 0.3), "fixed": True}}
    data = torch.tensor(y, device="cuda")
    cpu = fit_batch(GAUSSIAN, x, y, params=params, engine="native")
    solvers = []
    monkeypatch.setattr(cuda_engine.CudaSolver, "errors", _recorded(cuda_engine.CudaSolver.errors, solvers))
    gpu = fit_batch(GAUSSIAN, torch.tensor(x, device="cuda"), data, params=params, engine="native")
    assert solvers, "the CUDA data were not fitted by the GPU engine"
    for name in ("a", "m", "s"):
        assert_matches_reference(gpu.params[name], cpu.params[name], rtol=1e-8, what=name)
    assert gpu.params["c"].tolist() == [0.3] * 64


def _recorded(method, calls: list):
    def recorded(self, *args, **kwargs):
        calls.append(self.device)
        return method(self, *args, **kwargs)

    return recorded


@pytest.mark.gpu
def test_a_batch_in_chunks_equals_one_launch(monkeypatch):
    x, y = _curves(200)
    whole = fit_batch(GAUSSIAN, x, y, params=START, engine="native", device="cuda")
    free, total = torch.cuda.mem_get_info()
    # a pretended 1 MB free: 8 kB a curve, about 60 curves per launch
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**6, total))
    chunked = fit_batch(GAUSSIAN, x, y, params=START, engine="native", device="cuda")
    for name in START:
        assert chunked.params[name].tolist() == whole.params[name].tolist()


@pytest.mark.gpu
def test_a_curve_whose_model_gives_nan_gets_its_own_status_and_the_others_go_on():
    x = np.linspace(0, 4, 30)
    y = np.stack([2 * np.sqrt(x + 0.5 * k) for k in range(1, 5)])
    params = {"a": 1.0, "b": -0.1}
    cpu = fit_batch("a*sqrt(x - b)", x, y, params=params, engine="native")
    gpu = fit_batch("a*sqrt(x - b)", x, y, params=params, engine="native", device="cuda")
    for name in params:
        assert_matches_reference(gpu.params[name], cpu.params[name], rtol=1e-8, what=name)
    assert gpu.success.tolist() == cpu.success.tolist()


# The GPU translation unit compiled for the host by a C++ compiler: CUDA's qualifiers empty, the thread
# indices globals that `_host_kernels` sets before running each "thread" of a launch.
HOST_PRELUDE = """#include <math.h>
#include <stdint.h>
#include <string.h>
#define __device__
#define __global__
#define __restrict__ __restrict
extern "C" { struct cg_dim { long long x; } blockIdx, threadIdx, blockDim; }
"""


def _host_kernels(tmp_path):
    """A `cuda_engine.kernels` stand-in: the model's CUDA source (`cuda_source`, unchanged) compiled by
    g++, each launch run thread by thread as the GPU would (blockIdx, threadIdx, blockDim set per call)."""

    def kernels(function, free, layouts, device, build):
        source = tmp_path / "solver.cpp"
        source.write_text(HOST_PRELUDE + cuda_source(function, free, layouts))
        library_path = tmp_path / "solver.so"
        command = ["g++", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(library_path), str(source)]
        subprocess.run(command, check=True, capture_output=True)
        library = ctypes.CDLL(str(library_path))
        dims = {name: ctypes.c_longlong.in_dll(library, name) for name in ("blockIdx", "threadIdx", "blockDim")}

        def entry(name):
            function = getattr(library, name)

            def launch(grid, block, args):
                converted = [
                    ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int(a) for a in args
                ]
                dims["blockDim"].value = block[0]
                for b in range(grid[0]):
                    for t in range(block[0]):
                        dims["blockIdx"].value, dims["threadIdx"].value = b, t
                        function(*converted)

            return launch

        return {name: entry(name) for name in cuda_engine.ENTRIES}

    return kernels


def _emulated_gpu(monkeypatch, free_bytes: int, kernels=None):
    """`CudaSolver` on CPU data with ``kernels`` (default: the CPU native library's ``lm_batch`` /
    ``lm_errors`` over a launch's curves, on the same Problem bytes and arrays), and fit_batch routed
    to it: every line of the GPU engine's Python (arrays, Problem, chunks, outcome) runs without a GPU."""
    from customgrad.fit import api as batch
    from customgrad.fit import native

    launches = []

    def emulated(function, free, layouts, device, build):
        library = native.library(function, free, layouts, build=True)

        def entry(name):
            def launch(grid, block, args):
                problem, options, index, count, workspace, words, *outputs = args
                assert grid[0] * block[0] >= count and workspace.numel() >= count * words
                launches.append(count)
                pointers = (tensor.data_ptr() for tensor in outputs)
                getattr(library, name)(problem.data_ptr(), options.data_ptr(), index.data_ptr(), count, 1, *pointers)

            return launch

        def work_words(grid, block, args):
            args[2].fill_(1000)

        return {"cg_lm_batch": entry("lm_batch"), "cg_lm_errors": entry("lm_errors"), "cg_work_words": work_words}

    monkeypatch.setattr(cuda_engine, "kernels", kernels or emulated)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 2 * free_bytes))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(batch, "engine_for", lambda problem, *args, **kwargs: CudaSolver(problem))
    return launches


def test_the_gpu_engines_python_side_with_the_cpu_solver_equals_the_native_engine(monkeypatch):
    # NaN points, per-curve sigma, a bounded parameter and a fixed one, curves near a NaN domain edge
    x, y = _curves(40, points=30)
    sigma = np.random.default_rng(7).uniform(0.5, 2.0, y.shape)
    params = {"a": 1.0, "m": 0.0, "s": {"value": 1.0, "min": 0.05, "max": 5.0}, "c": {"value": 0.3, "fixed": True}}
    expected = fit_batch(GAUSSIAN, x, y, params=params, sigma=sigma, engine="native")
    launches = _emulated_gpu(monkeypatch, 10**5)  # 8 kB a curve: 6 curves per launch
    found = fit_batch(GAUSSIAN, x, y, params=params, sigma=sigma, engine="native")
    assert launches[:7] == [6] * 6 + [4] and sum(launches) >= 80  # the fits, then the standard errors
    for name in params:
        assert found.params[name].tolist() == expected.params[name].tolist()
    for name in found.stderr:
        assert np.array_equal(found.stderr[name], expected.stderr[name], equal_nan=True)
    assert found.status == expected.status and found.cost.tolist() == expected.cost.tolist()
    assert found.evaluations.tolist() == expected.evaluations.tolist()
    assert found[3].history == expected[3].history


@pytest.mark.parametrize("magnitude", [1e150, 1e-150])
def test_the_gpu_engines_costs_and_errors_of_data_near_the_float64_limits_equal_the_native_engines(
    monkeypatch, magnitude
):
    # squared residuals beyond float64's range: both engines fit each curve times a power of two, and the
    # standard errors and costs are taken in those units too (they were not on the GPU: inf or 0)
    x, y = _curves(12, points=30)
    y = np.nan_to_num(y, nan=0.3) * magnitude
    params = {**START, "a": magnitude}
    expected = fit_batch(GAUSSIAN, x, y, params=params, engine="native")
    _emulated_gpu(monkeypatch, 10**5)
    found = fit_batch(GAUSSIAN, x, y, params=params, engine="native")
    assert np.isfinite(expected.cost).all() and (expected.cost > 0).all()
    assert found.cost.tolist() == expected.cost.tolist()
    for name in START:
        assert found.params[name].tolist() == expected.params[name].tolist()
        assert np.array_equal(found.stderr[name], expected.stderr[name], equal_nan=True)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_the_gpu_translation_unit_run_thread_by_thread_on_the_host_fits_as_the_native_engine(monkeypatch, tmp_path):
    # the device path itself (workspace carving, word copies, the generated rows as device functions,
    # the thread guard past the last curve), not only its compilation
    x, y = _curves(40, points=30)
    sigma = np.random.default_rng(7).uniform(0.5, 2.0, y.shape)
    params = {"a": 1.0, "m": 0.0, "s": {"value": 1.0, "min": 0.05, "max": 5.0}, "c": 0.0}
    expected = fit_batch(GAUSSIAN, x, y, params=params, sigma=sigma, engine="native")
    _emulated_gpu(monkeypatch, 10**5, _host_kernels(tmp_path))  # 6 curves per launch of one 64-thread block
    found = fit_batch(GAUSSIAN, x, y, params=params, sigma=sigma, engine="native")
    for name in params:  # scalar exp here, libmvec's vector exp in the native library: not bit for bit
        assert_matches_reference(found.params[name], expected.params[name], rtol=1e-8, what=name)
        assert_matches_reference(found.stderr[name], expected.stderr[name], rtol=1e-6, what=f"stderr {name}")
    assert_matches_reference(found.cost, expected.cost, rtol=1e-8, what="cost")
    assert found.success.tolist() == expected.success.tolist()


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_gpufits_2d_gaussian_run_thread_by_thread_on_the_host_fits_as_the_native_engine(monkeypatch, tmp_path):
    # two data columns, per-curve starts, a fixed parameter, a curve with a NaN point
    rng = np.random.default_rng(8)
    grid = np.arange(5.0)
    x = {"u": np.tile(grid, 5), "v": np.repeat(grid, 5)}
    truth = [rng.uniform(50, 150, 20), rng.uniform(1.6, 2.4, 20), rng.uniform(1.6, 2.4, 20), rng.uniform(0.8, 1.2, 20)]
    a, x0, y0, s = (value[:, None] for value in truth)
    y = a * np.exp(-((x["u"] - x0) ** 2 + (x["v"] - y0) ** 2) / (2 * s**2)) + 10 + rng.standard_normal((20, 25))
    y[4, 7] = np.nan
    params = {name: value * rng.uniform(0.9, 1.1, 20) for name, value in zip(("a", "x0", "y0", "s"), truth)}
    params["b"] = {"value": 10.0, "fixed": True}
    options = {"ftol": 1e-4, "xtol": 1e-4, "gtol": 1e-4, "max_steps": 10}  # Gpufit's benchmark settings
    expected = fit_batch(GAUSSIAN_2D, x, y, params=params, engine="native", **options)
    _emulated_gpu(monkeypatch, 10**9, _host_kernels(tmp_path))
    found = fit_batch(GAUSSIAN_2D, x, y, params=params, engine="native", **options)
    for name in ("a", "x0", "y0", "s"):
        assert_matches_reference(found.params[name], expected.params[name], rtol=1e-8, what=name)
    assert found.success.tolist() == expected.success.tolist()
