"""Sample-quality metrics for 2-D / low-dimensional data, against held-out data, and the exact
likelihood on oracle datasets.

Sliced Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015):
    SW_p(μ, ν) = ( E_{θ ~ U(S^{d−1})} W_p^p(θ#μ, θ#ν) )^{1/p},
each 1-D W_p computed exactly from sorted projections (quantile functions); the expectation over θ
is a Monte-Carlo mean over ``n_projections`` directions drawn from a fixed seed, so the value is
deterministic. Computed with POT (``ot.sliced_wasserstein_distance``).

Maximum mean discrepancy (Gretton et al. 2012, "A Kernel Two-Sample Test"), unbiased estimator
    MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j) − 2/(mn) Σ_{i,j} k(x_i, y_j)
with the Gaussian kernel k(x, y) = Σ_h exp(−‖x − y‖² / (2h²)), summed over the bandwidths
h ∈ {½, 1, 2} × (median pairwise distance of the reference data): a fixed kernel per dataset, so
values are comparable across epochs.

Exact negative log-likelihood (oracle datasets, whose data density p_data is known in closed form,
``GaussianMixture.log_prob_data``): NLL = −E_{x ~ model} log p_data(x), the cross-entropy of the
model's sample distribution q against the data density, in nats per sample. It is ≥ H(q) and equals
H(p_data) + KL(q ‖ p_data) when q's entropy matches; ``nll_data`` (the same average over held-out data,
an estimate of the entropy H(p_data)) is logged with it as the reference value. A sampler that collapses
onto the modes scores *below* ``nll_data``: read NLL together with SW and MMD.

``LowDimMetrics`` gathers each rank's samples with a torchmetrics ``CatMetric`` (DDP-safe) and
computes on every rank.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

LOWDIM_METRICS = ("swd", "mmd", "nll")


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, p: int = 2, seed: int = 0) -> float:
    """SW_p between the empirical distributions of x (n, d) and y (m, d) (POT, float64)."""
    import ot

    x = x.detach().cpu().to(torch.float64).reshape(len(x), -1).numpy()
    y = y.detach().cpu().to(torch.float64).reshape(len(y), -1).numpy()
    return float(ot.sliced_wasserstein_distance(x, y, n_projections=int(n_projections), p=int(p), seed=int(seed)))


def median_distance(y: Tensor, max_points: int = 2000) -> float:
    """Median of the pairwise Euclidean distances of (at most max_points of) y: the kernel bandwidth scale."""
    y = y.detach().to(torch.float64).reshape(len(y), -1)[:max_points]
    d = torch.cdist(y, y)
    iu = torch.triu_indices(len(y), len(y), offset=1)
    return float(d[iu[0], iu[1]].median()) if len(y) > 1 else 1.0


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: Sequence[float] | None = None) -> float:
    """Unbiased MMD² between x (n, d) and y (m, d) with a sum of Gaussian kernels (float64)."""
    x = x.detach().to(torch.float64).reshape(len(x), -1)
    y = y.detach().to(torch.float64).reshape(len(y), -1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"MMD needs at least 2 samples on each side, got {len(x)} and {len(y)}; raise evaluation.n.")
    if bandwidths is None:
        med = median_distance(y)
        bandwidths = [0.5 * med, med, 2.0 * med]

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).square()
        return sum(torch.exp(-d2 / (2.0 * h * h)) for h in bandwidths)

    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def exact_nll(x: Tensor, mixture: Any) -> float:
    """−mean log p_data(x) in nats per sample, for a dataset with an exact density (``mixture.log_prob_data``)."""
    return float(-mixture.log_prob_data(x.detach().cpu().to(torch.float64).reshape(len(x), -1)).mean())


class LowDimMetrics:
    """SW, MMD and (with an oracle) the exact NLL of generated vectors against a fixed reference set.

    ``update_fake(x)`` on every rank with its share; ``compute()`` on every rank."""

    def __init__(self, metrics: Sequence[str], reference: Tensor, mixture: Any = None, n_projections: int = 256,
                 seed: int = 0, device: torch.device | str = "cpu"):
        from torchmetrics import CatMetric

        bad = [m for m in metrics if m not in LOWDIM_METRICS]
        if bad:
            raise ValueError(f"evaluation.metrics has {bad[0]!r}, which is not a low-dimensional metric; choose from "
                             f"{LOWDIM_METRICS}.")
        if "nll" in metrics and mixture is None:
            raise ValueError("evaluation.metrics has 'nll', but this dataset has no exact density (only dataset=gmm "
                             "has one); remove nll from evaluation.metrics.")
        self.metrics, self.reference, self.mixture = list(metrics), reference.detach().cpu(), mixture
        self.n_projections, self.seed = int(n_projections), int(seed)
        self.bandwidth = median_distance(self.reference)
        self.fake = CatMetric(nan_strategy="disable").to(device)
        self.device = torch.device(device)

    def update_fake(self, x: Tensor) -> None:
        self.fake.update(x.detach().reshape(len(x), -1).to(self.device, torch.float64))

    def compute(self) -> dict[str, float]:
        x = self.fake.compute()
        x = x.reshape(-1, self.reference[0].numel()).cpu()
        out: dict[str, float] = {}
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            out["nonfinite"] = float((~finite).sum())
            x = x[finite]
        if "swd" in self.metrics:
            out["swd"] = sliced_wasserstein(x, self.reference, self.n_projections, 2, self.seed)
        if "mmd" in self.metrics:
            h = self.bandwidth
            out["mmd"] = mmd_rbf(x, self.reference, [0.5 * h, h, 2.0 * h])
        if "nll" in self.metrics:
            out["nll"] = exact_nll(x, self.mixture)
            out["nll_data"] = exact_nll(self.reference, self.mixture)
        return out
