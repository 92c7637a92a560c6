"""The outcome of a batch run: one row per recording, written as CSV and markdown.

Each row has the recording's name and input, its status (``ok`` or ``failed``), the error
message of the step that failed, which steps ran and which were skipped as up to date,
the time spent running steps in this run, and the key metrics of every step (columns
``<step>.<metric>``, e.g. ``fit.best_val``; skipped steps report the metrics recorded
when they ran).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cst_neuro.atomic import write_text
from cst_neuro.batch.steps import STEPS

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_NAMES = (SUMMARY_CSV, SUMMARY_MD)
BASE_COLUMNS = ("recording", "status", "error", "duration_s", "ran", "skipped", "input")


@dataclass
class RecordingResult:
    """What happened to one recording in this run."""

    name: str
    source: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "failed" if self.errors else "ok"

    @property
    def error(self) -> str:
        return "; ".join(self.errors)

    def row(self) -> dict[str, Any]:
        """The summary row: base columns, then ``<step>.<metric>`` columns."""
        return {
            "recording": self.name,
            "status": self.status,
            "error": self.error,
            "duration_s": round(self.duration_s, 2),
            "ran": ",".join(self.ran),
            "skipped": ",".join(self.skipped),
            "input": self.source,
            **self.metrics,
        }


@dataclass
class BatchReport:
    """All recordings of a run, and where the summary files are."""

    outdir: Path
    results: list[RecordingResult]

    @property
    def failed(self) -> list[RecordingResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def summary_csv(self) -> Path:
        return self.outdir / SUMMARY_CSV

    @property
    def summary_md(self) -> Path:
        return self.outdir / SUMMARY_MD

    def columns(self) -> list[str]:
        """Base columns, then every recording's metric columns, step by step in pipeline order."""
        extra: dict[str, None] = {}
        for r in self.results:
            extra.update(dict.fromkeys(k for k in r.metrics if k not in BASE_COLUMNS))
        return [*BASE_COLUMNS, *sorted(extra, key=_step_order)]

    def write(self) -> tuple[Path, Path]:
        """Write ``summary.csv`` and ``summary.md`` atomically into the output folder."""
        columns = self.columns()
        rows = [r.row() for r in self.results]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.summary_csv, buf.getvalue())
        write_text(self.summary_md, markdown_table(rows, columns) + "\n")
        return self.summary_csv, self.summary_md

    def brief(self) -> str:
        """A short markdown table for the terminal: status, time and error per recording."""
        columns = ["recording", "status", "duration_s", "ran", "skipped", "error"]
        return markdown_table([r.row() for r in self.results], columns)


def _step_order(column: str) -> int:
    step = column.split(".", 1)[0]
    return STEPS.index(step) if step in STEPS else len(STEPS)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub-flavoured markdown table (pipes in cells escaped, floats to 4 digits)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = "nan" if math.isnan(value) else f"{value:.4g}"
    else:
        text = str(value)
    return " ".join(text.split()).replace("|", "\\|")
