"""The evaluation during training: a thin Lightning callback around the plain ``Evaluator``.

It prepares the evaluator once at the start of fitting (feature network, real-data statistics; under
DDP rank 0 computes and caches while the others wait), evaluates after every k-th epoch
(``evaluation.every_n_epochs``) and once more at the end of training, however the run stopped
(max_epochs, max_steps, max_time, early stopping, a signal), unless the last evaluation already saw
the final step. Every rank generates its share; rank 0 sends to the loggers

* the scalars ``eval/<metric>/<label>``, ``eval/nfe/<label>``, ``eval/seconds/<label>`` at the
  current global step (W&B gets min/max summaries for the metrics);
* each sampler's picture as ``eval/samples/<label>``;
* the whole comparison table so far (``eval/table``; a W&B Table), also written to
  ``<run dir>/eval/table.csv``.

The table travels in the checkpoint, so a resumed run continues it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from diffusion_lab.evaluation import EvalTable, Evaluator, epoch_of_step
from diffusion_lab.evaluation.table import DESCRIPTIVE, HIGHER_IS_BETTER, LOWER_IS_BETTER
from diffusion_lab.lightning.loggers import log_image, log_scalars, log_table
from diffusion_lab.lightning.module import steps_per_epoch

log = logging.getLogger(__name__)

NOT_LOGGED = DESCRIPTIVE  # row keys that are not scalars (they are columns of the table)


class EvaluationCallback(pl.Callback):
    """Runs ``evaluator`` during training (see the module docstring); ``out_dir``: the run directory."""

    def __init__(self, evaluator: Evaluator, out_dir: str | Path | None = None):
        self.evaluator = evaluator
        self.out_dir = out_dir
        self.last_step: int | None = None  # global step of the latest evaluation

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        barrier = trainer.strategy.barrier if trainer.world_size > 1 else None
        # a datamodule whose training items are not the data (reflow pairs) names the real data: ``evaluation_data``
        data = getattr(trainer.datamodule, "evaluation_data", None) or trainer.datamodule
        self.evaluator.prepare(data, pl_module.data_shape, pl_module.device, trainer.global_rank, barrier)
        if trainer.global_rank != 0:
            return
        for lg in trainer.loggers:  # W&B: summaries (min FID, ...) for this run's curves
            exp = getattr(lg, "experiment", None)
            if hasattr(exp, "define_metric"):
                for s in self.evaluator.samplers:
                    for m in self.evaluator.suite.names:
                        summary = "min" if m in LOWER_IS_BETTER else "max" if m in HIGHER_IS_BETTER else None
                        if summary:
                            exp.define_metric(f"eval/{m}/{s.label}", summary=summary)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking and self.evaluator.due(trainer.current_epoch, last=False):
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.evaluator.at_end and self.last_step != trainer.global_step:
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: pl.Trainer, pl_module: Any) -> None:
        t0 = time.perf_counter()
        step = trainer.global_step
        epoch = epoch_of_step(step, steps_per_epoch(trainer))
        out = Path(self.out_dir or trainer.default_root_dir)
        with pl_module.sampling(self.evaluator.use_ema) as denoiser:
            rows = self.evaluator.evaluate(denoiser, epoch, step, out, trainer.global_rank, trainer.world_size)
        self.last_step = step
        scalars: dict[str, float] = {"eval/wall_seconds": time.perf_counter() - t0}
        for row in rows:
            for k, v in row.items():
                if k not in NOT_LOGGED:
                    scalars[f"eval/{k}/{row['sampler']}"] = float(v)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
        if trainer.global_rank != 0:
            return
        log_scalars(trainer, scalars, step)
        for label, path in self.evaluator.pictures.items():
            log_image(trainer, f"eval/samples/{label}", path, step)
        table = self.evaluator.table
        table.write_csv(out / "eval" / "table.csv")
        log_table(trainer, "eval/table", table.columns(), table.data())
        for row in rows:
            log.info("eval epoch %d step %d %s", epoch, step,
                     json.dumps({k: row[k] for k in row if k not in ("epoch", "step")}))

    # ------------------------------------------------------------------ the table in the checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.evaluator.table.rows], "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.evaluator.table = EvalTable(state_dict.get("rows", []))
        self.last_step = state_dict.get("last_step")
