"""The disk-cache key of a formula's text, without SymPy: what the formula computes, not how it is spelt.

Used by every cache of generated code (formula models in `fit.formula_model`, formula Functions in
`function_cache`).
"""

from __future__ import annotations

import ast
import json
import sys


def formula_key(text: str) -> str | None:
    """key(text) = syntax tree + definitions of the called functions: the disk-cache key of ``text``.

    The tree (spacing and redundant parentheses do not count) and the definitions of the registered
    functions it calls (formulas and partials, not just names); None when it calls a hand-written
    Function, whose code no key can describe.

    Needs no SymPy: built-ins not generated yet are described by their formulas.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # parse_formula reports it
    called = sorted({n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)})
    parts = [ast.dump(tree)]
    for name in called:
        definition = _definition(name, set())
        if definition is None:
            return None
        parts.append(definition)
    return json.dumps(parts)


def _definition(name: str, seen: set[str]) -> str | None:
    """What registered function ``name`` computes, as text ("" when it is not registered)."""
    from . import library

    registry = sys.modules.get("customgrad.registry")  # not imported yet: only built-ins can be called
    entry = registry.REGISTRY.get(name) if registry is not None else None
    if entry is None or library.builtin_entry(name) is entry:
        return f"{name} = built-in {library.GENERATED[name]!r}" if name in library.GENERATED else ""
    if entry.expr is None or entry.partials is None:
        return None
    import sympy  # loaded already: the entry was made with it

    seen.add(name)
    text = f"{name}{entry.input_symbols} = {entry.expr}; partials {entry.partials}"
    inner = sorted({getattr(type(e), "_customgrad_name", "") for e in entry.expr.atoms(sympy.Function)})
    for other in inner:
        if other and other not in seen:
            definition = _definition(other, seen)
            if definition is None:
                return None
            text += "; " + definition
    return text
