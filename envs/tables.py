"""The one table formatter behind every table the command line prints, and the schema docs' Markdown.

``format_table(rows, columns)`` lines up the cells: a column's width is its widest cell, numbers are
right-aligned and text left-aligned, columns are two spaces apart. ``None`` prints as ``-``. Floats take
the column's format spec (``fmt``; ``.4g`` unless told), integers print whole. ``style="markdown"`` writes
a GitHub table instead (``|`` in a cell is escaped). ``criteria_table`` is the pass/fail table of a list of
criteria (the policy's success criteria, the forward model's).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

__all__ = ["criteria_table", "format_table"]

GAP = "  "


def _cell(value: Any, spec: str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):d}"
    return format(float(value), spec or ".4g")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def format_table(
    rows: Iterable[Sequence[Any]],
    columns: Sequence[str],
    fmt: str | Sequence[str | None] | None = None,
    align: str | None = None,
    style: Literal["plain", "markdown"] = "plain",
) -> str:
    """The rows under the column titles, as text.

    Args:
        rows: One sequence of cells per row, as many as ``columns``. A cell is a number, a string or None.
        columns: The column titles.
        fmt: The format spec of float cells (``".3f"``): one for every column, or one per column (None:
            the default ``.4g``).
        align: One character per column, ``<`` (left) or ``>`` (right). By default a column whose cells
            are all numbers (or None) is right-aligned, any other left-aligned.
        style: ``"plain"`` (padded columns) or ``"markdown"``.
    """
    rows = [list(r) for r in rows]
    n = len(columns)
    for i, r in enumerate(rows):
        if len(r) != n:
            raise ValueError(f"format_table: row {i} has {len(r)} cells for {n} columns {list(columns)}")
    specs = [fmt] * n if fmt is None or isinstance(fmt, str) else list(fmt)
    if len(specs) != n:
        raise ValueError(f"format_table: {len(specs)} formats for {n} columns {list(columns)}")
    if align is None:
        align = "".join(
            ">" if any(r[j] is not None for r in rows) and all(r[j] is None or _is_number(r[j]) for r in rows)
            else "<"
            for j in range(n)
        )  # fmt: skip
    if len(align) != n or set(align) - {"<", ">"}:
        raise ValueError(f"format_table: align {align!r} needs one of '<' or '>' for each of {n} columns")
    cells = [[_cell(v, specs[j]) for j, v in enumerate(r)] for r in rows]
    if style == "markdown":
        rule = ["---:" if a == ">" else "---" for a in align]
        return "\n".join(
            "| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
            for line in [list(columns), rule, *cells]
        )
    if style != "plain":
        raise ValueError(f"format_table: style {style!r}: use 'plain' or 'markdown'")
    widths = [max(len(c) for c in col) for col in zip(columns, *cells, strict=True)]
    return "\n".join(
        GAP.join(f"{c:{a}{w}}" for c, a, w in zip(line, align, widths, strict=True)).rstrip()
        for line in [list(columns), *cells]
    )


def criteria_table(criteria: Iterable[Mapping[str, Any]], fmt: str = ".4g") -> str:
    """``{criterion, value, target, passed}`` rows as a table; a failed criterion says ``NO``.

    Args:
        criteria: The rows, in order.
        fmt: The format spec of the values.
    """
    rows = [[r["criterion"], r["value"], r["target"], "yes" if r["passed"] else "NO"] for r in criteria]
    return format_table(rows, ["criterion", "value", "target", "passed"], fmt=[None, fmt, None, None])
