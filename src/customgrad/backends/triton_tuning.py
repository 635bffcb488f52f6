"""Launch configurations by measurement: the fastest (elements per block, warps) from a small set.

The first time a kernel meets a (read/store pattern, dtype, size class) on a device, each candidate is
run and timed and the fastest is remembered, in memory and in the disk cache (`customgrad.cache`,
namespace ``triton-launch``: atomic writes, so concurrent processes never see half an entry); later
calls, in this process or another, look it up. Size classes are powers of two of the element count.

Tuning runs on CUDA only; under Triton's CPU interpreter every launch uses `DEFAULT`, unless a test
installs a `LaunchTuner` with its own candidates and timer. A candidate that runs out of memory or of
on-chip resources is skipped; when none runs, `DEFAULT` is used and one warning says so.
"""

from __future__ import annotations

import json
import statistics
import warnings
from collections.abc import Callable, Sequence

import torch

from .. import cache

#: (elements per program, warps): 8 to 16 elements per thread (128-bit accesses need 4 float32, 8 half),
#: 4 to 16 warps; few, because each one is a compilation the first time a kernel is tuned.
CANDIDATES: tuple[tuple[int, int], ...] = ((1024, 4), (2048, 8), (4096, 8), (8192, 16))
DEFAULT = (1024, 4)
_NAMESPACE = "triton-launch"


def cuda_timer(run: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of ``run()`` on the current CUDA stream (CUDA events), after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


class LaunchTuner:
    """``config(key, run)``: the remembered configuration for ``key``, else the fastest of ``candidates``
    by ``timer(lambda: run(candidate))``. ``enabled`` False: always `DEFAULT` (no timing); the kernel
    asks only for CUDA launches unless ``everywhere``."""

    def __init__(
        self,
        candidates: Sequence[tuple[int, int]] = CANDIDATES,
        timer: Callable[[Callable[[], object]], float] = cuda_timer,
        enabled: bool = True,
        everywhere: bool = False,
    ):
        self.candidates = tuple(candidates)
        self.timer = timer
        self.enabled = enabled
        self.everywhere = everywhere  # tune off CUDA too (tests under the interpreter)
        self.known: dict[tuple[str, ...], tuple[int, int]] = {}
        self.warned = False

    def config(self, key: Sequence[str], run: Callable[[tuple[int, int]], object]) -> tuple[int, int]:
        """The (block, warps) to launch ``key``'s kernel with; measured with ``run`` the first time."""
        if not self.enabled:
            return DEFAULT
        key = tuple(key)
        found = self.known.get(key)
        if found is None:
            found = self._stored(key) or self._measured(key, run)
            self.known[key] = found
        return found

    def _stored(self, key: tuple[str, ...]) -> tuple[int, int] | None:
        data = cache.load(_NAMESPACE, list(key))
        try:
            block, warps = json.loads(data) if data is not None else (None, None)
        except (ValueError, TypeError):
            return None
        return (int(block), int(warps)) if (block, warps) in [tuple(c) for c in self.candidates] else None

    def _measured(self, key: tuple[str, ...], run: Callable[[tuple[int, int]], object]) -> tuple[int, int]:
        timings = {}
        for candidate in self.candidates:
            try:
                timings[candidate] = self.timer(lambda candidate=candidate: run(candidate))
            except (torch.OutOfMemoryError, MemoryError) as error:
                self._warn(f"out of memory ({str(error).splitlines()[0] if str(error) else 'no detail'})")
                return DEFAULT
            except Exception as error:  # Triton's OutOfResources (shared memory, registers): skip it
                if type(error).__name__ != "OutOfResources":
                    raise
        if not timings:
            self._warn("no candidate configuration could run")
            return DEFAULT
        best = min(timings, key=timings.get)
        cache.store(_NAMESPACE, list(key), json.dumps(list(best)).encode())
        return best

    def _warn(self, reason: str) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(
                f"customgrad: tuning a Triton launch failed: {reason}; using the default configuration "
                f"{DEFAULT[0]} elements x {DEFAULT[1]} warps",
                RuntimeWarning,
                stacklevel=4,
            )
