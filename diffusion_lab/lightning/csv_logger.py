"""One run, one CSV log: ``<run dir>/csv/version_0/metrics.csv``, continued by a resumed run.

Lightning's ``CSVLogger`` starts a new ``version_N`` folder for every attempt, so a resumed run's
history is split and the steps redone after the checkpoint appear twice. ``RunCSVLogger`` keeps one
file per run directory: when the run resumes from a checkpoint of step G (``ExactResume`` calls
``resume_at(G)``), the rows of steps ≥ G that the interrupted attempt logged are dropped and the
new rows follow, so each step is in the file once. A fresh run in a used directory starts the file
afresh, as Lightning does.

The rows are written to disk at every checkpoint (and, with the step the checkpoint holds, at the
next logging call), not only every ``flush_logs_every_n_steps``, so that a run killed without
warning keeps the log of everything its checkpoint holds.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only


class _RunWriter(ExperimentWriter):
    """Lightning's CSV writer, except that the existing file is kept until the first write, which
    decides: continue it (resumed run: the rows before the resume step stay) or start afresh."""

    def __init__(self, log_dir: str) -> None:
        self.resume_step: int | None = None
        self._started = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        pass  # do not delete the previous attempt's file: a resumed run continues it

    def _old_rows(self) -> list[dict[str, str]]:
        path = Path(self.metrics_file_path)
        if self.resume_step is None or not path.is_file():
            return []
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) < self.resume_step]

    def save(self) -> None:
        if self._started:
            return super().save()
        if not self.metrics:
            return
        self._started = True
        old = self._old_rows()
        keys = {k for r in old for k, v in r.items() if k is not None}
        self.metrics = [*old, *self.metrics]
        self.metrics_keys = sorted(keys)
        self._record_new_keys()
        tmp = Path(self.metrics_file_path).with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(self.metrics)
        os.replace(tmp, self.metrics_file_path)
        self.metrics = []


class RunCSVLogger(CSVLogger):
    """``RunCSVLogger(save_dir, name="csv")``: one metrics.csv per run directory (see the module docstring)."""

    def __init__(self, save_dir: str, name: str = "csv", version: int | str = 0, prefix: str = "",
                 flush_logs_every_n_steps: int = 100):
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self._resume_step: int | None = None
        self._flush_next_log = False

    @property
    @rank_zero_experiment
    def experiment(self) -> _RunWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RunWriter(log_dir=self.log_dir)
            self._experiment.resume_step = self._resume_step
        return self._experiment

    @rank_zero_only
    def resume_at(self, step: int) -> None:
        """The run resumes from a checkpoint of ``step``: rows of later steps in the file are dropped."""
        self._resume_step = int(step)
        if self._experiment is not None:
            self._experiment.resume_step = int(step)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:  # type: ignore[override]
        super().log_metrics(metrics, step)
        if self._flush_next_log:  # the rows of the step a checkpoint was just written at
            self._flush_next_log = False
            self.save()

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()
        self._flush_next_log = True
