"""Which metrics a dataset gets, and what they need from the real data: the feature network and the real
features (images), or a held-out reference set (vectors). Prepared once; a fresh ``Accumulator`` per
(evaluation, sampler) takes the generated batches and computes on every rank.

* Images: FID / KID / IS, and on request precision / recall and (for samples generated for class
  labels: ``auto`` adds it) the accuracy under the feature classifier (``metrics.fid``), on the features of ``features`` = ``classifier`` (a small
  classifier trained once on the dataset's labels and cached) or ``inception`` (torch-fidelity's
  InceptionV3 from a local weights file). The real data's features are computed once per
  (dataset, split, feature network, N) and cached on disk; under DDP rank 0 computes what is missing
  while the others wait at ``barrier``, then read the cache.
* Vectors: sliced Wasserstein, W₂ and MMD against held-out data and, on the Gaussian-mixture oracle
  (``dataset=gmm``), the exact NLL (``metrics.lowdim``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from diffusion_lab.metrics.features import FEATURE_NETWORKS, build_feature_network, extract_features
from diffusion_lab.metrics.fid import IMAGE_METRICS, ImageMetrics, real_features
from diffusion_lab.metrics.lowdim import LOWDIM_METRICS, LowDimMetrics

log = logging.getLogger(__name__)

# the most generated vectors the low-dimensional metrics accept: the MMD's kernel matrices are
# N × N_ref float64 (N = 20,000 against 2,000 reference points is 0.3 GB per matrix)
MAX_LOWDIM_SAMPLES = 20_000


class Accumulator:
    """One evaluation's metric state: ``feed(x)`` with each generated batch, ``compute()`` on every rank."""

    def __init__(self, metrics: ImageMetrics | LowDimMetrics, feature_net: Any = None, feature_batch_size: int = 256,
                 device: torch.device | None = None):
        self.metrics, self.feature_net, self.feature_batch_size, self.device = metrics, feature_net, feature_batch_size, device

    def feed(self, x: Tensor, labels: Tensor | None = None) -> None:
        """One generated batch, with the class labels it was generated for (None: unconditional)."""
        if self.feature_net is not None:
            f, logits = extract_features(self.feature_net, x, self.feature_batch_size, device=self.device)
            self.metrics.update_fake(f, logits, labels)
        else:
            self.metrics.update_fake(x)

    def compute(self) -> dict[str, float]:
        return self.metrics.compute()


