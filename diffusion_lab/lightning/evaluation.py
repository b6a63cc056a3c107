"""The evaluation callback: several samplers × metrics, every k epochs and at the end, on one CPU or
many GPUs, logged side by side.

For each sampler of ``samplers`` (same seeded noise for all of them):

1. rank r of W takes its share n_r of the N samples (n_r = N // W, plus one for the first N mod W
   ranks) and draws its initial noise x_T from a generator seeded with ``seed + r`` — so the ranks
   never duplicate samples and every sampler starts from the same x_T. Stochastic samplers draw their
   own noise from a second generator (seed ``seed + r + 1_000_003``) so that x_T does not depend on
   what a previous sampler consumed;
2. it generates in batches of ``batch_size`` (NFE counted by the denoiser that wraps the network,
   wall time measured), feeds the metrics with the features of each batch, and keeps the first
   ``grid_n`` samples of rank 0 for an image grid (the same noise for every sampler, so the grids line
   up cell by cell);
3. every rank calls ``compute`` (torchmetrics synchronises the states); rank 0's loggers get
   ``eval/<metric>/<label>`` (fid, kid, is, or swd, w2, mmd, nll), ``eval/nfe/<label>``,
   ``eval/seconds/<label>``, the grid (``<run dir>/samples/<label>/epoch_XXXX.png``), and a table with
   one row per (epoch, sampler) — a W&B Table when W&B logs, and always ``<run dir>/eval/table.csv``.

Images get FID / KID / IS on ``features`` = ``classifier`` (trained once on the dataset's labels and
cached) or ``inception`` (torch-fidelity's InceptionV3 from a local weights file); the real data's
features are computed once per (dataset, split, feature network, N) and cached on disk
(``diffusion_lab.metrics``). Low-dimensional data gets sliced Wasserstein and MMD against held-out
data and, on the Gaussian-mixture oracle, the exact NLL.

The one-time work (classifier training, real features) happens in ``on_fit_start``, not after an
epoch. ``prepare`` + ``evaluate`` run without a Trainer (``python -m diffusion_lab.evaluate``).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusion_lab.images import save_grid
from diffusion_lab.lightning.callbacks import _log_image
from diffusion_lab.metrics.features import FEATURE_NETWORKS, build_feature_network, extract_features
from diffusion_lab.metrics.fid import IMAGE_METRICS, ImageMetrics, real_features
from diffusion_lab.metrics.lowdim import LOWDIM_METRICS, LowDimMetrics
from diffusion_lab.samplers import Sampler

log = logging.getLogger(__name__)

SAMPLER_NOISE_OFFSET = 1_000_003
# metrics to minimise / maximise (W&B summaries, and the order of columns in the table)
LOWER_IS_BETTER = ("fid", "kid", "swd", "w2", "mmd", "nll")
HIGHER_IS_BETTER = ("is",)


def rank_share(n: int, rank: int, world: int) -> int:
    """How many of n samples rank r of W generates: N // W, plus one for the first N mod W ranks."""
    return n // world + (1 if rank < n % world else 0)


@dataclass
class GeneratedSamples:
    x: Tensor | None  # all samples (float32, CPU) when kept
    nfe: float        # network evaluations per sample trajectory (mean over batches)
    seconds: float    # wall time of the sampler calls


@torch.no_grad()
def generate_samples(module: Any, sampler: Sampler, n: int, seed: int, batch_size: int = 256, use_ema: bool = True,
                     progress: bool = True, on_batch: Callable[[Tensor], None] | None = None,
                     keep: bool = True) -> GeneratedSamples:
    """n samples in batches from seeded noise: x_T from a CPU generator seeded ``seed`` (drawn batch after
    batch, so every sampler gets the same x_T), the stochastic samplers' own noise from a second
    generator seeded ``seed + SAMPLER_NOISE_OFFSET``. ``on_batch(x)`` sees each batch (float32, on the
    module's device)."""
    device = module.device
    x_gen = torch.Generator(device="cpu").manual_seed(int(seed))
    s_gen = torch.Generator(device=device).manual_seed(int(seed) + SAMPLER_NOISE_OFFSET)
    shape = tuple(module.data_shape)
    nfes, seconds, kept = [], 0.0, []
    starts = range(0, n, batch_size)
    bar = tqdm(starts, desc=f"sampling {sampler.label}", leave=False, disable=not progress or len(starts) < 2)
    for s in bar:
        bs = min(batch_size, n - s)
        x_T = module.schedule.prior_sample((bs, *shape), generator=x_gen, dtype=torch.float64)
        res = module.generate(bs, sampler=sampler, generator=s_gen, use_ema=use_ema, x_T=x_T.to(device),
                              progress=progress)
        nfes.append(res.nfe)
        seconds += res.seconds
        x = res.x.float()
        if on_batch is not None:
            on_batch(x)
        if keep:
            kept.append(x.cpu())
    return GeneratedSamples(torch.cat(kept) if kept else None, float(sum(nfes) / max(1, len(nfes))), seconds)


