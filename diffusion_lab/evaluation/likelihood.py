"""The likelihood rows of an evaluation: the model's negative log-likelihood and bits/dim on held-out
data, each with its NFE and seconds like a sampler's row.

* ``likelihood_ode``: the PF-ODE log-likelihood (``diffusion_lab.likelihood``: exact divergence for
  vectors, Hutchinson for images unless ``divergence`` says otherwise, an adaptive torchdiffeq solver,
  the prior term), any schedule and parameterization. Images are dequantized uniformly within their
  quantization bins (``levels`` of the datamodule: 256 for 8-bit images, 17 for the 8x8 digits) and
  reported as bits/dim of the discrete data; vectors as the continuous density's −log p/(D ln 2).
* ``likelihood_vlb``: the discrete-time variational bound L_T + Σ L_{i−1} + L_0 in bits/dim
  (``losses.vlb.variational_bound``; Ho et al. 2020 §3.3, Nichol & Dhariwal 2021 §2–3: learned
  variances when the model has them, the discretized decoder with the data's own levels for images in
  [−1, 1]) — for discrete schedules
  (``vlb: auto``); T network calls per item.

``nll`` is in nats per item and equals bpd·D·ln 2 (for images: the bound on −log P of the 8-bit
data, not the continuous density). It is −E_data log p_model; the ``nll`` of the samplers' rows on
``dataset=gmm`` (``metrics.lowdim``) is the other cross-entropy, −E_model log p_data. A class-conditional model is evaluated at the items' own labels,
log p(x | y) (``conditional: true``), or at the null label, log p(x) (``conditional: false``: a model
trained with label dropout). Guidance never applies: the likelihood is the model's own.

Under DDP each rank takes its contiguous chunk of the N items; the per-item values are gathered
(torchmetrics) and every rank gets the same row.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
from torch import Tensor

from diffusion_lab.likelihood import DIVERGENCES, PROBES, bin_width, bits_per_dim, dequantize, ode_log_likelihood

LN2 = math.log(2.0)


def _positive_int(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"evaluation.likelihood.{key}={v!r} must be an integer ≥ 1.")
    return v


class LikelihoodEvaluation:
    """NLL and bits/dim of held-out data (module docstring). Arguments are ``evaluation.likelihood``'s.

    Args:
        n: held-out items (the first n of ``split``); batch_size: items per solve.
        ode: the PF-ODE row; vlb: the L_vlb row (``auto``: on discrete schedules).
        divergence: ``auto`` (exact for vectors, hutchinson for images), ``exact`` or ``hutchinson``.
        probe, n_probes: Hutchinson's probes (rademacher | gaussian) and how many per item.
        rtol, atol, method: the torchdiffeq solver.
        vlb_variance: ``auto`` (learned if the model has learned variances, else small), small, large, learned.
        conditional: evaluate a class-conditional model at the items' labels (else at the null label).
        seed: dequantization noise and probes.
    """

    def __init__(self, n: int = 64, split: str = "val", ode: bool = True, vlb: str | bool = "auto",
                 divergence: str = "auto", probe: str = "rademacher", n_probes: int = 1, rtol: float = 1e-5,
                 atol: float = 1e-5, method: str = "dopri5", batch_size: int = 64, vlb_variance: str = "auto",
                 conditional: bool = True, seed: int = 0):
        self.n, self.batch_size, self.n_probes = (_positive_int("n", n), _positive_int("batch_size", batch_size),
                                                  _positive_int("n_probes", n_probes))
        if split not in ("train", "val", "test"):
            raise ValueError(f"evaluation.likelihood.split={split!r} is not a split; use train, val or test.")
        if divergence not in ("auto", *DIVERGENCES):
            raise ValueError(f"evaluation.likelihood.divergence={divergence!r}; choose auto, exact or hutchinson.")
        if probe not in PROBES:
            raise ValueError(f"evaluation.likelihood.probe={probe!r}; choose one of {PROBES}.")
        if vlb not in ("auto", True, False):
            raise ValueError(f"evaluation.likelihood.vlb={vlb!r}; choose auto, true or false.")
        if vlb_variance not in ("auto", "small", "large", "learned"):
            raise ValueError(f"evaluation.likelihood.vlb_variance={vlb_variance!r}; choose auto, small, large or learned.")
        for key, v in (("rtol", rtol), ("atol", atol)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"evaluation.likelihood.{key}={v!r} must be a number > 0, e.g. 1e-5.")
        self.split, self.ode, self.vlb, self.divergence, self.probe = split, bool(ode), vlb, divergence, probe
        self.rtol, self.atol, self.method, self.vlb_variance = float(rtol), float(atol), method, vlb_variance
        self.conditional, self.seed = bool(conditional), int(seed)
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.width: float | None = None
        self.decoder = "gaussian"

    # ------------------------------------------------------------------ once
    def rows_for(self, schedule: Any) -> list[str]:
        """The rows this evaluation will produce for a model of ``schedule``."""
        vlb = self.vlb is True or (self.vlb == "auto" and getattr(schedule, "num_timesteps", None) is not None)
        return (["likelihood_ode"] if self.ode else []) + (["likelihood_vlb"] if vlb else [])

    def check(self, schedule: Any, learned_variance: bool) -> None:
        if self.vlb is True and getattr(schedule, "num_timesteps", None) is None:
            raise ValueError(f"evaluation.likelihood.vlb=true needs a discrete schedule, but {type(schedule).__name__} is "
                             "continuous; set evaluation.likelihood.vlb=auto (the PF-ODE likelihood works on every schedule).")
        if self.vlb_variance == "learned" and not learned_variance:
            raise ValueError("evaluation.likelihood.vlb_variance=learned needs a model with learned variances; use auto, "
                             "small or large.")
        if not self.rows_for(schedule):
            raise ValueError("evaluation.likelihood has nothing to compute (ode=false and no discrete schedule for the "
                             "vlb); set evaluation.likelihood.ode=true or evaluation.likelihood=null.")
        self.learned_variance = bool(learned_variance)

    def prepare(self, datamodule: Any, data_shape: Sequence[int]) -> None:
        """The first n items of the split (and their labels), and the quantization of images."""
        datamodule.setup()
        ds = {"train": datamodule.train_set, "val": datamodule.val_set,
              "test": datamodule.test_set or datamodule.val_set}[self.split]
        if ds is None or len(ds) == 0:
            raise ValueError(f"evaluation.likelihood.split={self.split} is empty for this dataset; use another split.")
        items = [ds[i] for i in range(min(self.n, len(ds)))]
        self.x = torch.stack([it[0] for it in items]).float()
        self.y = torch.tensor([int(it[1]) for it in items]) if len(items[0]) > 1 else None
        self.data_shape = tuple(data_shape)
        image = len(self.data_shape) == 3
        self.levels, self.decoder = None, "gaussian"
        if image:
            from diffusion_lab.metrics.features import value_range_of

            self.levels = int(getattr(datamodule, "levels", 256))
            self.width = bin_width(self.levels, value_range_of(datamodule))
            if value_range_of(datamodule) == "[-1,1]":  # the discretized decoder's bins are those of [-1, 1]
                self.decoder = "discretized"
        self.divergence_used = self.divergence if self.divergence != "auto" else ("hutchinson" if image else "exact")

    # ------------------------------------------------------------------ each evaluation
    def evaluate(self, denoiser: Any, rank: int = 0, world: int = 1, device: torch.device | str = "cpu") -> list[dict]:
        """The likelihood rows (every rank must call this; the rows are the same on every rank)."""
        if self.x is None:
            raise RuntimeError("LikelihoodEvaluation.prepare must run before evaluate.")
        rows = []
        kinds = self.rows_for(denoiser.schedule)
        saved = denoiser.guidance, denoiser.labels
        denoiser.guidance = None
        try:
            if "likelihood_ode" in kinds:
                rows.append(self._run(denoiser, rank, world, device, self._ode_batch, "likelihood_ode"))
            if "likelihood_vlb" in kinds:
                rows.append(self._run(denoiser, rank, world, device, self._vlb_batch, "likelihood_vlb"))
        finally:
            denoiser.guidance, denoiser.labels = saved
        return rows

    def _labels(self, denoiser: Any, idx: Tensor) -> Tensor | None:
        if self.y is None or not denoiser.num_classes or not self.conditional:
            return None
        return self.y[idx]

    def _run(self, denoiser: Any, rank: int, world: int, device, batch_fn, label: str) -> dict:
        from torchmetrics import CatMetric

        values = CatMetric().to(device)
        idx_all = torch.tensor_split(torch.arange(len(self.x)), world)[rank]
        nfes, t0 = [], time.perf_counter()
        for b, s in enumerate(range(0, len(idx_all), self.batch_size)):
            idx = idx_all[s:s + self.batch_size]
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(idx[0]))  # depends on the items only
            nfe0 = denoiser.nfe
            bpd = batch_fn(denoiser, self.x[idx].to(device), self._labels(denoiser, idx), g)
            nfes.append(denoiser.nfe - nfe0)
            values.update(bpd.to(device, torch.float64))
        seconds = time.perf_counter() - t0
        bpd_all = values.compute().cpu().to(torch.float64).reshape(-1)
        dim = math.prod(self.data_shape)
        mean = float(bpd_all.mean())
        se = float(bpd_all.std() / math.sqrt(len(bpd_all))) if len(bpd_all) > 1 else float("nan")
        return {"sampler": label, "kind": "likelihood", "nfe": float(sum(nfes) / max(1, len(nfes))),
                "nll": mean * dim * LN2, "bpd": mean, "bpd_se": se, "seconds": seconds, "n": len(bpd_all)}

    def _ode_batch(self, denoiser: Any, x: Tensor, labels: Tensor | None, g: torch.Generator) -> Tensor:
        y = dequantize(x, self.width, g) if self.width is not None else x.to(torch.float64)
        denoiser.labels = None if labels is None else labels.to(x.device)
        res = ode_log_likelihood(denoiser, y, divergence=self.divergence_used, probe=self.probe,
                                 n_probes=self.n_probes, rtol=self.rtol, atol=self.atol, method=self.method,
                                 generator=g)
        return bits_per_dim(res.log_prob, math.prod(self.data_shape), self.width)

    def _vlb_batch(self, denoiser: Any, x: Tensor, labels: Tensor | None, g: torch.Generator) -> Tensor:
        from diffusion_lab.losses.vlb import variational_bound

        variance = self.vlb_variance if self.vlb_variance != "auto" else (
            "learned" if getattr(self, "learned_variance", False) else "small")
        kwargs = {"class_labels": labels.to(x.device)} if labels is not None else None
        return variational_bound(denoiser, x, variance=variance, decoder=self.decoder, generator=g,
                                 net_kwargs=kwargs, bins=self.levels or 256).total
