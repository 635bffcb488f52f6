"""SymPy -> torch source: a code printer driven by a mapping table, and a compiler for it.

Generated code is ordinary Python over ``torch`` calls; it is produced from whitelisted SymPy
expressions (never from user text) and compiled with ``compile``/``exec`` into a function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import sympy
from sympy.printing.pycode import AbstractPythonCodePrinter

from .cse import shared_subexpressions
from .rules import BINARY_RULES, FUNCTION_RULES, column
from .runtime import _full, _narrow, _widen, compile_source, runtime_namespace  # noqa: F401 - re-exported

if TYPE_CHECKING:
    import torch

#: SymPy function -> torch call: the torch column of the printer table (`codegen.rules`).
TORCH_FUNCTIONS: dict[type, str] = column(FUNCTION_RULES, "torch")
#: Functions of two tensors. A constant argument is a Python number (clamp) or a tensor like the
#: other argument (atan2), so that, as in torch, constants never promote the inputs' dtype.
TORCH_BINARY_FUNCTIONS: dict[type, str] = column(BINARY_RULES, "torch")
#: max(x, c) and min(x, c) for a constant c.
TORCH_CLAMPS: dict[type, str] = {
    sympy.Max: "torch.clamp_min",
    sympy.Min: "torch.clamp_max",
}

#: Longest max(a, b, ...) printed as nested calls; longer ones fold with functools.reduce.
MAX_NESTED_FOLD = 8
#: The largest number every floating dtype holds (float16's largest): torch.where, clamp and full_like
#: refuse a larger Python number for a narrower tensor ("cannot be converted ... without overflow").
LARGEST_SAFE_NUMBER = 65504.0

_RELATIONS = {
    sympy.StrictLessThan: "<",
    sympy.LessThan: "<=",
    sympy.StrictGreaterThan: ">",
    sympy.GreaterThan: ">=",
    sympy.Eq: "==",
    sympy.Ne: "!=",
}


class TorchCodePrinter(AbstractPythonCodePrinter):
    """Prints a SymPy expression as a torch expression over tensors named like its symbols."""

    printmethod = "_customgrad_torchcode"
    language = "Python with torch"
    #: What a subclass for another array library replaces: its module name and its tables.
    module = "torch"
    functions = TORCH_FUNCTIONS
    binary_functions = TORCH_BINARY_FUNCTIONS
    #: x**exponent -> call, for the exponents with a cheaper or more accurate form than pow.
    powers = {
        sympy.S.Half: "torch.sqrt({})",
        -sympy.S.Half: "torch.rsqrt({})",
        sympy.S.NegativeOne: "torch.reciprocal({})",
        sympy.Integer(2): "torch.square({})",
    }
    power = "torch.pow({}, {})"
    calls_registered = True  # registered Functions are callable (torch only)
    #: The inputs of the function being printed (`function_source` sets them): a constant printed as
    #: ``_full(c, *inputs)`` takes their promoted dtype. Empty for code shown to people.
    dtype_from: tuple[str, ...] = ()

    def __init__(self, settings=None, *, private_module: bool = True):
        super().__init__({"fully_qualified_modules": True, **(settings or {})})
        # Generated code calls the module under a private alias (``_torch.exp``): user names never
        # start with '_', so an input called ``torch`` cannot shadow it. Displayed code keeps ``torch``.
        self.private_module = private_module

    def qualified(self, name: str) -> str:
        """A table entry or template such as ``torch.exp`` as generated code calls it (``_torch.exp``)."""
        if not self.private_module:
            return name
        return re.sub(rf"\b{self.module}\.", f"_{self.module}.", name)

    # Numbers: plain float literals, which keep the tensor's dtype under torch's promotion rules.
    def _print_constant_value(self, expr) -> str:
        value = float(sympy.N(expr, 17))
        if math.isfinite(value):
            return repr(value)
        return self._print(sympy.oo if value > 0 else -sympy.oo)  # exp(800) overflows to inf

    def _print_Integer(self, expr):
        return f"{int(expr)}.0" if abs(int(expr)) < 2**53 else repr(float(expr))

    def _print_Rational(self, expr):
        return self._print_constant_value(expr)

    _print_Float = _print_Rational
    _print_NumberSymbol = _print_Rational
    _print_Pi = _print_Rational
    _print_Exp1 = _print_Rational

    def _print_Half(self, expr):
        return "0.5"

    # Not float('inf'): an input may be called float.
    def _print_Infinity(self, expr):
        return self.qualified(f"{self.module}.inf")

    def _print_NegativeInfinity(self, expr):
        return f"(-{self.qualified(f'{self.module}.inf')})"

    def _print_NaN(self, expr):
        return self.qualified(f"{self.module}.nan")

    def _print_Symbol(self, expr):
        return str(expr)

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.args
        if not expr.free_symbols:
            return self._print_constant_value(expr)
        if exponent in self.powers:
            return self.qualified(self.powers[exponent]).format(self._print(base))
        return self.qualified(self.power).format(self._print(base), self._print(exponent))

    def _print_Function(self, expr):
        if not expr.free_symbols:
            return self._print_constant_value(expr)
        kind = type(expr)
        if kind in self.functions:
            return f"{self.qualified(self.functions[kind])}({', '.join(self._print(arg) for arg in expr.args)})"
        if kind in self.binary_functions:
            return self._print_binary(kind, expr.args)
        name = getattr(kind, "_customgrad_name", None)
        if name is not None and self.calls_registered:
            return f"_registered_{name}({', '.join(self._print(arg) for arg in expr.args)})"
        raise NotImplementedError(f"no {self.module} translation for {kind.__name__}")

    _print_Max = _print_Function
    _print_Min = _print_Function
    _print_atan2 = _print_Function
    _print_sign = _print_Function
    _print_Abs = _print_Function
    _print_floor = _print_Function
    _print_ceiling = _print_Function
    _print_erf = _print_Function
    _print_erfc = _print_Function
    _print_exp = _print_Function
    _print_log = _print_Function

    def _print_binary(self, kind: type, args: Sequence[sympy.Expr]) -> str:
        call = self.qualified(TORCH_BINARY_FUNCTIONS[kind])
        if kind in TORCH_CLAMPS:
            # Fold max(a, b, c, ...) left to right over the tensors, then clamp by the constant (SymPy
            # folds several constants into one).
            tensors = [self._print(arg) for arg in args if arg.free_symbols]
            result = self._fold(call, tensors)
            for constant in (arg for arg in args if not arg.free_symbols):
                bound = self._tensor_constant(constant, alone=False)
                result = f"{self.qualified(TORCH_CLAMPS[kind])}({result}, {bound})"
            return result
        first, second = (self._print(arg) for arg in args)
        if not args[0].free_symbols:
            first = self._like(args[0], second)
        if not args[1].free_symbols:
            second = self._like(args[1], first)
        return f"{call}({first}, {second})"

    def _like(self, constant: sympy.Expr, other: str) -> str:
        """``constant`` as a tensor like ``other`` (`torch.full_like`); of the computation's dtype
        (`_full`) when too large for full_like."""
        if self._needs_full(constant, alone=False):
            return self._full(constant)
        return f"{self.qualified('torch.full_like')}({other}, {self._print(constant)})"

    def _tensor_constant(self, constant: sympy.Expr, *, alone: bool) -> str:
        """A constant argument of a torch call, in the computation's dtype: a Python number (torch
        converts it to the other arguments' dtype), or `_full` where a number would not do."""
        return self._full(constant) if self._needs_full(constant, alone=alone) else self._print(constant)

    def _needs_full(self, constant: sympy.Expr, *, alone: bool) -> bool:
        """Whether ``constant`` must be a tensor to get the computation's dtype: ``alone`` (no tensor
        argument to take it from: torch.where(c, 0.1, 0.2) is float32) or beyond `LARGEST_SAFE_NUMBER`
        (torch refuses 1e300 for a float32 where; `_full` rounds it to inf). Never in displayed code."""
        if not self.dtype_from:
            return False
        value = float(sympy.N(constant, 17)) if constant.is_number else math.nan
        return alone or (math.isfinite(value) and abs(value) > LARGEST_SAFE_NUMBER)

    def _full(self, constant: sympy.Expr) -> str:
        """``_full(c, *inputs)``: ``constant`` as a tensor of the inputs' shape and promoted dtype."""
        return f"_full({self._print(constant)}, {', '.join(self.dtype_from)})"

    def _fold(self, call: str, printed: Sequence[str]) -> str:
        """call(call(a, b), c)...: nested while short, a reduce over a flat tuple when long (Python's
        parser refuses more than 200 nested parentheses)."""
        if len(printed) > MAX_NESTED_FOLD:
            return f"_functools.reduce({call}, ({', '.join(printed)}))"
        result = printed[0]
        for item in printed[1:]:
            result = f"{call}({result}, {item})"
        return result

    def _print_Heaviside(self, expr):
        # H(z) with H(0) = 1/2, the value SymPy and torch.maximum's tie-splitting use.
        return f"(0.5 + 0.5 * {self.qualified(self.module + '.sign')}({self._print(expr.args[0])}))"

    def _print_DiracDelta(self, expr):
        return "0.0"

    def _print_Piecewise(self, expr):
        pieces = list(expr.args)
        if pieces[-1].cond != sympy.true:
            pieces.append(sympy.functions.elementary.piecewise.ExprCondPair(sympy.nan, sympy.true))
        # Constants stay Python numbers, which take the other branch's dtype as in torch.where(c, x, 0.0);
        # the last of two constant branches is a tensor of the computation's dtype (`_needs_full`).
        alone = len(pieces) > 1 and not pieces[-1].expr.free_symbols and not pieces[-2].expr.free_symbols
        result = self._branch(pieces[-1].expr, alone=alone)
        where = self.qualified(f"{self.module}.where")
        for piece in reversed(pieces[:-1]):
            result = f"{where}({self._print(piece.cond)}, {self._branch(piece.expr, alone=False)}, {result})"
        return result

    def _branch(self, value: sympy.Expr, *, alone: bool) -> str:
        return self._print(value) if value.free_symbols else self._tensor_constant(value, alone=alone)

    def _print_Relational(self, expr):
        operator = _RELATIONS[type(expr)]
        left, right = expr.args
        return f"({self._print(left)} {operator} {self._print(right)})"

    def _print_And(self, expr):
        return "(" + " & ".join(self._print(arg) for arg in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " | ".join(self._print(arg) for arg in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(~{self._print(expr.args[0])})"

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"


def print_torch(expr: sympy.Expr) -> str:
    """The torch source of one expression, for display (calls ``torch.*``)."""
    return TorchCodePrinter(private_module=False).doprint(expr)


def function_source(
    name: str,
    argument_names: Sequence[str],
    outputs: Sequence[sympy.Expr],
    *,
    shared: bool = True,
    full_shape: Sequence[str] = (),
    into: bool = False,
    printer: TorchCodePrinter | None = None,
    widen: bool = True,
) -> str:
    """Source of ``def name(args): ...; return (out0, out1, ...)`` with common subexpressions shared.

    Outputs that do not depend on every argument are still returned as tensors with the full
    broadcast shape (constant outputs included), so callers can rely on one shape for all outputs;
    an output using one of the ``full_shape`` arguments (known to have that shape: the upstream
    gradients of a backward) has it already. Temporaries are named ``_t0, _t1, ...``.

    With ``into``: ``def name(_out, args): ...; _out[k] = out_k`` instead, each output broadcast into
    ``_out[k]`` (an array or tensor the caller allocates: a constant output costs one fill).
    ``printer`` picks the language (torch by default; `codegen.numpy.NumpyCodePrinter` for numpy,
    whose code takes float64 arrays as they are). With ``widen`` (torch) float16/bfloat16 are computed
    in float32 and rounded once; without, every op runs in the inputs' dtype, as the formula written in
    plain torch ops would (`Function.eager`, the same-dtype reference of checks).
    """
    printer = printer or TorchCodePrinter()
    if printer.module == "torch":
        printer.dtype_from = tuple(argument_names)
    arguments = ", ".join(argument_names)
    lines = [f"def {name}({'_out, ' if into else ''}{arguments}):"]
    if printer.module == "torch" and widen:
        # float16/bfloat16 are computed in float32 and rounded once at the end, as torch's kernels do
        # inside one op: rewritten forms such as x**2/10000 for (x/100)**2 would overflow in half.
        lines.append(f"    {arguments}, _low = _widen({arguments})")
    elif not into:
        lines.append("    _low = None")
    replacements, reduced = shared_subexpressions(outputs) if shared else ([], list(outputs))
    for temporary, value in replacements:
        lines.append(f"    {temporary} = {printer.doprint(value)}")
    if into:
        lines += [f"    _out[{index}] = {printer.doprint(output)}" for index, output in enumerate(reduced)]
        return "\n".join(lines) + "\n"
    all_arguments = {sympy.Symbol(a, real=True) for a in argument_names}
    results = []
    for index, output in enumerate(reduced):
        text = printer.doprint(output)
        original_symbols = outputs[index].free_symbols
        has_full_shape = any(symbol.name in full_shape for symbol in original_symbols)
        if isinstance(outputs[index], sympy.Symbol) or not (has_full_shape or all_arguments <= original_symbols):
            text = f"_full({text}, {', '.join(argument_names)})"
        results.append(text)
    lines.append(f"    return _narrow(({', '.join(results)},), _low)")
    return "\n".join(lines) + "\n"


def torch_callable(expr: sympy.Expr, names: Sequence[str], *, widen: bool = True) -> Callable[..., torch.Tensor]:
    """A torch function of positional tensors (in the order ``names``) computing ``expr``.

    Differentiable by ordinary autograd; registered functions are called through their
    autograd Functions, so their own (derived or declared) gradients apply. Without ``widen``
    float16/bfloat16 inputs are computed op by op in their own dtype (see `function_source`).
    """
    source = function_source("_expression", list(names), [expr], shared=True, widen=widen)
    compiled = compile_source(source, "_expression", f"<customgrad expression {expr}>")

    def evaluate(*arguments):
        return compiled(*arguments)[0]

    evaluate.source = source  # type: ignore[attr-defined]
    return evaluate
