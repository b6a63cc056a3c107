"""Sample-quality metrics for 2-D / low-dimensional data, against held-out data, and the exact
likelihood on oracle datasets.

Sliced Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015):
    SW_p(μ, ν) = ( E_{θ ~ U(S^{d−1})} W_p^p(θ#μ, θ#ν) )^{1/p},
each 1-D W_p^p = ∫_0^1 |F⁻¹(u) − G⁻¹(u)|^p du computed exactly from the sorted projections (the
empirical quantile functions are step functions; the integral runs over the merged steps, so the two
sets may differ in size); the expectation over θ is a Monte-Carlo mean over ``n_projections``
directions drawn from a fixed seed, so the value is deterministic. (Checked against POT's
``ot.sliced_wasserstein_distance`` in the tests.)

Wasserstein-2 distance, exact between the two empirical distributions (optimal transport by network
simplex, POT's ``ot.emd2``): W_2 = (min_γ Σ γ_ij ‖x_i − y_j‖²)^{1/2} over couplings γ of the uniform
weights; O(n³)-ish, so for at most ``w2_max_points`` points per side (the first ones).

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

LOWDIM_METRICS = ("swd", "w2", "mmd", "nll")


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, p: int = 2, seed: int = 0) -> float:
    """SW_p between the empirical distributions of x (n, d) and y (m, d), float64."""
    x = x.detach().cpu().to(torch.float64).reshape(len(x), -1)
    y = y.detach().cpu().to(torch.float64).reshape(len(y), -1)
    if x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise ValueError(f"sliced Wasserstein needs two non-empty sets of one dimension, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}.")
    theta = torch.randn(x.shape[1], int(n_projections), generator=torch.Generator().manual_seed(int(seed)),
                        dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    xs, ys = (x @ theta).sort(dim=0).values, (y @ theta).sort(dim=0).values  # quantile functions, per direction
    n, m = len(x), len(y)
    # merged steps of the two step functions: levels u_k, widths du_k, and which order statistic each uses
    levels = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n, torch.arange(1, m + 1, dtype=torch.float64) / m])
    levels = levels.sort().values
    du = torch.diff(levels, prepend=torch.zeros(1, dtype=torch.float64))
    mid = levels - du / 2
    ix = (mid * n).ceil().long().clamp(1, n) - 1
    iy = (mid * m).ceil().long().clamp(1, m) - 1
    wpp = ((xs[ix] - ys[iy]).abs().pow(p) * du[:, None]).sum(0)  # W_p^p per direction
    return float(wpp.mean().pow(1.0 / p))


def wasserstein2(x: Tensor, y: Tensor, max_points: int = 2000) -> float:
    """Exact W_2 between the empirical distributions of (the first max_points of) x and y (POT, float64)."""
    import numpy as np
    import ot

    x = x.detach().cpu().to(torch.float64).reshape(len(x), -1)[:max_points].numpy()
    y = y.detach().cpu().to(torch.float64).reshape(len(y), -1)[:max_points].numpy()
    cost = ot.dist(x, y, metric="sqeuclidean")
    w2sq = ot.emd2(np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y)), cost, numItermax=10_000_000)
    return float(np.sqrt(max(float(w2sq), 0.0)))


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
                 seed: int = 0, device: torch.device | str = "cpu", w2_max_points: int = 2000):
        from torchmetrics import CatMetric

        bad = [m for m in metrics if m not in LOWDIM_METRICS]
        if bad:
            raise ValueError(f"evaluation.metrics has {bad[0]!r}, which is not a low-dimensional metric; choose from "
                             f"{LOWDIM_METRICS}.")
        if "nll" in metrics and mixture is None:
            raise ValueError("evaluation.metrics has 'nll', but this dataset has no exact density (only dataset=gmm "
                             "has one); remove nll from evaluation.metrics.")
        self.metrics, self.reference, self.mixture = list(metrics), reference.detach().cpu(), mixture
        self.n_projections, self.seed, self.w2_max_points = int(n_projections), int(seed), int(w2_max_points)
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
        if "w2" in self.metrics:
            out["w2"] = wasserstein2(x, self.reference, self.w2_max_points)
        if "mmd" in self.metrics:
            h = self.bandwidth
            out["mmd"] = mmd_rbf(x, self.reference, [0.5 * h, h, 2.0 * h])
        if "nll" in self.metrics:
            out["nll"] = exact_nll(x, self.mixture)
            out["nll_data"] = exact_nll(self.reference, self.mixture)
        return out
