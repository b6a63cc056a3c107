"""Two theorems about score matching, measured on a model whose data distribution is known exactly (a
Gaussian mixture, ``diffusion_lab.oracles.GaussianMixture``: its score ∇log q_t and its velocity field
are closed form).

1. Score matching vs denoising score matching (Vincent 2011, "A Connection Between Score Matching and
   Denoising Autoencoders", Eq. 11–12 and App.). With x_t = α x_0 + σ ε and the weighting λ(t) = σ²
   (the ε-space MSE), for a model score s_θ:

       SM(θ)  = E_{t, x_t} ‖σ (s_θ(x_t, t) − ∇log q_t(x_t))‖²
       DSM(θ) = E_{t, x_0, ε} ‖σ s_θ(x_t, t) + ε‖²                (∇log q_t(x_t | x_0) = −ε/σ)
       DSM − SM = E‖ε‖² − E‖σ ∇log q_t(x_t)‖² + 2 E[σ s_θ · (ε + σ ∇log q_t)]

   The last term vanishes in expectation because E[ε | x_t] = −σ ∇log q_t(x_t) (Tweedie), so the gap
   is the θ-free constant C = E‖ε‖² − E‖σ∇log q_t‖². ``sm_dsm`` evaluates all three on fixed draws, and
   the cross term separately: on fixed draws gap = C_hat + cross exactly, C_hat does not move during
   training and cross is Monte-Carlo noise of order n^{-1/2}.

2. Wasserstein distance bounded by the score-matching loss (Kwon, Fan & Lee 2022, "Score-based Generative
   Modeling Secretly Minimizes the Wasserstein Distance", Thm. 1, for the probability-flow ODE). Let the
   model's ODE be dx/dt = v_θ(x, t) = f(t) x − ½ g²(t) s_θ(x, t) and the true one v*(x, t) (the same with
   ∇log q_t), integrated from t_max down to t_min. If v_θ(·, t) is L(t)-Lipschitz, Grönwall along the
   synchronous coupling of the two flows (same start, true trajectory x(t) ~ q_t) gives

       W₂(p_θ, q_0) ≤ e^{∫ L} W₂(π, q_{t_max})                                        (prior mismatch)
                     + ∫_{t_min}^{t_max} e^{∫_{t_min}^{s} L(r) dr} · ‖v_θ − v*‖_{L²(q_s)} ds   (score error)
                     + W₂(q_{t_min}, q_0)                                              (stopping early)

   with ‖v_θ − v*‖_{L²(q_s)} = ½ g²(s) √J_SM(s), J_SM(s) = E_{q_s}‖s_θ − ∇log q_s‖² (for rectified flow,
   α = 1 − t, σ = t: ½g² = t/(1 − t)). Kwon et al. state it with Lipschitz constants of the model's score;
   here L(t) is the Lipschitz constant of the whole drift v_θ(·, t).

   What is estimated, not known (the bound is only as good as these):
   * L(t): the maximum over ``n_lipschitz`` points drawn from q_t of the spectral norm of the Jacobian
     ∂v_θ/∂x (autograd). The theorem needs the supremum over the region the two flows visit; a maximum
     over samples is a lower estimate of it, so the reported "bound" is an estimate, not a certificate.
     The one-sided constant m(t) = max λ_max(−sym ∂v_θ/∂x) (what Grönwall really needs when integrating
     down in t; m ≤ L) gives a tighter estimate, reported beside it.
   * ‖v_θ − v*‖_{L²(q_s)}: Monte Carlo with ``n`` draws of q_s, on a midpoint grid of ``n_t`` times.
   * W₂(π, q_{t_max}) ≤ (1 − t_max) √E‖x_0‖² and W₂(q_{t_min}, q_0) ≤ t_min √E‖ε − x_0‖² (explicit
     couplings; for the clipped rectified-flow schedule both are ~1e-3).
   * the actual W₂(p_θ, q_0): POT's exact EMD between ``n`` model samples and ``n`` data samples, which is
     biased upwards by the finite sample; ``w2_floor`` is the same estimate between two data samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_lab.oracles import GaussianMixture


def _sq(x: Tensor) -> Tensor:
    return (x.reshape(x.shape[0], -1) ** 2).sum(1)


def _draw(mixture: GaussianMixture, schedule, n: int, seed: int, t: Tensor | None = None
          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x0, eps, t, x_t) in float64 from a generator seeded ``seed``; t uniform on [t_min, t_max] if None."""
    g = torch.Generator().manual_seed(int(seed))
    x0 = mixture.sample(n, g).to(torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    if t is None:
        t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(n, generator=g, dtype=torch.float64)
    t = t.to(torch.float64).expand(n) if t.dim() == 0 else t.to(torch.float64)
    return x0, eps, t, schedule.add_noise(x0, eps, t)


@torch.no_grad()
def sm_dsm(denoiser, mixture: GaussianMixture, n: int = 4000, seed: int = 0) -> dict[str, float]:
    """SM, DSM, their gap, the θ-free constant C and the cross term (module docstring, part 1), on fixed
    draws: the same (x_0, ε, t) every call with the same seed."""
    sch = denoiser.schedule
    x0, eps, t, x_t = _draw(mixture, sch, n, seed)
    sigma = sch.sigma(t)[:, None]
    a = sigma * denoiser(x_t, t).score.to(torch.float64)  # σ s_θ
    b = sigma * mixture.score(x_t, t, sch)                 # σ ∇log q_t
    sm, dsm = _sq(a - b).mean(), _sq(a + eps).mean()
    const = (_sq(eps) - _sq(b)).mean()
    cross = 2 * (a * (eps + b)).sum(1).mean()
    return {"sm": float(sm), "dsm": float(dsm), "gap": float(dsm - sm), "gap_constant": float(const),
            "cross": float(cross)}


def velocity_jacobian_norms(velocity, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Per point: the spectral norm of J = ∂v/∂x and λ_max(−(J + Jᵀ)/2), for vectors x of shape (B, D)."""
    x = x.detach().to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        v = velocity(x, t).to(torch.float64)
        rows = [torch.autograd.grad(v[:, i].sum(), x, retain_graph=i + 1 < v.shape[1])[0] for i in range(v.shape[1])]
    J = torch.stack(rows, dim=1)  # (B, D, D): J[b, i, j] = ∂v_i/∂x_j (each point's v depends on its own x only)
    spectral = torch.linalg.matrix_norm(J, ord=2)
    one_sided = torch.linalg.eigvalsh(-(J + J.transpose(1, 2)) / 2)[:, -1]
    return spectral.detach(), one_sided.detach()


@dataclass
class W2Bound:
    """The terms of the bound (module docstring, part 2), per time node and integrated."""

    t: Tensor              # midpoint nodes on [t_min, t_max]
    velocity_error: Tensor  # ‖v_θ − v*‖_{L²(q_t)} at each node
    j_sm: Tensor           # J_SM(t) = E‖s_θ − ∇log q_t‖² at each node
    lipschitz: Tensor      # L(t) estimate at each node
    one_sided: Tensor      # m(t) estimate at each node
    prior_term: float      # W₂(π, q_{t_max}) bound
    early_stop_term: float  # W₂(q_{t_min}, q_0) bound
    bound: float           # with L(t)
    bound_one_sided: float  # with m(t) (negative where the flow contracts: Grönwall allows it)
    bound_no_growth: float  # ∫ ‖v_θ − v*‖ dt + prior + early stop (L = 0: what the bound would be if errors did not grow)


def _grown_integral(t: Tensor, err: Tensor, rate: Tensor, dt: float) -> tuple[float, float]:
    """(∫ e^{∫_{t_min}^{s} rate} err(s) ds, e^{∫ rate}) on a midpoint grid of step dt (ascending t)."""
    cum = torch.cumsum(rate, 0) * dt - 0.5 * rate * dt  # ∫_{t_min}^{t_i} rate, midpoint nodes
    total = float(rate.sum() * dt)
    return float((torch.exp(cum) * err).sum() * dt), math.exp(total)


@torch.no_grad()
def w2_bound(denoiser, mixture: GaussianMixture, n: int = 2000, n_t: int = 32, n_lipschitz: int = 500,
             seed: int = 0) -> W2Bound:
    """The Kwon–Fan–Lee bound on W₂(p_θ, q_0) with its estimated ingredients (module docstring)."""
    sch = denoiser.schedule
    t_min, t_max = float(sch.t_min), float(sch.t_max)
    dt = (t_max - t_min) / n_t
    ts = t_min + dt * (torch.arange(n_t, dtype=torch.float64) + 0.5)
    errs, jsm, lips, ones = [], [], [], []

    def velocity(x: Tensor, t: Tensor) -> Tensor:  # with gradients (the adapter's __call__ has none)
        return denoiser.predict(x, t).velocity

    for i, t in enumerate(ts):
        _, _, tt, x_t = _draw(mixture, sch, n, seed + 7 * i + 1, t)
        pred, true = denoiser(x_t, tt), mixture.predict(x_t, tt, sch)
        errs.append(_sq(pred.velocity.to(torch.float64) - true.velocity).mean().sqrt())
        jsm.append(_sq(pred.score.to(torch.float64) - true.score).mean())
        spectral, one_sided = velocity_jacobian_norms(velocity, x_t[:n_lipschitz], tt[:n_lipschitz])
        lips.append(spectral.max())
        ones.append(one_sided.max())
    err, lip, one = torch.stack(errs), torch.stack(lips), torch.stack(ones)
    x0, eps, _, _ = _draw(mixture, sch, 20_000, seed + 99_991)
    prior = (1 - t_max) * float(_sq(x0).mean().sqrt())  # α(t_max) x_0 is all q_{t_max} has beyond π
    early = t_min * float(_sq(eps - x0).mean().sqrt())
    grown, growth = _grown_integral(ts, err, lip, dt)
    grown1, growth1 = _grown_integral(ts, err, one, dt)
    plain = float(err.sum() * dt)
    return W2Bound(ts, err, torch.stack(jsm), lip, one, prior, early, bound=growth * prior + grown + early,
                   bound_one_sided=growth1 * prior + grown1 + early, bound_no_growth=prior + plain + early)


def w2_actual(samples: Tensor, mixture: GaussianMixture, seed: int = 0) -> tuple[float, float]:
    """(W₂ between the samples and as many exact data samples, the same between two data samples): POT's
    exact EMD (``metrics.lowdim.wasserstein2``); the second is the finite-sample floor."""
    from diffusion_lab.metrics.lowdim import wasserstein2

    n = samples.shape[0]
    g = torch.Generator().manual_seed(int(seed) + 12_345)
    a, b = mixture.sample(n, g).float(), mixture.sample(n, g).float()
    return wasserstein2(samples.float(), a, max_points=n), wasserstein2(b, a, max_points=n)
