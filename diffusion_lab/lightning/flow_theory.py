"""A training-time view of two theorems (``diffusion_lab.flows.diagnostics``): every ``every_n_steps``
optimizer steps (and before the first), on a Gaussian-mixture dataset (dataset=gmm, whose score is exact),
log

* ``theory/sm``, ``theory/dsm``, ``theory/gap``, ``theory/gap_constant``, ``theory/cross``: exact score
  matching and denoising score matching of the *trained* weights θ on fixed draws (Vincent 2011);
* ``theory/w2``, ``theory/w2_floor``, ``theory/w2_bound``, ``theory/w2_bound_one_sided``,
  ``theory/w2_bound_no_growth``, ``theory/sqrt_jsm_mean``, ``theory/lipschitz_max``: the actual W₂ between
  ``n_w2`` samples of the *EMA* model (the one that is sampled; dopri5, rtol = atol = 1e-5) and the data,
  and the Kwon–Fan–Lee bound on it for the same EMA model (Kwon, Fan & Lee 2022).

Each row also goes to ``<run dir>/theory/diagnostics.csv`` (``experiments/flow_theory`` plots it).
Enable with ``+callbacks.flow_theory=...`` or ``experiment=gmm_flow_theory``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytorch_lightning as pl
import torch

from diffusion_lab.errors import ConfigError


class FlowTheoryDiagnostics(pl.Callback):
    def __init__(self, every_n_steps: int = 50, n: int = 4000, n_w2: int = 2000, n_t: int = 32,
                 n_lipschitz: int = 500, seed: int = 0, out_dir: str | None = None):
        if every_n_steps < 1 or n < 2 or n_w2 < 2 or n_t < 1 or n_lipschitz < 1:
            raise ValueError("callbacks.flow_theory: every_n_steps, n, n_w2, n_t and n_lipschitz must be positive.")
        self.every, self.n, self.n_w2, self.n_t, self.n_lip, self.seed = (int(every_n_steps), int(n), int(n_w2),
                                                                           int(n_t), int(n_lipschitz), int(seed))
        self.out_dir = out_dir
        self._last_step = -1

    def _mixture(self, trainer: pl.Trainer):
        mixture = getattr(trainer.datamodule, "mixture", None)
        if mixture is None:
            raise ConfigError("callbacks.flow_theory needs a dataset whose score is known exactly (dataset=gmm); "
                              "remove the callback or choose dataset=gmm.")
        return mixture

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mixture(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._measure(trainer, pl_module)

    @torch.no_grad()
    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from diffusion_lab.flows.diagnostics import sm_dsm, w2_actual, w2_bound
        from diffusion_lab.samplers import Sampler

        step = int(trainer.global_step)
        if step == self._last_step:
            return
        self._last_step = step
        mixture = self._mixture(trainer)
        row: dict[str, float] = {"step": step}
        with pl_module.sampling(use_ema=False) as den:
            row.update(sm_dsm(den, mixture, self.n, self.seed))
        with pl_module.sampling(use_ema=True) as den:
            b = w2_bound(den, mixture, self.n_w2, self.n_t, self.n_lip, self.seed)
            z = den.schedule.prior_sample((self.n_w2, mixture.dim), generator=torch.Generator().manual_seed(self.seed),
                                          dtype=torch.float64)
            x = Sampler("dopri5", steps=2, rtol=1e-5, atol=1e-5)(den, x_T=z.to(pl_module.device), progress=False).x
        w2, floor = w2_actual(x.cpu(), mixture, self.seed)
        row.update(w2=w2, w2_floor=floor, w2_bound=b.bound, w2_bound_one_sided=b.bound_one_sided,
                   w2_bound_no_growth=b.bound_no_growth, sqrt_jsm_mean=float(b.j_sm.sqrt().mean()),
                   velocity_error_mean=float(b.velocity_error.mean()), lipschitz_max=float(b.lipschitz.max()),
                   lipschitz_mean=float(b.lipschitz.mean()), one_sided_mean=float(b.one_sided.mean()))
        for logger in trainer.loggers:  # straight to the loggers: Lightning's self.log is not allowed at train start
            logger.log_metrics({f"theory/{k}": float(v) for k, v in row.items() if k != "step"}, step=step)
        out = Path(self.out_dir or trainer.default_root_dir) / "theory"
        out.mkdir(parents=True, exist_ok=True)
        path = out / "diagnostics.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
