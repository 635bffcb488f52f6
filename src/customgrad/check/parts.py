"""Which part of a Function a stack is in (forward, setup_context, backward, double backward), and the
user's ``file:line`` there: the words of a report when a Function hangs, exits or crashes the process.

A stack is a list of `Frame` (innermost first), read from a traceback, from a live thread, or from the
text that `faulthandler` writes when a worker process crashes or is asked to dump before it is killed.
The battery also keeps a `PHASE` marker (what it asked the Function to do last) for the cases without a
stack, such as ``os._exit`` called from C, and to tell a backward from a double backward.
"""

from __future__ import annotations

import importlib.util
import inspect
import linecache
import os
import re
import struct
import sysconfig
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_CUSTOMGRAD_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH_SPEC = importlib.util.find_spec("torch")
_LIBRARY_DIRS = tuple(
    {os.path.abspath(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib")}
    | ({os.path.dirname(os.path.abspath(_TORCH_SPEC.origin))} if _TORCH_SPEC and _TORCH_SPEC.origin else set())
)

#: Methods of an autograd.Function, and the part of it a frame in them is in.
PART_OF_METHOD = {
    "setup_context": "setup_context",
    "forward": "forward",
    "backward": "backward",
    "jvp": "jvp",
    "vmap": "vmap",
}

#: The battery's phases, in the order of their codes in the shared marker (0: none).
PHASES = ("", "forward", "backward", "double backward")

#: How a faulthandler dump names a frame: ``  File "path", line 12 in name``.
_DUMP_FRAME = re.compile(r'^\s*File "(?P<file>.+)", line (?P<line>\d+) in (?P<name>\S+)')


@dataclass(frozen=True)
class Frame:
    """One frame of a stack: file, line and function name."""

    filename: str
    lineno: int
    name: str


#: Bytes of the shared marker: the phase's code, padding, then the ``time.monotonic()`` of its last change.
MARKER_SIZE = 16


class PhaseMarker:
    """What the battery asked the Function to do last, and since when: 16 bytes, shared with the parent
    process when the battery runs in a worker (`attach`), so that it can still be read after the worker
    died, and so that a time limit counts from when the part started (`deadline`)."""

    def __init__(self) -> None:
        self.buffer: Any = bytearray(MARKER_SIZE)

    def attach(self, buffer: Any) -> None:
        self.buffer = buffer

    def set(self, phase: str) -> int:
        """Enter ``phase``; returns the previous code for `restore` (not restored when an error unwinds,
        so that after an exception the marker still says where it was raised)."""
        previous = self.buffer[0]
        self._enter(PHASES.index(phase))
        return previous

    def restore(self, code: int) -> None:
        self._enter(code)

    def _enter(self, code: int) -> None:
        struct.pack_into("d", self.buffer, 8, time.monotonic())
        self.buffer[0] = code

    @property
    def phase(self) -> str:
        return PHASES[self.buffer[0]] if self.buffer[0] < len(PHASES) else ""

    def deadline(self, start: float, limit: float) -> float:
        """When the work begun at ``start`` (``time.monotonic()``) is out of time: ``limit`` seconds after
        the current part of the Function started, or after the checker's own code last resumed (the end
        of the last part), so that many calls of the Function in one check do not add up."""
        return max(start, struct.unpack_from("d", self.buffer, 8)[0]) + limit


PHASE = PhaseMarker()


def frames_of_traceback(error: BaseException) -> list[Frame]:
    """The frames of an exception's traceback, innermost first."""
    tb, frames = error.__traceback__, []
    while tb is not None:
        frames.append(Frame(tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    return frames[::-1]


def frames_of_live_frame(frame: Any) -> list[Frame]:
    """The stack of a running thread from its current frame (``sys._current_frames()``), innermost first."""
    frames = []
    while frame is not None:
        frames.append(Frame(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return frames


def frames_of_dump(text: str, function_class: type | None, fn: Any = None) -> list[Frame]:
    """The stack in a faulthandler dump: of the thread that is in the Function, else of the current one."""
    stacks: list[list[Frame]] = []
    for line in text.splitlines():
        if line.startswith(("Current thread", "Thread ", "Stack (most recent")):
            stacks.append([])
            continue
        match = _DUMP_FRAME.match(line)
        if match and stacks:
            stacks[-1].append(Frame(match["file"], int(match["line"]), match["name"]))
    for stack in stacks:
        if part_of(stack, function_class, fn) is not None:
            return stack
    return next((stack for stack in stacks if stack), [])


def _code_of(method: Any) -> Any:
    return getattr(inspect.unwrap(method), "__code__", None) if callable(method) else None


def _span(code: Any) -> tuple[str, str, int, int]:
    lines = [line for _, _, line in code.co_lines() if line is not None] or [code.co_firstlineno]
    return os.path.abspath(code.co_filename), code.co_name, code.co_firstlineno, max(lines)


def part_of(frames: Iterable[Frame], function_class: type | None, fn: Any = None) -> str | None:
    """The part of the Function the innermost of its own frames belongs to (None: none of them)."""
    spans = []
    if function_class is not None:
        for method, part in PART_OF_METHOD.items():
            code = _code_of(getattr(function_class, method, None))
            if code is not None and is_user_frame(Frame(code.co_filename, code.co_firstlineno, code.co_name)):
                spans.append((_span(code), part))
    elif _code_of(fn) is not None and not isinstance(fn, type):
        spans.append((_span(_code_of(fn)), "forward"))
    for frame in frames:
        path = os.path.abspath(frame.filename)
        for (filename, name, first, last), part in spans:
            if path == filename and frame.name == name and first <= frame.lineno <= last:
                return part
    return None


def is_user_frame(frame: Frame) -> bool:
    """A frame in the user's code: not customgrad's, torch's, the standard library's or generated."""
    if frame.filename.startswith("<"):
        return False
    path = os.path.abspath(frame.filename)
    return not path.startswith(_CUSTOMGRAD_DIR) and not any(path.startswith(d) for d in _LIBRARY_DIRS)


def user_frame_location(frames: Iterable[Frame]) -> str | None:
    """``file:line: source`` of the innermost frame in the user's code."""
    for frame in frames:
        if is_user_frame(frame):
            source = linecache.getline(frame.filename, frame.lineno).strip()
            where = f"{short_path(frame.filename)}:{frame.lineno}"
            return f"{where}: {source}" if source else where
    return None


def short_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it, else as given."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return relative if not relative.startswith("..") else path


def locate(frames: list[Frame], function_class: type | None, fn: Any, phase: str) -> tuple[str, str | None]:
    """(part, user location) of a stack: the Function's method it is in, refined by the battery's phase
    (a backward during a double backward); the phase alone without such a frame; "check" when the stack is
    in the checker's own code."""
    part = part_of(frames, function_class, fn)
    location = user_frame_location(frames)
    if part == "backward" and phase == "double backward":
        part = phase
    generated = any(frame.filename.startswith("<customgrad") for frame in frames)
    if part is None and (location is not None or generated):
        part = phase or "the Function"
    elif part is None:
        part = phase if (phase and not frames) else "check"
    return part, location
