"""The comparison table of an evaluation: one row per (epoch, sampler) — epoch, step, sampler label,
SDE/ODE, NFE, family, the metrics, seconds — kept across evaluations, written as CSV or Markdown, and
given to loggers (a W&B Table).

The W&B layout of a samplers × NFE study (``log_wandb_study``): the study is one W&B **group**; each
sampler family (one curve: ``ddim``, ``heun``, ``sde_euler_maruyama``, ...) is one **run** of it whose
config carries ``family``, ``sampler`` (the registered name), ``kind`` (SDE / ODE), ``grid`` and the
options, so that the runs table and every panel group or colour by kind and family without hand work.
In each run ``nfe`` is the step metric of every ``eval/*`` key (``define_metric("eval/*",
step_metric="nfe")``), so a line plot of ``eval/fid`` over the group draws quality against NFE, one line
per family, SDE and ODE side by side; each row also logs the picture of its samples (``eval/samples``,
the same seeded noise for every sampler, so the grids line up across panels) and the family's rows go
to the table ``eval/table`` (W&B shows a group's tables as one).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping

FIRST = ("epoch", "step", "sampler", "kind", "nfe", "family")
LAST = ("seconds", "feature_seconds", "metric_seconds", "n", "steps")
# metrics to minimise / maximise (W&B summaries)
LOWER_IS_BETTER = ("fid", "kid", "swd", "w2", "mmd", "nll", "bpd")
HIGHER_IS_BETTER = ("is", "accuracy", "precision", "recall")
# row keys that are not numbers to plot (W&B: config or table columns, not scalars)
DESCRIPTIVE = ("epoch", "step", "sampler", "kind", "family", "n", "steps", "feature_seconds", "metric_seconds",
               "guidance")


class EvalTable:
    """Rows (dicts) in the order they were added; columns: FIRST, the metrics as they appear, LAST."""

    def __init__(self, rows: list[dict[str, Any]] | None = None):
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows or []]

    @classmethod
    def read_csv(cls, path: str | Path) -> "EvalTable":
        """A table written by ``write_csv`` (numbers read back as numbers, empty cells dropped)."""
        rows = []
        with open(path, newline="") as f:
            for raw in csv.DictReader(f):
                rows.append({k: _number(v) for k, v in raw.items() if v not in (None, "")})
        return cls(rows)

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

    def families(self) -> dict[str, list[dict[str, Any]]]:
        """The sampler rows grouped by family (one curve each), in first-seen order, each sorted by NFE."""
        out: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            if row.get("kind") in ("SDE", "ODE"):
                out.setdefault(str(row.get("family", row["sampler"])), []).append(row)
        return {k: sorted(v, key=lambda r: float(r["nfe"])) for k, v in out.items()}

    def markdown(self, columns: list[str] | None = None, digits: int = 4) -> str:
        """A Markdown table of ``columns`` (default: all but epoch/step), numbers to ``digits`` significant digits."""
        cols = columns or [c for c in self.columns() if c not in ("epoch", "step", "feature_seconds", "metric_seconds")]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(row.get(c), digits) for c in cols) + " |")
        return "\n".join(lines)


def _number(v: str) -> Any:
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _cell(v: Any, digits: int) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.{digits}g}"
    return str(v)


def summary_of(metric: str) -> str | None:
    """The W&B summary of a metric: ``min`` for errors and distances, ``max`` for scores, else None."""
    return "min" if metric in LOWER_IS_BETTER else "max" if metric in HIGHER_IS_BETTER else None


def log_wandb_study(table: EvalTable, group: str, project: str | None = None, config: Mapping[str, Any] | None = None,
                    samplers: Mapping[str, Mapping[str, Any]] | None = None, pictures: Mapping[str, Any] | None = None,
                    mode: str | None = None, save_dir: str | Path | None = None, tags: list[str] | None = None) -> list[str]:
    """Log a samplers × NFE table as one W&B group (see the module docstring); returns the run ids.

    Args:
        table: the rows (each with sampler, kind, family, nfe and the metrics).
        group: the study's W&B group (also the prefix of the run names ``<group>/<family>``).
        project, mode, save_dir: as ``wandb.init`` takes them (mode ``offline`` logs without a network).
        config: shared config of every run (the checkpoint, dataset, schedule, N, ...).
        samplers: family → the family's sampler settings (name, grid, options), added to its run's config.
        pictures: sampler label → picture file, logged as ``eval/samples`` at the row's NFE.
        tags: extra tags; each run is also tagged with its kind and family.
    """
    import wandb

    ids = []
    for family, rows in table.families().items():
        kind = rows[0]["kind"]
        run_config = {**dict(config or {}), "study": group, "family": family, "kind": kind,
                      **{k: v for k, v in dict((samplers or {}).get(family, {})).items() if k not in ("family", "kind")}}
        run = wandb.init(project=project, group=group, name=f"{group}/{family}", job_type="study", config=run_config,
                         tags=[*(tags or []), kind, family], mode=mode, dir=str(save_dir) if save_dir else None,
                         reinit="create_new")
        try:
            run.define_metric("nfe")
            metrics = [k for k in rows[0] if k not in DESCRIPTIVE and k != "nfe" and isinstance(rows[0][k], (int, float))]
            for m in metrics:
                summary = summary_of(m)
                if summary:
                    run.define_metric(f"eval/{m}", step_metric="nfe", summary=summary)
            run.define_metric("eval/*", step_metric="nfe")
            for row in rows:
                data: dict[str, Any] = {"nfe": float(row["nfe"])}
                data.update({f"eval/{m}": float(row[m]) for m in metrics if row.get(m) is not None})
                picture = (pictures or {}).get(row["sampler"])
                if picture is not None and Path(picture).is_file():
                    data["eval/samples"] = wandb.Image(str(picture), caption=f"{row['sampler']} ({kind}, NFE {row['nfe']:g})")
                run.log(data)
            family_table = EvalTable(rows)
            run.log({"eval/table": wandb.Table(columns=family_table.columns(), data=family_table.data())})
            ids.append(run.id)
        finally:
            run.finish()
    return ids
