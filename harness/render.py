"""Rendering rows of results as a text table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

FORMATS = ("table", "csv", "json")
TABLE_FORMATS = ("table", "md", "csv", "json", "html", "parquet")


def columns_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of every row, in the order they first appear: rows of one table may differ
    (an unavailable runtime, a run with no accuracy), and a missing key is an empty cell."""
    return list(dict.fromkeys(key for row in rows for key in row))


def render(rows: Sequence[Mapping[str, Any]], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(list(rows), indent=2)
    if not rows:
        return "(no rows)" if fmt == "table" else ""
    columns = columns_of(rows)
    rows = [{c: row.get(c) for c in columns} for row in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {c: " ".join(v.split()) if isinstance(v, str) else v for c, v in row.items()}
            for row in rows
        )  # a record per line, whatever a reason holds
        return out.getvalue().rstrip("\n")
    if fmt == "table":
        return _text_table(rows, columns)
    if fmt == "md":
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += [
            "| " + " | ".join(cell(row[c]).replace("|", "\\|") for c in columns) + " |"
            for row in rows
        ]
        return "\n".join(lines)
    if fmt == "html":
        import html

        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell(row[c]))}</td>" for c in columns) + "</tr>"
            for row in rows
        )
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>"
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def wrapped(rows: Sequence[Mapping[str, Any]], width: int = 120) -> str:
    """A text table no wider than ``width``: where it would be wider, its columns go into
    tables one under another, each led by the first column (the row's label)."""
    columns = columns_of(rows)
    whole = render(rows, "table")
    if not rows or max(len(line) for line in whole.splitlines()) <= width:
        return whole
    full = [{c: row.get(c) for c in columns} for row in rows]
    label, rest = columns[0], columns[1:]
    parts: list[str] = []
    chunk: list[str] = []
    for column in rest:
        trial = _text_table(full, [label, *chunk, column])
        if chunk and max(len(line) for line in trial.splitlines()) > width:
            parts.append(_text_table(full, [label, *chunk]))
            chunk = []
        chunk.append(column)
    parts.append(_text_table(full, [label, *chunk]))
    return "\n\n".join(parts)


def cell(value: Any) -> str:
    if type(value) is str and value.isprintable() and "  " not in value and value == value.strip():
        return value  # already one line with single spaces (most cells: a job's status)
    if value is None:
        return "-"
    if isinstance(value, float):
        size = abs(value)
        digits = 0 if size >= 1000 else 1 if size >= 100 else 2 if size >= 1 else 3
        text = f"{value:,.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return " ".join(str(value).split())  # one line per row, whatever a reason holds


def _text_table(rows: Sequence[Mapping[str, Any]], columns: list[str]) -> str:
    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row[c], (int, float, type(None))) for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])
