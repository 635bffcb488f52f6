"""The disk-cache key of a formula's text, without SymPy: what the formula computes, not how it is spelt.

Used by every cache of generated code (through `function_cache.definition_key`: formula Functions,
and the fit's formula models, which are the definition of ``function(text)``).
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
    parts = [dump_tree(tree)]
    for name in called:
        definition = _definition(name, set())
        if definition is None:
            return None
        parts.append(definition)
    return json.dumps(parts)


class _Text(str):
    """Output of `dump_tree` itself (brackets, field names), not a value of the tree."""


def dump_tree(root: ast.AST) -> str:
    """``Node(field=value, ...)`` of every node, as ``ast.dump`` writes it, built without recursion.

    ``ast.dump`` recurses once per level, and a flat sum of 2,000 terms is a left-nested chain
    2,000 ``BinOp`` deep: RecursionError. Here an explicit stack holds what is left to write.
    """
    parts: list[str] = []
    stack: list = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            parts.append(item)
        elif isinstance(item, ast.AST):
            work: list = [_Text(f"{type(item).__name__}(")]
            for name in item._fields:
                work += [_Text(f"{name}="), getattr(item, name, None), _Text(", ")]
            work.append(_Text(")"))
            stack.extend(reversed(work))
        elif isinstance(item, list):
            work = [_Text("[")]
            for element in item:
                work += [element, _Text(", ")]
            work.append(_Text("]"))
            stack.extend(reversed(work))
        else:
            parts.append(repr(item))
    return "".join(parts)


def _definition(name: str, seen: set[str]) -> str | None:
    """What registered function ``name`` computes, as text ("" when it is not registered)."""
    from .builtin_table import GENERATED

    registry = sys.modules.get("customgrad.registry")  # not imported yet: only built-ins can be called
    entry = registry.REGISTRY.get(name) if registry is not None else None
    if entry is None or registry.builtin_entry(name) is entry:
        return f"{name} = built-in {GENERATED[name]!r}" if name in GENERATED else ""
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
