"""FID, KID and Inception Score through torchmetrics, on features computed once per batch, and the
on-disk cache of the real data's features.

Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium"): with μ_r, Σ_r and μ_g, Σ_g the mean and covariance of the real and the
generated features,

    FID = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2}),

the squared 2-Wasserstein distance between the two Gaussians with those moments. The statistics are
accumulated in float64 (sums of f and of f fᵀ; torchmetrics' state). The trace of the matrix square
root is computed from symmetric eigendecompositions only: Tr (Σ_r Σ_g)^{1/2} = Σ_i √λ_i with λ_i the
eigenvalues of the symmetric PSD matrix Σ_r^{1/2} Σ_g Σ_r^{1/2} (similar to Σ_r Σ_g), which is about
twice as fast on a CPU as the general eigensolver torchmetrics uses and never produces complex parts.

KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimator of the squared maximum
mean discrepancy with the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³,

    MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j) − 2/m² Σ_{i,j} k(x_i, y_j),

averaged over random subsets of size m (``kid_subset_size``, capped at the sample counts).

Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs"):
IS = exp(E_x KL(p(y|x) ‖ p(y))), with p(y) the marginal over the samples, averaged over splits; with
``features=classifier`` the class posterior is the dataset classifier's.

On the same features: improved precision and recall (Kynkäänniemi et al. 2019; ``precision_recall``) and,
for class-conditional samples, the accuracy under the feature classifier (argmax of its logits against
the label each sample was generated for).

The feature network runs once per batch (``features.extract_features``); the metrics are torchmetrics
objects fed the features through an identity "feature extractor", so their DDP synchronisation
(sum of the FID moments, concatenation of the KID / IS features) is torchmetrics' own: every rank
calls ``compute`` and gets the same value. Randomised parts (KID subsets, IS split order) draw from
a seeded generator inside ``torch.random.fork_rng`` so they are identical on every rank and leave the
training RNG untouched.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from diffusion_lab.metrics.features import (FeatureNetwork, atomic_save, dataset_key, default_cache_dir,
                                            extract_features)
from diffusion_lab.metrics.precision_recall import class_accuracy, precision_recall

log = logging.getLogger(__name__)

IMAGE_METRICS = ("fid", "kid", "is", "accuracy", "precision", "recall")


class _Precomputed(nn.Module):
    """The identity, posing as the torchmetrics feature extractor: update() receives features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: Tensor) -> Tensor:
        return x


