"""The battery's side of a worker process: find a reference by which the worker can re-import the Function,
start it, run one check in it under a time limit, and kill it when the Function hangs.

See `worker` for the process's own side.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from .parts import MARKER_SIZE, PHASES, PhaseMarker
from .pipes import receive, send, send_pickled

#: Module-name prefix of the files that `target.load_target` runs: re-imported from their file.
FILE_MODULE_PREFIX = "_customgrad_target_"
#: Seconds a worker may take to start (import torch and the Function) beyond the checks' own time limit.
STARTUP_SECONDS = 120.0
#: Seconds to wait for a hung worker's stack dump before killing it (a loaded machine may take a while
#: to schedule it), and for how long the dump's size must stay the same to count as complete.
DUMP_SECONDS = 5.0
DUMP_QUIET_SECONDS = 0.3


def reference_of(fn: Any) -> tuple[tuple[str, str, str] | None, str]:
    """``(("module" | "file", module name or path, qualified name), text)`` by which a worker re-imports
    ``fn`` (a Function class, its ``apply``, or a module-level callable), or ``(None, why not)``."""
    target, suffix = fn, ""
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type) and getattr(fn, "__name__", "") == "apply":
        target, suffix = owner, ".apply"
    module_name = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not module_name or not isinstance(qualname, str) or "<" in qualname:
        return None, "it is a lambda or defined inside a function, so a worker process cannot import it"
    if module_name in ("__main__", "__mp_main__"):
        return None, "it is defined in __main__ (a script or a notebook), so a worker process cannot import it"
    names = [module_name] + [name for name, module in list(sys.modules.items()) if _holds(module, qualname, target)]
    for name in names:
        module = sys.modules.get(name)
        if name in ("__main__", "__mp_main__") or module is None or _resolve(module, qualname) is not target:
            continue
        if name.startswith(FILE_MODULE_PREFIX):
            path = getattr(module, "__file__", None)
            if path:
                return ("file", path, qualname + suffix), f"{path}:{qualname}"
            continue
        return ("module", name, qualname + suffix), f"{name}:{qualname}"
    return None, f"{module_name}.{qualname} cannot be found by its module and name, so a worker cannot import it"


def _holds(module: Any, qualname: str, target: Any) -> bool:
    try:
        return "." not in qualname and vars(module).get(qualname) is target
    except TypeError:
        return False


def _resolve(module: Any, qualname: str) -> Any:
    value = module
    for name in qualname.split("."):
        value = getattr(value, name, None)
    return value


class WorkerUnavailable(RuntimeError):
    """The worker process could not start or could not load the Function."""


class WorkerProcess:
    """One worker process running checks on the Function named in ``setup`` (see `worker.main`)."""

    def __init__(self, setup: dict[str, Any]):
        self.setup = pickle.dumps(setup, protocol=pickle.HIGHEST_PROTOCOL)  # fails early if unpicklable
        self.process: subprocess.Popen | None = None

    def start(self, limit: float) -> None:
        self.directory = tempfile.mkdtemp(prefix="customgrad-check-")
        self.dump_path = os.path.join(self.directory, "stacks.txt")
        self.marker_path = os.path.join(self.directory, "phase")
        with open(self.marker_path, "wb") as marker:
            marker.write(bytes(MARKER_SIZE))
        with open(self.marker_path, "r+b") as marker:
            self.marker = PhaseMarker()
            self.marker.attach(mmap.mmap(marker.fileno(), MARKER_SIZE))
        child_read, self.write_fd = os.pipe()
        self.read_fd, child_write = os.pipe()
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, "-m", "customgrad.check.worker", str(child_read), str(child_write)]
        self.process = subprocess.Popen(
            [*command, self.dump_path, self.marker_path],
            pass_fds=(child_read, child_write),
            stdin=subprocess.DEVNULL,
            env=environment,
        )
        os.close(child_read)
        os.close(child_write)
        try:
            send(self.write_fd, list(sys.path))
            send_pickled(self.write_fd, self.setup)
            reply = self._wait(limit + STARTUP_SECONDS)
        except (OSError, EOFError):
            reply = None
        if reply is None or reply[0] != "ready":
            self.close()
            why = reply[1] if reply else "it ended or did not answer while importing torch and the Function"
            raise WorkerUnavailable(f"the worker process could not load the Function: {why}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def run(self, name: str, forward_only: bool, clone_inputs: bool, limit: float) -> tuple:
        """``("result", CheckResult, clone_inputs)``, ``("timeout", dump, phase)`` or ``("died", exit status,
        dump, phase)``; after the last two the process is gone. ``limit`` counts from when the running part
        of the Function started (see `PhaseMarker.deadline`), not from the request: on a loaded machine the
        checker's own work before it must not use up the Function's time."""
        start = time.monotonic()
        try:
            send(self.write_fd, ("run", name, forward_only, clone_inputs))
        except OSError:
            return self._died()
        try:
            reply = self._wait_for_result(start, limit)
        except EOFError:
            return self._died()
        if reply is None:
            return self._kill_hung()
        return reply

    def _wait(self, limit: float) -> Any:
        """The next message, None when none came within ``limit`` seconds; `EOFError` if the worker ended."""
        ready, _, _ = select.select([self.read_fd], [], [], limit)
        return receive(self.read_fd) if ready else None

    def _wait_for_result(self, start: float, limit: float) -> Any:
        """The worker's reply, or None once the part of the Function (or the checker's code) it is in ran
        past its deadline; `EOFError` if the worker ended."""
        while True:
            remaining = self.marker.deadline(start, limit) - time.monotonic()
            if remaining <= 0:
                return None
            # Wake up at least every second: the deadline moves when the worker enters or leaves a part.
            reply = self._wait(min(remaining, 1.0))
            if reply is not None:
                return reply

    def _died(self) -> tuple:
        try:
            status = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        dump, phase = self._read_dump(), self._read_phase()
        self.close()
        return ("died", status, dump, phase)

    def _kill_hung(self) -> tuple:
        if hasattr(signal, "SIGUSR1"):
            self.process.send_signal(signal.SIGUSR1)
            deadline, size, quiet_since = time.monotonic() + DUMP_SECONDS, -1, time.monotonic()
            while time.monotonic() < deadline:
                time.sleep(0.05)
                current = os.path.getsize(self.dump_path)
                if current != size:
                    size, quiet_since = current, time.monotonic()
                elif current and time.monotonic() - quiet_since >= DUMP_QUIET_SECONDS:
                    break
        self.process.kill()
        self.process.wait()
        dump, phase = self._read_dump(), self._read_phase()
        self.close()
        return ("timeout", dump, phase)

    def _read_dump(self) -> str:
        try:
            with open(self.dump_path, errors="replace") as dump:
                return dump.read()
        except OSError:
            return ""

    def _read_phase(self) -> str:
        try:
            with open(self.marker_path, "rb") as marker:
                code = marker.read(1)[0]
        except (OSError, IndexError):
            return ""
        return PHASES[code] if code < len(PHASES) else ""

    def close(self) -> None:
        """Ask the worker to quit, kill it if it does not, and remove its files; idempotent."""
        if self.process is None:
            return
        self.marker.buffer.close()
        if self.process.poll() is None:
            try:
                send(self.write_fd, ("quit",))
                self.process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)
        self.process = None