def _as_samplers(samplers: Any) -> list[Sampler]:
    """None | Sampler | list of Samplers | mapping key → Sampler (Hydra-instantiated or plain dicts)."""
    if samplers is None:
        return []
    if isinstance(samplers, Sampler):
        return [samplers]
    items: Iterable[Any] = samplers.values() if isinstance(samplers, Mapping) else samplers
    out = []
    for s in items:
        if s is None:
            continue
        if not isinstance(s, Sampler):
            if isinstance(s, Mapping) or hasattr(s, "items"):
                from hydra.utils import instantiate

                s = instantiate(s)
            if not isinstance(s, Sampler):
                raise ValueError(f"evaluation.samplers has an entry of type {type(s).__name__}; each entry must be a "
                                 "sampler config (_target_: diffusion_lab.samplers.Sampler, name, steps, label).")
        out.append(s)
    return out


class EvaluationCallback(pl.Callback):
    """Samplers × metrics every ``every_n_epochs`` epochs and at the end of training.

    Args:
        samplers: sampler configs (a mapping name → config, or a list); None = the module's own sampler.
        n: number of samples N per sampler (all ranks together) fed to the metrics.
        grid_n: how many of them (rank 0's first) make the image grid; 0 for none.
        every_n_epochs: evaluate after epochs k, 2k, ...; ``at_end`` also after the last epoch.
        seed: noise seed (rank r uses seed + r).
        use_ema: sample with the EMA weights.
        metrics: ``auto`` (images: fid, kid, is; vectors: swd, mmd and nll where the data density is known)
            or a list of names; an empty list gives grids, NFE and timings only.
        features: ``classifier`` or ``inception`` (feature network of FID / KID / IS).
        inception_weights: local path of torch-fidelity's Inception weights file (null: torch's hub cache).
        cache_dir: where the classifier and the real-data features are cached (null: $DIFFUSION_LAB_CACHE
            or ~/.cache/diffusion_lab).
        n_real: number of real items for the statistics (null: N); real_split: train | val | test (null:
            train for images, val — held-out — for vectors).
        batch_size / feature_batch_size: sampling and feature-extraction batch sizes per rank.
        kid_subset_size, kid_subsets, is_splits, n_projections: metric options.
        classifier: options of the feature classifier's training (widths, feature_dim, epochs, lr, ...).
        save_samples: also write each rank's samples to ``eval/samples/<label>/epoch_XXXX_rank<r>.npz``.
        out_dir: where grids and tables go (null: the trainer's run directory).
        progress: progress bars for sampling and feature extraction.
    """

    def __init__(self, samplers: Any = None, n: int = 256, grid_n: int = 64, every_n_epochs: int = 5, at_end: bool = True,
                 seed: int = 0, use_ema: bool = True, metrics: str | Sequence[str] = "auto", features: str = "classifier",
                 inception_weights: str | None = None, cache_dir: str | None = None, n_real: int | None = None,
                 real_split: str | None = None, batch_size: int = 256, feature_batch_size: int = 256,
                 kid_subset_size: int = 1000, kid_subsets: int = 100, is_splits: int = 10, n_projections: int = 256,
                 classifier: Mapping | None = None, save_samples: bool = False, out_dir: str | None = None,
                 progress: bool = True):
        for key, val, lo in (("n", n, 1), ("every_n_epochs", every_n_epochs, 1), ("batch_size", batch_size, 1),
                             ("feature_batch_size", feature_batch_size, 1), ("grid_n", grid_n, 0)):
            if not isinstance(val, int) or val < lo:
                raise ValueError(f"evaluation.{key}={val!r} must be an integer ≥ {lo}.")
        if features not in FEATURE_NETWORKS:
            raise ValueError(f"evaluation.features={features!r} is not a feature network; choose one of {FEATURE_NETWORKS}.")
        if isinstance(metrics, str) and metrics != "auto":
            raise ValueError(f"evaluation.metrics={metrics!r}: give 'auto' or a list such as [fid, kid, is].")
        if real_split not in (None, "train", "val", "test"):
            raise ValueError(f"evaluation.real_split={real_split!r} is not a split; use train, val, test or null.")
        self.sampler_cfg = samplers
        self.samplers = _as_samplers(samplers)
        labels = [s.label for s in self.samplers]
        dup = sorted({lb for lb in labels if labels.count(lb) > 1})
        if dup:
            raise ValueError(f"evaluation.samplers has two samplers labelled {dup[0]!r}; give each a distinct label.")
        self.n, self.grid_n, self.every_n_epochs, self.at_end = n, grid_n, every_n_epochs, at_end
        self.seed, self.use_ema, self.metrics_cfg, self.features = int(seed), bool(use_ema), metrics, features
        self.inception_weights, self.cache_dir, self.n_real, self.real_split = inception_weights, cache_dir, n_real, real_split
        self.batch_size, self.feature_batch_size = batch_size, feature_batch_size
        self.kid_subset_size, self.kid_subsets, self.is_splits, self.n_projections = kid_subset_size, kid_subsets, is_splits, n_projections
        self.classifier_cfg = dict(classifier or {})
        self.save_samples, self.out_dir, self.progress = bool(save_samples), out_dir, bool(progress)
        self.rows: list[dict[str, Any]] = []  # the comparison table, one row per (epoch, sampler)
        self.last_grids: dict[str, Path] = {}
        self._prepared_for: Any = None
        self.feature_net = None
        self._real: Tensor | None = None
        self._mixture = None
        self.metric_names: list[str] = []

    # ------------------------------------------------------------------ set-up (once)
    def resolve_samplers(self, module: Any) -> list[Sampler]:
        return self.samplers or [module.sampler]

    def resolve_metrics(self, data_shape: Sequence[int], mixture: Any) -> list[str]:
        image = len(data_shape) == 3
        if self.metrics_cfg == "auto":
            return ["fid", "kid", "is"] if image else ["swd", "w2", "mmd"] + (["nll"] if mixture is not None else [])
        names = [str(m) for m in self.metrics_cfg]
        allowed = IMAGE_METRICS if image else LOWDIM_METRICS
        for m in names:
            if m not in allowed:
                what = "images" if image else f"vectors of shape {tuple(data_shape)}"
                raise ValueError(f"evaluation.metrics has {m!r}, which does not apply to {what}; choose from {allowed}.")
        return names

    def prepare(self, module: Any, datamodule: Any, rank: int = 0, world: int = 1,
                barrier: Callable[[], None] | None = None) -> None:
        """Build the feature network and load (or compute and cache) the real data's features; under
        DDP rank 0 computes what is missing and the others wait at ``barrier``, then read the cache."""
        datamodule.setup()
        self._mixture = getattr(datamodule, "mixture", None)
        self.metric_names = self.resolve_metrics(module.data_shape, self._mixture)
        image = len(module.data_shape) == 3
        device = module.device
        if image and any(m in IMAGE_METRICS for m in self.metric_names):
            self.feature_net = build_feature_network(
                self.features, datamodule, inception_weights=self.inception_weights, cache_dir=self.cache_dir,
                progress=self.progress and rank == 0, barrier=barrier, is_writer=rank == 0,
                classifier=self.classifier_cfg).to(device)
            self._real = real_features(self.feature_net, datamodule, self.real_split or "train", self.n_real or self.n,
                                       cache_dir=self.cache_dir, batch_size=self.feature_batch_size, device=device,
                                       progress=self.progress and rank == 0, is_writer=rank == 0, barrier=barrier)
            d = self.feature_net.num_features
            if rank == 0 and "fid" in self.metric_names and min(self.n, len(self._real)) <= d:
                log.warning("evaluation: N=%d samples for %d-d features — the covariances are singular and FID is "
                            "biased and ill-conditioned; use evaluation.n > %d (50k for a headline Inception FID)",
                            min(self.n, len(self._real)), d, d)
        elif not image and self.metric_names:
            self._real = datamodule.sample_data(self.n_real or max(self.n, 2000), self.real_split or "val")
        self._prepared_for = (id(module), id(datamodule))

    # ------------------------------------------------------------------ the evaluation itself
    def _new_metrics(self, module: Any, rank: int, world: int) -> ImageMetrics | LowDimMetrics | None:
        if not self.metric_names:
            return None
        device = module.device
        if len(module.data_shape) == 3:
            m = ImageMetrics(self.metric_names, self.feature_net.num_features, n_fake=self.n, n_real=len(self._real),
                             kid_subset_size=self.kid_subset_size, kid_subsets=self.kid_subsets,
                             is_splits=self.is_splits, seed=self.seed, device=device)
            # contiguous chunks in rank order: the gathered states equal the single-process ones
            m.update_real(torch.tensor_split(self._real, world)[rank])
            return m
        return LowDimMetrics(self.metric_names, self._real, mixture=self._mixture, n_projections=self.n_projections,
                             seed=self.seed, device=device)

    @torch.no_grad()
    def evaluate(self, module: Any, datamodule: Any, epoch: int, rank: int = 0, world: int = 1,
                 out_dir: str | Path | None = None, samplers: Sequence[Sampler] | None = None) -> list[dict[str, Any]]:
        """Run every sampler on this rank's share, compute the metrics (every rank must call this),
        write the grids (rank 0) and return one row per sampler (the same on every rank)."""
        if self._prepared_for != (id(module), id(datamodule)):
            self.prepare(module, datamodule, rank, world)
        out = Path(out_dir or self.out_dir or ".")
        share = rank_share(self.n, rank, world)
        self.last_grids = {}
        rows = []
        for sampler in samplers or self.resolve_samplers(module):
            rows.append(self._evaluate_one(module, sampler, epoch, rank, world, share, out))
        return rows

    def _evaluate_one(self, module: Any, sampler: Sampler, epoch: int, rank: int, world: int, share: int,
                      out: Path) -> dict[str, Any]:
        device = module.device
        metrics = self._new_metrics(module, rank, world)
        shape = tuple(module.data_shape)
        grid: list[Tensor] = []
        feat_seconds = 0.0

        def consume(x: Tensor) -> None:
            nonlocal feat_seconds
            if rank == 0 and sum(len(g) for g in grid) < self.grid_n:
                grid.append(x[: self.grid_n - sum(len(g) for g in grid)].cpu())
            if metrics is not None:
                t0 = time.perf_counter()
                if isinstance(metrics, ImageMetrics):
                    f, lg = extract_features(self.feature_net, x, self.feature_batch_size, device=device)
                    metrics.update_fake(f, lg)
                else:
                    metrics.update_fake(x)
                feat_seconds += time.perf_counter() - t0

        res = generate_samples(module, sampler, share, seed=self.seed + rank, batch_size=self.batch_size,
                               use_ema=self.use_ema, progress=self.progress and rank == 0, on_batch=consume,
                               keep=self.save_samples)
        nfe, seconds = res.nfe, res.seconds
        if self.save_samples and res.x is not None:
            import numpy as np

            path = out / "eval" / "samples" / sampler.label / f"epoch_{epoch:04d}_rank{rank}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, x=res.x.numpy(), rank=rank, world=world, seed=self.seed + rank)
        t0 = time.perf_counter()
        values = metrics.compute() if metrics is not None else {}
        compute_seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": int(epoch), "sampler": sampler.label, "kind": sampler.kind,
                               "nfe": float(nfe), "seconds": seconds, **values,
                               "feature_seconds": feat_seconds, "metric_seconds": compute_seconds, "n": self.n,
                               "steps": sampler.steps}
        if rank == 0 and grid:
            self.last_grids[sampler.label] = self._save_grid(torch.cat(grid), shape, out / "samples" / sampler.label
                                                             / f"epoch_{epoch:04d}.png")
        return row

    @staticmethod
    def _save_grid(x: Tensor, shape: tuple[int, ...], path: Path) -> Path | None:
        if len(shape) == 3:
            return save_grid(x, path)
        if shape == (2,):  # 2-D data: a scatter plot stands in for the grid
            from matplotlib.figure import Figure  # no pyplot: no global backend state

            path.parent.mkdir(parents=True, exist_ok=True)
            fig = Figure(figsize=(4, 4), dpi=80)
            ax = fig.subplots()
            ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=4, alpha=0.6)
            ax.set_aspect("equal")
            fig.tight_layout()
            fig.savefig(path)
            return path
        return None

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_samplers(trainer, pl_module)
        barrier = trainer.strategy.barrier if trainer.world_size > 1 else None
        self.prepare(pl_module, trainer.datamodule, trainer.global_rank, trainer.world_size, barrier=barrier)
        if trainer.global_rank == 0:
            for lg in trainer.loggers:  # W&B: summaries (min FID, ...) for this run's curves
                exp = getattr(lg, "experiment", None)
                if hasattr(exp, "define_metric"):
                    for s in self.resolve_samplers(pl_module):
                        for m in self.metric_names:
                            summary = "min" if m in LOWER_IS_BETTER else "max" if m in HIGHER_IS_BETTER else None
                            if summary:
                                exp.define_metric(f"eval/{m}/{s.label}", summary=summary)

    def _check_samplers(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Incompatible evaluation samplers fail at start-up, not after the first epochs."""
        from diffusion_lab.config_checks import check_components

        for s in self.samplers:
            check_components(dataset=trainer.datamodule, schedule=pl_module.schedule,
                             parameterization=pl_module.parameterization, loss=pl_module.loss, net=pl_module.net,
                             sampler=s, data_shape=tuple(pl_module.data_shape))

    def due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        return (epoch + 1) % self.every_n_epochs == 0 or (self.at_end and (last or trainer.should_stop))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.due(trainer):
            return
        t0 = time.perf_counter()
        epoch = trainer.current_epoch
        out = Path(self.out_dir or trainer.default_root_dir)
        rows = self.evaluate(pl_module, trainer.datamodule, epoch, trainer.global_rank, trainer.world_size, out)
        wall = time.perf_counter() - t0
        scalars: dict[str, float] = {"eval/wall_seconds": wall}
        for row in rows:
            label = row["sampler"]
            for k, v in row.items():
                if k in ("epoch", "sampler", "kind", "n", "steps", "feature_seconds", "metric_seconds"):
                    continue
                scalars[f"eval/{k}/{label}"] = float(v)
        # every rank holds the same values (compute ran on all of them); Lightning's loggers write on rank 0
        pl_module.log_dict(scalars, on_step=False, on_epoch=True, sync_dist=False)
        self.rows.extend(rows)
        if trainer.global_rank == 0:
            for row in rows:
                path = self.last_grids.get(row["sampler"])
                if path is not None:
                    _log_image(trainer, f"eval/samples/{row['sampler']}", path, epoch)
            self._write_table(out / "eval" / "table.csv")
            self._log_table(trainer)
            for row in rows:
                log.info("eval epoch %d %s", epoch, json.dumps({k: row[k] for k in row if k != "epoch"}))

    # ------------------------------------------------------------------ the comparison table
    def table(self) -> tuple[list[str], list[list[Any]]]:
        """(columns, rows): epoch, sampler, kind, nfe, the metrics, seconds, ..."""
        first = ["epoch", "sampler", "kind", "nfe"]
        metric_cols: list[str] = []
        rest: list[str] = []
        for row in self.rows:
            for k in row:
                if k in first or k in metric_cols or k in rest:
                    continue
                (rest if k in ("seconds", "feature_seconds", "metric_seconds", "n", "steps") else metric_cols).append(k)
        cols = first + metric_cols + [c for c in ("seconds", "feature_seconds", "metric_seconds", "n", "steps") if c in rest]
        return cols, [[row.get(c) for c in cols] for row in self.rows]

    def _write_table(self, path: Path) -> None:
        cols, data = self.table()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows(data)

    def _log_table(self, trainer: pl.Trainer) -> None:
        cols, data = self.table()
        for lg in trainer.loggers:
            if hasattr(lg, "log_table"):  # WandbLogger: the whole table so far (W&B tables are immutable)
                lg.log_table(key="eval/table", columns=cols, data=data)

    # ------------------------------------------------------------------ checkpoint of the table
    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
