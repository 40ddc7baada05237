"""envs/tables.py: the one formatter behind the command line's tables and the schema docs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.tables import criteria_table, format_table


def test_plain_table_lines_up_numbers_right_and_text_left():
    text = format_table(
        [["export_kwh", 1.23456, 12], ["safety_violations", None, np.int64(3)], ["peak", math.nan, 0]],
        ["metric", "policy", "pi"],
        fmt=".3f",
    )
    assert text.splitlines() == [
        "metric             policy  pi",
        "export_kwh          1.235  12",
        "safety_violations       -   3",
        "peak                  nan   0",
    ]


def test_formats_per_column_and_explicit_alignment():
    text = format_table(
        [["a", 0.5, "3.00 NO", "x"], ["bb", 12.25, "1.00", ""]],
        ["name", "v", "check", "target"],
        fmt=[None, "+.1f", None, None],
        align="<><<",
    )
    assert text.splitlines() == [
        "name      v  check    target",
        "a      +0.5  3.00 NO  x",
        "bb    +12.2  1.00",
    ]
    # the default float format is 4 significant digits; a bool is text
    assert format_table([[1234.5678, True]], ["x", "ok"]).splitlines()[1] == "1235  True"


def test_markdown_table_escapes_pipes_and_marks_number_columns():
    text = format_table([["`a|b`", 1.5], ["c", None]], ["column", "value"], style="markdown")
    assert text.splitlines() == ["| column | value |", "| --- | ---: |", "| `a\\|b` | 1.5 |", "| c | - |"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rows": [[1, 2]], "columns": ["a"]}, "row 0 has 2 cells for 1 columns"),
        ({"rows": [[1]], "columns": ["a"], "fmt": [".1f", ".2f"]}, "2 formats for 1 columns"),
        ({"rows": [[1]], "columns": ["a"], "align": "^"}, r"align '\^'"),
        ({"rows": [[1]], "columns": ["a"], "style": "html"}, "style 'html'"),
    ],
)
def test_bad_shapes_are_clear_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        format_table(**kwargs)


def test_criteria_table_says_no_where_a_criterion_failed():
    rows = [
        {"criterion": "export reduction %", "value": 12.345, "target": ">= 10", "passed": True},
        {"criterion": "violations", "value": 2.0, "target": "== 0", "passed": False},
    ]
    assert criteria_table(rows, fmt=".2f").splitlines() == [
        "criterion           value  target  passed",
        "export reduction %  12.35  >= 10   yes",
        "violations           2.00  == 0    NO",
    ]
