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


def test_the_callers_tables_keep_their_columns_and_numbers():
    """Every table the command line prints goes through format_table: a few of them on known numbers."""
    from envs.citylearn.evaluate import SUMMARY_KPIS, kpi_table
    from envs.dynamics.evaluate import ROLLOUT_STEPS, format_report
    from envs.dynamics.evaluator import format_results
    from scripts.retrain import promotion_table

    kpis = kpi_table({"rbc": {"episode_return": -2.0}, "policy": {"episode_return": -1.0}}).splitlines()
    assert kpis[0].split() == ["kpi", "rbc", "policy", "better", "than", "rbc"]
    assert len(kpis) == 1 + len(SUMMARY_KPIS)
    assert kpis[-1].split() == ["episode_return", "-2", "-1", "policy"]
    assert kpis[1].split() == ["cost_total", "-", "-", "-"]
    assert "better than" not in kpi_table({"policy": {}}, against=None)

    m = {"export_kwh": 1.5, "peak_export_w": 3000.123, "oscillations_per_min": 0.5, "phase_imbalance_w": 40.0,
         "controlled_import_kwh": 0.1, "export_reduction_vs_logged_pi_pct": 5.55,
         "trusted_share": 0.9}  # fmt: skip
    lines = format_results({"pi": m, "policy": {**m, "trust": 0.8}}).splitlines()
    assert lines[0].split()[-5:] == ["logged", "PI", "%", "agree", "trust"]
    assert lines[1].split() == ["pi", "1.500", "3000.123", "0.500", "40.000", "0.100", "5.5", "0.90", "nan"]
    assert lines[2].split()[-1] == "0.80"

    check = {"check": "export reduction %", "value": 3.0, "passed": False, "target": ">= 5"}
    verdicts = [("simulator", {"promoted": False, "checks": [check]}),
                ("model", {"promoted": True, "checks": [{**check, "passed": True}]})]  # fmt: skip
    assert promotion_table("check", verdicts, last="promoted", note="(why)").splitlines() == [
        "check               simulator  model  target",
        "export reduction %    3.00 NO   3.00  >= 5",
        "promoted                   no    yes  (why)",
    ]

    one = {"mse": 0.01, "persistence_mse": 0.05, "export_mae_w": 50.12, "persistence_export_mae_w": 80.2}
    roll = {f"{s}_steps": {**one, "mse": 0.02} for s in ROLLOUT_STEPS}
    crit = [{"criterion": "export MAE (W)", "value": 150.0, "target": "< 100", "passed": False}]
    report = format_report({"k": 5, "one_window": one, "rollout": {"open_loop": roll}, "criteria": crit})
    errors, criteria = report.split("\n\n")
    assert errors.splitlines()[1].split() == ["5-s", "MSE", "(normalised)", "0.0100", "0.0500"]
    s = ROLLOUT_STEPS[0]
    assert f"rollout {s} steps ({5 * s} s) export MAE" in errors and errors.splitlines()[3].endswith("0.0500")
    assert errors.splitlines()[4].split()[-2:] == ["50.1", "80.2"]
    assert criteria.splitlines()[1].split()[-4:] == ["150", "<", "100", "NO"]
