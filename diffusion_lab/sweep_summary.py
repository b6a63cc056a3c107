"""One table of a sweep: the final metrics of every job of a Hydra multirun, side by side.

    python -m diffusion_lab.sweep_summary outputs/multirun/2026-11-30/10-00-00

reads each job folder's ``summary.json`` (written by ``diffusion_lab.train`` at the end of a run, see
``diffusion_lab.run_summary``) and the sweep's ``multirun.yaml`` (which keys were swept), and writes
beside them

* ``sweep_summary.csv`` and ``sweep_summary.md``: one row per job — the job folder, the swept values,
  a status (``done``, or ``no summary`` for a job that failed or is still running), the selected
  sampler's label (``label``) and its final metrics under their plain names (``nfe``, ``fid``, ``kid``, ``is``,
  ...; ``eval/fid/ddim_50`` → ``fid`` in the ``ddim_50`` row, so a sweep over samplers lines up in one
  column), the metrics of any extra evaluated sampler as ``<metric>/<label>``, the final training loss
  and the elapsed seconds;
* ``sweep_summary.png``: the first quality metric present (FID, else SWD, W2, MMD, NLL, KID, IS, else
  the training loss) per job — against the swept value when one numeric key is swept, else as bars.

``SweepSummaryCallback`` (a Hydra callback, registered in conf/train.yaml under ``hydra.callbacks``)
publishes the swept keys to the jobs when a multirun starts (``diffusion_lab.sweeps`` names the job
folders and W&B runs with them) and calls ``summarize_sweep`` when it ends, so every sweep of
``diffusion_lab.train`` ends with this table; the command rebuilds it at any time (e.g. after a job
was rerun, or while a SLURM sweep is still going).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf

from diffusion_lab.errors import ConfigError
from diffusion_lab.run_summary import SUMMARY_FILE
from diffusion_lab.sweeps import SWEPT_ENV, job_values, override_values, swept_keys

try:  # the callback base class of Hydra >= 1.2
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

OUTPUT_STEM = "sweep_summary"
#: the metric the plot shows: the first present of these (plain names of the selected sampler's row)
PLOT_PREFERENCE = ("fid", "swd", "w2", "mmd", "nll", "kid", "is", "train/loss_epoch", "val/loss")
NOT_METRICS = {"wall_seconds"}
#: column order of a sampler's metrics (the rest follow alphabetically)
METRIC_ORDER = ("nfe", "fid", "kid", "is", "is_std", "swd", "w2", "mmd", "nll", "bpd", "accuracy", "precision",
                "recall", "seconds")  # eval/* keys that are not about one sampler
LOSS_KEYS = ("train/loss_epoch", "val/loss")


def _job_number(folder: Path) -> tuple[int, str]:
    m = re.match(r"(\d+)", folder.name)
    return (int(m.group(1)) if m else 1 << 30, folder.name)


def job_folders(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (each has Hydra's ``.hydra/overrides.yaml`` or our ``summary.json``), in
    launch order."""
    folders = [p for p in sweep_dir.iterdir() if p.is_dir() and ((p / ".hydra" / "overrides.yaml").is_file()
                                                                  or (p / SUMMARY_FILE).is_file())]
    return sorted(folders, key=_job_number)


def sweep_keys(sweep_dir: Path, folders: Sequence[Path]) -> list[str]:
    """The swept keys of a sweep folder: the comma lists and sweeper ``params`` of its ``multirun.yaml``
    (the basic sweeper writes one); without it (Optuna writes none) the sweeper ``params`` of a job's
    ``.hydra/hydra.yaml`` and every override whose value differs between jobs."""
    path = sweep_dir / "multirun.yaml"
    if path.is_file():
        hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra") or {}
        return swept_keys((hydra_cfg.get("overrides") or {}).get("task") or [],
                          (hydra_cfg.get("sweeper") or {}).get("params"))
    params: Any = None
    for folder in folders:
        job_hydra = folder / ".hydra" / "hydra.yaml"
        if job_hydra.is_file():
            params = (((yaml.safe_load(job_hydra.read_text()) or {}).get("hydra") or {}).get("sweeper") or {}).get("params")
            break
    jobs = [dict(override_values(_overrides_of(folder))) for folder in folders]
    keys = list(dict.fromkeys(k for job in jobs for k in job))
    varying = [k for k in keys if len({job.get(k) for job in jobs}) > 1]  # a key missing from a job varies too
    return list(dict.fromkeys([*swept_keys([], params), *varying]))


def _overrides_of(folder: Path) -> list[str]:
    summary_path = folder / SUMMARY_FILE
    if summary_path.is_file():
        overrides = json.loads(summary_path.read_text()).get("overrides")
        if overrides:
            return list(overrides)
    overrides_path = folder / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(overrides_path.read_text()) or []) if overrides_path.is_file() else []


