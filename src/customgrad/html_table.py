"""HTML tables for notebooks: what the results' ``_repr_html_`` show in Jupyter (as lmfit's results do).

One small writer for `FitResult`, `BatchFitResult` and `CheckReport`: every text is escaped, numbers
are formatted by the caller (the same formats as their text reports).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape


def table(rows: Iterable[Sequence[object]], header: Sequence[str] | None = None, caption: str | None = None) -> str:
    """``<table>`` with an optional caption and header row, one row per item of ``rows``, every cell escaped."""
    parts = ["<table>"]
    if caption:
        parts.append(f'<caption style="text-align:left;font-weight:bold">{escape(caption)}</caption>')
    if header is not None:
        parts.append("<tr>" + "".join(f"<th>{escape(str(cell))}</th>" for cell in header) + "</tr>")
    for row in rows:
        parts.append(
            "<tr>" + "".join(f'<td style="text-align:left">{escape(str(cell))}</td>' for cell in row) + "</tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def notes(lines: Iterable[str]) -> str:
    """Paragraphs of text (warnings, strong correlations), escaped; empty when there are none."""
    return "".join(f"<p>{escape(line)}</p>" for line in lines if line)


def document(*blocks: str) -> str:
    """The blocks one after the other in one ``<div>``."""
    return "<div>" + "".join(blocks) + "</div>"
