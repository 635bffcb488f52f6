"""``customgrad ...`` through its entry point `customgrad.cli.main`, in this process: exit code, stdout, stderr.

A fresh interpreter costs every call a torch import (2 to 5 s on a loaded 2-core machine), most of a
CLI test's time. The tests about the process itself (start-up imports, the environment torchrun sets,
``--debug`` tracebacks, ``python -m customgrad``) start one with `run_in_new_process`.
"""

import contextlib
import io
import subprocess
import sys
import warnings

from customgrad.cli import main


def run_customgrad(*arguments, cwd=None) -> subprocess.CompletedProcess:
    """Run ``customgrad *arguments`` as `main` does for the console script, output captured."""
    argv = [str(argument) for argument in arguments]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(contextlib.redirect_stdout(stdout))
        stack.enter_context(contextlib.redirect_stderr(stderr))
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("default")  # as in a fresh interpreter: warnings are printed, not raised
        try:
            code = main(argv)
        except SystemExit as exit:  # --help
            code = exit.code if isinstance(exit.code, int) else 0
    for warning in caught:
        stderr.write(warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno))
    return subprocess.CompletedProcess(["customgrad", *argv], code, stdout.getvalue(), stderr.getvalue())


def run_in_new_process(*arguments, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run ``python -m customgrad *arguments`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "customgrad", *map(str, arguments)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
