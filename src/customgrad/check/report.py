"""The result of the check battery: one `CheckResult` per named check, gathered in a `CheckReport`."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any

#: The statuses a check can end in, and how the table shows them.
STATUS_LABELS = {"passed": "ok", "failed": "FAILED", "warning": "warning", "skipped": "skipped"}


@dataclass
class CheckResult:
    """The outcome of one named check.

    Attributes
    ----------
    name : str
        The check's name, e.g. ``"first_order"``.
    status : {"passed", "failed", "warning", "skipped"}
    message : str
        One or more sentences a user can act on: what is wrong, where, and how to fix it.
    details : dict
        Machine-readable particulars (worst element, expected vs got, points tried, ...).
    seconds : float
        Time the check took.
    """

    name: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUS_LABELS:
            raise ValueError(f"status must be one of {sorted(STATUS_LABELS)}, got {self.status!r}")


@dataclass
class CheckReport:
    """All check results for one Function; ``ok`` when no check failed (warnings allowed).

    ``isolation`` says where the Function ran: in a worker process, or in this process.
    """

    subject: str
    inputs: str
    results: list[CheckResult]
    isolation: str = ""

    @property
    def ok(self) -> bool:
        return not any(result.status == "failed" for result in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [result for result in self.results if result.status == "failed"]

    def __getitem__(self, name: str) -> CheckResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no check named {name!r} (checks: {', '.join(r.name for r in self.results)})")

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in STATUS_LABELS}

    def summary(self) -> str:
        counts = self.counts()
        parts = [f"{counts[s]} {s}" for s in ("passed", "failed", "warning", "skipped") if counts[s]]
        verdict = "OK" if self.ok else "FAILED"
        return f"{verdict}: {', '.join(parts)}"

    def __str__(self) -> str:
        width = max(len(r.name) for r in self.results) if self.results else 10
        lines = [f"customgrad check {self.subject}({self.inputs})"]
        lines += [f"  run {self.isolation}", ""] if self.isolation else [""]
        for result in self.results:
            label = STATUS_LABELS[result.status]
            prefix = f"  {result.name:<{width}}  {label:<8} "
            body = textwrap.wrap(
                result.message,
                width=max(40, 108 - len(prefix)),
                break_long_words=False,
                break_on_hyphens=False,
            ) or [""]
            lines.append(prefix + body[0])
            lines.extend(" " * len(prefix) + line for line in body[1:])
        lines += ["", self.summary()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The table of `__str__` as HTML (Jupyter shows a report this way): one row per check."""
        from ..html_table import document, notes, table

        rows = [(r.name, STATUS_LABELS[r.status], r.message, f"{r.seconds:.3g} s") for r in self.results]
        return document(
            table(
                rows, ("check", "status", "message", "time"), caption=f"customgrad check {self.subject}({self.inputs})"
            ),
            notes([f"run {self.isolation}" if self.isolation else "", self.summary()]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "inputs": self.inputs,
            "isolation": self.isolation,
            "ok": self.ok,
            "counts": self.counts(),
            "results": [asdict(r) for r in self.results],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return repr(value)
