"""Constructors for a check's outcome; the battery fills in the check's name and time."""

from __future__ import annotations

from typing import Any

from .report import CheckResult


def passed(message: str, **details: Any) -> CheckResult:
    return CheckResult("", "passed", message, details)


def failed(message: str, **details: Any) -> CheckResult:
    return CheckResult("", "failed", message, details)


def warning(message: str, **details: Any) -> CheckResult:
    return CheckResult("", "warning", message, details)


def skipped(message: str, **details: Any) -> CheckResult:
    return CheckResult("", "skipped", message, details)
