"""Functions defined from text, ``"Lor(u) = 1/(1 + u**2)"``: the command line's ``--define`` and ``--defines``.

A definition is parsed by the formula parser (never eval'ed) and registered for this process
(`registry`), so later definitions and the run's formulas can call it, and differentiate through
its derived partials. SymPy only: its autograd Function is generated on first call.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CustomgradError, DataError, FormulaError, UsageError
from .formula import parse_formula, shorten
from .formula_spec import formula_spec
from .library import register_generated
from .registry import check_function_name

if TYPE_CHECKING:
    from .registry import RegisteredFunction

_HEAD = re.compile(r"\s*([^\W\d]\w*)\s*\(([^()]*)\)\s*")
_EXAMPLE = 'write NAME(INPUTS) = FORMULA, e.g. "Lor(u) = 1/(1 + u**2)"'


def define(text: str, *, where: str = "--define") -> RegisteredFunction:
    """Register f from ``"f(u, v) = formula"``: f(u, v) = formula, callable from later formulas.

    Parameters
    ----------
    text : str
        The definition: a name, its inputs in parentheses, ``=``, and a formula over those inputs.
    where : str
        Where the definition comes from (``--define``, ``defs.txt:3``), for error messages.

    Raises
    ------
    UsageError
        The head is not ``NAME(INPUTS)``, or the name or an input is not a valid name.
    FormulaError
        The formula is malformed or uses a name that is not one of the inputs.
    """
    head, equals, body = text.partition("=")
    match = _HEAD.fullmatch(head)
    quoted = f"{where} {shorten(text)!r}"
    if not equals or match is None or not body.strip() or body.lstrip().startswith("="):
        raise UsageError(f"{quoted}: {_EXAMPLE}")
    name, listed = match.group(1), match.group(2)
    inputs = [item.strip() for item in listed.split(",")] if listed.strip() else []
    if not inputs or not all(inputs):
        raise UsageError(f"{quoted}: {name}() needs its inputs in the parentheses, as in {name}(u) or {name}(u, v)")
    try:
        check_function_name(name)
        if name in inputs:
            raise UsageError(f"{name!r} is both the function's name and one of its inputs: rename one")
        unknown = [n for n in parse_formula(body.strip()).names if n not in inputs]
        if unknown:
            which = "is not an input" if len(unknown) == 1 else "are not inputs"
            raise FormulaError(
                f"the formula uses {', '.join(map(repr, unknown))}, which {which} of {name}({', '.join(inputs)}): "
                f"add {'it' if len(unknown) == 1 else 'them'} to the inputs, or write a number"
            )
        spec = formula_spec(body.strip(), inputs=inputs, class_name=name)
    except CustomgradError as error:
        raise type(error)(f"{quoted}: {error}") from None
    return register_generated(name, spec)


def define_all(definitions: list[str], files: list[str]) -> list[RegisteredFunction]:
    """Register the definitions of each of ``files`` (one a line; blank lines and ``#`` comments
    skipped), then ``definitions``, in order: a definition may call those before it."""
    entries = []
    for file in files:
        try:
            lines = Path(file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not a text file"
            raise DataError(f"--defines {file!r}: cannot read it ({reason})") from None
        for number, line in enumerate(lines, start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                entries.append(define(line.strip(), where=f"--defines {file}:{number}"))
    entries.extend(define(text) for text in definitions)
    return entries
