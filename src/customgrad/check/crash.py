"""A Function that hangs, exits or crashes the process, as a `CheckResult` naming the part (forward,
setup_context, backward, double backward), the signal or exit code, and the user's file:line."""

from __future__ import annotations

import signal

from .report import CheckResult

#: What a signal that ends a worker usually means, for the report.
SIGNAL_MEANINGS = {
    "SIGSEGV": "segmentation fault: an invalid memory access, e.g. a null or dangling pointer or an "
    "out-of-bounds index in C/C++/CUDA code",
    "SIGBUS": "bus error: a misaligned or unmapped memory access in native code",
    "SIGFPE": "floating-point exception: e.g. an integer division by zero in native code",
    "SIGILL": "illegal instruction: native code built for another CPU, or a corrupted stack",
    "SIGABRT": "aborted: a failed assertion or std::terminate in native code",
    "SIGKILL": "killed from outside, often by the out-of-memory killer",
}

#: How the message says what happened, per kind of crash.
VERBS = {"timeout": "hangs", "signal": "crashes", "exit": "exits"}


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11 (and so on); ``signal N`` for numbers without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def crash_result(
    name: str, kind: str, part: str, location: str | None, *, limit: float = 0.0, code: int | str | None = None
) -> CheckResult:
    """The result of check ``name`` when ``part`` of the Function hung (``kind="timeout"``), ended the process
    with a signal (``"signal"``, ``code`` its name) or exited (``"exit"``, ``code`` the exit status)."""
    at = f" (at {location})" if location else ""
    details = {"crash": {"kind": kind, "part": part, "code": code, "location": location}, "stage": part}
    if part == "check":
        if kind == "timeout":
            return CheckResult(
                name,
                "skipped",
                f"the check took longer than its time limit of {limit:g} s in the checker's own code, not in the "
                "Function (its forward and backward return): use smaller example inputs (--shapes) or a longer "
                "time limit (--timeout / timeout=)",
                details,
            )
        part = "the Function or the checker"
    if kind == "timeout":
        message = (
            f"{part} did not return within {limit:g} s{at}: an endless loop, a deadlock or a blocking call? "
            "(the work was stopped; raise the limit with --timeout / timeout= if it is only slow)"
        )
    elif kind == "signal":
        meaning = SIGNAL_MEANINGS.get(str(code), "")
        message = f"{part} crashed the process with {code}{f' ({meaning})' if meaning else ''}{at}"
    else:
        message = (
            f"{part} exited the process with exit code {code!r}{at}: a Function must raise an exception, "
            "never call sys.exit() or os._exit()"
        )
    return CheckResult(name, "failed", message, details)


def crash_reason(result: CheckResult) -> tuple[str, str] | None:
    """(part, "not run: ..." reason) when ``result`` says a part of the Function hangs or crashes."""
    crash = result.details.get("crash")
    if not crash or crash["part"] not in ("forward", "setup_context", "backward", "double backward"):
        return None
    verb = VERBS[crash["kind"]]
    code = f" ({crash['code']})" if crash["kind"] == "signal" else ""
    return crash["part"], f"{crash['part']} {verb}{code} (see '{result.name}')"
