"""Messages between the battery and its worker process: pickles with an 8-byte length, over pipes."""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

_HEADER = struct.Struct("<Q")


def send(fd: int, message: Any) -> None:
    """Write one message (a pickle with its length) to a pipe."""
    send_pickled(fd, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def send_pickled(fd: int, data: bytes) -> None:
    """Write one message already pickled."""
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def receive(fd: int) -> Any:
    """Read one message; `EOFError` when the other side is gone."""
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("the other end of the pipe closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
