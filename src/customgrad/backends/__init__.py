"""Kernel backends: a spec's outputs -> ``kernel(*tensors) -> tuple of full-shape outputs``.

Every generated kernel comes from a `FunctionSpec`: the forward from the formula's spec, one backward
per needs-input-grad mask from `derive.backward_spec` (every requested gradient in one pass), the jvp
from `derive.jvp_spec`. A backend only turns a spec into a kernel; the launcher and the assembly in
`function.py` do the rest.

=========  ===========================================================================
backend    kernels
=========  ===========================================================================
eager      generated torch code (any device, any dtype)
compile    that code under ``torch.compile(dynamic=True)``
cpu        fused C loops over both cores, SIMD math from glibc's libmvec (CPU tensors)
triton     Triton kernels (CUDA tensors; on CPU only through ``TRITON_INTERPRET=1``)
auto       per call: cpu for CPU tensors from `AUTO_CPU_MIN_SIZE` elements, triton for CUDA
           tensors, else eager; one warning per process when a backend it wanted cannot run here (formulas
           a fused backend cannot print, such as calls of hand-written Functions, run eager quietly)
=========  ===========================================================================
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..errors import BackendError, UsageError

if TYPE_CHECKING:
    from ..derive import FunctionSpec

#: backend name -> (module, class): imported on first use (the triton module imports Triton).
BACKENDS: dict[str, tuple[str, str]] = {
    "eager": ("eager", "EagerBackend"),
    "compile": ("compile", "CompileBackend"),
    "cpu": ("cpu", "CpuBackend"),
    "triton": ("triton", "TritonBackend"),
}
#: Device types each backend's kernels run on (eager and compile: any).
DEVICES: dict[str, tuple[str, ...] | None] = {"eager": None, "compile": None, "cpu": ("cpu",), "triton": ("cuda",)}
#: Below this many elements "auto" stays eager on CPU: the measured crossover (bench_function.py, one
#: thread) of the fused kernel's per-call cost (ctypes, layout checks) against eager's per-op cost:
#: at 1e4 elements eager won for P2 and Legendre P3, the fused kernel for GELU and Mish.
AUTO_CPU_MIN_SIZE = 16384

_instances: dict[str, object] = {}
_warned: set[str] = set()


def get_backend(name: str):
    """The backend object called ``name``, one of `BACKENDS` ("auto": `build_kernel`)."""
    if name not in _instances:
        module, cls = BACKENDS[name]
        _instances[name] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return _instances[name]


def check_backend_name(name: object) -> str:
    """``name`` if it names a backend, else a `UsageError` listing them."""
    if name == "auto" or name in BACKENDS:
        return name
    raise UsageError(f"backend must be one of {{'auto', {', '.join(map(repr, BACKENDS))}}}, got {name!r}")


def fitting_backends(device_type: str) -> list[str]:
    """Backends whose kernels run on ``device_type``."""
    return [name for name, devices in DEVICES.items() if devices is None or device_type in devices]


def check_device(backend: str, tensors, function_name: str) -> None:
    """A `UsageError` when an explicit backend is given tensors on a device it does not run on."""
    devices = DEVICES.get(backend)
    if devices is None:
        return
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        devices = (*devices, "cpu")  # Triton's interpreter runs kernels on CPU tensors (tests)
    for tensor in tensors:
        if tensor.device.type not in devices:
            raise UsageError(
                f"{function_name}: backend {backend!r} runs on {' or '.join(devices)} tensors, but an input "
                f"is on {tensor.device}: use backend in "
                f"{{{', '.join(map(repr, fitting_backends(tensor.device.type)))}}} or 'auto'"
            )


def warn_once(backend: str, reason: str) -> None:
    """One warning per process and fused backend that "auto" fell back to eager from: the forward and
    backward of one Function, and every later Function, fall back quietly for the same backend."""
    if backend not in _warned:
        _warned.add(backend)
        warnings.warn(f"customgrad backend 'auto' falls back to 'eager': {reason}", RuntimeWarning, stacklevel=4)


def build_kernel(backend: str, spec: FunctionSpec) -> Callable:
    """The kernel of ``spec`` on ``backend`` (a name in `BACKENDS` or "auto")."""
    if backend == "auto":
        return AutoKernel(spec)
    instance = get_backend(backend)
    reason = instance.unavailable()
    if reason is not None:
        raise BackendError(f"{spec.name}: backend {backend!r} cannot run here: {reason}; use backend='eager'")
    return instance.kernel(spec)


class AutoKernel:
    """Per call, the fastest kernel that runs on the inputs' device and size; eager otherwise."""

    def __init__(self, spec: FunctionSpec):
        self.spec = spec
        self.eager = get_backend("eager").kernel(spec)
        self.source = self.eager.source
        self.plain = self.eager
        self.fused: dict[str, Callable | None] = {}

    def _fused(self, backend: str) -> Callable | None:
        if backend not in self.fused:
            instance = get_backend(backend)
            reason = instance.unavailable()
            kernel = None
            if reason is None:
                try:
                    kernel = instance.kernel(self.spec)
                except BackendError:
                    pass  # a function this backend cannot print (a hand-written Function): eager, quietly
            else:
                warn_once(backend, f"backend {backend!r} is not available ({reason})")
            self.fused[backend] = kernel
        return self.fused[backend]

    def _chosen(self, tensors) -> tuple[str | None, Callable | None]:
        """The fused backend for these tensors' device and size, and its kernel (None: run eager)."""
        if torch.compiler.is_compiling():
            return None, None
        device = tensors[0].device.type
        backend = None
        if device == "cpu" and max(t.numel() for t in tensors) >= AUTO_CPU_MIN_SIZE:
            backend = "cpu"
        elif device == "cuda":
            backend = "triton"
        return backend, (self._fused(backend) if backend else None)

    def _run(self, backend: str, run: Callable):
        try:
            return run()
        except BackendError as error:  # e.g. the compiler fails on this machine
            warn_once(backend, str(error))
            self.fused[backend] = None
            return None

    def __call__(self, *tensors):
        backend, kernel = self._chosen(tensors)
        if kernel is not None:
            outputs = self._run(backend, lambda: kernel(*tensors))
            if outputs is not None:
                return outputs
        return self.eager(*tensors)

    def reduced(self, tensors, targets):
        """As the chosen fused kernel's ``reduced`` (broadcast gradients summed inside its loop), else None."""
        backend, kernel = self._chosen(tensors)
        reduce = getattr(kernel, "reduced", None)
        return None if reduce is None else self._run(backend, lambda: reduce(tensors, targets))
