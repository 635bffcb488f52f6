"""SymPy -> Triton source: the kernels of the triton backend, one ``tl``/libdevice call per row of the
Triton column of the printer table (`codegen.rules`), over tiles of a rows x columns view of the output.

Printing imports no Triton: the source is text, imported from a file by `backends.triton` on first
launch (``triton.jit`` reads its function's source file). Each input is loaded in its own dtype through
its strides (`_LOADS`: full, per row, per column, or one number) and converted to the computed dtype in
registers; each output is stored full or as this program's partial sums (`_STORES`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import sympy

from .cse import shared_subexpressions
from .hoist import hoisted
from .rules import BINARY_RULES, FUNCTION_RULES, column
from .torch import TorchCodePrinter

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
        if expr.free_symbols and exponent.is_Integer and 2 <= abs(int(exponent)) <= 4:
            printed = self.parenthesize(base, 1000)
            product = "(" + " * ".join([printed] * abs(int(exponent))) + ")"
            return product if exponent > 0 else f"(1.0 / {product})"
        if expr.free_symbols and exponent not in self.powers:
            return self.power.format(self._argument(base), self._argument(exponent))
        return super()._print_Pow(expr, rational)

    def _argument(self, arg: sympy.Expr) -> str:
        """A call's argument; a number as a one-element block of the kernel's dtype (``_unit``): Triton
        passes a bare float literal to libdevice as float32, which would round 0.1 in a float64 kernel."""
        printed = self._print(arg)
        return printed if arg.free_symbols else f"({printed} + _unit)"

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


#: input read pattern (`tiling`), 2-D grid? -> the strides the kernel takes for it, and its load.
_LOADS: dict[tuple[str, bool], tuple[tuple[str, ...], str]] = {
    ("v", True): (
        ("rows",),
        "tl.load(in{k} + rows[:, None] * (in{k}_rows // VEC * VEC) + cols[None, :], mask=mask, other=0)",
    ),
    ("g", True): (
        ("rows", "cols"),
        "tl.load(in{k} + rows[:, None] * in{k}_rows + cols[None, :] * in{k}_cols, mask=mask, other=0)",
    ),
    ("o", True): (("rows",), "tl.load(in{k} + rows * in{k}_rows, mask=row_mask, other=0)[:, None]"),
    ("i", True): (("cols",), "tl.load(in{k} + cols * in{k}_cols, mask=col_mask, other=0)[None, :]"),
    ("s", True): ((), "tl.load(in{k})"),
    ("v", False): ((), "tl.load(in{k} + cols, mask=mask, other=0)"),
    ("g", False): (("cols",), "tl.load(in{k} + cols * in{k}_cols, mask=mask, other=0)"),
    ("s", False): ((), "tl.load(in{k})"),
}
#: output store mode (`tiling`), 2-D grid? -> its store: full, or this program's partial sums.
_STORES: dict[tuple[str, bool], str] = {
    ("v", True): ("tl.store(out{k} + rows[:, None] * C + cols[None, :], r{k}.to(out{k}.dtype.element_ty), mask=mask)"),
    ("v", False): "tl.store(out{k} + cols, r{k}.to(out{k}.dtype.element_ty), mask=mask)",
    ("s", True): "tl.store(out{k} + pid, tl.sum(tl.where(mask, r{k}, 0.0)))",
    ("s", False): "tl.store(out{k} + pid, tl.sum(tl.where(mask, r{k}, 0.0)))",
    ("o", True): "tl.store(out{k} + col_block * R + rows, tl.sum(tl.where(mask, r{k}, 0.0), axis=1), mask=row_mask)",
    ("i", True): "tl.store(out{k} + row_block * C + cols, tl.sum(tl.where(mask, r{k}, 0.0), axis=0), mask=col_mask)",
}
_GRID = {
    True: [
        "    col_blocks = tl.cdiv(C, BLOCK_C)",
        "    row_block = pid // col_blocks",
        "    col_block = pid - row_block * col_blocks",
        "    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)",
        "    cols = col_block * BLOCK_C + tl.arange(0, BLOCK_C)",
        "    row_mask = rows < R",
        "    col_mask = cols < C",
        "    mask = row_mask[:, None] & col_mask[None, :]",
        "    _zero = tl.zeros((BLOCK_R, BLOCK_C), {computed})",
        "    _unit = tl.zeros((1, 1), {computed})",
    ],
    False: [
        "    cols = pid * BLOCK_C + tl.arange(0, BLOCK_C)",
        "    mask = cols < C",
        "    _zero = tl.zeros((BLOCK_C,), {computed})",
        "    _unit = tl.zeros((1,), {computed})",
    ],
}


def stride_names(read: str, two_d: bool) -> tuple[str, ...]:
    """The strides (``rows``, ``cols``) the kernel takes for an input read as ``read``."""
    return _LOADS[read, two_d][0]


def kernel_source(
    argument_names: Sequence[str],
    outputs: Sequence[sympy.Expr],
    reads: str,
    stores: str,
    computed: str,
    two_d: bool = False,
) -> str:
    """Source of a module defining ``@triton.jit def kernel(R, C, in..., out..., BLOCK_R, BLOCK_C, WIDE, VEC)``.

    The grid runs over tiles of a rows x columns view of the output (`tiling`; one row when no input
    varies per row or column): ``reads[k]`` says how input k is read in its own dtype (converted to
    ``computed`` in registers), ``stores[k]`` whether output k is stored full or summed per program;
    ``two_d``: tiles of rows x columns (else one row of ``C`` elements). ``VEC`` divides ``C`` and every
    row stride of a full input: written ``n // VEC * VEC``, Triton sees them as multiples of VEC and
    vectorises by it (it proves divisibility by 16 itself only, and a 1000-column row is not).
    """
    replacements, reduced = shared_subexpressions(outputs)
    printer = TritonCodePrinter()
    parameters = ["R", "C"]
    for k, read in enumerate(reads):
        parameters += [f"in{k}", *(f"in{k}_{name}" for name in stride_names(read, two_d))]
    parameters += [f"out{k}" for k in range(len(outputs))]
    dtype = f"tl.{computed}"
    lines = [
        "import triton",
        "import triton.language as tl",
        LIBDEVICE_IMPORT[os.environ.get("TRITON_INTERPRET") == "1"],
        _HELPERS,
        "@triton.jit",
        f"def kernel({', '.join(parameters)}, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, WIDE: tl.constexpr, "
        "VEC: tl.constexpr):",
        "    pid = tl.program_id(0)",
        "    if WIDE:",
        "        pid = pid.to(tl.int64)",
        "    C = C // VEC * VEC  # the same C, seen by Triton as a multiple of VEC: masks and rows vectorise",
        *(line.format(computed=dtype) for line in _GRID[two_d]),
    ]
    full = set()  # names whose value is a whole tile (the rest are numbers, rows or columns)
    for k, (name, read) in enumerate(zip(argument_names, reads, strict=True)):
        load = _LOADS[read, two_d][1].format(k=k)
        # a number is a one-element block (0-d values break | and & in the interpreter)
        lines.append(f"    v_{name} = {load}.to({dtype})" + (" + _unit" if read == "s" else ""))
        if read in "vg":
            full.add(name)
    # pieces of per-row values and numbers only are computed at their own (small) shape, and divisions
    # by them become multiplications (`hoist`)
    constant = {name for name, read in zip(argument_names, reads, strict=True) if read in ("os" if two_d else "s")}
    symbols = {s for value in outputs for s in value.free_symbols if s.name in constant}
    if symbols:
        pieces, replacements, reduced = hoisted(replacements, reduced, symbols)
        lines += [f"    v_{symbol.name} = {printer.doprint(value)}" for symbol, value in pieces]
    for temporary, value in replacements:
        lines.append(f"    v_{temporary.name} = {printer.doprint(value)}")
        if {symbol.name for symbol in value.free_symbols} & full:
            full.add(temporary.name)
    for k, (value, store) in enumerate(zip(reduced, stores, strict=True)):
        whole = {symbol.name for symbol in value.free_symbols} & full
        lines.append(f"    r{k} = {printer.doprint(value)}" + ("" if whole else " + _zero"))
        lines.append("    " + _STORES[store, two_d].format(k=k))
    return "\n".join(lines) + "\n"
