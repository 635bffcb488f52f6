"""customgrad asks torch's OpenMP runtime to wait passively when it is imported first (`customgrad.openmp`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import os, {first}, {second}; print(os.environ.get('OMP_WAIT_POLICY'), customgrad.openmp.waits_passively())"


def _probe(first: str, second: str, policy: str | None) -> str:
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if policy is not None:
        environment["OMP_WAIT_POLICY"] = policy
    code = PROBE.format(first=first, second=second)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("first", "second", "policy", "expected"),
    [
        ("customgrad", "torch", None, "PASSIVE True"),  # asked for before torch's runtime read it
        ("torch", "customgrad", None, "None False"),  # too late: torch's runtime spins; global fits use one thread
        ("torch", "customgrad", "active", "active False"),  # the user's setting is kept
    ],
)
def test_the_wait_policy_is_passive_only_where_torch_read_it_so(first, second, policy, expected):
    assert _probe(first, second, policy) == expected
