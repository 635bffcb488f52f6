"""The battery: the table of named checks, run each under a time limit, gather a `CheckReport`.

Each check is independent: one that crashes, fails or hangs never stops the others. Checks that
need a working forward and backward are skipped (saying why) when ``runs`` fails; when only the
backward fails, those with a forward-only part run that part on a `Subject` marked ``forward_only``.
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from . import gradients, hygiene, layouts, lint, precision, transforms
from .report import CheckReport, CheckResult
from .subject import Subject, describe_error


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
    Check("torch_func", "vmap, grad, jacrev", transforms.check_torch_func, forward_only=True),
    Check(
        "compile",
        "torch.compile(fullgraph=True) vs eager",
        transforms.check_compile,
        time_limit=300.0,
        forward_only=True,
    ),
    Check("lint", "static analysis of forward/backward source", lint.check_lint, needs_backward=False),
    Check("determinism", "two runs give identical results", hygiene.check_determinism, forward_only=True),
)

CHECK_NAMES = tuple(check.name for check in CHECKS)

#: How a check run on the forward alone says so, first in its message.
FORWARD_ONLY = "forward only: backward does not run (see 'runs')"


def check(
    fn: Any, *example_inputs: Any, custom_gradient: Any = None, checks: Any = None, compile: bool | str = True
) -> CheckReport:  # noqa: A002 - the documented keyword
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

    Returns
    -------
    CheckReport
        ``.ok``, ``.results`` (one `CheckResult` per check), ``str(report)`` and ``.to_json()``.
    """
    selected = _select(checks)
    _check_compile_option(compile)
    subject = Subject(fn, tuple(example_inputs), custom_gradient)
    subject.compile_backend = ("aot_eager" if compile is True else compile) if compile else None
    forward_subject = copy.copy(subject)
    forward_subject.forward_only = True
    results: list[CheckResult] = []
    broken: str | None = None  # the stage that raised in 'runs': "forward" or "backward"
    for item in CHECKS:
        if item.name not in selected and item.name != "runs":
            continue
        forward_only = broken == "backward" and item.forward_only
        if item.needs_backward and broken is not None and not forward_only:
            result = CheckResult(item.name, "skipped", f"not run: {broken} does not run (see 'runs')")
        elif item.name == "compile" and subject.compile_backend is None:
            result = CheckResult(item.name, "skipped", "torch.compile check disabled (compile=False / --no-compile)")
        elif forward_only:
            result = run_with_time_limit(item, forward_subject)
            result.message = f"{FORWARD_ONLY}; {result.message}"
            result.details["forward_only"] = True
        else:
            result = run_with_time_limit(item, subject)
        if item.name == "runs" and result.status == "failed":
            broken = result.details.get("stage", "forward")
        if item.name in selected:
            results.append(result)
    return CheckReport(subject.name, subject.describe_inputs(), results)


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


def run_with_time_limit(item: Check, subject: Subject) -> CheckResult:
    """Run one check in a worker thread; a crash or a hang becomes a failed result, never an exception."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = item.run(subject)
        except BaseException as error:  # noqa: BLE001 - reported, never propagated
            box["error"] = error

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker = threading.Thread(target=work, name=f"customgrad-check-{item.name}", daemon=True)
        worker.start()
        worker.join(item.time_limit)
    seconds = time.perf_counter() - start
    if worker.is_alive():
        result = CheckResult(
            item.name,
            "failed",
            f"timed out after {item.time_limit:g} s: does forward or backward hang (an endless loop, a blocking call)?",
        )
    elif "error" in box:
        error = box["error"]
        result = CheckResult(
            item.name,
            "failed",
            f"the check could not complete: {describe_error(error)}",
            {"error": type(error).__name__},
        )
    else:
        result = box["result"]
        result.name = item.name
    result.seconds = round(seconds, 3)
    messages = sorted({str(w.message).split("\n")[0] for w in caught})
    if messages:
        result.details.setdefault("python_warnings", messages[:5])
    return result
