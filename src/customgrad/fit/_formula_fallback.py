"""Stand-in for `customgrad.formula` + `customgrad.codegen.torch` until they land on main.

Same interface (``parse_formula(text).names``, ``torch_callable(formula, names)``), a much smaller
language: numbers, names, + - * / **, and the functions in `_FUNCTIONS`. The text is checked
against an AST whitelist before it is compiled, so nothing but arithmetic on tensors can run.
Delete this file when ``customgrad.formula`` exists.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import FormulaError
from ..library import P2, LegendreP3

_FUNCTIONS: dict[str, Callable] = {
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "atan": torch.atan,
    "tanh": torch.tanh,
    "abs": torch.abs,
    "P2": P2.apply,
    "P3": LegendreP3.apply,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_ALLOWED = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Call,
    ast.Name,
    ast.Constant,
    ast.Load,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.USub,
    ast.UAdd,
)


@dataclass(frozen=True)
class Formula:
    """A parsed formula: its text, its compiled code, and its input names in order of first appearance."""

    text: str
    code: object
    names: tuple[str, ...]


def parse_formula(text: str, *, what: str = "model") -> Formula:
    """Parse ``text`` (e.g. ``"b1*(1 - exp(-b2*x))"``), allowing only arithmetic and known functions."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise FormulaError(f"{what} {text!r} is not a valid expression ({error.msg})") from None
    names: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise FormulaError(f"{what} {text!r} uses {type(node).__name__}, which formulas do not allow")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                known = ", ".join(_FUNCTIONS)
                raise FormulaError(
                    f"unknown function in {what} {text!r}: {ast.unparse(node.func)!r} (known: {known})"
                )
    for node in _in_order(tree):
        if isinstance(node, ast.Name) and node.id not in _FUNCTIONS and node.id not in _CONSTANTS:
            if node.id not in names:
                names.append(node.id)
    return Formula(text=text, code=compile(tree, "<formula>", "eval"), names=tuple(names))


def _in_order(node: ast.AST):
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _in_order(child)


def torch_callable(formula: Formula, names) -> Callable[..., torch.Tensor]:
    """A torch function of positional tensors, in the order ``names``, computing ``formula``."""
    scope = {"__builtins__": {}, **_FUNCTIONS, **_CONSTANTS}
    names = tuple(names)

    def evaluate(*arguments):
        return eval(formula.code, scope, dict(zip(names, arguments, strict=True)))  # noqa: S307 - whitelisted AST

    return evaluate


def mpmath_callable(formula: Formula, names) -> Callable:
    """The formula on mpmath scalars (extended precision); fails on functions mpmath lacks."""
    import mpmath

    functions = {
        "exp": mpmath.exp,
        "log": mpmath.log,
        "sqrt": mpmath.sqrt,
        "sin": mpmath.sin,
        "cos": mpmath.cos,
        "tan": mpmath.tan,
        "atan": mpmath.atan,
        "tanh": mpmath.tanh,
        "abs": abs,
    }
    if any(name not in functions for name in _called(formula)):
        raise ValueError("formula calls a function mpmath does not have")
    scope = {"__builtins__": {}, **functions, "pi": mpmath.pi, "e": mpmath.e}
    names = tuple(names)

    def evaluate(*arguments):
        return eval(formula.code, scope, dict(zip(names, arguments, strict=True)))  # noqa: S307 - whitelisted AST

    return evaluate


def _called(formula: Formula) -> set[str]:
    tree = ast.parse(formula.text.strip(), mode="eval")
    return {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)}