def job_row(folder: Path, swept: Sequence[str]) -> dict[str, Any]:
    """One row of the table (see the module docstring)."""
    summary_path = folder / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    overrides = _overrides_of(folder)
    row: dict[str, Any] = {"job": folder.name}
    row.update(dict(job_values(overrides, list(swept))))
    row["status"] = "done" if summary is not None else "no summary"
    if summary is None:
        return row
    label = summary.get("selected")
    row["label"] = label
    metrics = summary.get("metrics", {})
    own: dict[str, float] = {}
    others: dict[str, float] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval" and parts[1] not in NOT_METRICS:
            if parts[2] == label:
                own[parts[1]] = value
            else:
                others[f"{parts[1]}/{parts[2]}"] = value
    rank = {m: i for i, m in enumerate(METRIC_ORDER)}
    for name in sorted(own, key=lambda m: (rank.get(m, len(rank)), m)):
        row[name] = own[name]
    for name in sorted(others, key=lambda m: (m.split("/")[1], rank.get(m.split("/")[0], len(rank)))):
        row[name] = others[name]
    for key in LOSS_KEYS:
        if key in metrics:
            row[key] = metrics[key]
    row["elapsed_s"] = summary.get("elapsed_seconds")
    return row


def sweep_table(sweep_dir: str | Path, swept: Sequence[str] | None = None
                ) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """(columns, rows, swept keys) of a sweep folder; ``swept``: the swept keys (default: ``sweep_keys``)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a folder; give the folder of a multirun (hydra.sweep.dir, e.g. "
                          "outputs/multirun/<date>/<time>).")
    folders = job_folders(sweep_dir)
    if not folders:
        raise ConfigError(f"{sweep_dir} has no job folders (none has .hydra/overrides.yaml or {SUMMARY_FILE}); "
                          "give the folder of a multirun (hydra.sweep.dir), not one of its jobs.")
    swept = list(swept) if swept is not None else sweep_keys(sweep_dir, folders)
    rows = [job_row(f, swept) for f in folders]
    columns: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    head = ["job", *[k for k in swept if k in columns]]  # the swept values first, in the sweep's order
    tail = [c for c in (*LOSS_KEYS, "elapsed_s") if c in columns]
    columns = head + [c for c in columns if c not in tail and c not in head] + tail
    return columns, rows, swept


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_metric(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str | None:
    """The column the plot shows (see PLOT_PREFERENCE), or None when no job has a metric."""
    for m in PLOT_PREFERENCE:
        if m in columns and any(isinstance(r.get(m), float) for r in rows):
            return m
    return None


def _as_float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def write_plot(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]], swept: Sequence[str]) -> Path | None:
    metric = plot_metric(columns, rows)
    if metric is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if isinstance(r.get(metric), float)]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * len(done) + 2), 3.4))
    xs = [_as_float(r.get(swept[0])) for r in done] if len(swept) == 1 else []
    if xs and all(x is not None for x in xs):
        pairs = sorted(zip(xs, [r[metric] for r in done]))
        ax.plot([p[0] for p in pairs], [p[1] for p in pairs], "o-")
        ax.set_xlabel(swept[0])
        if min(xs) > 0 and max(xs) / min(xs) >= 4:  # learning rates, step counts: log-spaced values
            ax.set_xscale("log")
        values = sorted(set(xs))
        if len(values) <= 12:  # the swept values themselves as ticks
            ax.set_xticks(values, [_cell(v) for v in values], fontsize=8)
            ax.minorticks_off()
    else:
        labels = ["\n".join(f"{k.split('.')[-1]}={_cell(r[k])}"[:32] for k in swept if k in r) or r["job"][:32]
                  for r in done]
        ax.bar(range(len(done)), [r[metric] for r in done])
        ax.set_xticks(range(len(done)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per job ({len(done)} of {len(rows)} jobs done)", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def summarize_sweep(sweep_dir: str | Path, swept: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``sweep_summary.csv``, ``.md`` and ``.png`` into ``sweep_dir``; returns their paths."""
    sweep_dir = Path(sweep_dir)
    columns, rows, swept = sweep_table(sweep_dir, swept)
    out = {"csv": sweep_dir / f"{OUTPUT_STEM}.csv", "md": sweep_dir / f"{OUTPUT_STEM}.md"}
    with open(out["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows([[r.get(c, "") if r.get(c) is not None else "" for c in columns] for r in rows])
    out["md"].write_text(markdown(columns, rows))
    png = write_plot(sweep_dir / f"{OUTPUT_STEM}.png", columns, rows, swept)
    if png is not None:
        out["png"] = png
    return out


class SweepSummaryCallback(Callback):
    """Hydra callback: publish the swept keys when a multirun starts, write the sweep's table when it ends."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        params = OmegaConf.to_container(params) if OmegaConf.is_config(params) else params
        os.environ[SWEPT_ENV] = json.dumps(swept_keys(task, params))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        swept = json.loads(os.environ.pop(SWEPT_ENV, "null"))
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            paths = summarize_sweep(sweep_dir, swept)
        except (ConfigError, OSError, ValueError) as e:
            log.warning("no sweep summary for %s: %s", sweep_dir, e)
            return
        log.info("sweep summary (%s):\n%s", ", ".join(str(p) for p in paths.values()), paths["md"].read_text())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion_lab.sweep_summary",
                                     description="Aggregate the final metrics of every job of a sweep folder.")
    parser.add_argument("sweep_dir", help="the multirun folder (hydra.sweep.dir)")
    args = parser.parse_args(argv)
    try:
        paths = summarize_sweep(args.sweep_dir)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    print(paths["md"].read_text(), end="")
    print("written: " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
