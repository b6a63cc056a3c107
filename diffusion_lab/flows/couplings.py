"""Couplings of noise and data for flow matching, chosen within each minibatch.

Rectified flow / conditional flow matching regresses v(x_t, t) onto ε − x_0 along x_t = (1 − t) x_0 + t ε
(data at t = 0, noise at t = 1 here; Liu et al. 2023 and Tong et al. 2023 put noise at t = 0 and write
x_1 − x_0). The pair (x_0, ε) may come from any coupling π of the data and N(0, I); the learned flow
transports one marginal to the other whatever π is, but the straighter the paths the coupling induces,
the fewer Euler steps sampling needs.

* ``independent``: π = p_data ⊗ N(0, I), the pair as drawn (Liu et al. 2023; Lipman et al. 2023).
* ``exact_ot``: minibatch optimal transport (Pooladian et al. 2023, "Multisample Flow Matching"; Tong et
  al. 2023, "Improving and generalizing flow-based generative models with minibatch optimal transport",
  OT-CFM): the B × B plan P minimising Σ P_ij ‖x_0^i − ε^j‖² with uniform marginals (POT's ``ot.emd``),
  a permutation matrix for equal batch sizes; each x_0^i is paired with the ε^j of its row.
* ``sinkhorn``: the entropic plan, min Σ P_ij C_ij − reg·H(P) (Cuturi 2013; POT's ``ot.sinkhorn``, log-stabilised,
  method "sinkhorn_stabilized"); each x_0^i gets ε^j with j ~ P_i· / Σ_j P_ij, drawn from the loss's generator. The cost
  C_ij = ‖x_0^i − ε^j‖² is *not* normalised, so ``reg`` is in squared data units.
* ``schrodinger_bridge``: Tong et al. 2023's SB-CFM: the entropic plan with reg = 2σ² and the Brownian
  bridge path x_t = (1 − t) x_0 + t ε + σ √(t(1 − t)) ξ, ξ ~ N(0, I), whose conditional velocity is
  u_t = ε − x_0 + (1 − 2t)/(2t(1 − t)) · (x_t − (1 − t) x_0 − t ε)
      = ε − x_0 + σ (1 − 2t)/(2√(t(1 − t))) · ξ
  (their Eq. for u_t with the time direction flipped: the formula is symmetric under t ↦ 1 − t, x_0 ↔ ε
  up to the sign of ε − x_0, which flips with the direction).

The pairing keeps the data order (x_0^i stays at index i) and re-orders the noise: a coupled batch is
``x0, eps[j]``. Without gradients the plan is computed in float64 on the CPU (POT), O(B³) for ``emd``.
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from torch import Tensor

COUPLINGS = ("independent", "exact_ot", "sinkhorn", "schrodinger_bridge")


def check_coupling(coupling: str, reg: float | None, sigma: float) -> None:
    """Raise ValueError (one sentence naming the key) for an unknown coupling or a bad reg / σ."""
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown loss.coupling={coupling!r}; choose one of {COUPLINGS}.")
    if coupling == "sinkhorn" and not (reg is not None and reg > 0):
        raise ValueError(f"loss.coupling=sinkhorn needs loss.coupling_reg > 0 (the entropic regularisation, in squared "
                         f"data units), got {reg}.")
    if coupling == "schrodinger_bridge" and not sigma > 0:
        raise ValueError(f"loss.coupling=schrodinger_bridge needs loss.sigma > 0 (the bridge's noise level), got {sigma}.")
    if coupling in ("independent", "exact_ot") and sigma != 0:
        raise ValueError(f"loss.sigma={sigma} adds bridge noise, which only loss.coupling=schrodinger_bridge uses; "
                         "set loss.sigma=0 or choose that coupling.")


def cost_matrix(x0: Tensor, eps: Tensor) -> np.ndarray:
    """C_ij = ‖x_0^i − ε^j‖² (flattened), float64 numpy."""
    a = x0.detach().reshape(x0.shape[0], -1).double().cpu()
    b = eps.detach().reshape(eps.shape[0], -1).double().cpu()
    return (torch.cdist(a, b) ** 2).numpy()


def transport_plan(x0: Tensor, eps: Tensor, coupling: str, reg: float | None = None) -> np.ndarray:
    """The B × B plan with uniform marginals 1/B: exact (``ot.emd``) or entropic (``ot.sinkhorn``)."""
    n, m = x0.shape[0], eps.shape[0]
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    C = cost_matrix(x0, eps)
    if coupling == "exact_ot":
        return ot.emd(a, b, C)
    if coupling in ("sinkhorn", "schrodinger_bridge"):
        return ot.sinkhorn(a, b, C, float(reg), method="sinkhorn_stabilized", numItermax=2000, warn=False)
    raise ValueError(f"transport_plan: no plan for coupling {coupling!r}.")


def pair_indices(x0: Tensor, eps: Tensor, coupling: str, reg: float | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
    """For each x_0^i the index j of its noise ε^j under the coupling (a LongTensor of shape (B,), on CPU)."""
    n = x0.shape[0]
    if coupling == "independent":
        return torch.arange(n)
    plan = torch.as_tensor(transport_plan(x0, eps, coupling, reg))
    if coupling == "exact_ot":
        return plan.argmax(dim=1)  # a permutation matrix (scaled by 1/B): the row's single non-zero
    rows = plan.clamp_min(0)
    rows = rows / rows.sum(dim=1, keepdim=True)
    gen_cpu = None
    if generator is not None:  # draw from a CPU generator derived from the loss's own (keeps it reproducible)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        gen_cpu = torch.Generator().manual_seed(seed)
    return torch.multinomial(rows.float(), 1, generator=gen_cpu).squeeze(1)


def couple(x0: Tensor, eps: Tensor, coupling: str, reg: float | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """The noise re-ordered so that (x0[i], result[i]) is a draw of the coupling."""
    j = pair_indices(x0, eps, coupling, reg, generator)
    return eps[j.to(eps.device)]


def bridge_reg(sigma: float) -> float:
    """The entropic regularisation of the Schrödinger-bridge coupling: reg = 2σ² (Tong et al. 2023)."""
    return 2.0 * float(sigma) ** 2


def bridge_std(t: Tensor, sigma: float) -> Tensor:
    """σ √(t(1 − t)), the Brownian-bridge standard deviation at t."""
    return sigma * torch.sqrt(t * (1 - t))


def bridge_velocity_noise(t: Tensor, sigma: float) -> Tensor:
    """d/dt [σ √(t(1 − t))] = σ (1 − 2t) / (2 √(t(1 − t))): the factor of ξ in the bridge's velocity."""
    return sigma * (1 - 2 * t) / (2 * torch.sqrt(t * (1 - t)))
