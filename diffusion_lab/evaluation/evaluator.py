"""The evaluator: samplers × metrics on one model, on one process or every rank of a data-parallel job.

The samplers are the run's selected sampler (``sampler=`` on the command line, labelled
``<name>_<steps>``) first, then the ones ``conf/evaluation`` adds beside it (``evaluation=compare``:
SDE Euler–Maruyama, EDM's Heun, DPM-Solver++(2M)). For each, from the same seeded noise
(``generation``): rank r generates its share of the N samples, feeds the metrics
(``suite.MetricSuite``), computes them (every rank: torchmetrics synchronises), and rank 0 saves the
picture ``<out>/samples/<label>/epoch_XXXX.png``. The result is one row per sampler — epoch, step,
label, SDE/ODE, NFE, the metrics, seconds — added to the run's ``EvalTable``.

Conditional generation (``set_conditioning``, from the run layer): a class-conditional model, or one
sampled with guidance (``conf/guidance``), gets class labels — class-balanced over the job (sample i
has label i mod K), or ``guidance.class_label`` for all — and the guidance is applied to the denoiser
while the samples are drawn; the rows then carry ``guidance``, ``guidance_scale``, ``passes`` (per-sample
network passes: classifier-free guidance batches two into one network call) and, for classifier
guidance, ``classifier_nfe``. ``guidance_scales`` evaluates each sampler at several scales (one row
each, labelled ``<sampler>_<guidance><scale>``): the guidance-scale trade-off in one evaluation.

``likelihood`` (``evaluation.likelihood``, see ``likelihood``) adds the rows ``likelihood_ode`` (PF-ODE
NLL and bits/dim) and, for discrete schedules, ``likelihood_vlb`` after the samplers' rows.

Samplers × NFE (``nfe``, see ``nfe_sweep``): each sampler of ``samplers`` is evaluated at every NFE budget
of its kind (``nfe: [10, 20, 50]`` or ``nfe: {ODE: [...], SDE: [...]}``), an adaptive one at each of
``tolerances``; every row carries its ``family`` (the curve: the label without the step count), so that the
table, the plot and the W&B layout of an SDE-vs-ODE study group rows by family and kind.

Nothing here knows Lightning: ``python -m diffusion_lab.evaluate`` calls it directly and the training
callback (``lightning.evaluation``) decides when (``due``) and hands the rows to the loggers.
"""

from __future__ import annotations

import copy
import inspect
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.evaluation.generation import generate_samples, rank_labels, rank_share
from diffusion_lab.evaluation.likelihood import LikelihoodEvaluation
from diffusion_lab.evaluation.nfe_sweep import expand, family_of
from diffusion_lab.evaluation.suite import MetricSuite
from diffusion_lab.evaluation.table import EvalTable
from diffusion_lab.images import save_picture
from diffusion_lab.samplers import Sampler


def epoch_of_step(step: int, steps_per_epoch: int | None) -> int:
    """The 0-based index of the epoch whose steps include global step ``step`` (step 0: epoch 0): how an
    evaluation after that step is labelled, in training and by ``python -m diffusion_lab.evaluate``."""
    if not steps_per_epoch or step <= 0:
        return 0
    return (int(step) - 1) // int(steps_per_epoch)


def as_samplers(samplers: Any) -> list[Sampler]:
    """None | Sampler | list of Samplers | mapping key → Sampler (as Hydra instantiates ``evaluation.samplers``)."""
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
            raise ValueError(f"evaluation.samplers has an entry of type {type(s).__name__}; each entry must be a "
                             "sampler config (_target_: diffusion_lab.samplers.Sampler, name, steps, label).")
        out.append(s)
    return out


