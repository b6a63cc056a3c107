"""What a training run says about itself when it ends: its folder, checkpoint, sample grid, evaluation
table, final metrics and elapsed time — printed as a short block and written to
``<run dir>/summary.json`` (the file ``diffusion_lab.sweep_summary`` aggregates over a sweep).

``summary.json`` keys: ``run_dir``, ``checkpoint`` (last.ckpt, or null), ``grids`` (sampler label →
the latest picture), ``table`` (``eval/table.csv``, or null), ``selected`` (the label of the run's
selected sampler), ``metrics`` (the final logged metrics: ``eval/<metric>/<label>``, ``train/loss_epoch``,
...), ``overrides`` (the command-line overrides of the run), ``elapsed_seconds``, and the ``host``
and ``pid`` of the process that trained (which node and worker of a parallel or SLURM sweep).
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any, Mapping

SUMMARY_FILE = "summary.json"


def collect(run_dir: str | Path, trainer: Any, parts: Any, metrics: Mapping[str, float], elapsed: float,
            overrides: list[str] | None = None) -> dict[str, Any]:
    """The summary of a finished run (see the module docstring)."""
    run_dir = Path(run_dir)
    ckpt = None
    for cb in getattr(trainer, "callbacks", []):
        path = getattr(cb, "last_model_path", None) or getattr(cb, "best_model_path", None)
        if path and Path(path).is_file():
            ckpt = str(path)
            break
    if ckpt is None and (run_dir / "checkpoints" / "last.ckpt").is_file():
        ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    evaluator = getattr(parts, "evaluator", None)
    grids = {str(k): str(v) for k, v in (getattr(evaluator, "pictures", None) or {}).items()}
    table = run_dir / "eval" / "table.csv"
    selected = getattr(getattr(parts, "sampler", None), "label", None)
    return {"run_dir": str(run_dir), "checkpoint": ckpt, "grids": grids,
            "table": str(table) if table.is_file() else None, "selected": selected,
            "metrics": {k: float(v) for k, v in metrics.items()}, "overrides": list(overrides or []),
            "elapsed_seconds": float(elapsed), "host": socket.gethostname(), "pid": os.getpid()}


def write(summary: Mapping[str, Any]) -> Path:
    """``<run dir>/summary.json``."""
    path = Path(summary["run_dir"]) / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=True) + "\n")
    return path


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4g}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The block printed at the end of a run: where everything is, the selected sampler's final metrics
    (and the training loss), the elapsed time."""
    m = summary["metrics"]
    label = summary.get("selected")
    lines = ["run summary",
             f"  run folder : {summary['run_dir']}",
             f"  checkpoint : {summary['checkpoint']}"]
    for lab, path in summary["grids"].items():
        lines.append(f"  grid       : {path}" + ("" if lab == label else f"  ({lab})"))
    lines.append(f"  eval table : {summary['table']}")
    shown = {k: v for k, v in m.items() if label and k.startswith("eval/") and k.endswith("/" + label)}
    shown.update({k: v for k, v in m.items() if k in ("train/loss_epoch", "val/loss")})
    if shown:
        lines.append("  final      : " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
    minutes, seconds = divmod(summary["elapsed_seconds"], 60)
    lines.append(f"  elapsed    : {int(minutes)} min {seconds:.1f} s")
    return "\n".join(lines)
