"""Where the battery runs the user's Function: in a worker process it can kill (`ProcessRunner`), or, for
Functions a worker cannot import (defined in ``__main__``, a notebook, inside a function), in this process
under a thread's time limit (`ThreadRunner`). Either way a hang, an exit or a crash becomes a result."""

from __future__ import annotations

import ctypes
import sys
import threading
import time
import warnings
from typing import Any

import torch

from ..errors import UsageError
from .crash import crash_result, signal_name
from .isolation import WorkerProcess, WorkerUnavailable, reference_of
from .parts import (
    PHASE,
    frames_of_dump,
    frames_of_live_frame,
    frames_of_traceback,
    is_user_frame,
    locate,
)
from .report import CheckResult
from .subject import Subject, describe_error

#: How the battery may run the Function.
ISOLATION_MODES = ("auto", "process", "thread")


def run_check(item: Any, subject: Subject) -> CheckResult:
    """Run one check here and now; an exception, or an exit, becomes a result (never propagates)."""
    PHASE.restore(0)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = item.run(subject)
        except BaseException as error:  # noqa: BLE001 - reported, never propagated
            result = error_result(item.name, subject, error)
    result.name = item.name
    result.seconds = round(time.perf_counter() - start, 3)
    messages = sorted({str(w.message).split("\n")[0] for w in caught})
    if messages:
        result.details.setdefault("python_warnings", messages[:5])
    return result


class _Square(torch.autograd.Function):
    """f(x) = x^2: a Function of customgrad's own for `warm_up`."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return 2 * x * grad_output


def warm_up() -> None:
    """Run a Function's forward, backward and double backward once, outside every time limit.

    torch imports modules on first use (``torch.autograd.grad`` with ``grad_outputs`` imports SymPy
    through ``torch.fx``: seconds on a loaded machine); in the user's first backward that time counted
    against its limit and the stack showed torch's import, so a working backward was reported as slow.
    """
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(_Square.apply(x), x, torch.ones_like(x), create_graph=True)
    torch.autograd.grad(gradient, x, torch.ones_like(x), allow_unused=True)


def error_result(name: str, subject: Subject, error: BaseException) -> CheckResult:
    """An exception that escaped a check: the Function's (it exits, or raised in its code) or the checker's."""
    frames = frames_of_traceback(error)
    if isinstance(error, SystemExit):
        part, location = locate(frames, subject.function_class, subject.fn, PHASE.phase)
        return crash_result(name, "exit", "forward" if part == "check" else part, location, code=error.code)
    if any(is_user_frame(frame) or frame.filename.startswith("<customgrad") for frame in frames):
        return CheckResult(
            name, "failed", f"the check could not complete: {describe_error(error)}", {"error": type(error).__name__}
        )
    innermost = frames[0] if frames else None
    where = f" at {innermost.filename}:{innermost.lineno}" if innermost else ""
    return CheckResult(
        name,
        "skipped",
        f"the checker itself failed, not the Function (a bug in customgrad; please report it): "
        f"{type(error).__name__}: {' '.join(str(error).split())}{where}",
        {"internal_error": type(error).__name__},
    )


class _Abandoned(BaseException):
    """Raised asynchronously in a check's thread that ran past its time limit, to stop it."""


class ThreadRunner:
    """Runs each check in a thread of this process, with a time limit; cannot survive a crash."""

    def __init__(self, subject: Subject, why: str):
        self.subject = subject
        self.description = f"in this process with a thread time limit ({why})"
        warm_up()

    def run(self, item: Any, subject: Subject, limit: float) -> CheckResult:
        box: dict[str, CheckResult] = {}
        worker = threading.Thread(target=lambda: box.setdefault("result", run_check(item, subject)), daemon=True)
        worker.name = f"customgrad-check-{item.name}"
        start = time.perf_counter()
        begun = time.monotonic()
        worker.start()
        while worker.is_alive():
            # The limit counts from when the running part of the Function started (`PhaseMarker.deadline`).
            remaining = PHASE.deadline(begun, limit) - time.monotonic()
            if remaining <= 0:
                break
            worker.join(min(remaining, 1.0))
        if "result" in box:
            return box["result"]
        frame = sys._current_frames().get(worker.ident)
        frames = frames_of_live_frame(frame) if frame is not None else []
        part, location = locate(frames, subject.function_class, subject.fn, PHASE.phase)
        result = crash_result(item.name, "timeout", part, location, limit=limit)
        result.details["thread_stopped"] = _stop(worker)
        if not result.details["thread_stopped"]:
            result.message += "; its thread is blocked in native code and keeps running in the background"
        result.seconds = round(time.perf_counter() - start, 3)
        return result

    def close(self) -> None:
        pass


def _stop(thread: threading.Thread) -> bool:
    """Raise `_Abandoned` in a thread (works while it runs Python code); whether it ended within a second."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned))
    thread.join(1.0)
    return not thread.is_alive()


class ProcessRunner:
    """Runs the checks in a worker process that re-imports the Function; a new one after a crash."""

    def __init__(self, subject: Subject, reference: tuple[str, str, str], text: str):
        self.subject = subject
        self.clone_inputs = False
        self.worker = WorkerProcess(
            {
                "reference": reference,
                "inputs": list(subject.example_inputs),
                "custom_gradient": subject.custom_gradient,
                "compile_backend": subject.compile_backend,
            }
        )
        self.description = f"in a worker process ({text} re-imported there)"

    def run(self, item: Any, subject: Subject, limit: float) -> CheckResult:
        start = time.perf_counter()
        if not self.worker.alive:
            try:
                self.worker.start(limit)
            except WorkerUnavailable as error:
                return CheckResult(item.name, "skipped", f"not run: {error}")
        reply = self.worker.run(item.name, subject.forward_only, self.clone_inputs, limit)
        if reply[0] == "result":
            _, result, self.clone_inputs = reply
            return result
        if reply[0] == "timeout":
            _, dump, phase = reply
            kind, code = "timeout", None
        else:
            _, status, dump, phase = reply
            kind, code = ("signal", signal_name(-status)) if status < 0 else ("exit", status)
        frames = frames_of_dump(dump, subject.function_class, subject.fn)
        part, location = locate(frames, subject.function_class, subject.fn, phase)
        if kind != "timeout" and part == "check":
            part = phase or "forward"
        result = crash_result(item.name, kind, part, location, limit=limit, code=code)
        result.seconds = round(time.perf_counter() - start, 3)
        return result

    def close(self) -> None:
        self.worker.close()


def open_runner(subject: Subject, isolation: str, limit: float) -> ThreadRunner | ProcessRunner:
    """A `ProcessRunner` when the Function can be re-imported by reference (``isolation`` "auto" or
    "process"), else a `ThreadRunner` ("auto" says why in its description; "process" raises)."""
    if isolation not in ISOLATION_MODES:
        raise UsageError(f"isolation must be one of {', '.join(map(repr, ISOLATION_MODES))}, got {isolation!r}")
    if isolation == "thread":
        return ThreadRunner(subject, "isolation='thread'")
    reference, text = reference_of(subject.fn)
    why = text
    if reference is not None:
        try:
            runner = ProcessRunner(subject, reference, text)
            runner.worker.start(limit)
            return runner
        except WorkerUnavailable as error:
            why = str(error)
        except Exception as error:  # noqa: BLE001 - e.g. inputs or custom_gradient that cannot be pickled
            why = f"its inputs or custom_gradient cannot be sent to a worker process ({type(error).__name__}: {error})"
    if isolation == "process":
        raise UsageError(f"isolation='process': cannot run {subject.name} in a worker process: {why}")
    return ThreadRunner(subject, why)
