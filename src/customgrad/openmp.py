"""OpenMP's wait policy for customgrad's C kernels, which share torch's OpenMP runtime (libgomp).

That runtime reads OMP_WAIT_POLICY once, when torch is imported. Threads that spin while they wait
hold a core another process (or torch) needs: on a busy machine a short parallel loop then waits a
whole time slice for its other thread (a global fit of 10^4 curves runs ~30 of them: median 293 ms on
two spinning threads against 41 ms on one, on this 2-core machine with two other jobs). So customgrad,
imported before torch, asks for PASSIVE (unless OMP_WAIT_POLICY is set), and its many-loop solvers use
several threads only where the runtime waits passively (`waits_passively`).
"""

from __future__ import annotations

import os
import sys


def _prefer_passive() -> bool:
    """Ask for a passive OpenMP runtime where torch is not loaded yet; whether the runtime waits passively."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


_PASSIVE = _prefer_passive()


def waits_passively() -> bool:
    """True where torch's OpenMP runtime waits passively (OMP_WAIT_POLICY=PASSIVE when torch was imported:
    customgrad imported first, or the variable set by the user)."""
    return _PASSIVE
