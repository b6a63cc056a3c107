"""The comparison table of an evaluation: one row per (epoch, sampler) — epoch, step, sampler label,
SDE/ODE, NFE, the metrics, seconds — kept across evaluations, written as CSV, and given to loggers
(a W&B Table)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

FIRST = ("epoch", "step", "sampler", "kind", "nfe")
LAST = ("seconds", "feature_seconds", "metric_seconds", "n", "steps")


class EvalTable:
    """Rows (dicts) in the order they were added; columns: FIRST, the metrics as they appear, LAST."""

    def __init__(self, rows: list[dict[str, Any]] | None = None):
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows or []]

    def extend(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(dict(r) for r in rows)

    def columns(self) -> list[str]:
        metric_cols: list[str] = []
        present: set[str] = set()
        for row in self.rows:
            for k in row:
                present.add(k)
                if k not in FIRST and k not in LAST and k not in metric_cols:
                    metric_cols.append(k)
        return [c for c in FIRST if c in present] + metric_cols + [c for c in LAST if c in present]

    def data(self) -> list[list[Any]]:
        cols = self.columns()
        return [[row.get(c) for c in cols] for row in self.rows]

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns())
            w.writerows(self.data())
        return path
