"""The worker process that runs the user's Function for the battery: ``python -m customgrad.check.worker``.

It re-imports the Function by reference, then runs the checks it is asked for, one message each, and
answers with their results. A crash (signal), an exit or a hang ends only this process: the battery
kills it and reports what it was doing. `faulthandler` writes the stack to a file on a fatal signal, on
``SIGUSR1`` (sent just before a hung worker is killed) and on ``os._exit``, so that the report can name
the part of the Function and its line.

Messages are pickles with an 8-byte length, over two pipes whose descriptors are given on the command
line. Imports stay light until the setup message arrives.
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import pickle
import signal
import sys
from typing import Any

from .pipes import receive, send


def _record_stacks(dump_path: str) -> None:
    """Stacks to ``dump_path`` on fatal signals, on SIGUSR1, and before ``os._exit`` ends the process."""
    dump = open(dump_path, "w")  # noqa: SIM115 - open for the life of the process
    faulthandler.enable(file=dump, all_threads=True)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
    real_exit = os._exit

    def exit_after_dump(code: int) -> None:
        faulthandler.dump_traceback(file=dump, all_threads=False)
        dump.flush()
        real_exit(code)

    os._exit = exit_after_dump


def _load(reference: tuple[str, str, str]) -> Any:
    """The object a reference names: ("file", path, qualname) or ("module", name, qualname), then an
    optional attribute (``apply``)."""
    kind, location, qualname = reference
    names = qualname.split(".")
    if kind == "file":
        from .target import load_target

        value = load_target(f"{location}:{names[0]}")
    else:
        import importlib

        value = getattr(importlib.import_module(location), names[0])
    for name in names[1:]:
        value = getattr(value, name)
    return value


def _setup(message: dict[str, Any], marker_path: str) -> tuple[Any, Any]:
    import copy

    from .parts import MARKER_SIZE, PHASE
    from .subject import Subject

    with open(marker_path, "r+b") as marker:
        PHASE.attach(mmap.mmap(marker.fileno(), MARKER_SIZE))
    from .runners import warm_up

    warm_up()  # torch's lazy imports, before "ready": not in the time limit of the Function's parts
    subject = Subject(_load(message["reference"]), tuple(message["inputs"]), message["custom_gradient"])
    subject.compile_backend = message["compile_backend"]
    forward_subject = copy.copy(subject)
    forward_subject.forward_only = True
    return subject, forward_subject


def main(argv: list[str]) -> int:
    read_fd, write_fd = int(argv[0]), int(argv[1])
    dump_path, marker_path = argv[2], argv[3]
    os.dup2(2, 1)  # the Function's prints go to standard error: standard output is the battery's report
    _record_stacks(dump_path)
    # Ctrl-C reaches the whole process group: the battery (the parent) handles it and ends this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.path[:] = receive(read_fd)
    try:
        subject, forward_subject = _setup(receive(read_fd), marker_path)
    except BaseException as error:  # noqa: BLE001 - told to the battery, which runs in-process instead
        send(write_fd, ("error", f"{type(error).__name__}: {error}"))
        return 1
    from .battery import CHECKS
    from .runners import run_check

    checks = {item.name: item for item in CHECKS}
    send(write_fd, ("ready", None))
    while True:
        try:
            message = receive(read_fd)
        except EOFError:
            return 0
        if message[0] == "quit":
            return 0
        _, name, forward_only, clone_inputs = message
        subject.clone_inputs = forward_subject.clone_inputs = clone_inputs
        result = run_check(checks[name], forward_subject if forward_only else subject)
        try:
            send(write_fd, ("result", result, subject.clone_inputs or forward_subject.clone_inputs))
        except (pickle.PicklingError, TypeError, AttributeError):
            result.details = {key: repr(value) for key, value in result.details.items()}
            send(write_fd, ("result", result, subject.clone_inputs or forward_subject.clone_inputs))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
