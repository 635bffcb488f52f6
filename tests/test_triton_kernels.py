"""The Triton backend's kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``): the libdevice
stand-ins of `backends.triton_interpreter` against torch in float64, broadcast and strided inputs read
in place, broadcast gradients summed inside the kernel, mixed and half dtypes, odd layouts, and the
launch-configuration tuner with a fake candidate set and a fake timer.

Sizes stay small: the interpreter runs every block op by op in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import customgrad
from reference import assert_matches_reference

pytest.importorskip("triton")

INF, NAN = float("inf"), float("nan")


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


#: formula -> its torch reference; sinh and cosh by numpy, which does not overflow before the true value.
STAND_INS = {
    "acos(x)": torch.acos,
    "asin(x)": torch.asin,
    "atan(x)": torch.atan,
    "tan(x)": torch.tan,
    "sinh(x)": lambda x: torch.from_numpy(np.sinh(x.numpy())),
    "cosh(x)": lambda x: torch.from_numpy(np.cosh(x.numpy())),
    "asinh(x)": torch.asinh,
    "acosh(x)": torch.acosh,
    "atanh(x)": torch.atanh,
    "erfc(x)": torch.erfc,
    "round(x)": torch.round,
}
POINTS = [0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1.0, -1.0, 1 - 1e-12, 1 + 1e-12, 1e-300, 1e-8, -3e-20, 0.99]
POINTS += [2.0, 5.0, 26.0, -26.0, 20.5, 700.0, 710.0, -710.0, 2.0**28, 2.0**29, 1e10, 1e300, -1e300, INF, -INF, NAN]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("formula", list(STAND_INS))
def test_interpreted_libdevice_functions_match_torch_in_float64(formula, dtype):
    x = torch.cat([torch.linspace(-30, 30, 601, dtype=torch.float64), torch.tensor(POINTS, dtype=torch.float64)])
    x = x.to(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        exact = STAND_INS[formula](x.double()).to(dtype)  # the correctly rounded value, within an ulp
    got = customgrad.function(formula, backend="triton").apply(x.to(device())).cpu()
    assert got.dtype == dtype
    # erfc is a continued fraction past 2 (25 float64 ulps); the others a few ulps
    ulps = 32 if formula == "erfc(x)" else 4
    assert_matches_reference(got, exact, rtol=ulps * torch.finfo(dtype).eps, atol=1e-300, what=f"{formula} {dtype}")


def test_interpreted_atan2_matches_torch_at_signed_zeros_and_infinities():
    values = torch.tensor([0.0, -0.0, 1.0, -1.0, INF, -INF, 1e-300, -3.0, NAN], dtype=torch.float64)
    y, x = (t.flatten() for t in torch.meshgrid(values, values, indexing="ij"))
    noise = torch.randn(2, 500, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 10
    y, x = torch.cat([y, noise[0]]), torch.cat([x, noise[1]])
    got = customgrad.function("atan2(y, x)", backend="triton").apply(y.to(device()), x.to(device())).cpu()
    want = torch.atan2(y, x)
    assert_matches_reference(got, want, rtol=4 * torch.finfo(torch.float64).eps, what="atan2")
