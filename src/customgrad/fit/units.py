"""Power-of-two units: residuals multiplied by 2^k (exact) so that their squares stay in float64's range.

cost = sum r^2 overflows float64 from |r| ~ 1e154 and underflows below 1e-162. Least squares is
invariant to a common scale of the residuals, so LM and the statistics run in units where the largest
|r| (or weighted |y|) lies within 2^±`SAFE_EXPONENT`, and costs are divided back at the end.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SAFE_EXPONENT = 256


def power_of_two_scale(values: torch.Tensor) -> torch.Tensor:
    """2^k bringing max |values| over the last axis into [2^-SAFE_EXPONENT, 2^SAFE_EXPONENT], shape
    ``values.shape[:-1]`` (1 where it is there already, 0, empty or not finite; one curve's: `curve_unit`)."""
    largest = values.abs().amax(-1) if values.shape[-1] else values.new_zeros(values.shape[:-1])
    exponent = torch.frexp(largest).exponent
    usable = (largest > 0) & torch.isfinite(largest)
    shift = torch.where(exponent > SAFE_EXPONENT, SAFE_EXPONENT - exponent, 0)
    shift = torch.where(exponent < -SAFE_EXPONENT, -SAFE_EXPONENT - exponent, shift)
    return torch.where(usable, torch.ldexp(torch.ones_like(largest), shift), 1.0)


def curve_unit(values: torch.Tensor) -> float:
    """`power_of_two_scale` of one curve's ``values`` (N,) as a float (on the CPU: math on one float)."""
    if values.device.type != "cpu":
        return float(power_of_two_scale(values))
    array = values.detach().numpy()
    largest = float(np.maximum.reduce(np.abs(array))) if len(array) else 0.0
    exponent = math.frexp(largest)[1] if 0 < largest < math.inf else 0
    return math.ldexp(1.0, max(-SAFE_EXPONENT - exponent, min(SAFE_EXPONENT - exponent, 0)))
