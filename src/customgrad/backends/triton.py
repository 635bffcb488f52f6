"""The triton backend: one Triton kernel per spec, printed from the SymPy expressions through the
Triton column of the printer table (`codegen.rules`), for CUDA tensors.

Each kernel is a 1-D grid of blocks over the broadcast output; an input is read per element, or once
where it is a broadcast number. Half types and float32 compute in float32, float64 in float64. On CPU
the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1``), which is how they are tested
without a GPU. Triton is imported here only, on first use.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from collections.abc import Callable, Sequence

import sympy
import torch

from .. import cache
from ..codegen.cse import shared_subexpressions
from ..codegen.rules import BINARY_RULES, FUNCTION_RULES, column
from ..codegen.torch import TorchCodePrinter
from ..derive import FunctionSpec
from ..errors import BackendError
from ..launcher import broadcast_shape, flat_operand
from .eager import torch_kernel

BLOCK = 1024
#: Where ``libdevice`` comes from: the real one, or stand-ins under the CPU interpreter.
LIBDEVICE_IMPORT = {
    False: "from triton.language.extra import libdevice",
    True: "import customgrad.backends.triton_interpreter as libdevice",
}
_HELPERS = """
@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, libdevice.log1p(tl.exp(x)))


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)).to(x.dtype)


@triton.jit
def _maximum(a, b):
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def _minimum(a, b):
    return tl.where((a < b) | (a != a), a, b)
