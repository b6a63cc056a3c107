"""Loggers: what diffusion_lab sends to every Lightning logger (scalars, pictures, the comparison
table: ``log_scalars``, ``log_image``, ``log_table``), and the Weights & Biases logger for
``logger=wandb`` (conf/logger/wandb.yaml).

Lightning's ``WandbLogger`` plus what a comparison dashboard needs:

- ``group``: null means "the sweep": every job of one Hydra multirun gets the sweep directory's name as
  its group (so a sweep's runs are grouped), a single run gets none;
- ``job_type`` and ``tags`` from the config, plus the chosen file of each group in ``tag_choices``
  (e.g. ``digits``, ``vp``, ``eps``) when running under Hydra;
- in a multirun, the job's swept values (``diffusion_lab.sweeps``): appended to the run name
  (``digits_vp_eps/sampler=ddim``) and one tag each (``sampler=ddim``), so runs of a sweep differ by name
  and can be filtered by tag;
- ``define_metrics``: glob pattern → summary (``min``/``max``/``last``), applied as soon as the run
  exists, so FID curves carry a min summary in the runs table;
- the resolved config reaches ``wandb.config`` as plain containers (the LightningModule saves it as
  plain dicts and Lightning logs those hyperparameters);
- works offline (``WANDB_MODE=offline``); ``diffusion_lab.train`` finishes the run at the end of each job;
- one run directory, one W&B run: the run id is kept in ``<save_dir>/wandb_run_id`` and reused (with
  ``resume="allow"``) when the run resumes, so a resumed run continues its W&B run instead of starting
  a second one. (W&B ignores the steps the resumed run logs again up to where the interrupted attempt
  had got; with an exact resume those values are the same.)
"""

from __future__ import annotations

import re
import secrets
import string
from pathlib import Path
from typing import Any, Mapping

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_only

from diffusion_lab.sweeps import wandb_name_and_tags

SUMMARIES = ("min", "max", "mean", "last", "best", "none")
RUN_ID_FILE = "wandb_run_id"


def run_id(save_dir: str | None) -> str:
    """The W&B run id of the run directory ``save_dir``: the stored one, else a new one."""
    path = Path(save_dir or ".") / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id alphabet


def log_scalars(trainer: Any, scalars: Mapping[str, float], step: int) -> None:
    """Scalars to every logger at ``step`` (direct, so it works in any hook, ``on_train_end`` included)."""
    for logger in trainer.loggers:
        logger.log_metrics(dict(scalars), step=step)


def log_image(trainer: Any, key: str, path: Path, step: int) -> None:
    """An image file to every logger that can show images (W&B, TensorBoard)."""
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):  # WandbLogger
            logger.log_image(key=key, images=[str(path)], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
            import numpy as np
            from PIL import Image

            arr = np.asarray(Image.open(path).convert("RGB"))
            logger.experiment.add_image(key, arr, step, dataformats="HWC")


def log_table(trainer: Any, key: str, columns: list[str], data: list[list[Any]]) -> None:
    """A whole table to the loggers that keep tables (W&B; its tables are immutable, so the whole table)."""
    for logger in trainer.loggers:
        if hasattr(logger, "log_table"):
            logger.log_table(key=key, columns=columns, data=data)


def sweep_group() -> str | None:
    """Inside a Hydra multirun: a name shared by all of its jobs (the sweep directory); else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(hc.sweep.dir)).strip("-")[-120:] or None


def choice_tags(groups: Any) -> list[str]:
    """The chosen config file of each group, e.g. ["digits", "vp"] (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
    except (ImportError, ValueError):
        return []
    return [str(choices[g]) for g in (groups or []) if choices.get(g) not in (None, "null")]


class WandbLogger(_LightningWandbLogger):
    """``WandbLogger(project, name, group=None, job_type="train", tags=[], define_metrics={...}, ...)``."""

    def __init__(self, *, group: str | None = None, job_type: str | None = "train", tags: Any = None,
                 tag_choices: Any = None, define_metrics: Mapping[str, str] | None = None, **kwargs: Any):
        group = group or sweep_group()
        kwargs["name"], swept_tags = wandb_name_and_tags(kwargs.get("name"))  # a sweep job: + its swept values
        tags = [str(t) for t in [*(tags or []), *choice_tags(tag_choices), *swept_tags] if t is not None and str(t)]
        tags = list(dict.fromkeys(tags))
        metrics = {str(k): (None if v in (None, "none") else str(v)) for k, v in dict(define_metrics or {}).items()}
        for pattern, summary in metrics.items():
            if summary is not None and summary not in SUMMARIES:
                raise ValueError(f"logger.define_metrics.{pattern}={summary!r} is not a W&B summary; use one of {SUMMARIES}.")
        if kwargs.get("id") is None and kwargs.get("version") is None:
            kwargs["id"] = run_id(kwargs.get("save_dir"))
        super().__init__(group=group, job_type=job_type, tags=tags or None, **kwargs)  # resume="allow"
        self._define_metrics = metrics
        self._metrics_defined = False

    @property
    def experiment(self):  # noqa: ANN201  (wandb Run, or Lightning's dummy on ranks > 0)
        exp = super().experiment
        if not self._metrics_defined and rank_zero_only.rank == 0 and hasattr(exp, "define_metric"):
            self._metrics_defined = True
            if self._save_dir is not None and getattr(exp, "id", None):
                Path(self._save_dir).mkdir(parents=True, exist_ok=True)
                (Path(self._save_dir) / RUN_ID_FILE).write_text(str(exp.id))
            for pattern, summary in self._define_metrics.items():
                if summary is None:
                    exp.define_metric(pattern)
                else:
                    exp.define_metric(pattern, summary=summary)
        return exp
