"""The check battery: ``check(fn, *example_inputs)`` runs every named check and returns a `CheckReport`."""

from .battery import CHECK_NAMES, CHECKS, check
from .report import CheckReport, CheckResult

__all__ = ["CHECKS", "CHECK_NAMES", "CheckReport", "CheckResult", "check"]
