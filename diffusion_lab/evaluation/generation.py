"""Seeded, sharded generation: N samples of a model, split over the ranks of a data-parallel job, from
noise that depends only on (seed, rank) — so that every sampler evaluated at one epoch starts from the
same x_T, grids of successive epochs line up cell by cell, and no two ranks draw the same sample.

Rank r of W generates n_r = ⌊N/W⌋ samples, plus one for the first N mod W ranks. Its initial noise
x_T comes from a CPU generator seeded ``seed + r``, drawn batch after batch; stochastic samplers draw
their own noise from a second generator seeded ``seed + r + SAMPLER_NOISE_OFFSET``, so that x_T does
not depend on what an earlier sampler consumed.

Class labels: with ``labels`` (one per sample of this rank) each batch is generated for its slice of
them (``Denoiser.labels``); the evaluation makes them class-balanced over the whole job
(``rank_labels``: sample i of the job has label i mod K) or one class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusion_lab.denoiser import Denoiser
from diffusion_lab.guidance import balanced_labels
from diffusion_lab.samplers import Sampler

SAMPLER_NOISE_OFFSET = 1_000_003


def rank_share(n: int, rank: int, world: int) -> int:
    """How many of n samples rank r of W generates: n // W, plus one for the first n mod W ranks."""
    return n // world + (1 if rank < n % world else 0)


def rank_labels(n: int, rank: int, world: int, num_classes: int, class_label: int | None = None) -> Tensor:
    """The labels of rank r's share of n samples: ``class_label`` for all, or class-balanced over the job
    (sample i of the job, counted over the ranks in order, has label i mod K)."""
    share = rank_share(n, rank, world)
    if class_label is not None:
        return torch.full((share,), int(class_label), dtype=torch.long)
    offset = sum(rank_share(n, q, world) for q in range(rank))
    return balanced_labels(share, num_classes, offset)


@dataclass
class GeneratedSamples:
    x: Tensor | None  # all samples (float32, CPU) when kept
    nfe: float        # network calls per sample trajectory (mean over batches)
    seconds: float    # wall time of the sampler calls
    passes: float = 0.0  # per-sample network passes per trajectory (CFG batches two passes into one call)


@torch.no_grad()
def generate_samples(denoiser: Denoiser, sampler: Sampler, n: int, shape: tuple[int, ...], seed: int,
                     device: torch.device | str = "cpu", batch_size: int = 256, progress: bool = True,
                     on_batch: Callable[[Tensor], None] | None = None, keep: bool = True,
                     labels: Tensor | None = None) -> GeneratedSamples:
    """n samples of ``shape`` in batches: x_T from a CPU generator seeded ``seed``, the sampler's own noise
    from one seeded ``seed + SAMPLER_NOISE_OFFSET`` (see the module docstring). ``on_batch(x)`` sees each
    batch (float32, on ``device``); ``keep`` returns them all (on the CPU). ``labels``: the class of each
    of the n samples (None: unconditional). The denoiser's network must already be in eval mode."""
    if n < 1:
        raise ValueError(f"n={n} samples: give a positive number.")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} samples: give one label per sample.")
    device = torch.device(device)
    x_gen = torch.Generator(device="cpu").manual_seed(int(seed))
    s_gen = torch.Generator(device=device).manual_seed(int(seed) + SAMPLER_NOISE_OFFSET)
    nfes, passes, seconds, kept = [], [], 0.0, []
    starts = range(0, n, batch_size)
    bar = tqdm(starts, desc=f"sampling {sampler.label}", leave=False, disable=not progress or len(starts) < 2)
    previous_labels = denoiser.labels
    for s in bar:
        bs = min(batch_size, n - s)
        x_T = denoiser.schedule.prior_sample((bs, *shape), generator=x_gen, dtype=torch.float64)
        denoiser.labels = None if labels is None else labels[s:s + bs].to(device)
        passes0 = denoiser.passes
        try:
            res = sampler(denoiser, x_T=x_T.to(device), generator=s_gen, progress=progress and len(starts) < 2)
        finally:
            denoiser.labels = previous_labels
        nfes.append(res.nfe)
        passes.append(denoiser.passes - passes0)
        seconds += res.seconds
        x = res.x.float()
        if on_batch is not None:
            on_batch(x)
        if keep:
            kept.append(x.cpu())
    return GeneratedSamples(torch.cat(kept) if kept else None, float(sum(nfes) / len(nfes)), seconds,
                            float(sum(passes) / len(passes)))
