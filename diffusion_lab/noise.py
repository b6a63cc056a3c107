"""The noise distribution q(ε) of the interpolation x_t = α(t) x_0 + σ(t) ε: Gaussian, or PFGM++'s.

Every schedule carries one (``Schedule.noise``, Gaussian unless a config says otherwise); the
training losses draw ε from it and the samplers draw their prior at t_max from it, x_T = σ(t_max) ε.

``GaussianNoise``: ε ~ N(0, I), the diffusion models.

``PFGMPPNoise(D)``: PFGM++ (Xu, Liu, Tian, Tong, Tegmark & Jaakkola 2023, "PFGM++: Unlocking the
Potential of Physics-Inspired Generative Models", Sec. 3 and Eq. 4). Data y ∈ R^N augmented by D
extra dimensions; the perturbation kernel at augmentation radius r is

    p_r(x | y) ∝ 1 / (‖x − y‖² + r²)^{(N+D)/2},      r = σ √D     (their alignment r = σ√D, Sec. 4),

so that n = x − y is σ times a multivariate Student-t with D degrees of freedom:

    ε = n/σ = g / √(W/D),      g ~ N(0, I_N),  W ~ χ²_D  (independent),

because (‖n‖² + r²)^{−(N+D)/2} ∝ (1 + ‖n‖²/(Dσ²))^{−(D+N)/2} is that density. Hence
E‖ε‖² = N·D/(D − 2) for D > 2, and ε → g pathwise as D → ∞ (W/D → 1): diffusion is the limit
D → ∞. The paper samples the same law through the radius: with B ~ Beta(N/2, D/2),
‖n‖ = r·√(B/(1 − B)) (B/(1 − B) is BetaPrime(N/2, D/2), the law of ‖g‖²/W), times a uniform direction
(Xu et al. 2023, Alg. 1 / App. C). Both draws are implemented (``draw="student_t"`` | ``"radial"``)
and tested equal in law. ``D=None`` (or ∞) is the Gaussian itself, drawn with the same random numbers
as ``GaussianNoise``, so that the diffusion case is reproduced exactly through the same config path.

Since x̂_0 = E[x_0 | x_t] and dx/dσ = (x − x̂_0)/σ still hold for this kernel (Xu et al. 2023, Eq. 6
aligned with EDM's ODE, Prop. 4.1), EDM's σ schedule, loss and every ODE sampler run unchanged; the
samplers that add Gaussian noise (SDE, ancestral, Langevin, churn) do not, and refuse non-Gaussian
noise (``check_gaussian``).

Gamma variates are drawn here (Marsaglia & Tsang 2000, "A simple method for generating gamma
variables") so that every draw follows the caller's ``torch.Generator`` (torch's own Gamma does not
take one): seeded evaluations and losses stay reproducible.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lab.errors import ConfigError


def standard_gamma(concentration: float, shape: tuple[int, ...], generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """Gamma(concentration, 1) variates by Marsaglia & Tsang's squeeze-rejection method, float64
    internally; for concentration a < 1, Gamma(a) = Gamma(a + 1) · U^{1/a}."""
    a = float(concentration)
    if not a > 0:
        raise ValueError(f"standard_gamma needs a concentration > 0, got {a}.")
    boost = a < 1.0
    d = (a + 1.0 if boost else a) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    n = int(math.prod(shape))
    out = torch.empty(n, dtype=torch.float64, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel() > 0:
        m = todo.numel()
        z = torch.randn(m, generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(m, generator=generator, dtype=torch.float64, device=device)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        out = out * u ** (1.0 / a)
    return out.reshape(shape).to(dtype)


class NoiseDistribution:
    """q(ε) for x_t = α x_0 + σ ε. ``sample`` draws ε (batch first), ``log_prob`` is log q(ε) summed
    over all but the batch dimension, ``gaussian`` says whether q = N(0, I)."""

    name: str = "noise"
    gaussian: bool = True

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        raise NotImplementedError

    def sample_like(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """ε shaped like x0, drawn on the generator's device (the losses' draw)."""
        dev = generator.device if generator is not None else x0.device
        dtype = x0.dtype if x0.is_floating_point() else torch.float32
        return self.sample(tuple(x0.shape), generator=generator, dtype=dtype, device=dev).to(x0.device)

    def log_prob(self, eps: Tensor) -> Tensor:
        raise NotImplementedError


class GaussianNoise(NoiseDistribution):
    """ε ~ N(0, I)."""

    name = "gaussian"
    gaussian = True

    def sample(self, shape, generator=None, dtype=torch.float32, device=None) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def log_prob(self, eps: Tensor) -> Tensor:
        n = eps[0].numel()
        return -0.5 * eps.flatten(1).pow(2).sum(1) - 0.5 * n * math.log(2 * math.pi)

    def __repr__(self) -> str:
        return "GaussianNoise()"


class PFGMPPNoise(NoiseDistribution):
    """PFGM++ noise: ε = n/σ, a multivariate Student-t with D degrees of freedom (module docstring).

    Args:
        D: the augmentation dimension, > 0; None or ``inf``: Gaussian (the D → ∞ limit, diffusion).
        draw: "radial" (the paper's Beta(N/2, D/2) radius times a uniform direction) or "student_t"
            (g / √(W/D)); the same law.
    """

    name = "pfgmpp"

    def __init__(self, D: float | None = 128, draw: str = "radial"):
        if D is not None and not (isinstance(D, (int, float)) and not isinstance(D, bool) and D > 0):
            raise ConfigError(f"noise.D={D!r} must be a number > 0 (PFGM++'s augmentation dimension, e.g. 128) "
                              "or null for Gaussian noise.")
        if draw not in ("radial", "student_t"):
            raise ConfigError(f"noise.draw={draw!r} is not a draw of PFGM++ noise; use radial or student_t.")
        self.D = None if D is None or math.isinf(D) else float(D)
        self.draw = draw

    @property
    def gaussian(self) -> bool:  # type: ignore[override]
        return self.D is None

    def sample(self, shape, generator=None, dtype=torch.float32, device=None) -> Tensor:
        g = torch.randn(shape, generator=generator, dtype=torch.float64 if self.D else dtype, device=device)
        if self.D is None:
            return g
        batch, n = shape[0], int(math.prod(shape[1:]))
        view = (batch,) + (1,) * (len(shape) - 1)
        if self.draw == "student_t":
            w = 2.0 * standard_gamma(self.D / 2.0, (batch,), generator, device=device)  # χ²_D
            return (g * torch.sqrt(self.D / w).reshape(view)).to(dtype)
        # the paper's way: B ~ Beta(N/2, D/2) from two gammas, ‖ε‖ = √(D·B/(1−B)), uniform direction g/‖g‖
        ga = standard_gamma(n / 2.0, (batch,), generator, device=device)
        gb = standard_gamma(self.D / 2.0, (batch,), generator, device=device)
        beta = ga / (ga + gb)
        radius = torch.sqrt(self.D * beta / (1.0 - beta))
        direction = g / g.flatten(1).norm(dim=1).reshape(view)
        return (direction * radius.reshape(view)).to(dtype)

    def log_prob(self, eps: Tensor) -> Tensor:
        """Multivariate Student-t log density with D degrees of freedom and unit scale:
        log Γ((D+N)/2) − log Γ(D/2) − (N/2) log(Dπ) − ((D+N)/2) log(1 + ‖ε‖²/D)."""
        if self.D is None:
            return GaussianNoise().log_prob(eps)
        n, D = eps[0].numel(), self.D
        sq = eps.flatten(1).pow(2).sum(1)
        return (math.lgamma((D + n) / 2) - math.lgamma(D / 2) - 0.5 * n * math.log(D * math.pi)
                - 0.5 * (D + n) * torch.log1p(sq / D))

    def __repr__(self) -> str:
        return f"PFGMPPNoise(D={self.D}, draw={self.draw!r})"


def check_gaussian(noise: NoiseDistribution, what: str, key: str = "sampler",
                   fix: str = "use an ODE sampler (e.g. heun, euler, dpm_solver_pp_2m)") -> None:
    """Raise ConfigError when ``what`` (a sampler or loss that needs Gaussian noise) meets another noise."""
    if not noise.gaussian:
        raise ConfigError(f"{key}={what} needs Gaussian noise (it adds Gaussian noise or uses the Gaussian score), "
                          f"but the model's noise is {noise!r}; {fix}, or set noise=gaussian.")
