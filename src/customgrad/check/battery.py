"""The battery: the table of named checks, run each under a time limit, gather a `CheckReport`.

Each check is independent: one that crashes, fails or hangs never stops the others. Checks that
need a working forward and backward are skipped (saying why) when ``runs`` fails; when only the
backward fails, those with a forward-only part run that part on a `Subject` marked ``forward_only``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from . import gradients, hygiene, layouts, lint, precision, transforms
from .crash import crash_reason
from .report import CheckReport, CheckResult
from .runners import open_runner, run_check
from .subject import Subject


@dataclass(frozen=True)
class Check:
    """One named check: what it verifies, the function that runs it, its time limit, and whether it
    has a part that needs only the forward (run alone when the backward raises)."""

    name: str
    summary: str
    run: Callable[[Subject], CheckResult]
    time_limit: float = 60.0
    needs_backward: bool = True
    forward_only: bool = False
    #: Whether it calls the Function at all (lint only reads its source).
    calls_function: bool = True


#: The checks, in the order they run and are reported.
CHECKS: tuple[Check, ...] = (
    Check("runs", "forward and backward run", gradients.check_runs, needs_backward=False),
    Check(
        "arity",
        "one gradient per input; shapes, dtypes, devices fit",
        gradients.check_arity,
        needs_backward=False,
    ),
    Check("first_order", "gradients match finite differences", gradients.check_first_order),
    Check("linearity", "linear in grad_output; zero and undefined grad_output", gradients.check_linearity),
    Check("second_order", "double backward (gradgradcheck)", gradients.check_second_order),
    Check(
        "layouts",
        "non-contiguous, broadcast, batched, sizes 0 and 1",
        layouts.check_layouts,
        forward_only=True,
    ),
    Check("precision", "float64 accuracy; float32/float16/bfloat16 vs float64", precision.check_precision),
    Check(
        "hygiene",
        "inputs unmodified, save_for_backward, no leaks",
        hygiene.check_hygiene,
        forward_only=True,
    ),
    Check("torch_func", "vmap, grad, jacrev, jvp", transforms.check_torch_func, forward_only=True),
    Check(
        "compile",
        "torch.compile(fullgraph=True) vs eager",
        transforms.check_compile,
        time_limit=300.0,
        forward_only=True,
    ),
    Check(
        "lint",
        "static analysis of forward/backward source",
        lint.check_lint,
        needs_backward=False,
        calls_function=False,
    ),
    Check("determinism", "two runs give identical results", hygiene.check_determinism, forward_only=True),
)

CHECK_NAMES = tuple(check.name for check in CHECKS)

#: Default time limit in seconds of each call of the Function in a check (``Check.time_limit`` overrides it).
DEFAULT_TIME_LIMIT = 60.0
#: The largest time limit accepted (about 31 years): inf overflows the waits of select and threading.
MAX_TIME_LIMIT = 1e9


def check(
    fn: Any,
    *example_inputs: Any,
    custom_gradient: Any = None,
    checks: Any = None,
    compile: bool | str = True,  # noqa: A002 - the documented keyword
    timeout: float | None = None,
    isolation: str = "auto",
) -> CheckReport:
    """Run the battery of checks on a custom autograd Function and report every finding.

    Parameters
    ----------
    fn : autograd.Function subclass or callable
        A hand-written Function, one made by `customgrad.function`, or a callable built from them
        (``Cls.apply``, a lambda calling it).
    *example_inputs
        Example arguments of forward: tensors (their shapes and kinds) and non-tensor values. The
        battery derives its own variants (float64 copies, other random points, non-contiguous,
        batched, other dtypes).
    custom_gradient : dict or callable, optional
        The intended gradient when the backward is deliberately not the derivative: ``{"x": "2*x"}``
        (a formula, number or callable of the inputs per input name) or ``vjp(inputs, grad_outputs)``.
        Functions from ``customgrad.function(..., grads=...)`` carry it already.
    checks : iterable of str, optional
        Names of the checks to run (default all): {"runs", "arity", "first_order", "linearity",
        "second_order", "layouts", "precision", "hygiene", "torch_func", "compile", "lint",
        "determinism"}.
    compile : bool or str
        Run the torch.compile check: True uses the ``"aot_eager"`` backend (traces forward and
        backward with fullgraph=True, fast); a string names the backend (``"inductor"``); False skips.
    timeout : float, optional
        Time limit in seconds of each part of the Function (a forward, a backward), counted from when it
        starts (default 60, and 300 for ``compile``; at most 1e9), and so has the checker's own work between the parts.
        A part that runs past it is stopped and reported; the checks that need it are skipped.
    isolation : {"auto", "process", "thread"}
        Where the Function runs. "process": in a worker process that re-imports it by reference (its
        module and name), so that a hang, ``sys.exit``/``os._exit`` or a crash (segmentation fault) ends
        only the worker and becomes a FAILED result. "thread": in this process, each check in a thread
        with a time limit (a crash then ends this process). "auto" (default): a worker process when the
        Function can be imported by reference, else (defined in ``__main__``, a notebook or inside a
        function; a lambda) in this process. The report says which ran.

    Returns
    -------
    CheckReport
        ``.ok``, ``.results`` (one `CheckResult` per check), ``.isolation``, ``str(report)`` and
        ``.to_json()``.
    """
    selected = _select(checks)
    _check_compile_option(compile)
    default_limit = checked_timeout(timeout)
    subject = Subject(fn, tuple(example_inputs), custom_gradient)
    subject.compile_backend = ("aot_eager" if compile is True else compile) if compile else None
    runner = open_runner(subject, isolation, default_limit)
    try:
        results = _run_checks(subject, runner, selected, timeout)
    finally:
        runner.close()
    return CheckReport(subject.name, subject.describe_inputs(), results, isolation=runner.description)


def _run_checks(subject: Subject, runner: Any, selected: set[str], timeout: float | None) -> list[CheckResult]:
    """Every selected check (and 'runs'), skipping at once those that need a part known to raise, hang or
    crash; the forward-only part of a check runs when only the backward is broken."""
    forward_subject = copy.copy(subject)
    forward_subject.forward_only = True
    results: list[CheckResult] = []
    broken: str | None = None  # "forward" or "backward": the part that raises, hangs or crashes
    reason = ""  # why the checks that need it do not run
    hazard = False  # whether it hangs or crashes (then even the checks that catch its errors skip)
    for item in CHECKS:
        if item.name not in selected and item.name != "runs":
            continue
        forward_only = broken == "backward" and item.forward_only
        blocked = item.needs_backward or (hazard and item.calls_function)
        if broken == "forward" and hazard and item.calls_function:
            result = CheckResult(item.name, "skipped", f"not run: {reason}")
        elif broken is not None and blocked and not forward_only:
            result = CheckResult(item.name, "skipped", f"not run: {reason}")
        elif item.name == "compile" and subject.compile_backend is None:
            result = CheckResult(item.name, "skipped", "torch.compile check disabled (compile=False / --no-compile)")
        else:
            limit = timeout if timeout is not None else item.time_limit
            result = _run(runner, item, forward_subject if forward_only else subject, limit)
            if forward_only:
                result.message = f"forward only: {reason}; {result.message}"
                result.details["forward_only"] = True
        crash = crash_reason(result)
        if crash is not None and crash[0] != "double backward" and broken != "forward":
            broken = "forward" if crash[0] in ("forward", "setup_context") else "backward"
            reason, hazard = crash[1], True
        elif item.name == "runs" and result.status == "failed" and broken is None:
            broken = result.details.get("stage", "forward")
            reason = f"{broken} does not run (see 'runs')"
        if item.name in selected:
            results.append(result)
    return results


def _run(runner: Any, item: Check, subject: Subject, limit: float) -> CheckResult:
    if not item.calls_function:
        return run_check(item, subject)  # static: nothing of the user's runs
    return runner.run(item, subject, limit)


def checked_timeout(timeout: Any, name: str = "timeout") -> float:
    """``timeout`` in seconds (`DEFAULT_TIME_LIMIT` for None), or a `UsageError` naming ``name``."""
    if timeout is None:
        return DEFAULT_TIME_LIMIT
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIME_LIMIT:
        raise UsageError(
            f"{name} must be a positive number of seconds (per call of the Function), at most {MAX_TIME_LIMIT:g}, "
            f"got {timeout!r}"
        )
    return float(timeout)


def _check_compile_option(compile: Any) -> None:  # noqa: A002 - the documented keyword
    if isinstance(compile, bool):
        return
    if not isinstance(compile, str):
        raise UsageError(f"compile must be True, False or a backend name such as 'inductor', got {compile!r}")
    from torch._dynamo import list_backends

    backends = sorted(set(list_backends(exclude_tags=())))
    if compile not in backends:
        raise UsageError(f"compile={compile!r} is not a torch.compile backend: choose one of {', '.join(backends)}")


def _select(checks: Any) -> set[str]:
    if checks is None:
        return set(CHECK_NAMES)
    names = [checks] if isinstance(checks, str) else list(checks)
    if not names:
        raise UsageError(f"checks is empty: name at least one of {', '.join(CHECK_NAMES)} (or leave it out for all)")
    unknown = [name for name in names if name not in CHECK_NAMES]
    if unknown:
        raise UsageError(f"unknown check(s) {', '.join(map(repr, unknown))}: choose from {', '.join(CHECK_NAMES)}")
    return set(names)
