"""The native engine on the GPU: `native_lm.c`'s per-curve Levenberg-Marquardt compiled for CUDA, one
thread per curve, for `fit_batch` on CUDA data.

The same source as the CPU engine (`native`), not a twin: `native_lm.c` compiled with ``CG_DEVICE``
makes its functions ``__device__`` and adds two ``__global__`` entries, ``cg_lm_batch`` and
``cg_lm_errors``, where thread k runs the same ``solve_curve`` (then ``saturated``) or the same
standard errors on curve ``index[k]``. The model's rows and values are the CPU engine's generated C
(`FormulaModel.c_source`) turned into device functions (`codegen.c.device_source`). Each thread's
scratch (`work_words` doubles: its R, SVD, residual vectors...) is carved from one workspace tensor,
sized to the GPU's free memory: a batch larger than that runs in chunks of curves.

NVRTC compiles it (once per model and GPU architecture, then the disk cache holds the binary; torch
loads it with the CUDA driver): a CUDA build of torch with its NVRTC library (the nvidia-cuda-nvrtc wheel
torch depends on) is all a user needs, no CUDA toolkit. Without
fused multiply-adds (``--fmad=false``), as the CPU build has none. The solver is double precision
only: float32 data are widened to float64 on the GPU, fitted in float64, and the results converted
back to float32.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
import warnings
from pathlib import Path

import torch

from ..errors import BackendError, UsageError
from .native import (
    CurveSolver,
    NotBuilt,
    _layouts,
    cached,
    converged_message,
    glue,
    model_key,
    model_sources,
)
from .native_library import solver_source

# Threads per block (one curve each): few, as each holds a long-lived solver state.
BLOCK = 64
# The share of the GPU's free memory a chunk's workspace may take (the rest: torch's own, fragmentation).
MEMORY_SHARE = 0.5
# No fused multiply-adds: each operation rounded on its own, as on the CPU (`native_library.FLAGS`).
NVRTC_OPTIONS = ("--fmad=false", "-default-device")
ENTRIES = ("cg_lm_batch", "cg_lm_errors", "cg_work_words")
_NAMESPACE = "native-fit-cuda"
_MODULES: dict[tuple, dict] = {}
_LOCK = threading.Lock()
_warned: set[str] = set()

#: Before the model and the solver: the types, constants and memmove `native_lm.c` takes from the C
#: library on the host (NVRTC has no C headers).
PRELUDE = r"""#define CG_DEVICE 1
#ifdef __CUDACC_RTC__
typedef long long int64_t;
typedef unsigned char uint8_t;
#else
#include <stdint.h>
#endif
#ifndef NAN
#define NAN __longlong_as_double(0x7ff8000000000000LL)
#endif
#ifndef INFINITY
#define INFINITY __longlong_as_double(0x7ff0000000000000LL)
#endif
#ifndef DBL_EPSILON
#define DBL_EPSILON 2.220446049250313e-16
#endif
#ifndef DBL_MIN
#define DBL_MIN 2.2250738585072014e-308
#endif
/* memcpy and memset are CUDA built-ins; memmove is not (the solver moves a few doubles, once a step) */
static __device__ void *cg_move(void *to, const void *from, unsigned long long bytes) {
  unsigned char *t = (unsigned char *)to;
  const unsigned char *f = (const unsigned char *)from;
  if (t <= f)
    for (unsigned long long i = 0; i < bytes; i++) t[i] = f[i];
  else
    for (unsigned long long i = bytes; i-- > 0;) t[i] = f[i];
  return to;
}
#define memmove cg_move
"""

#: After the solver: how many words one thread's Work takes (so that Python needs no copy of the formula).
WORDS_ENTRY = r"""
extern "C" __global__ void cg_work_words(const Problem *P, const Options *O, int64_t *words) {
  *words = work_words(P->points, P->p, P->inputs, O);
}
"""


def cuda_source(function, free: tuple[str, ...], layouts: str) -> str | None:
    """The CUDA translation unit of a formula model's solver: `PRELUDE`, the model's rows and values as
    device functions, the glue, `native_lm.c` and `WORDS_ENTRY`; None where C cannot print the model."""
    from ..codegen.c import device_source  # SymPy's printer: only when building

    model = model_sources(function, free, layouts)
    if model is None:
        return None
    inputs, rows, values = len(layouts), *model
    parts = [
        PRELUDE,
        "namespace cg_rows {\n" + device_source(rows) + "}\n",
        "namespace cg_values {\n" + device_source(values) + "}\n",
        glue("cg_model_rows", "cg_rows::kernel", inputs, len(free) + 1, "static __device__ "),
        glue("cg_model_values", "cg_values::kernel", inputs, 1, "static __device__ "),
        solver_source(),
        WORDS_ENTRY,
    ]
    return "\n".join(parts)


def unavailable(problem) -> str | None:
    """Why the GPU engine cannot fit ``problem`` (a `model.Model`); None when it may (NVRTC
    is tried when the solver is built)."""
    if not hasattr(problem.function, "c_source"):
        return "the model is a callable (the native engine needs a formula)"
    if problem.y.device.type != "cuda" or problem.y.dtype not in (torch.float32, torch.float64):
        return "the data are not CUDA float32 or float64"
    if not nvrtc_available():
        return "no NVRTC library found (install torch with CUDA, or the nvidia-cuda-nvrtc wheel)"
    return None


def engine_for(problem, engine: str, *, build: bool, what: str):
    """The GPU engine (`CudaSolver`) for ``problem`` on CUDA data, or None for the torch one.

    ``engine`` "torch": None; "native": built if need be, else a `UsageError` saying it cannot ``what``
    and why; "auto": built for a batch of `native.BUILD_FOR_CURVES` curves or more (or found in the
    cache), else None, with one warning per reason when it cannot be built.
    """
    if engine == "torch":
        return None
    reason = unavailable(problem)
    if reason is None:
        try:
            return CudaSolver(problem, build=build or engine == "native")
        except NotBuilt:
            return None
        except (BackendError, OSError, RuntimeError) as error:  # RuntimeError: NVRTC or the driver
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if engine == "native":
        raise UsageError(f"engine='native' cannot {what}: {reason}; use engine='torch' (or 'auto')")
    if hasattr(problem.function, "c_source") and reason not in _warned:
        _warned.add(reason)
        message = f"fit_batch runs on the torch engine: the GPU native engine is unavailable ({reason})"
        warnings.warn(message, stacklevel=3)
    return None


def kernels(function, free: tuple[str, ...], layouts: str, device: torch.device, *, build: bool) -> dict | None:
    """The solver's kernels (`ENTRIES`) for a model, free parameters and layouts on ``device``'s
    architecture: loaded before, else from the disk cache, else (with ``build``) compiled by NVRTC and
    cached; None where not built yet (without ``build``) or C cannot print the model."""
    major, minor = torch.cuda.get_device_capability(device)
    architecture = f"{major}{minor}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (function, free, layouts, index)  # a module belongs to one device's context
    with _LOCK:
        found = _MODULES.get(key)
    if found is not None:
        return found
    from torch.cuda._utils import _cuda_load_module

    def compiled() -> bytes | None:
        source = cuda_source(function, free, layouts)
        return None if source is None else nvrtc_compile(source, architecture)

    disk = model_key(function, free, layouts, architecture, str(torch.version.cuda), *NVRTC_OPTIONS)
    binary = cached(_NAMESPACE, disk, compiled if build else None)
    if binary is None:  # not to be built here, or C cannot print the model
        return None
    with torch.cuda.device(device):
        loaded = _cuda_load_module(binary, list(ENTRIES))
    with _LOCK:
        return _MODULES.setdefault(key, loaded)


def nvrtc_compile(source: str, architecture: str) -> bytes:
    """CUBIN of CUDA ``source`` for ``sm_<architecture>`` by NVRTC with `NVRTC_OPTIONS` (no GPU and no
    CUDA headers needed). Raises `BackendError` with NVRTC's log when it fails, OSError without NVRTC."""
    nvrtc = nvrtc_library()
    program = ctypes.c_void_p()
    options = [f"--gpu-architecture=sm_{architecture}".encode(), *(option.encode() for option in NVRTC_OPTIONS)]
    _checked(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"native_lm.cu", 0, None, None))
    try:
        if nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options)) != 0:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(program, log)
            raise BackendError(f"NVRTC could not compile the GPU solver:\n{log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        _checked(nvrtc, nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size)))
        binary = ctypes.create_string_buffer(size.value)
        _checked(nvrtc, nvrtc.nvrtcGetCUBIN(program, binary))
        return binary.raw
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def _checked(nvrtc, result: int) -> None:
    if result != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise BackendError(f"NVRTC failed: {nvrtc.nvrtcGetErrorString(result).decode()}")


@functools.cache
def nvrtc_library() -> ctypes.CDLL:
    """NVRTC: the one torch loads for its CUDA version, else one in an installed ``nvidia-cuda-nvrtc``
    wheel (on ``sys.path``). Raises OSError where there is none."""
    names = [f"libnvrtc.so.{torch.version.cuda.split('.')[0]}"] if torch.version.cuda else []
    names += [str(path) for folder in map(Path, sys.path) for path in sorted(folder.glob("nvidia/*/lib/libnvrtc.so*"))]
    for name in [*names, "libnvrtc.so"]:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise OSError("no NVRTC library found (install torch with CUDA, or the nvidia-cuda-nvrtc wheel)")


def chunk_curves(count: int, curve_bytes: int, free_bytes: int) -> int:
    """Curves per launch: as many of ``count`` as fit ``curve_bytes`` each in `MEMORY_SHARE` of
    ``free_bytes`` (at least 1; whole blocks of `BLOCK` where more than one block fits)."""
    fitting = int(free_bytes * MEMORY_SHARE) // max(curve_bytes, 1)
    if fitting >= count:
        return max(count, 1)
    return max(fitting // BLOCK * BLOCK, min(fitting, BLOCK), 1)


def _device_bytes(struct: ctypes.Structure, device: torch.device) -> torch.Tensor:
    """A ctypes structure's bytes on ``device`` (the kernels read Problem and Options from there)."""
    return torch.frombuffer(bytearray(bytes(struct)), dtype=torch.uint8).to(device)


class CudaSolver(CurveSolver):
    """`native.CurveSolver` on a CUDA device, by `native_lm.c` compiled for it (float32 data: widened for
    the fit, results float32).

    Raises `native.NotBuilt` without ``build`` when the solver is not compiled yet, `BackendError` when C
    cannot print the model, RuntimeError when NVRTC fails.
    """

    def __init__(self, problem, *, build: bool = True):
        self.problem, self.device, self.dtype = problem, problem.y.device, problem.y.dtype
        self.kernels = kernels(problem.function, problem.names, _layouts(problem), self.device, build=build)
        on_device = lambda array: torch.tensor(array, device=self.device)  # noqa: E731
        self._prepare(problem, self.kernels, build, on_device, torch.float64)

    def _run(self, entry: str, options, index: torch.Tensor, arrays: list, advance) -> None:
        """`native.CurveSolver._run` by the kernel ``cg_<entry>``, in chunks of curves that fit the free GPU
        memory, the progress bar advanced once per chunk."""
        problem, settings = _device_bytes(self.struct, self.device), _device_bytes(options, self.device)
        index = index.to(self.device, torch.int64).contiguous()
        words = self.work_words(problem, settings)
        count = len(index)
        free, _ = torch.cuda.mem_get_info(self.device)
        chunk = chunk_curves(count, words * 8, free)
        workspace = torch.zeros(chunk * words, dtype=torch.float64, device=self.device)
        run = self.kernels[f"cg_{entry}"]
        for begin in range(0, count, chunk):
            end = min(begin + chunk, count)
            blocks = (end - begin + BLOCK - 1) // BLOCK
            rows = [array[begin:] for array in arrays]
            run(
                grid=(blocks, 1, 1),
                block=(BLOCK, 1, 1),
                args=[problem, settings, index[begin:], end - begin, workspace, words, *rows],
            )
            if advance is not None:
                advance(converged_message(arrays[2], end, count))
        torch.cuda.synchronize(self.device)

    def work_words(self, problem: torch.Tensor, settings: torch.Tensor) -> int:
        """One thread's scratch in doubles (`native_lm.c`'s ``work_words``, asked of the GPU)."""
        words = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.kernels["cg_work_words"](grid=(1, 1, 1), block=(1, 1, 1), args=[problem, settings, words])
        return int(words.item())


def nvrtc_available() -> bool:
    """Whether an NVRTC library loads (`nvrtc_library`)."""
    try:
        nvrtc_library()
    except OSError:
        return False
    return True