class Evaluator:
    """Samplers × metrics (see the module docstring).

    Args:
        samplers: samplers evaluated beside the selected one (a mapping name → Sampler, or a list).
        selected: the run's configured sampler, evaluated first (the run layer passes it).
        n: samples per sampler, all ranks together; grid_n: how many of rank 0's make the picture.
        every_n_epochs, at_end: when training evaluates (``due``); at_end also after the last step,
            whatever stopped the run.
        seed: noise seed (rank r uses seed + r); use_ema: sample with the EMA weights.
        batch_size: sampling batch per rank; save_samples: also write each rank's samples as .npz.
        progress: progress bars for sampling and feature extraction.
        likelihood: the options of ``likelihood.LikelihoodEvaluation`` (None: no likelihood rows).
        guidance_scales: evaluate every sampler at each of these guidance scales (None: the guidance's own).
        nfe: evaluate each sampler of ``samplers`` at these NFE budgets (a list, or a mapping ODE/SDE → list;
            None: at its configured steps); tolerances: the rtol = atol values of adaptive samplers then.
        include_selected: evaluate the selected sampler too (false: only ``samplers``, e.g. in a study).
        **metric_options: those of ``suite.MetricSuite`` (metrics, features, inception_weights, ...).
    """

    def __init__(self, samplers: Any = None, selected: Sampler | None = None, n: int = 256, grid_n: int = 64,
                 every_n_epochs: int = 10, at_end: bool = True, seed: int = 0, use_ema: bool = True,
                 batch_size: int = 256, save_samples: bool = False, progress: bool = True,
                 likelihood: Mapping | None = None, guidance_scales: Sequence[float] | None = None,
                 nfe: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
                 tolerances: Sequence[float] = (1e-2, 1e-3, 1e-4), include_selected: bool = True,
                 **metric_options: Any):
        for key, val, lo in (("n", n, 1), ("every_n_epochs", every_n_epochs, 1), ("batch_size", batch_size, 1),
                             ("grid_n", grid_n, 0), ("seed", seed, 0)):
            if not isinstance(val, int) or isinstance(val, bool) or val < lo:
                raise ValueError(f"evaluation.{key}={val!r} must be an integer ≥ {lo}.")
        extras = as_samplers(samplers)
        if nfe is not None:
            extras = expand(extras, nfe, tuple(tolerances))
        if not include_selected:
            selected = None
        self.samplers = ([selected] if selected is not None else []) + [
            s for s in extras if selected is None or s.label != selected.label]
        if not include_selected and not self.samplers:
            raise ValueError("evaluation.include_selected=false and evaluation.samplers is empty: nothing to evaluate; "
                             "list samplers under evaluation.samplers or set include_selected=true.")
        labels = [s.label for s in self.samplers]
        dup = sorted({lb for lb in labels if labels.count(lb) > 1})
        if dup:
            raise ValueError(f"evaluation.samplers has two samplers labelled {dup[0]!r}; give each a distinct label.")
        self.n, self.grid_n, self.every_n_epochs, self.at_end = n, grid_n, every_n_epochs, bool(at_end)
        self.seed, self.use_ema, self.batch_size = seed, bool(use_ema), batch_size
        self.save_samples, self.progress = bool(save_samples), bool(progress)
        known = set(inspect.signature(MetricSuite).parameters) - {"progress"}
        unknown = sorted(set(metric_options) - known)
        if unknown:
            raise ValueError(f"evaluation.{unknown[0]} is not an evaluation setting; the settings are n, grid_n, "
                             f"every_n_epochs, at_end, seed, use_ema, batch_size, save_samples, progress, samplers, "
                             f"likelihood, guidance_scales, nfe, tolerances, include_selected and "
                             f"{', '.join(sorted(known))}.")
        self.suite = MetricSuite(progress=progress, **metric_options)
        self.likelihood = self._likelihood(likelihood)
        if guidance_scales is not None:
            scales = list(guidance_scales)
            if not scales or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in scales):
                raise ValueError(f"evaluation.guidance_scales={scales!r} must be a non-empty list of numbers ≥ 0 (or null).")
            guidance_scales = [float(v) for v in scales]
        self.guidance_scales = guidance_scales
        self.guidance: Any = None            # set_conditioning: the guidance applied while sampling
        self.num_classes: int | None = None  # set_conditioning: samples get class labels when set
        self.class_label: int | None = None
        self.table = EvalTable()
        self.pictures: dict[str, Path] = {}  # label → the picture of the latest evaluation (rank 0)
        self.data_shape: tuple[int, ...] = ()
        self.value_range = "[-1,1]"
        self.device = torch.device("cpu")

    @staticmethod
    def _likelihood(options: Mapping | None) -> LikelihoodEvaluation | None:
        if options is None:
            return None
        known = set(inspect.signature(LikelihoodEvaluation).parameters)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"evaluation.likelihood.{unknown[0]} is not a likelihood setting; the settings are "
                             f"{', '.join(sorted(known))}.")
        return LikelihoodEvaluation(**options)

    def set_conditioning(self, guidance: Any = None, num_classes: int | None = None,
                         class_label: int | None = None) -> None:
        """Sample for class labels (``num_classes`` set: class-balanced, or ``class_label`` for all) with
        ``guidance`` (None: the model's own conditional prediction). The run layer calls this."""
        if guidance is not None and num_classes is None:
            raise ValueError("guidance needs class labels: give the number of classes.")
        if self.guidance_scales is not None and guidance is None:
            raise ValueError("evaluation.guidance_scales is set but there is no guidance; choose guidance=cfg or "
                             "guidance=classifier, or set evaluation.guidance_scales=null.")
        self.guidance, self.num_classes, self.class_label = guidance, num_classes, class_label

    def _guidances(self) -> list[Any]:
        """The guidance of each row per sampler: the configured one, or one copy per scale of the sweep."""
        if self.guidance is None or self.guidance_scales is None:
            return [self.guidance]
        out = []
        for scale in self.guidance_scales:
            g = copy.copy(self.guidance)
            g.scale = scale
            out.append(g)
        return out

    # ------------------------------------------------------------------ when
    def due(self, epoch: int, last: bool) -> bool:
        """Evaluate after epoch ``epoch`` (0-based)? Every k-th epoch, and at the end if ``at_end``."""
        return (epoch + 1) % self.every_n_epochs == 0 or (self.at_end and last)

    # ------------------------------------------------------------------ once
    def check(self, data_shape: Sequence[int], has_density: bool, schedule: Any = None,
              learned_variance: bool = False) -> None:
        """Start-up checks that need no data (metric names, N against memory, the likelihood rows)."""
        self.suite.check(data_shape, has_density, self.n, labelled=self.num_classes is not None)
        if self.likelihood is not None and schedule is not None:
            self.likelihood.check(schedule, learned_variance)

    def prepare(self, datamodule: Any, data_shape: Sequence[int], device: torch.device | str = "cpu", rank: int = 0,
                barrier: Callable[[], None] | None = None) -> None:
        """Feature network and real-data statistics (cached on disk); call before ``evaluate``."""
        from diffusion_lab.metrics.features import value_range_of

        self.data_shape, self.device = tuple(data_shape), torch.device(device)
        self.value_range = value_range_of(datamodule)
        self.suite.labelled = self.num_classes is not None
        classifier = getattr(self.guidance, "classifier", None)
        if isinstance(classifier, torch.nn.Module):  # classifier guidance runs its classifier where the samples are
            classifier.to(self.device)
        self.suite.prepare(datamodule, self.data_shape, self.n, self.seed, self.device, rank=rank, barrier=barrier)
        if self.likelihood is not None:
            self.likelihood.prepare(datamodule, self.data_shape)

    # ------------------------------------------------------------------ each evaluation
    @torch.no_grad()
    def evaluate(self, denoiser: Denoiser, epoch: int, step: int, out_dir: str | Path, rank: int = 0,
                 world: int = 1) -> list[dict[str, Any]]:
        """Every sampler on this rank's share (``denoiser``'s network in eval mode); every rank must call
        this. Returns one row per sampler (the same on every rank) and adds them to ``table``."""
        out = Path(out_dir)
        self.pictures = {}
        rows = [self._evaluate_one(denoiser, s, g, epoch, step, out, rank, world)
                for s in self.samplers for g in self._guidances()]
        if self.likelihood is not None:
            for row in self.likelihood.evaluate(denoiser, rank, world, self.device):
                rows.append({"epoch": int(epoch), "step": int(step), **row})
        self.table.extend(rows)
        return rows

    def _evaluate_one(self, denoiser: Denoiser, sampler: Sampler, guidance: Any, epoch: int, step: int, out: Path,
                      rank: int, world: int) -> dict[str, Any]:
        acc = self.suite.accumulator(rank, world)
        grid: list[Tensor] = []
        feature_seconds = 0.0
        label = sampler.label
        if self.guidance_scales is not None:
            label = f"{sampler.label}_{guidance.name}{guidance.scale:g}"
        labels = (rank_labels(self.n, rank, world, self.num_classes, self.class_label)
                  if self.num_classes is not None else None)
        seen = 0

        def consume(x: Tensor) -> None:
            nonlocal feature_seconds, seen
            kept = sum(len(g) for g in grid)
            if rank == 0 and kept < self.grid_n:
                grid.append(x[: self.grid_n - kept].cpu())
            if acc is not None:
                t0 = time.perf_counter()
                acc.feed(x, None if labels is None else labels[seen:seen + len(x)])
                feature_seconds += time.perf_counter() - t0
            seen += len(x)

        previous = denoiser.guidance
        denoiser.guidance = guidance
        classifier_calls = getattr(guidance, "calls", None)
        try:
            res = generate_samples(denoiser, sampler, rank_share(self.n, rank, world), self.data_shape, self.seed + rank,
                                   device=self.device, batch_size=self.batch_size, progress=self.progress and rank == 0,
                                   on_batch=consume, keep=self.save_samples, labels=labels)
        finally:
            denoiser.guidance = previous
        if self.save_samples and res.x is not None:
            import numpy as np

            path = out / "eval" / "samples" / label / f"epoch_{epoch:04d}_rank{rank}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            extra = {} if labels is None else {"labels": labels.numpy()}
            np.savez_compressed(path, x=res.x.numpy(), rank=rank, world=world, seed=self.seed + rank, **extra)
        t0 = time.perf_counter()
        values = acc.compute() if acc is not None else {}
        metric_seconds = time.perf_counter() - t0
        if rank == 0 and grid:
            picture = save_picture(torch.cat(grid), self.data_shape,
                                   out / "samples" / label / f"epoch_{epoch:04d}.png", self.value_range)
            if picture is not None:
                self.pictures[label] = picture
        row = {"epoch": int(epoch), "step": int(step), "sampler": label, "kind": sampler.kind, "nfe": float(res.nfe),
               "family": family_of(sampler)}
        if guidance is not None:
            row.update(guidance=guidance.name, guidance_scale=guidance.scale, passes=res.passes)
            if classifier_calls is not None:
                batches = max(1, -(-rank_share(self.n, rank, world) // self.batch_size))
                row["classifier_nfe"] = (guidance.calls - classifier_calls) / batches
        return {**row, **values, "seconds": res.seconds, "feature_seconds": feature_seconds,
                "metric_seconds": metric_seconds, "n": self.n, "steps": sampler.steps}