class ImageMetrics:
    """FID / KID / IS on precomputed features.

    ``update_real(features)`` and ``update_fake(features, logits, labels)`` may be called on every rank
    with that rank's share; ``compute()`` (on every rank) returns ``{"fid": ..., "kid": ..., "kid_std": ...,
    "is": ..., "is_std": ..., "accuracy": ..., "precision": ..., "recall": ...}`` for the metrics asked
    for — ``kid_std`` only when KID averages over several distinct subsets (N larger than
    ``kid_subset_size``); accuracy needs the labels the samples were generated for; precision and
    recall use the k-NN radius of ``pr_k`` neighbours."""

    def __init__(self, metrics: Sequence[str], num_features: int, n_fake: int, n_real: int,
                 kid_subset_size: int = 1000, kid_subsets: int = 100, is_splits: int = 10, seed: int = 0,
                 device: torch.device | str = "cpu", pr_k: int = 3):
        bad = [m for m in metrics if m not in IMAGE_METRICS]
        if bad:
            raise ValueError(f"evaluation.metrics has {bad[0]!r}, which is not an image metric; choose from {IMAGE_METRICS}.")
        self.metrics, self.seed, self.pr_k = list(metrics), int(seed), int(pr_k)
        self.m: dict[str, Any] = {}
        with warnings.catch_warnings():  # "will save all extracted features in buffer": intended here
            warnings.simplefilter("ignore", UserWarning)
            self._build(metrics, num_features, n_fake, n_real, kid_subset_size, kid_subsets, is_splits)
        for k in self.m:
            self.m[k] = self.m[k].to(device)
        self.device = torch.device(device)

    def _build(self, metrics, num_features, n_fake, n_real, kid_subset_size, kid_subsets, is_splits) -> None:
        from torchmetrics.image import InceptionScore, KernelInceptionDistance

        if "fid" in metrics:
            self.m["fid"] = _FrechetDistance.make(num_features)
        if "kid" in metrics:
            size = max(2, min(int(kid_subset_size), int(n_fake), int(n_real)))
            # subsets of size min(n_fake, n_real) are all the same set: one is enough
            subsets = 1 if size >= min(int(n_fake), int(n_real)) else int(kid_subsets)
            self.m["kid"] = KernelInceptionDistance(feature=_Precomputed(num_features), subsets=subsets,
                                                    subset_size=size)
        if "is" in metrics:
            self.m["is"] = InceptionScore(feature=_Precomputed(num_features), splits=max(1, min(int(is_splits), int(n_fake))))
        if "accuracy" in metrics:
            from torchmetrics import MeanMetric

            self.m["accuracy"] = MeanMetric()
        if "precision" in metrics or "recall" in metrics:
            from torchmetrics import CatMetric

            self.m["pr_real"], self.m["pr_fake"] = CatMetric(), CatMetric()

    def update_real(self, features: Tensor) -> None:
        f = features.to(self.device, torch.float64)
        for k in ("fid", "kid"):
            if k in self.m and len(f):
                self.m[k].update(f, real=True)
        if "pr_real" in self.m and len(f):
            self.m["pr_real"].update(f)

    def update_fake(self, features: Tensor, logits: Tensor | None = None, labels: Tensor | None = None) -> None:
        f = features.to(self.device, torch.float64)
        for k in ("fid", "kid"):
            if k in self.m and len(f):
                self.m[k].update(f, real=False)
        if "is" in self.m and logits is not None and len(logits):
            self.m["is"].update(logits.to(self.device, torch.float64))
        if "accuracy" in self.m and len(f):
            if labels is None or logits is None:
                raise ValueError("evaluation.metrics has 'accuracy', but the samples have no class labels; remove "
                                 "accuracy or sample a class-conditional model (or use guidance).")
            self.m["accuracy"].update(class_accuracy(logits, labels).double().to(self.device))
        if "pr_fake" in self.m and len(f):
            self.m["pr_fake"].update(f)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # KID subsets, IS split order: the same on every rank
            if "fid" in self.m:
                out["fid"] = float(self.m["fid"].compute())
            if "kid" in self.m:
                mean, std = self.m["kid"].compute()
                out["kid"] = float(mean)
                if self.m["kid"].subsets > 1:  # one subset (all the samples): no spread to report
                    out["kid_std"] = float(std)
            if "is" in self.m:
                mean, std = self.m["is"].compute()
                out["is"], out["is_std"] = float(mean), float(std)
            if "accuracy" in self.m:
                out["accuracy"] = float(self.m["accuracy"].compute())
            if "pr_fake" in self.m:
                p, r = precision_recall(self.m["pr_real"].compute().cpu(), self.m["pr_fake"].compute().cpu(), self.pr_k)
                out.update({k: v for k, v in (("precision", p), ("recall", r)) if k in self.metrics})
        return out


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}) in float64, with Tr (Σ1 Σ2)^{1/2} = Σ √λ_i(Σ1^{1/2} Σ2 Σ1^{1/2})
    (symmetric eigendecompositions; tiny negative eigenvalues from round-off are clipped to 0)."""
    mu1, mu2, sigma1, sigma2 = (t.to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    w, v = torch.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    m = root1 @ sigma2 @ root1
    lam = torch.linalg.eigvalsh((m + m.T) / 2)
    root_trace = lam.clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * root_trace)


class _FrechetDistance:
    """torchmetrics' FID with its final formula replaced by ``frechet_distance`` (same states, same
    DDP synchronisation: torchmetrics syncs the states before ``compute`` runs)."""

    @staticmethod
    def make(num_features: int):
        from torchmetrics.image import FrechetInceptionDistance

        class FrechetDistanceMetric(FrechetInceptionDistance):
            def compute(self) -> Tensor:
                n_r, n_f = self.real_features_num_samples, self.fake_features_num_samples
                if n_r < 2 or n_f < 2:
                    raise RuntimeError(f"FID needs at least 2 real and 2 generated samples, got {int(n_r)} and "
                                       f"{int(n_f)}; raise evaluation.n.")
                mu_r, mu_f = self.real_features_sum / n_r, self.fake_features_sum / n_f
                cov_r = (self.real_features_cov_sum - n_r * torch.outer(mu_r, mu_r)) / (n_r - 1)
                cov_f = (self.fake_features_cov_sum - n_f * torch.outer(mu_f, mu_f)) / (n_f - 1)
                return torch.tensor(frechet_distance(mu_r, cov_r, mu_f, cov_f), dtype=torch.float64)

        return FrechetDistanceMetric(feature=_Precomputed(num_features), reset_real_features=True)


def real_features(net: FeatureNetwork, datamodule: Any, split: str, n: int, cache_dir: str | os.PathLike | None = None,
                  batch_size: int = 256, device: torch.device | str = "cpu", progress: bool = True,
                  is_writer: bool = True, barrier: Callable[[], None] | None = None) -> Tensor:
    """The features of the first n items of a split (fewer if the split is smaller), computed once per
    (dataset, split, feature network, n) and cached at
    ``<cache_dir>/real_features/<dataset key>_<split>_<network key>_<n>.pt`` together with their
    float64 mean and covariance. Under DDP the writer (rank 0) computes, the others load after ``barrier``."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"evaluation.real_split={split!r} is not a split; use train, val or test.")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache / "real_features" / f"{dataset_key(datamodule)}_{split}_{net.key}_{int(n)}.pt"
    if is_writer and not path.is_file():
        images = datamodule.sample_data(int(n), split)
        if len(images) < int(n):
            log.warning("evaluation: the %s split has %d items, fewer than n_real=%d; using all of them", split,
                        len(images), n)
        feats, _ = extract_features(net, images, batch_size=batch_size, device=device, progress=progress,
                                    desc=f"features of real {split} data")
        f64 = feats.to(torch.float64)
        atomic_save({"features": feats, "mu": f64.mean(0), "sigma": torch.cov(f64.T) if len(f64) > 1 else None,
                     "n": len(feats), "network": net.key, "split": split}, path)
        log.info("cached real-data features (%d × %d) at %s", feats.shape[0], feats.shape[1], path)
    if barrier is not None:
        barrier()
    return torch.load(path, map_location="cpu", weights_only=True)["features"]
