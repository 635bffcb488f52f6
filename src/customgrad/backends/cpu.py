"""The cpu backend: fused C kernels for CPU tensors, one parallel SIMD loop per kernel.

Measured route (see docs/architecture.md): plain C compiled by the system C compiler with
``-O3 -march=native -fno-math-errno -fopenmp`` (no fast-math, so inf and NaN stay IEEE), vector
math from glibc's libmvec through ``#pragma omp declare simd`` prototypes, called through ctypes with
the tensors' data pointers. One shared library per (spec, precision, which inputs are broadcast
numbers), built on first use in about 0.2 s and cached in memory and on disk (`customgrad.cache`).

float16 and bfloat16 tensors are read and written as they are stored and computed in float32 inside the
loop (`codegen.c.STORAGE`); only when the inputs mix dtypes are they converted to float32 copies first.
Inputs that vary along only the trailing or only the leading dimensions of one split are read in
place (an outer x inner loop); other broadcast or strided inputs are copied to full shape.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from .. import cache
from ..errors import BackendError
from ..launcher import broadcast_shape, flat_operand, result_dtype

if TYPE_CHECKING:
    from ..derive import FunctionSpec

# codegen.c and the eager backend (SymPy) are imported where C source is printed: a fit's rows kernel
# read back from the disk cache loads its library without them.

#: ``-march`` target: this CPU unless ``CUSTOMGRAD_MARCH`` names another (e.g. ``x86-64`` for a portable
#: build, or to see results of a machine without this one's vector units); part of every cache key.
MARCH = os.environ.get("CUSTOMGRAD_MARCH", "native")
FLAGS = ("-O3", f"-march={MARCH}", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared")
LIBRARIES = ("-lmvec", "-lm")
#: Below this many elements one thread is faster than waking the others (measured: about 20 us to wake).
PARALLEL_MIN_SIZE = 65536
_COMPUTED = {torch.float64: torch.float64, torch.float32: torch.float32, torch.float16: torch.float32}
_COMPUTED[torch.bfloat16] = torch.float32
#: Half dtypes the kernels read and write in place (`codegen.c.STORAGE`).
HALF_STORAGE = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


@functools.cache
def compiler() -> str | None:
    """The C compiler: ``$CC``, else gcc, else cc; None when there is none."""
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def compiler_command() -> list[str]:
    """`compiler` as a command: ``$CC`` split as a shell splits it (``CC="ccache gcc"``, ``CC="gcc -m64"``, as
    make and setuptools take it)."""
    text = compiler() or "cc"
    try:
        return shlex.split(text) or [text]
    except ValueError:  # unbalanced quotes: the text as one program name, whose error names it
        return [text]


@functools.cache
def compiler_identity() -> str:
    """The compiler's version line and this CPU's model: part of every kernel's cache key (-march=native)."""
    try:
        version = subprocess.run([*compiler_command(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    model = ""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        pass
    first_line = version.splitlines()[0] if version else str(compiler())
    return f"{first_line} {platform.machine()} {hashlib.sha256(model.encode()).hexdigest()}"


@functools.cache
def vector_functions() -> frozenset[str]:
    """libm functions glibc's libmvec has vector variants of here (every ISA, float and double)."""
    from ..codegen.c import C_BINARY_FUNCTIONS, C_FUNCTIONS

    try:
        library = ctypes.CDLL("libmvec.so.1")
    except OSError:
        return frozenset()
    names = {*C_FUNCTIONS.values(), *C_BINARY_FUNCTIONS.values(), "pow", "sqrt"}
    found = set()
    for name in names:
        v = "vv" if name in ("atan2", "pow") else "v"
        variants = [f"_ZGVbN4{v}_{name}f", f"_ZGVeN16{v}_{name}f", f"_ZGVbN2{v}_{name}", f"_ZGVeN8{v}_{name}"]
        if all(hasattr(library, variant) for variant in variants):
            found.add(name)
    return frozenset(found)


def _build(sources: Sequence[str], name: str, flags: Sequence[str] = ()) -> bytes:
    """Compile C ``sources`` (one translation unit each) into one shared library's bytes."""
    with tempfile.TemporaryDirectory(prefix="customgrad-cpu-") as folder:
        c_files, library = [], os.path.join(folder, "kernel.so")
        for k, source in enumerate(sources):
            c_files.append(os.path.join(folder, f"unit{k}.c"))
            with open(c_files[-1], "w") as file:
                file.write(source)
        libraries = LIBRARIES if vector_functions() else ("-lm",)
        command = [*compiler_command(), *FLAGS, *flags, *c_files, "-o", library, *libraries]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as error:
            raise BackendError(f"{name}: backend 'cpu' could not run the C compiler {compiler()!r}: {error}") from None
        if done.returncode != 0:
            raise BackendError(f"{name}: backend 'cpu': the C compiler failed:\n{done.stderr[-2000:]}")
        with open(library, "rb") as file:
            return file.read()


_loaded_folder: list[str] = []
# Libraries loaded in this process, by sources and flags: a library is mapped once however often it is asked for.
_LIBRARIES: dict[tuple[tuple[str, ...], tuple[str, ...]], ctypes.CDLL] = {}


def open_library(data: bytes) -> ctypes.CDLL:
    """dlopen a library from its bytes (written to a private file, unlinked once mapped)."""
    # OpenMP threads that spin while waiting hold a core another process (or torch) needs: on a busy
    # machine a parallel loop then waits a whole time slice. Read by libgomp when the first kernel loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not _loaded_folder:
        _loaded_folder.append(tempfile.mkdtemp(prefix="customgrad-kernels-"))
    handle, path = tempfile.mkstemp(dir=_loaded_folder[0], suffix=".so")
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    try:
        return ctypes.CDLL(path)
    finally:
        os.unlink(path)  # the mapping stays valid


def shared_library(sources: Sequence[str], name: str, flags: Sequence[str] = ()) -> ctypes.CDLL:
    """The library built from C ``sources`` with `FLAGS` and ``flags`` (`library_bytes`), loaded once
    per process.

    Raises `BackendError` (naming ``name``) when the compiler is missing or fails.
    """
    key = (tuple(sources), tuple(flags))
    loaded = _LIBRARIES.get(key)
    if loaded is None:
        try:
            loaded = open_library(library_bytes(sources, name, flags))
        except OSError:  # a corrupt entry: rebuild it
            loaded = open_library(library_bytes(sources, name, flags, rebuild=True))
        _LIBRARIES[key] = loaded
    return loaded


def library_bytes(
    sources: Sequence[str], name: str, flags: Sequence[str] = (), *, rebuild: bool = False, build: bool = True
) -> bytes | None:
    """The shared library of C ``sources``: from the disk cache (`customgrad.cache`), else built now and
    stored (without ``build``: None).

    Raises `BackendError` (naming ``name``) when the compiler is missing or fails.
    """
    if compiler() is None:
        raise BackendError(f"{name}: no C compiler found (set CC, or install gcc)")
    cache_key = [*sources, " ".join((*FLAGS, *flags)), compiler_identity()]
    data = None if rebuild else cache.load("cpu-kernels", cache_key)
    if data is None and build:
        data = _build(sources, name, flags)
        cache.store("cpu-kernels", cache_key, data)
    return data


def _plain(tensor: torch.Tensor) -> bool:
    """A dense CPU tensor whose data pointer a C loop can read (not a functorch wrapper or fake)."""
    return (
        tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and (type(tensor) is torch.Tensor or type(tensor) is torch.nn.Parameter)
        and not torch._C._functorch.is_functorch_wrapped_tensor(tensor)
    )


def c_kernel_source(spec: FunctionSpec, single: bool, layouts: str, reductions: str = "", storage: str = "") -> str:
    """The C source of ``spec``'s kernel (`codegen.c.kernel_source`); a `BackendError` naming what C cannot print."""
    from ..codegen.c import kernel_source

    try:
        return kernel_source(
            list(spec.input_names),
            spec.outputs,
            single=single,
            layouts=layouts,
            vector=vector_functions(),
            reductions=reductions,
            storage=storage,
        )
    except NotImplementedError as error:
        raise BackendError(
            f"{spec.name}: backend 'cpu' cannot print it ({error}); use backend='eager' or 'compile'"
        ) from None


def load_library(source: str, name: str, input_count: int, output_count: int) -> Callable:
    """The typed ``kernel`` of C ``source`` (`shared_library`)."""
    function = shared_library([source], name).kernel
    function.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int] + [ctypes.c_void_p] * (
        input_count + output_count
    )
    function.restype = None
    return function


class CpuKernel:
    """``kernel(*tensors)``: the fused C loop of a spec's outputs; the eager kernel where C cannot run
    (while tracing, under functorch transforms, integer results)."""

    def __init__(self, spec: FunctionSpec):
        from .eager import torch_kernel

        self.spec = spec
        self.names = list(spec.input_names)
        self.outputs = spec.outputs
        self.fallback = torch_kernel(spec)
        self.source = self.fallback.source
        self.plain = self.fallback
        self.compiled: dict[tuple, Callable] = {}
        self.layouts: dict[tuple, tuple[str, int, str]] = {}
        self.c_source(True, "v" * len(self.names))  # unprintable functions fail now, by name

    def c_source(self, single: bool, layouts: str, reductions: str = "", storage: str = "") -> str:
        return c_kernel_source(self.spec, single, layouts, reductions, storage)

    def function(self, single: bool, layouts: str, reductions: str = "", storage: str = "") -> Callable:
        key = (single, layouts, reductions, storage)
        if key not in self.compiled:
            source = self.c_source(single, layouts, reductions, storage)
            self.compiled[key] = load_library(source, self.spec.name, len(self.names), len(self.outputs))
        return self.compiled[key]

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.reduced(tensors, None)
        return self.fallback(*tensors) if outputs is None else outputs

    def operands(self, tensors: list[torch.Tensor], shape: torch.Size, targets) -> tuple[str, list, int, str]:
        """`operands`; remembered per (shapes, strides, targets) where every input is read in place (at
        its own data pointer, so the tensors themselves serve), so a training step skips the layout work."""
        key = (tuple(shape), tuple((t.shape, t.stride()) for t in tensors), None if targets is None else tuple(targets))
        known = self.layouts.get(key)
        if known is not None:
            return known[0], tensors, known[1], known[2]
        layouts, arguments, inner, modes = operands(tensors, shape, targets)
        if all(a.data_ptr() == t.data_ptr() for a, t in zip(arguments, tensors, strict=True)):
            if len(self.layouts) >= 256:  # shapes that change every call: keep the memory bounded
                self.layouts.clear()
            self.layouts[key] = (layouts, inner, modes)
        return layouts, arguments, inner, modes

    def reduced(self, tensors, targets) -> tuple[torch.Tensor, ...] | None:
        """The outputs, each summed to ``targets[k]`` (broadcasting's adjoint) inside the loop where the
        shapes allow (else at full shape); full shape when ``targets`` is None; None where C cannot run."""
        if torch.compiler.is_compiling() or not all(_plain(t) for t in tensors):
            return None
        first = tensors[0].dtype
        uniform = all(t.dtype == first for t in tensors)
        dtype = first if uniform else result_dtype(tensors)
        computed = _COMPUTED.get(dtype)
        if computed is None:
            return None
        shape = broadcast_shape(tensors)
        count = shape.numel()
        if not count:
            return tuple(torch.empty(shape, dtype=dtype) for _ in self.outputs)
        storage = HALF_STORAGE.get(dtype, "") if uniform else ""
        read = tensors if storage else [t.to(computed) for t in tensors]
        layouts, arguments, inner, modes = self.operands(list(read), shape, targets)
        modes = modes or "v" * len(self.outputs)
        sizes = {"v": count, "s": 1, "r": inner, "c": count // max(inner, 1)}
        stored = dtype if storage else computed
        outputs = [
            torch.empty(shape, dtype=stored) if mode == "v" else torch.zeros(sizes[mode], dtype=computed)
            for mode in modes
        ]
        threads = torch.get_num_threads() if count >= PARALLEL_MIN_SIZE else 1
        reductions = "" if set(modes) == {"v"} else modes
        function = self.function(computed == torch.float32, layouts, reductions, storage)
        function(count, inner, threads, *(a.data_ptr() for a in arguments), *(o.data_ptr() for o in outputs))
        if targets is not None:
            outputs = [o if m == "v" else o.reshape(t) for o, m, t in zip(outputs, modes, targets, strict=True)]
        return tuple(o if o.dtype == dtype else o.to(dtype) for o in outputs)


def operands(tensors: list[torch.Tensor], shape: torch.Size, targets=None) -> tuple[str, list[torch.Tensor], int, str]:
    """How the kernel reads each input (`codegen.c.READS`), the tensors it reads, the inner size, and
    what it does with each output (`codegen.c.STORES`: summed to its target shape where possible).

    Broadcast inputs that vary only along the trailing or only along the leading dimensions of one
    split are read in place (a per-column or per-row vector); anything else is copied to full shape.
    """
    count = shape.numel()
    probes = [torch.empty(target, device="meta") for target in targets] if targets is not None else []
    output_count = len(probes)
    flat = [_flat_layout(t, shape, count) for t in [*tensors, *probes]]
    if all(flat):
        modes = "".join(flat[len(tensors) :])
        return "".join(flat[: len(tensors)]), [flat_operand(t, shape) for t in tensors], count, modes
    for split in range(1, len(shape)):
        read = [_split_layout(t, shape, split) for t in [*tensors, *probes]]
        if all(read):
            modes = "".join(r[0] for r in read[len(tensors) :])
            return (
                "".join(r[0] for r in read[: len(tensors)]),
                [r[1] for r in read[: len(tensors)]],
                shape[split:].numel(),
                modes,
            )
    copies = [flat_operand(t, shape) for t in tensors]
    layouts = "".join("s" if c.numel() == 1 and count != 1 else "v" for c in copies)
    return layouts, copies, count, "v" * output_count


def _flat_layout(tensor: torch.Tensor, shape: torch.Size, count: int) -> str:
    if tensor.numel() == 1 and count != 1 or (tensor.numel() and all(s == 0 for s in tensor.stride())):
        return "s"
    return "v" if tensor.shape == shape and tensor.is_contiguous() else ""


def _split_layout(tensor: torch.Tensor, shape: torch.Size, split: int) -> tuple[str, torch.Tensor] | None:
    if tensor.numel() == 1 or all(s == 0 for s in tensor.stride()):
        return "s", flat_operand(tensor, shape)
    expanded = tensor.expand(shape)
    strides = expanded.stride()
    if tensor.shape == shape and tensor.is_contiguous():
        return "v", tensor
    if all(s == 0 for s in strides[:split]):
        inner = expanded[(0,) * split]
        if inner.is_contiguous():
            return "r", inner
    if all(s == 0 for s in strides[split:]):
        outer = expanded[(slice(None),) * split + (0,) * (len(shape) - split)]
        if outer.is_contiguous():
            return "c", outer
    return None


class CpuBackend:
    """Fused C kernels over both cores with vector math (CPU tensors)."""

    name = "cpu"

    def unavailable(self) -> str | None:
        if compiler() is None:
            return "no C compiler found (set CC, or install gcc)"
        return None

    def kernel(self, spec: FunctionSpec) -> Callable:
        return CpuKernel(spec)


class CpuRows:
    """``rows(out, *tensors)``: output k of a rows spec into ``out[k]`` by one fused C loop, for CPU
    float64/float32 tensors of ``out``'s dtype and a contiguous ``out``; ``fallback`` (the torch rows)
    for anything else, or where C cannot print the formula or the compiler fails.

    ``c_source(single, layouts)`` gives the C source (`c_kernel_source` of the rows spec, or a disk cache
    of it: the fit's formula model keeps them, so a model fitted before loads its library without SymPy).
    """

    def __init__(self, name: str, input_count: int, c_source: Callable[[bool, str], str | None], fallback: Callable):
        self.name, self.input_count, self.c_source, self.fallback = name, input_count, c_source, fallback
        self.compiled: dict[tuple, Callable | None] = {}

    def _function(self, single: bool, layouts: str, output_count: int) -> Callable | None:
        key = (single, layouts, output_count)
        if key not in self.compiled:
            try:
                source = self.c_source(single, layouts)
                loaded = None if source is None else load_library(source, self.name, self.input_count, output_count)
            except BackendError:
                loaded = None  # unprintable, or no working compiler: the torch rows
            self.compiled[key] = loaded
        return self.compiled[key]

    def __call__(self, out: torch.Tensor, *tensors: torch.Tensor) -> None:
        dtype = out.dtype
        if (
            dtype not in (torch.float64, torch.float32)
            or not (_plain(out) and out.is_contiguous())
            or not all(isinstance(t, torch.Tensor) and _plain(t) and t.dtype == dtype for t in tensors)
        ):
            return self.fallback(out, *tensors)
        shape = out.shape[1:]
        count = shape.numel()
        if not count:
            return None
        layouts, arguments, inner, _ = operands([t.contiguous() for t in tensors], shape)
        function = self._function(dtype == torch.float32, layouts, out.shape[0])
        if function is None:
            return self.fallback(out, *tensors)
        threads = torch.get_num_threads() if count >= PARALLEL_MIN_SIZE else 1
        function(count, inner, threads, *(a.data_ptr() for a in arguments), *(o.data_ptr() for o in out))
        return None