class MetricSuite:
    """Metrics for one dataset (see the module docstring). Arguments are those of ``conf/evaluation``."""

    def __init__(self, metrics: str | Sequence[str] = "auto", features: str = "classifier",
                 inception_weights: str | None = None, cache_dir: str | None = None, n_real: int | None = None,
                 real_split: str | None = None, feature_batch_size: int = 256, kid_subset_size: int = 1000,
                 kid_subsets: int = 100, is_splits: int = 10, n_projections: int = 256,
                 classifier: Mapping | None = None, pr_k: int = 3, progress: bool = True):
        if features not in FEATURE_NETWORKS:
            raise ValueError(f"evaluation.features={features!r} is not a feature network; choose one of {FEATURE_NETWORKS}.")
        if isinstance(metrics, str) and metrics != "auto":
            raise ValueError(f"evaluation.metrics={metrics!r}: give 'auto' or a list such as [fid, kid, is].")
        if real_split not in (None, "train", "val", "test"):
            raise ValueError(f"evaluation.real_split={real_split!r} is not a split; use train, val, test or null.")
        for key, val in (("feature_batch_size", feature_batch_size), ("kid_subsets", kid_subsets),
                         ("is_splits", is_splits), ("n_projections", n_projections), ("kid_subset_size", kid_subset_size),
                         ("pr_k", pr_k)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"evaluation.{key}={val!r} must be a positive integer.")
        if n_real is not None and (not isinstance(n_real, int) or n_real < 2):
            raise ValueError(f"evaluation.n_real={n_real!r} must be an integer ≥ 2 or null (= evaluation.n).")
        self.metrics_cfg, self.features, self.inception_weights, self.cache_dir = metrics, features, inception_weights, cache_dir
        self.n_real, self.real_split, self.feature_batch_size = n_real, real_split, feature_batch_size
        self.kid_subset_size, self.kid_subsets, self.is_splits = kid_subset_size, kid_subsets, is_splits
        self.n_projections, self.classifier_cfg, self.progress = n_projections, dict(classifier or {}), progress
        self.pr_k = pr_k
        self.labelled = False  # the samples are generated for class labels (set by ``check``)
        self.names: list[str] = []
        self.image = False
        self.feature_net = None
        self.real: Tensor | None = None
        self.mixture = None
        self.n, self.seed, self.device = 0, 0, torch.device("cpu")

    def resolve(self, data_shape: Sequence[int], has_density: bool, labelled: bool = False) -> list[str]:
        """The metric names for data of this shape: ``auto`` or the configured list, checked. ``labelled``:
        the samples are generated for class labels (a conditional model or guidance)."""
        image = len(data_shape) == 3
        if self.metrics_cfg == "auto":
            if image:
                return ["fid", "kid", "is"] + (["accuracy"] if labelled and self.features == "classifier" else [])
            return ["swd", "w2", "mmd"] + (["nll"] if has_density else [])
        names = [str(m) for m in self.metrics_cfg]
        allowed = IMAGE_METRICS if image else LOWDIM_METRICS
        for m in names:
            if m not in allowed:
                what = "images" if image else f"vectors of shape {tuple(data_shape)}"
                raise ValueError(f"evaluation.metrics has {m!r}, which does not apply to {what}; choose from {allowed}.")
        if "accuracy" in names and not labelled:
            raise ValueError("evaluation.metrics has 'accuracy', but the samples have no class labels (an unconditional "
                             "model without guidance); remove accuracy, or use guidance=classifier or a class-conditional model.")
        if "accuracy" in names and self.features != "classifier":
            raise ValueError("evaluation.metrics has 'accuracy', which needs the dataset's classifier as the feature "
                             "network; set evaluation.features=classifier.")
        if "nll" in names and not has_density:
            raise ValueError("evaluation.metrics has 'nll', but this dataset has no exact density (only dataset=gmm "
                             "has one); remove nll from evaluation.metrics.")
        return names

    def check(self, data_shape: Sequence[int], has_density: bool, n: int, labelled: bool = False) -> None:
        """Start-up checks that need no data: the metric names, and N against the memory the
        low-dimensional metrics need."""
        self.labelled = bool(labelled)
        names = self.resolve(data_shape, has_density, self.labelled)
        if len(data_shape) != 3 and names and n > MAX_LOWDIM_SAMPLES:
            raise ValueError(f"evaluation.n={n} is more generated vectors than the low-dimensional metrics hold in memory "
                             f"(their kernel matrices are N × N_ref); use evaluation.n ≤ {MAX_LOWDIM_SAMPLES}.")

    def prepare(self, datamodule: Any, data_shape: Sequence[int], n: int, seed: int, device: torch.device,
                rank: int = 0, barrier: Callable[[], None] | None = None) -> None:
        """Build the feature network and load (or compute and cache) the real data's statistics."""
        datamodule.setup()
        self.mixture = getattr(datamodule, "mixture", None)
        self.check(data_shape, self.mixture is not None, n, self.labelled)
        self.names = self.resolve(data_shape, self.mixture is not None, self.labelled)
        self.image, self.n, self.seed, self.device = len(data_shape) == 3, int(n), int(seed), torch.device(device)
        if not self.names:
            return
        if self.image:
            self.feature_net = build_feature_network(
                self.features, datamodule, inception_weights=self.inception_weights, cache_dir=self.cache_dir,
                progress=self.progress and rank == 0, barrier=barrier, is_writer=rank == 0,
                classifier=self.classifier_cfg).to(self.device)
            self.real = real_features(self.feature_net, datamodule, self.real_split or "train", self.n_real or n,
                                      cache_dir=self.cache_dir, batch_size=self.feature_batch_size, device=self.device,
                                      progress=self.progress and rank == 0, is_writer=rank == 0, barrier=barrier)
            d = self.feature_net.num_features
            if rank == 0 and "fid" in self.names and min(n, len(self.real)) <= d:
                log.warning("evaluation: N=%d samples for %d-d features — the covariances are singular and FID is "
                            "biased and ill-conditioned; use evaluation.n > %d (50k for a headline Inception FID)",
                            min(n, len(self.real)), d, d)
        else:
            self.real = datamodule.sample_data(self.n_real or max(n, 2000), self.real_split or "val")

    def accumulator(self, rank: int = 0, world: int = 1) -> Accumulator | None:
        """A fresh metric state for one evaluation (None when no metric is configured)."""
        if not self.names:
            return None
        if self.image:
            m = ImageMetrics(self.names, self.feature_net.num_features, n_fake=self.n, n_real=len(self.real),
                             kid_subset_size=self.kid_subset_size, kid_subsets=self.kid_subsets,
                             is_splits=self.is_splits, seed=self.seed, device=self.device, pr_k=self.pr_k)
            # contiguous chunks in rank order: the gathered states equal the single-process ones
            m.update_real(torch.tensor_split(self.real, world)[rank])
            return Accumulator(m, self.feature_net, self.feature_batch_size, self.device)
        return Accumulator(LowDimMetrics(self.names, self.real, mixture=self.mixture, n_projections=self.n_projections,
                                         seed=self.seed, device=self.device))