"""


class TritonCodePrinter(TorchCodePrinter):
    """Prints a SymPy expression as a Triton expression over blocks named ``v_<symbol>``."""

    printmethod = "_customgrad_tritoncode"
    language = "Triton"
    module = "tl"
    functions = column(FUNCTION_RULES, "triton")
    binary_functions = column(BINARY_RULES, "triton")
    powers = {sympy.S.Half: "tl.sqrt({})", -sympy.S.Half: "(1.0 / tl.sqrt({}))", sympy.S.NegativeOne: "(1.0 / ({}))"}
    power = "libdevice.pow({}, {})"
    calls_registered = False

    def qualified(self, name: str) -> str:
        """Table entries as they are: kernel variables are ``v_<name>``, so ``tl`` cannot be shadowed."""
        return name

    def _print_Symbol(self, expr):
        return f"v_{expr.name}"

    def _print_Infinity(self, expr):
        return "float('inf')"

    def _print_NegativeInfinity(self, expr):
        return "float('-inf')"

    def _print_NaN(self, expr):
        return "float('nan')"

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.args
        if expr.free_symbols and exponent.is_Integer and 2 <= int(exponent) <= 4:
            printed = self.parenthesize(base, 1000)
            return "(" + " * ".join([printed] * int(exponent)) + ")"
        if expr.free_symbols and exponent not in self.powers:
            return self.power.format(self._argument(base), self._argument(exponent))
        return super()._print_Pow(expr, rational)

    def _argument(self, arg: sympy.Expr) -> str:
        """A call's argument; a number as a block of the kernel's dtype (``_zero``): Triton passes a bare
        float literal to libdevice as float32, which would round 0.1 in a float64 kernel."""
        printed = self._print(arg)
        return printed if arg.free_symbols else f"({printed} + _zero)"

    def _print_binary(self, kind: type, args: Sequence[sympy.Expr]) -> str:
        call = self.binary_functions[kind]
        printed = [self._argument(arg) for arg in args]
        result = printed[0]
        for item in printed[1:]:
            result = f"{call}({result}, {item})"
        return result

    def _print_Heaviside(self, expr):
        return f"(0.5 + 0.5 * _sign({self._print(expr.args[0])}))"

    def _print_Piecewise(self, expr):
        # Constant branches are blocks of the kernel's dtype (`_argument`): tl.where(c, 0.1, 0.2) is float32.
        pieces = list(expr.args)
        result = "(float('nan') + _zero)" if pieces[-1].cond != sympy.true else self._argument(pieces.pop().expr)
        for piece in reversed(pieces):
            result = f"tl.where({self._print(piece.cond)}, {self._argument(piece.expr)}, {result})"
        return result


def kernel_source(argument_names: Sequence[str], outputs: Sequence[sympy.Expr], scalars: Sequence[bool]) -> str:
    """Source of a module defining ``@triton.jit def kernel(n, in..., out..., BLOCK)``."""
    replacements, reduced = shared_subexpressions(outputs)
    printer = TritonCodePrinter()
    inputs = [f"in{k}" for k in range(len(argument_names))]
    results = [f"out{k}" for k in range(len(outputs))]
    lines = [
        "import triton",
        "import triton.language as tl",
        LIBDEVICE_IMPORT[os.environ.get("TRITON_INTERPRET") == "1"],
        _HELPERS,
        "@triton.jit",
        f"def kernel(n, {', '.join(inputs + results)}, BLOCK: tl.constexpr):",
        "    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)",
        "    mask = offsets < n",
        # the kernel's dtype: float64 for float64 inputs, else float32 (half types compute in float32)
        "    _zero = tl.zeros((BLOCK,), tl.float64 if in0.dtype.element_ty == tl.float64 else tl.float32)",
    ]
    for k, name in enumerate(argument_names):
        # a number is read once and broadcast to the block (0-d values break | and & in the interpreter)
        load = f"tl.load(in{k}) + _zero" if scalars[k] else f"tl.load(in{k} + offsets, mask=mask, other=0.0)"
        # half types compute in float32
        lines.append(f"    v_{name} = {load}.to(tl.float64 if in{k}.dtype.element_ty == tl.float64 else tl.float32)")
    lines += [f"    v_{t.name} = {printer.doprint(value)}" for t, value in replacements]
    for k, value in enumerate(reduced):
        lines.append(f"    r{k} = {printer.doprint(value)} + _zero")
        lines.append(f"    tl.store(out{k} + offsets, r{k}.to(out{k}.dtype.element_ty), mask=mask)")
    return "\n".join(lines) + "\n"


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
    """``kernel(*tensors)``: the spec's outputs by one Triton launch; eager code while tracing."""

    def __init__(self, spec: FunctionSpec):
        self.spec = spec
        self.names = list(spec.input_names)
        self.fallback = torch_kernel(spec)
        self.source = self.fallback.source
        self.plain = self.fallback
        self.compiled: dict[tuple[bool, ...], Callable] = {}
        self.triton_source((False,) * len(self.names))  # unprintable functions fail now, by name

    def triton_source(self, scalars: tuple[bool, ...]) -> str:
        try:
            return kernel_source(self.names, self.spec.outputs, scalars)
        except NotImplementedError as error:
            raise BackendError(
                f"{self.spec.name}: backend 'triton' cannot print it ({error}); use backend='eager' or 'compile'"
            ) from None

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(tensors[0]):
            return self.fallback(*tensors)
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
        if not dtype.is_floating_point:
            return self.fallback(*tensors)
        shape = broadcast_shape(tensors)
        outputs = [torch.empty(shape, dtype=dtype, device=tensors[0].device) for _ in self.spec.outputs]
        count = outputs[0].numel()
        if count:
            arguments = [flat_operand(t.to(dtype), shape) for t in tensors]
            scalars = tuple(a.numel() == 1 and count != 1 for a in arguments)
            if scalars not in self.compiled:
                self.compiled[scalars] = _load_module(self.triton_source(scalars))
            grid = ((count + BLOCK - 1) // BLOCK,)
            with _quiet_interpreter():
                self.compiled[scalars][grid](count, *arguments, *outputs, BLOCK=BLOCK)
        return tuple(outputs)


class TritonBackend:
    """Triton kernels for CUDA tensors."""

    name = "triton"

    def unavailable(self) -> str | None:
        return _triton_available()

    def kernel(self, spec: FunctionSpec) -> Callable:
        return TritonKernel(spec)
