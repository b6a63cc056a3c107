"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", §3, Eq. 1–3), and the accuracy of class-conditional samples.

Each set of feature vectors Φ defines a manifold estimate: the union of the balls B(φ, r_k(φ)) around
its points, r_k(φ) the distance from φ to its k-th nearest neighbour in Φ (itself excluded; the
paper's k = 3). With real features Φ_r and generated features Φ_g,

    f(φ, Φ)   = 1 if ‖φ − φ'‖ ≤ r_k(φ') for some φ' ∈ Φ, else 0
    precision = mean_{φ ∈ Φ_g} f(φ, Φ_r)     (generated samples that fall on the real manifold: fidelity)
    recall    = mean_{φ ∈ Φ_r} f(φ, Φ_g)     (real samples covered by the generated manifold: diversity)

computed in float64, in blocks of rows so that the distance matrices stay small.

Accuracy of conditional samples (as in the guidance papers' "does the sample show the class it was
asked for": Dhariwal & Nichol 2021 use a classifier's agreement in the same way): the fraction of
samples whose argmax under the feature classifier equals the label they were generated for.
"""

from __future__ import annotations

import torch
from torch import Tensor


def knn_radii(features: Tensor, k: int = 3, block: int = 1024) -> Tensor:
    """r_k(φ) for every row: the distance to its k-th nearest neighbour among the other rows."""
    f = features.to(torch.float64)
    n = len(f)
    if not 1 <= k < n:
        raise ValueError(f"the k-NN radius needs 1 ≤ k < number of samples, got k={k} for {n} samples; raise "
                         "evaluation.n or lower evaluation.pr_k.")
    radii = torch.empty(n, dtype=torch.float64)
    for s in range(0, n, block):
        d = torch.cdist(f[s:s + block], f)
        radii[s:s + block] = d.kthvalue(k + 1, dim=1).values  # the 1st smallest is the point itself (0)
    return radii


def manifold_coverage(queries: Tensor, support: Tensor, radii: Tensor, block: int = 1024) -> Tensor:
    """f(q, support) per query: is q within r_k(φ') of some support point φ'? (bool, one per query)."""
    q, s = queries.to(torch.float64), support.to(torch.float64)
    out = torch.empty(len(q), dtype=torch.bool)
    for b in range(0, len(q), block):
        out[b:b + block] = (torch.cdist(q[b:b + block], s) <= radii[None, :]).any(dim=1)
    return out


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` against real features ``real`` (module docstring)."""
    real, fake = real.reshape(len(real), -1), fake.reshape(len(fake), -1)
    precision = manifold_coverage(fake, real, knn_radii(real, k)).double().mean()
    recall = manifold_coverage(real, fake, knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def class_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,) bool: argmax of the classifier's logits equals the label each sample was generated for."""
    return logits.argmax(dim=1).cpu() == labels.long().cpu()
