"""Static lint of a Function's source (AST): mistakes visible without running it.

Rules (each a row of `RULES`): undefined names in forward/setup_context/backward, the number of
gradients backward returns vs forward's inputs, tensors stored as ctx attributes, in-place operations
on inputs in forward without ``mark_dirty``, and detaching in backward without ``once_differentiable``.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import inspect
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .outcome import failed, passed, skipped, warning
from .report import CheckResult
from .subject import Subject, has_setup_context


@dataclass
class Finding:
    rule: str
    severity: str  # {"failed", "warning"}
    line: int
    message: str


@dataclass
class Source:
    """The parsed class and what the rules need to know about it."""

    cls: type
    path: str
    tree: ast.ClassDef
    methods: dict[str, ast.FunctionDef]
    module_names: set[str]
    tensor_inputs: list[str]
    n_inputs: int
    tensor_flags: list[bool]


def _undefined_names(source: Source) -> list[Finding]:
    findings = []
    known = source.module_names | set(dir(builtins)) | set(source.cls.__dict__) | _closure_names(source.cls)
    for method_name, method in source.methods.items():
        local = {a.arg for a in ast.walk(method.args) if isinstance(a, ast.arg)}
        for node in ast.walk(method):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                local.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                local.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.Lambda)) and node is not method:
                local.update(a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg))
                if isinstance(node, ast.FunctionDef):
                    local.add(node.name)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                local.add(node.name)
        for node in ast.walk(method):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local | known:
                close = difflib.get_close_matches(node.id, sorted(local | source.module_names), n=1)
                hint = f": did you mean {close[0]!r}?" if close else ": define it or fix the spelling"
                findings.append(
                    Finding(
                        "undefined name",
                        "failed",
                        node.lineno,
                        f"undefined name {node.id!r} in {method_name}{hint}",
                    )
                )
    return findings


def _closure_names(cls: type) -> set[str]:
    """Names the methods take from enclosing functions (a class defined inside a factory function)."""
    names = set()
    for value in vars(cls).values():
        function = getattr(value, "__func__", value)
        names.update(getattr(getattr(function, "__code__", None), "co_freevars", ()))
    return names


def _gradient_count(source: Source) -> list[Finding]:
    backward = source.methods.get("backward", source.methods.get("vjp"))
    if backward is None:
        return []
    findings = []
    for node in ast.walk(backward):
        if not isinstance(node, ast.Return) or node.value is None:
            continue
        value = node.value
        if isinstance(value, ast.Tuple) and not any(isinstance(e, ast.Starred) for e in value.elts):
            count = len(value.elts)
            if count > source.n_inputs and all(_is_none(e) for e in value.elts[source.n_inputs :]):
                continue  # extra Nones (one per defaulted argument of forward): the engine drops them
        elif isinstance(value, (ast.BinOp, ast.UnaryOp, ast.Constant)):
            count = 1
        else:
            continue
        if count != source.n_inputs:
            findings.append(
                Finding(
                    "gradient count",
                    "failed",
                    node.lineno,
                    f"backward returns {count} gradient(s) but forward takes {source.n_inputs} "
                    "input(s): return one per input, None for non-tensors",
                )
            )
    return findings


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _ctx_tensor_attributes(source: Source) -> list[Finding]:
    findings = []
    for method_name in ("forward", "setup_context"):
        method = source.methods.get(method_name)
        if method is None:
            continue
        aliases = _input_aliases(method, method_name, source)
        for node in ast.walk(method):
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "ctx"
                    and isinstance(node.value, ast.Name)
                    and node.value.id in aliases
                ):
                    findings.append(
                        Finding(
                            "tensor on ctx",
                            "warning",
                            node.lineno,
                            f"ctx.{target.attr} = {node.value.id} stores a tensor as a ctx attribute: use "
                            f"ctx.save_for_backward({node.value.id}) so in-place changes are detected and "
                            "memory is freed after backward",
                        )
                    )
    return findings


def _input_aliases(method: ast.FunctionDef, method_name: str, source: Source) -> set[str]:
    """Names bound to tensor inputs: forward's parameters, or unpacked from setup_context's ``inputs``."""
    if method_name == "forward":
        return set(source.tensor_inputs)
    aliases = set()
    for node in ast.walk(method):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id == "inputs":
            for target in node.targets:
                if isinstance(target, (ast.Tuple, ast.List)):
                    for index, element in enumerate(target.elts):
                        if isinstance(element, ast.Name) and index < len(source.tensor_flags):
                            if source.tensor_flags[index]:
                                aliases.add(element.id)
    return aliases


def _inplace_on_inputs(source: Source) -> list[Finding]:
    forward = source.methods.get("forward")
    if forward is None or _calls(source, "mark_dirty"):
        return []
    inputs = set(source.tensor_inputs)
    rebound = _first_rebinding(forward)  # x = x.clone(): later in-place work is on the copy
    findings = []
    for node in ast.walk(forward):
        name = None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr.endswith("_")
            and not node.func.attr.startswith("_")
            and isinstance(node.func.value, ast.Name)
        ):
            name, operation = node.func.value.id, f"{node.func.value.id}.{node.func.attr}(...)"
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            name, operation = node.target.id, f"{node.target.id} {_operator(node.op)}= ..."
        if name in inputs and node.lineno <= rebound.get(name, node.lineno):
            findings.append(
                Finding(
                    "in-place on input",
                    "warning",
                    node.lineno,
                    f"forward modifies its input in place ({operation}) without ctx.mark_dirty"
                    f"({name}): work on a copy, or call ctx.mark_dirty({name}) and return it",
                )
            )
    return findings


def _first_rebinding(method: ast.FunctionDef) -> dict[str, int]:
    """name -> the first line where the method assigns the name anew (``x = x.clone()``)."""
    lines: dict[str, int] = {}
    for node in ast.walk(method):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and isinstance(name.ctx, ast.Store):
                        lines[name.id] = min(lines.get(name.id, node.lineno), node.lineno)
    return lines


def _operator(op: ast.operator) -> str:
    return {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}.get(type(op), "?")


def _detach_in_backward(source: Source) -> list[Finding]:
    backward = source.methods.get("backward", source.methods.get("vjp"))
    if backward is None or any("once_differentiable" in ast.unparse(d) for d in backward.decorator_list):
        return []
    findings = []
    for node in ast.walk(backward):
        what = None
        if isinstance(node, ast.Attribute) and node.attr in ("data", "numpy", "detach"):
            what = f".{node.attr}"
        elif isinstance(node, ast.Attribute) and node.attr == "no_grad":
            what = "torch.no_grad()"
        if what:
            findings.append(
                Finding(
                    "detach in backward",
                    "warning",
                    node.lineno,
                    f"backward uses {what}, which leaves the autograd graph: second derivatives "
                    "will be wrong; use differentiable torch operations, or mark backward "
                    "@torch.autograd.function.once_differentiable",
                )
            )
    return findings


def _calls(source: Source, attribute: str) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == attribute for n in ast.walk(source.tree))


#: The lint rules, each a function of the parsed source returning findings.
RULES: tuple[tuple[str, Callable[[Source], list[Finding]]], ...] = (
    ("undefined names", _undefined_names),
    ("gradient count", _gradient_count),
    ("tensors on ctx", _ctx_tensor_attributes),
    ("in-place on inputs", _inplace_on_inputs),
    ("detach in backward", _detach_in_backward),
)


def lint_function(cls: type, example_inputs: tuple, n_inputs: int | None = None) -> list[Finding]:
    """Findings of every rule in `RULES` for a Function class (empty when its source is unavailable)."""
    source = _parse(cls, example_inputs)
    if source is None:
        return []
    if n_inputs is not None:
        source.n_inputs = n_inputs
    findings = []
    for _, rule in RULES:
        findings.extend(rule(source))
    return sorted(findings, key=lambda f: f.line)


def _parse(cls: type, example_inputs: tuple) -> Source | None:
    try:
        lines, first_line = inspect.getsourcelines(cls)
        path = inspect.getsourcefile(cls) or "?"
    except (OSError, TypeError):
        return None
    tree = ast.parse(textwrap.dedent("".join(lines)))
    ast.increment_lineno(tree, first_line - 1)
    class_node = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    methods = {n.name: n for n in class_node.body if isinstance(n, ast.FunctionDef)}
    module = sys.modules.get(cls.__module__)
    module_names = set(vars(module)) if module is not None else set()
    forward = methods.get("forward")
    parameters = [a.arg for a in forward.args.args] if forward else []
    if parameters and not has_setup_context(cls):
        parameters = parameters[1:]
    flags = [isinstance(v, torch.Tensor) for v in example_inputs]
    source = Source(
        cls,
        path,
        class_node,
        methods,
        module_names,
        [p for p, f in zip(parameters, flags, strict=False) if f],
        len(parameters),
        flags,
    )
    return source


def check_lint(subject: Subject) -> CheckResult:
    """Static analysis of the Function's source; failures for certain bugs, warnings for risky patterns."""
    cls = subject.function_class
    if cls is None:
        return skipped("no autograd.Function class found behind the callable; nothing to lint")
    if getattr(cls, "custom_gradient_rules", None) is not None:
        return skipped(
            f"{cls.__name__} is built by customgrad.custom_gradient: it has no ctx code of its own to lint "
            "(what it saves, the gradients' count and shapes and in-place changes are checked when it runs)"
        )
    extra_ctx = subject.ctx_mistake == "extra"  # forward(ctx, x) beside setup_context: 'runs' reports it
    n_inputs = len(subject.all_parameter_names) - extra_ctx if has_setup_context(cls) else len(subject.example_inputs)
    findings = lint_function(cls, subject.example_inputs, n_inputs)
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        path = None
    if path is None and not findings:
        return skipped(f"the source of {cls.__name__} is not available (generated, or defined interactively)")
    where = _short(path)
    details = {"findings": [vars(f) for f in findings]}
    messages = [f"{where}:{f.line}: {f.message}" for f in findings]
    if any(f.severity == "failed" for f in findings):
        return failed("; ".join(messages), **details)
    if findings:
        return warning("; ".join(messages), **details)
    return passed(f"no findings in {cls.__name__}'s source ({len(RULES)} rules)", **details)


def _short(path: str | None) -> str:
    import os

    if path is None:
        return "?"
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else path
