"""How many CPU threads a fit runs on: one for a small problem, torch's setting otherwise (`threads_for`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import torch

# Up to this many Jacobian entries (rows x parameters) a fit runs on one CPU thread: small problems
# are dominated by per-op dispatch, and thread hand-offs cost more than they save (a 200 x 9 QR takes
# 10 us on one thread and milliseconds on two busy ones).
SINGLE_THREAD_ENTRIES = 1_000_000

_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"users": 0, "saved": 0}


@contextlib.contextmanager
def threads_for(entries: int, device) -> Iterator[None]:
    """One torch thread for a small CPU problem (restored afterwards), the current setting otherwise.

    ``torch.set_num_threads`` is process-wide: concurrent small fits share one change, counted under
    a lock, and the last one out restores the setting the first one saw. Also silences numpy's
    floating-point warnings: formula models evaluated in numpy make NaN and inf silently, as torch
    does, and the solver handles them.
    """
    try:
        on_cpu = device is None or torch.device(device).type == "cpu"
    except (RuntimeError, TypeError):
        on_cpu = False  # not a device: the caller's device check says so
    small = entries <= SINGLE_THREAD_ENTRIES and on_cpu
    with np.errstate(all="ignore"):
        if not small:
            yield
            return
        with _THREADS_LOCK:
            if _THREADS_STATE["users"] == 0:
                _THREADS_STATE["saved"] = torch.get_num_threads()
                torch.set_num_threads(1)
            _THREADS_STATE["users"] += 1
        try:
            yield
        finally:
            with _THREADS_LOCK:
                _THREADS_STATE["users"] -= 1
                if _THREADS_STATE["users"] == 0:
                    torch.set_num_threads(_THREADS_STATE["saved"])
