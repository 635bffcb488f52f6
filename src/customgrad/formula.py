"""Formula text -> SymPy expression, safely: a whitelist over Python's ``ast``, never ``eval``.

The language: numbers, names, ``pi``, ``E``, ``+ - * / **``, unary minus, parentheses, calls of the
functions in `customgrad.functions.FUNCTIONS` and of registered functions, comparisons combined with
``and``/``or``/``not`` inside ``where(cond, a, b)`` and ``Piecewise((a, cond), ..., (b, True))``.
Names keep the order of their first appearance, which is the default input order. A name may be
any identifier not starting with ``_`` (``torch``, ``float`` and ``numpy`` included).

Limits: at most `MAX_FORMULA_LENGTH` characters; calls, parentheses and operators nested at most
`MAX_NESTING_DEPTH` levels deep (a flat chain ``a + b - c + ...`` or ``a * b / c`` is one level,
however long); ``min``/``max`` take at most 16 arguments. Anything beyond is one `FormulaError`.

Simplification: the formula is the SymPy expression it builds, which SymPy simplifies as it is
built: ``x/x`` is 1 and ``exp(log(x))`` is x everywhere (at 0 and at -1 too, where evaluating the
text as written would give NaN), ``sqrt(x**2)`` is ``abs(x)``. Forward and every derivative are
those of the simplified expression, so they always agree with each other. Not so a condition's
comparisons: they are kept as written and compared as torch compares floats (`customgrad.comparison`),
so NaN guards work: ``where(x != x, 0, x)`` is 0 at NaN and ``where(x*0 == 0, x, -1)`` is -1 at inf.

Derivatives follow torch's backward at the edges (`customgrad.derive.EDGE_RULES`): d/dx x**y is
y*x**(y-1), 0 where y = 0; d/dy x**y is x**y*log(x), 0 where x = 0 and y >= 0; atan2 has 0
gradients at the origin; where a partial is 0 by such a rule or by an unselected ``where`` branch,
it is 0 whatever the rest of the chain rule holds there. At a tie, ``max``/``min`` share the
gradient equally among the arguments that reach the extreme (constants count): max(x, y, z) at
x = y = z gives 1/3 each (torch's nested maximum gives 1/4, 1/4, 1/2; both are valid subgradients).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import math
import sys
from dataclasses import dataclass

import sympy

from . import comparison
from .errors import FormulaError
from .functions import CONSTANTS, FUNCTIONS, OTHER_SPELLINGS
from .registry import is_registered, lookup, registered_names

MAX_FORMULA_LENGTH = 10_000
MAX_NESTING_DEPTH = 40
MAX_INTEGER_DIGITS = 100
MAX_EXPONENT = 1_000
#: Echoed formula text is cut to this many characters in messages.
MAX_ECHO_LENGTH = 80

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
#: Comparisons as IEEE floats compare (false at NaN), which SymPy never decides (`comparison`).
_COMPARE = {
    ast.Lt: comparison.Less,
    ast.LtE: comparison.LessEqual,
    ast.Gt: comparison.Greater,
    ast.GtE: comparison.GreaterEqual,
    ast.Eq: comparison.Equal,
    ast.NotEq: comparison.NotEqual,
}
_NOT_FINITE_REAL = (sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.I)
_OPERATOR_NAMES = {
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.MatMult: "@",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.Invert: "~",
    ast.Not: "not",
}


@dataclass(frozen=True)
class Formula:
    """A parsed formula: its text, its SymPy expression, and its names in order of first appearance."""

    text: str
    expr: sympy.Expr
    names: tuple[str, ...]

    @property
    def symbols(self) -> tuple[sympy.Symbol, ...]:
        """The input symbols, in the order of `names`."""
        return tuple(symbol(name) for name in self.names)


def symbol(name: str) -> sympy.Symbol:
    """The SymPy symbol customgrad uses for an input called ``name`` (real-valued)."""
    return sympy.Symbol(name, real=True)


def known_function_names() -> list[str]:
    """Names callable from formulas: the built-in table, Piecewise, and the registered functions."""
    return [*FUNCTIONS, "Piecewise", *registered_names()]


def parse_formula(text: str, *, what: str = "formula") -> Formula:
    """Parse formula text into a `Formula`, rejecting anything outside the whitelist.

    Parameters
    ----------
    text : str
        The formula, e.g. ``"x**2 + 2*x"``.
    what : str
        How errors refer to the text (``"formula"``, ``"gradient for 'x'"``, ``"model"``).

    Raises
    ------
    FormulaError
        With the formula quoted, a caret under the offending part, and a suggested fix.
    """
    if not isinstance(text, str):
        raise FormulaError(f'{what} must be a string such as "x**2 + 2*x", got {type(text).__name__}')
    if not text.strip():
        raise FormulaError(f'{what} is empty: write an expression such as "x**2 + 2*x"')
    if len(text) > MAX_FORMULA_LENGTH:
        raise FormulaError(f"{what} is {len(text)} characters long; the limit is {MAX_FORMULA_LENGTH}")
    if "\n" in text.strip() or "\r" in text:
        raise FormulaError(f"{what} {shorten(text)!r} spans several lines: write it on one line")
    source = text.strip()
    too_deep = (
        f"{what} {shorten(source)!r} is nested too deeply: the limit is {MAX_NESTING_DEPTH} levels of "
        "calls, parentheses and operators; name inner parts with customgrad.function(..., name=...)"
    )
    try:
        with recursion_limit():
            tree = ast.parse(source, mode="eval")
    except SyntaxError as error:
        if "too many nested parentheses" in str(error.msg):
            raise FormulaError(too_deep) from None
        column = (error.offset or 1) - 1
        raise FormulaError(_quote(f"{what} is not a valid expression ({error.msg})", source, column, 1)) from None
    except (ValueError, RecursionError, MemoryError):
        raise FormulaError(too_deep) from None
    if _nesting_depth(tree.body) > MAX_NESTING_DEPTH:
        raise FormulaError(too_deep)
    builder = _Builder(source, what)
    try:
        expr = builder.build(tree.body)
    except RecursionError:  # not expected within MAX_NESTING_DEPTH: kept as a last resort
        raise FormulaError(too_deep) from None
    if isinstance(expr, (sympy.logic.boolalg.Boolean, tuple)) and not isinstance(expr, sympy.Expr):
        raise FormulaError(
            _quote(f"{what} is a condition, not a value: use it inside where(cond, a, b)", source, 0, len(source))
        )
    return Formula(text=source, expr=expr, names=tuple(builder.names))


def shorten(text: str, limit: int = MAX_ECHO_LENGTH) -> str:
    """``text`` cut to its first ``limit`` characters followed by '…' when longer (for messages)."""
    return text if len(text) <= limit else text[:limit] + "…"


def _quote(message: str, source: str, column: int, width: int) -> str:
    column = max(0, min(column, len(source)))
    width = max(1, min(width, len(source) - column) if column < len(source) else 1)
    if len(source) > MAX_ECHO_LENGTH:  # a window around the offending part
        start = max(0, min(column - MAX_ECHO_LENGTH // 4, len(source) - MAX_ECHO_LENGTH))
        prefix = "…" if start else ""
        suffix = "…" if start + MAX_ECHO_LENGTH < len(source) else ""
        source = prefix + source[start : start + MAX_ECHO_LENGTH] + suffix
        column = column - start + len(prefix)
        width = max(1, min(width, len(source) - len(suffix) - column))
    return f"{message}\n    {source}\n    {' ' * column}{'^' * width}"


@contextlib.contextmanager
def recursion_limit(limit: int = 2 * MAX_FORMULA_LENGTH + 1_000):
    """Raise Python's recursion limit to at least ``limit`` inside the block.

    CPython builds and compiles a flat sum recursively (one level per term): a 3000-term sum fails
    under the default limit of 1000, whatever the stack holds.
    """
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


#: Operators whose left-nested chains (a + b - c + ...) are one flat level, folded iteratively.
_CHAINS = {ast.Add: "sum", ast.Sub: "sum", ast.Mult: "product", ast.Div: "product"}


def _nesting_depth(root: ast.AST) -> int:
    """How deeply ``root`` nests calls, operators and parentheses, a flat chain a + b + c counting once.

    Iterative, so any tree ``ast.parse`` returns can be measured.
    """
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        chain = _CHAINS.get(type(node.op)) if isinstance(node, ast.BinOp) else None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.expr_context)):
                continue
            same_chain = (
                chain is not None
                and child is node.left
                and isinstance(child, ast.BinOp)
                and _CHAINS.get(type(child.op)) == chain
            )
            stack.append((child, depth if same_chain else depth + 1))
    return deepest


class _Builder:
    """Turns a whitelisted AST into SymPy, node by node; anything else is a FormulaError."""

    def __init__(self, source: str, what: str):
        self.source = source
        self.what = what
        self.names: list[str] = []

    def fail(self, node: ast.AST, message: str) -> FormulaError:
        column = getattr(node, "col_offset", 0)
        end = getattr(node, "end_col_offset", None) or column + 1
        if getattr(node, "end_lineno", 1) != getattr(node, "lineno", 1):
            end = len(self.source)
        return FormulaError(_quote(f"{self.what}: {message}", self.source, column, end - column))

    def build(self, node: ast.AST, condition: bool = False):
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.fail(node, _describe_unsupported(node))
        try:
            result = method(node, condition)
            if isinstance(result, sympy.Expr):
                self._check_finite_real(node, result)
        except OverflowError as error:  # SymPy's exact arithmetic on a huge constant: erfc(1e300) + x
            raise self.fail(
                node, f"this part overflowed SymPy's exact arithmetic ({error}); use a smaller constant"
            ) from None
        return result

    def _check_finite_real(self, node: ast.AST, result: sympy.Expr) -> None:
        # 1/0, log(0), sqrt(-1), asin(2): SymPy gives zoo, I, complex values; torch would give nan or complex.
        if result.has(*_NOT_FINITE_REAL) or (not result.free_symbols and result.is_extended_real is False):
            raise self.fail(node, f"this part is {result}, not a finite real number")

    def value(self, node: ast.AST):
        result = self.build(node)
        if not isinstance(result, sympy.Expr):
            raise self.fail(
                node, "a condition is used where a value is expected; put comparisons inside where(cond, a, b)"
            )
        return result

    def _Constant(self, node: ast.Constant, condition: bool):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if value is True and condition:
                return sympy.true
            raise self.fail(node, f"{value!r} is not allowed: only numbers, names and function calls are")
        if isinstance(value, int):
            if len(str(abs(value))) > MAX_INTEGER_DIGITS:
                raise self.fail(node, f"integer literal has more than {MAX_INTEGER_DIGITS} digits")
            return sympy.Integer(value)
        if not math.isfinite(value):
            raise self.fail(node, "number is too large (overflows to infinity)")
        # Exact rational from the shortest decimal form, so derivatives stay exact.
        return sympy.Rational(repr(value))

    def _Name(self, node: ast.Name, condition: bool):
        name = node.id
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name == "True" and condition:
            return sympy.true
        if name.startswith("_"):
            raise self.fail(node, f"name {name!r} is not allowed: names may not start with '_'")
        if name not in FUNCTIONS and is_registered(name):
            raise self.fail(
                node,
                f"{name!r} is a function registered with customgrad.function(..., name={name!r}): "
                f"call it, as in {name}(x), or use another variable name",
            )
        if name in FUNCTIONS or name == "Piecewise":
            raise self.fail(node, f"{name!r} is a function: call it, as in {name}(x)")
        if name not in self.names:
            self.names.append(name)
        return sympy.Symbol(name, real=True)

    def _UnaryOp(self, node: ast.UnaryOp, condition: bool):
        if isinstance(node.op, ast.USub):
            return -self.value(node.operand)
        if isinstance(node.op, ast.UAdd):
            return self.value(node.operand)
        if isinstance(node.op, ast.Not) and condition:
            return sympy.Not(self.condition(node.operand))
        raise self.fail(node, f"operator {_OPERATOR_NAMES.get(type(node.op), '?')!r} is not allowed here")

    def _BinOp(self, node: ast.BinOp, condition: bool):
        operation = _BINARY.get(type(node.op))
        if operation is None:
            symbol_text = _OPERATOR_NAMES.get(type(node.op), "?")
            raise self.fail(
                node, f"operator {symbol_text!r} is not supported: use + - * / ** and functions such as floor(x)"
            )
        if type(node.op) in _CHAINS:
            return self._chain(node)
        left, right = self.value(node.left), self.value(node.right)
        if isinstance(node.op, ast.Pow):
            self._check_power(node, left, right)
        try:
            return operation(left, right)
        except (OverflowError, MemoryError, ValueError) as error:
            raise self.fail(node, f"cannot be evaluated exactly ({error})") from None

    def _chain(self, node: ast.BinOp):
        """a + b - c + ... (or a * b / c * ...) folded iteratively: one SymPy Add (Mul) of the terms."""
        kind = _CHAINS[type(node.op)]
        links = []
        while isinstance(node, ast.BinOp) and _CHAINS.get(type(node.op)) == kind:
            links.append(node)
            node = node.left
        terms = [self.value(node)]
        for link in reversed(links):
            term = self.value(link.right)
            try:
                if isinstance(link.op, ast.Sub):
                    term = -term
                elif isinstance(link.op, ast.Div):
                    term = 1 / term
            except (OverflowError, MemoryError, ValueError) as error:
                raise self.fail(link, f"cannot be evaluated exactly ({error})") from None
            self._check_finite_real(link, term)
            terms.append(term)
        try:
            result = sympy.Add(*terms) if kind == "sum" else sympy.Mul(*terms)
        except (OverflowError, MemoryError, ValueError) as error:
            raise self.fail(links[0], f"cannot be evaluated exactly ({error})") from None
        self._check_finite_real(links[0], result)
        return result

    def _check_power(self, node, base, exponent):
        if exponent.is_Number and abs(exponent) > MAX_EXPONENT:
            raise self.fail(node, f"exponent {exponent} is too large (limit {MAX_EXPONENT})")
        if base.is_Number and exponent.is_Number and base != 0:
            magnitude = abs(float(exponent)) * abs(math.log10(abs(float(base)))) if float(base) else 0
            if magnitude > 300:
                raise self.fail(node, "this power is too large to compute (more than 1e300)")

    def condition(self, node: ast.AST):
        result = self.build(node, condition=True)
        # A Symbol is also a sympy Boolean: only relations and their combinations are conditions.
        is_condition = isinstance(result, (sympy.logic.boolalg.Boolean, sympy.core.relational.Relational))
        if isinstance(result, sympy.Expr) or not is_condition:
            raise self.fail(node, "expected a condition such as x > 0")
        return result

    def _Compare(self, node: ast.Compare, condition: bool):
        if not condition:
            raise self.fail(
                node,
                "comparisons are only allowed as the condition of where(cond, a, b) or Piecewise((a, cond), (b, True))",
            )
        parts = []
        # Operands as written: SymPy's simplifications (x*0 -> 0, x - x -> 0) hold for finite x only.
        with sympy.evaluate(False):
            left = self.value(node.left)
        for operator, comparator in zip(node.ops, node.comparators, strict=True):
            relation = _COMPARE.get(type(operator))
            if relation is None:
                raise self.fail(node, "only < <= > >= == != comparisons are allowed")
            with sympy.evaluate(False):
                right = self.value(comparator)
            # decided here where both sides are numbers, also inside an operand built unevaluated (a nested
            # where(0 < 0, ...)): left undecided, SymPy's piecewise folding met a condition without symbols
            parts.append(relation(left, right, evaluate=True))
            left = right
        return sympy.And(*parts)

    def _BoolOp(self, node: ast.BoolOp, condition: bool):
        if not condition:
            raise self.fail(node, "'and'/'or' are only allowed inside the condition of where(...)")
        parts = [self.condition(value) for value in node.values]
        return sympy.And(*parts) if isinstance(node.op, ast.And) else sympy.Or(*parts)

    def _Call(self, node: ast.Call, condition: bool):
        if not isinstance(node.func, ast.Name):
            raise self.fail(node.func, "only plain function names can be called, such as sin(x)")
        name = node.func.id
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise self.fail(node, f"{name}(...) takes positional arguments only")
        if name == "Piecewise":
            return self._piecewise(node)
        if name == "where":
            self._arity(node, name, 3, 3)
            cond = self.condition(node.args[0])
            return sympy.Piecewise((self.value(node.args[1]), cond), (self.value(node.args[2]), True))
        if name in FUNCTIONS:
            entry = FUNCTIONS[name]
            self._arity(node, name, entry.min_args, entry.max_args)
            return self._apply(node, entry.build, [self.value(arg) for arg in node.args])
        registered = lookup(name)
        if registered is not None:
            self._arity(node, name, registered.arity, registered.arity)
            return self._apply(node, registered.symbol, [self.value(arg) for arg in node.args])
        known = known_function_names()
        if name in OTHER_SPELLINGS:
            raise self.fail(node.func, f"unknown function {name!r}: write it as {OTHER_SPELLINGS[name]}")
        close = difflib.get_close_matches(name, known, n=3)
        hint = f": did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        define = (
            f"; define it with customgrad.function('...', name={name!r}) in Python, or "
            f"--define '{name}(u) = ...' on the command line"
            if not close and name.isidentifier() and not name.startswith("_")
            else ""
        )
        raise self.fail(node.func, f"unknown function {name!r}{hint} (known: {', '.join(known)}){define}")

    def _apply(self, node: ast.Call, build, arguments: list):
        try:
            if all(not a.free_symbols for a in arguments if isinstance(a, sympy.Basic)):
                # A function of constants, evaluated also inside a comparison's operands (built unevaluated):
                # SymPy's evalf recurses without end on an unevaluated floor(2).
                with sympy.evaluate(True):
                    return build(*arguments)
            return build(*arguments)
        except (ValueError, TypeError, ArithmeticError) as error:  # e.g. max(x, c) with c not comparable
            raise self.fail(node, f"cannot be built ({error})") from None

    def _arity(self, node: ast.Call, name: str, low: int, high: int | None) -> None:
        count = len(node.args)
        if count < low or (high is not None and count > high):
            expected = str(low) if low == high else (f"{low} or more" if high is None else f"{low} to {high}")
            raise self.fail(node, f"{name}() takes {expected} argument{'s' if expected != '1' else ''}, got {count}")

    def _piecewise(self, node: ast.Call):
        if not node.args:
            raise self.fail(node, "Piecewise needs pairs: Piecewise((a, x < 0), (b, True))")
        pieces = []
        for arg in node.args:
            if not isinstance(arg, ast.Tuple) or len(arg.elts) != 2:
                raise self.fail(arg, "each Piecewise argument must be a pair (value, condition)")
            value_node, condition_node = arg.elts
            pieces.append((self.value(value_node), self.condition(condition_node)))
        return sympy.Piecewise(*pieces)


def _describe_unsupported(node: ast.AST) -> str:
    descriptions = {
        ast.Attribute: "attribute access ('.') is not allowed",
        ast.Subscript: "indexing ('[...]') is not allowed",
        ast.Lambda: "lambda is not allowed",
        ast.ListComp: "comprehensions are not allowed",
        ast.GeneratorExp: "comprehensions are not allowed",
        ast.SetComp: "comprehensions are not allowed",
        ast.DictComp: "comprehensions are not allowed",
        ast.IfExp: "'a if cond else b' is not allowed: use where(cond, a, b)",
        ast.Tuple: "tuples are only allowed as Piecewise((value, condition), ...) pairs",
        ast.NamedExpr: "':=' is not allowed",
        ast.JoinedStr: "strings are not allowed",
    }
    return descriptions.get(type(node), f"{type(node).__name__} is not allowed in a formula")
