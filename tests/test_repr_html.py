"""Notebook display: FitResult, BatchFitResult and CheckReport render as HTML tables (``_repr_html_``).

The HTML is read back with the standard library's parser and compared with the result's own fields:
every parameter, status and check appears in its table, and user text is escaped.
"""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest

from customgrad import CheckReport, CheckResult, fit, fit_batch


class Tables(HTMLParser):
    """{caption: rows}, each row the list of its cells' text (header rows included)."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.paragraphs: list[str] = []
        self._rows: list[list[str]] = []
        self._text: list[str] | None = None
        self._caption = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._rows, self._caption = [], ""
        elif tag == "tr":
            self._rows.append([])
        elif tag in ("td", "th", "caption", "p"):
            self._text = []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._rows[-1].append("".join(self._text))
        elif tag == "caption":
            self._caption = "".join(self._text)
        elif tag == "p":
            self.paragraphs.append("".join(self._text))
        elif tag == "table":
            self.tables[self._caption] = self._rows
        if tag in ("td", "th", "caption", "p"):
            self._text = None


def line_data():
    rng = np.random.default_rng(3)
    x = np.linspace(0, 4, 30)
    return x, 1.5 * x - 0.5 + 0.1 * rng.standard_normal(30)


def test_fit_result_shows_statistics_and_parameters():
    x, y = line_data()
    result = fit("a*x + b + c*x**2", x, y, params={"a": 1.0, "b": 0.0, "c": {"value": 0.0, "fixed": True}})
    html = result._repr_html_()
    tables = Tables(html).tables
    statistics = dict(tables["Fit statistics"])
    assert statistics["model"] == "a*x + b + c*x**2"
    assert statistics["status"].startswith(result.status)
    assert float(statistics["residual std"]) == pytest.approx(result.residual_std, rel=1e-5)
    header, *rows = tables["Parameters"]
    assert header == ["parameter", "value", "stderr", "rel. error", "note"]
    assert [row[0] for row in rows] == ["a", "b", "c"]
    for name, value, stderr, _, note in rows:
        assert float(value) == pytest.approx(result.params[name], rel=1e-11, abs=1e-300)
        if name == "c":
            assert (stderr, note) == ("", "fixed")
        else:
            assert float(stderr) == pytest.approx(result.stderr[name], rel=1e-5)


def test_batch_result_shows_counts_spread_and_the_first_curves():
    x, y = line_data()
    curves = np.stack([y, 2 * y, 3 * y])
    result = fit_batch("a*x + b", x, curves, params={"a": 1.0, "b": 0.0})
    parsed = Tables(result._repr_html_(max_rows=2))
    overview = dict(parsed.tables["Batch fit"])
    assert overview["curves / converged"] == f"3 / {int(result.success.sum())}"
    header, *spread = parsed.tables["Converged curves"]
    assert header == ["parameter", "median", "5%", "95%"]
    assert float(spread[0][1]) == pytest.approx(np.median(result.params["a"]), rel=1e-5)
    header, *shown = parsed.tables["Curves"]
    assert header[:3] == ["curve", "success", "status"] and len(shown) == 2
    assert float(shown[1][header.index("a")]) == pytest.approx(result.params["a"][1], rel=1e-5)
    assert any("1 more curves" in text for text in parsed.paragraphs)


def test_check_report_shows_one_row_per_check_with_text_escaped():
    report = CheckReport(
        subject="Clip",
        inputs="x: (3,)",
        results=[
            CheckResult("first_order", "failed", "d/dx differs at x[0] < 0 & x[1] > 1: got <tensor 0.5>"),
            CheckResult("vmap", "passed", "vmap matches a loop", seconds=0.25),
        ],
        isolation="in a worker process",
    )
    html = report._repr_html_()
    assert "<tensor" not in html and "&lt;tensor 0.5&gt;" in html
    parsed = Tables(html)
    header, *rows = parsed.tables["customgrad check Clip(x: (3,))"]
    assert header == ["check", "status", "message", "time"]
    assert rows[0][:3] == ["first_order", "FAILED", "d/dx differs at x[0] < 0 & x[1] > 1: got <tensor 0.5>"]
    assert rows[1][:2] == ["vmap", "ok"]
    assert report.summary() in parsed.paragraphs


def test_a_global_fit_shows_its_shared_parameters_in_html():
    x = np.linspace(0, 4, 20)
    y = np.stack([a * np.exp(-0.7 * x) + c for a, c in [(1, 0.1), (2, 0.2), (3, 0.0)]])
    params = {"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0}
    html = fit_batch("a*exp(-k*x) + c", x, y, params=params)._repr_html_()
    assert "Shared by every curve" in html and '<td style="text-align:left">k</td>' in html
    independent = fit_batch("a*exp(-k*x) + c", x, y, params={"k": 1.0, "a": 1.0, "c": 0.0})
    assert "Shared by every curve" not in independent._repr_html_()
