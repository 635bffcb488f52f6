"""The triton backend: one Triton kernel per spec, printed by `codegen.triton` (the Triton column of the
printer table, `codegen.rules`), for CUDA tensors: this module loads, tunes and launches it.

Each kernel's grid runs over tiles of a rows x columns view of the broadcast output (`tiling`): every
input is read where it lives, through its strides (full, per row, per column, or one number), in its
own dtype, converted in registers (half types and float32 compute in float32, float64 in float64);
pieces of per-row values and numbers are computed at their own small shape (`codegen.hoist`). A
gradient of a broadcast input is summed inside the kernel (per-program partial sums, then one small
torch ``sum``). Block size and warps are tuned on first use (`triton_tuning`). On CPU the kernels run
only under Triton's interpreter (``TRITON_INTERPRET=1``), which is how they are tested without a GPU.
Triton is imported here only, on first use.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from collections.abc import Callable

import torch

from .. import cache
from ..codegen.triton import kernel_source, stride_names
from ..derive import FunctionSpec
from ..errors import BackendError
from ..launcher import broadcast_shape, flat_operand, result_dtype
from .eager import torch_kernel
from .tiling import Tiling, tiling
from .triton_tuning import DEFAULT, LaunchTuner

#: Launch configurations by measurement on CUDA (`triton_tuning`); tests swap in a fake candidate set and timer.
TUNER = LaunchTuner()


@functools.cache
def _triton_available() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install 'customgrad[triton]')"
    return None


def _load_module(source: str) -> Callable:
    """Import generated source from a file (``triton.jit`` reads its function's source file)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:32]
    folder = cache.directory() / "triton-sources"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        import tempfile

        folder = type(folder)(tempfile.mkdtemp(prefix="customgrad-triton-"))
    path = folder / f"kernel_{digest}.py"
    if not path.exists() or path.read_text() != source:
        temporary = folder / f".kernel_{digest}.{os.getpid()}.tmp"
        temporary.write_text(source)
        os.replace(temporary, path)
    spec = importlib.util.spec_from_file_location(f"customgrad_triton_{digest}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kernel


def _quiet_interpreter() -> contextlib.AbstractContextManager:
    """IEEE inf/NaN without warnings: the CPU interpreter computes with numpy, which warns at log(0) or
    0/0 where a GPU kernel silently gives -inf or NaN (and warnings may be errors in the caller)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return contextlib.nullcontext()
    import numpy

    return numpy.errstate(all="ignore")


class TritonKernel:
    """``kernel(*tensors)``: the spec's outputs by one Triton launch; eager code while tracing.

    Inputs are read where they live (`tiling`: broadcast, strided, transposed, channels-last), in
    their own dtype; ``reduced`` sums broadcast gradients inside the kernel (per-program partial sums,
    then one small deterministic ``sum`` over them, no atomics). The block size and warps of each
    launch come from `triton_tuning.LaunchTuner` (`TUNER`).
    """

    def __init__(self, spec: FunctionSpec):
        self.spec = spec
        self.names = list(spec.input_names)
        self.fallback = torch_kernel(spec)
        self.source = self.fallback.source
        self.plain = self.fallback
        self.compiled: dict[tuple[str, str, str, bool], Callable] = {}
        self.launches: dict[tuple, _Launch] = {}
        self.digest = hashlib.sha256(self.triton_source("v" * len(self.names), "", "float32").encode()).hexdigest()

    def triton_source(self, reads: str, stores: str, computed: str, two_d: bool = False) -> str:
        """The kernel's source (unprintable functions fail by name, at construction)."""
        stores = stores or "v" * len(self.spec.outputs)
        try:
            return kernel_source(self.names, self.spec.outputs, reads, stores, computed, two_d)
        except NotImplementedError as error:
            raise BackendError(
                f"{self.spec.name}: backend 'triton' cannot print it ({error}); use backend='eager' or 'compile'"
            ) from None

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.reduced(tensors, None)
        return self.fallback(*tensors) if outputs is None else outputs

    def reduced(self, tensors, targets) -> tuple[torch.Tensor, ...] | None:
        """The outputs, each summed to ``targets[k]`` inside the kernel where the layout allows (else
        full shape); full shape when ``targets`` is None; None where the kernel cannot run (tracing,
        functorch transforms, integer results)."""
        if torch.compiler.is_compiling() or any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors):
            return None
        dtype = result_dtype(tensors)
        if not dtype.is_floating_point:
            return None
        device = next((t.device for t in tensors if t.dim()), tensors[0].device)
        tensors = [t if t.device == device else t.to(device) for t in tensors]  # 0-d CPU numbers
        shape = broadcast_shape(tensors)
        if not shape.numel():
            return tuple(torch.empty(shape, dtype=dtype, device=device) for _ in self.spec.outputs)
        plan = tiling(tensors, shape, targets)
        if plan is None:  # a broadcast of three or more dimensions after merging: full-shape copies
            tensors = [flat_operand(t, shape) for t in tensors]
            plan, targets = tiling(tensors, shape), None
        return self.launch(plan, tensors, shape, dtype, targets)

    def launch(self, plan: Tiling, tensors, shape: torch.Size, dtype: torch.dtype, targets) -> tuple:
        """The kernel run on ``plan``: compiled, tuned and laid out on first use (`_Launch`), then reused."""
        key = (plan, dtype, tensors[0].device, TUNER)
        launch = self.launches.get(key)
        if launch is None:
            computed = "float64" if dtype == torch.float64 else "float32"
            stores = plan.stores or "v" * len(self.spec.outputs)
            source_key = (plan.reads, stores, computed, plan.rows > 1)
            if source_key not in self.compiled:
                self.compiled[source_key] = _load_module(self.triton_source(*source_key))
            launch = _Launch(self.compiled[source_key], plan, shape, dtype, stores, tensors[0].device)
            tuning_key = (self.digest, *map(str, source_key), str(dtype), str(plan.count.bit_length()))
            tuning_key += (_device_name(tensors[0].device),)
            if tensors[0].is_cuda or TUNER.everywhere:
                launch.configure(TUNER.config(tuning_key, lambda config: launch.configure(config).run(tensors)))
            if len(self.launches) >= 256:  # shapes that change every call: keep the memory bounded
                self.launches.clear()
            self.launches[key] = launch
        return launch.finished(launch.run(tensors), targets)


class _Launch:
    """One kernel's launch on one tiling: the stride arguments, grid and output buffers, worked out once."""

    def __init__(self, kernel: Callable, plan: Tiling, shape: torch.Size, dtype: torch.dtype, stores: str, device):
        self.kernel, self.plan, self.dtype, self.stores, self.device = kernel, plan, dtype, stores, device
        self.two_d = plan.rows > 1
        self.computed = torch.float64 if dtype == torch.float64 else torch.float32
        self.full_shape = [shape[d] for d in plan.order]
        identity = plan.order == tuple(range(len(plan.order)))
        self.inverse = None if identity else [plan.order.index(d) for d in range(len(plan.order))]
        self.extra = []  # each input's stride arguments
        for read, (row_stride, column_stride) in zip(plan.reads, plan.strides, strict=True):
            named = {"rows": row_stride, "cols": column_stride}
            self.extra.append([named[name] for name in stride_names(read, self.two_d)])
        self.quiet = os.environ.get("TRITON_INTERPRET") == "1"
        self.vector = _vector_width(plan)
        self.configure(DEFAULT)

    def configure(self, config: tuple[int, int]) -> _Launch:
        """Use ``config`` = (elements per program, warps) from now on."""
        self.warps = config[1]
        plan = self.plan
        self.block_c = min(triton_next_power_of_2(plan.columns), config[0])
        self.block_r = min(max(config[0] // self.block_c, 1), triton_next_power_of_2(plan.rows)) if self.two_d else 1
        row_blocks, column_blocks = -(-plan.rows // self.block_r), -(-plan.columns // self.block_c)
        self.grid = (row_blocks * column_blocks,)
        self.sizes = {"s": row_blocks * column_blocks, "o": column_blocks * plan.rows, "i": row_blocks * plan.columns}
        return self

    def run(self, tensors) -> list[torch.Tensor]:
        """Launch on ``tensors``: the outputs (full ones in the tiling's dimension order) and partial sums."""
        arguments = []
        for tensor, extra in zip(tensors, self.extra, strict=True):
            arguments.append(tensor)
            arguments += extra
        outputs = [
            torch.empty(self.full_shape, dtype=self.dtype, device=self.device)
            if mode == "v"
            else torch.empty(self.sizes[mode], dtype=self.computed, device=self.device)
            for mode in self.stores
        ]
        with _quiet_interpreter() if self.quiet else contextlib.nullcontext():
            self.kernel[self.grid](
                self.plan.rows, self.plan.columns, *arguments, *outputs,
                BLOCK_R=self.block_r, BLOCK_C=self.block_c, WIDE=self.plan.wide, VEC=self.vector,
                num_warps=self.warps,
            )  # fmt: skip
        return outputs

    def finished(self, outputs: list[torch.Tensor], targets) -> tuple[torch.Tensor, ...]:
        """Full outputs in the call's dimension order; partial sums summed to their targets (the
        deterministic second pass: torch's reductions use no atomics)."""
        done = []
        for k, (output, mode) in enumerate(zip(outputs, self.stores, strict=True)):
            if mode == "v":
                done.append(output if self.inverse is None else output.permute(self.inverse))
                continue
            if mode == "o":
                output = output.view(-1, self.plan.rows).sum(0)
            elif mode == "i":
                output = output.view(-1, self.plan.columns).sum(0)
            else:
                output = output.sum()
            done.append(output.reshape(targets[k]).to(self.dtype))
        return tuple(done)


def _vector_width(plan: Tiling) -> int:
    """The largest power of two up to 16 dividing the columns and every row stride of a full input."""
    strides = [plan.columns, *(row for read, (row, _) in zip(plan.reads, plan.strides, strict=True) if read == "v")]
    strides = strides if plan.rows > 1 else strides[:1]
    width = 16
    while width > 1 and any(stride % width for stride in strides):
        width //= 2
    return width


def triton_next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@functools.cache
def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    import triton

    return f"{torch.cuda.get_device_name(device)} triton {triton.__version__}"


class TritonBackend:
    """Triton kernels for CUDA tensors."""

    name = "triton"

    def unavailable(self) -> str | None:
        return _triton_available()

    def kernel(self, spec: FunctionSpec) -> Callable:
        return TritonKernel(spec)
