"""What the network outputs, and the exact conversions among all the ways to say it.

For x = α x_0 + σ ε (any α, σ; see ``schedules.base``) a network may output

    eps       ε̂                                   (Ho et al. 2020)
    x0        x̂_0                                 (data prediction)
    score     ŝ = ∇ log p_t(x) = −ε̂/σ              (Song & Ermon 2019; Song et al. 2021)
    v         v̂ = α ε̂ − σ x̂_0                      (Salimans & Ho 2022; valid for any α, σ)
    velocity  û = α̇ x̂_0 + σ̇ ε̂                      (flow matching / rectified flow)
    edm       F̂ with x̂_0 = c_skip x̃ + c_out F̂(c_in x̃, c_noise)   (Karras et al. 2022, Table 1)

Every output determines the pair (x̂_0, ε̂) through the 2×2 linear system

    [ α   σ ] [x̂_0]   [x]
    [ ? ? ] [ ε̂ ] = [output],

whose second row is the parameterization: (0, 1) for eps, (1, 0) for x0, (0, −1/σ) for score,
(−σ, α) for v, (α̇, σ̇) for velocity. Solving it gives (all in one place, ``predict``):

    eps:      x̂_0 = (x − σ ε̂)/α
    x0:       ε̂ = (x − α x̂_0)/σ
    score:    ε̂ = −σ ŝ,  x̂_0 = (x + σ² ŝ)/α
    v:        x̂_0 = (α x − σ v̂)/(α² + σ²),   ε̂ = (σ x + α v̂)/(α² + σ²)
    velocity: x̂_0 = (σ̇ x − σ û)/(σ̇ α − σ α̇), ε̂ = (α û − α̇ x)/(σ̇ α − σ α̇)

and from (x̂_0, ε̂) every other output follows by its definition.

EDM preconditioning works in the scaled coordinates x̃ = x/α, σ̃ = σ/α with data std σ_d:
c_skip = σ_d²/(σ̃² + σ_d²), c_out = σ̃ σ_d/√(σ̃² + σ_d²), c_in = 1/√(σ̃² + σ_d²), c_noise = ¼ ln σ̃.
For α = 1 this is exactly EDM's table; for α ≠ 1 it is the same denoiser of x̃.

Endpoints. Schedules keep α, σ > 0 on [t_min, t_max] (see ``schedules``), so none of the divisions
above is singular there. Outside (t exactly 0 or 1 on a schedule whose α or σ vanishes), a division
by zero yields 0 instead of NaN, by convention: at σ = 0, ε̂ := 0 (its limit for data with a smooth
density, since ε̂ = −σ ŝ); at α = 0, x̂_0 from eps or score := 0 (not identifiable from the noise
alone; use x0, v, velocity or edm on schedules that reach α = 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule, broadcast_like

PARAMETERIZATIONS = ("eps", "x0", "score", "v", "velocity", "edm")


class Coefficients:
    """(α, σ) at t, broadcast against x; (α̇, σ̇) computed on first use (only the velocity view and
    the velocity parameterization need them, and some schedules differentiate by autograd)."""

    __slots__ = ("alpha", "sigma", "_schedule", "_t", "_like", "_alpha_dot", "_sigma_dot")

    def __init__(self, alpha: Tensor, sigma: Tensor, alpha_dot: Tensor | None = None, sigma_dot: Tensor | None = None,
                 *, schedule: Schedule | None = None, t: Tensor | None = None, like: Tensor | None = None):
        self.alpha, self.sigma = alpha, sigma
        self._alpha_dot, self._sigma_dot = alpha_dot, sigma_dot
        self._schedule, self._t, self._like = schedule, t, like

    @classmethod
    def at(cls, schedule: Schedule, t: Tensor, like: Tensor) -> "Coefficients":
        t = t.to(like.dtype) if like.is_floating_point() else t
        return cls(broadcast_like(schedule.alpha(t), like), broadcast_like(schedule.sigma(t), like),
                   schedule=schedule, t=t, like=like)

    @property
    def alpha_dot(self) -> Tensor:
        if self._alpha_dot is None:
            self._alpha_dot = broadcast_like(self._schedule.alpha_dot(self._t), self._like)
        return self._alpha_dot

    @property
    def sigma_dot(self) -> Tensor:
        if self._sigma_dot is None:
            self._sigma_dot = broadcast_like(self._schedule.sigma_dot(self._t), self._like)
        return self._sigma_dot


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num/den, with 0 where den == 0 (the documented endpoint convention)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def to_x0_eps(kind: str, output: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    """Solve for (x̂_0, ε̂) from a network output of the given kind (kind 'edm' excluded: see
    ``EDMPreconditioning.x0``)."""
    a, s = c.alpha, c.sigma
    if kind == "eps":
        eps = output
        x0 = _safe_div(x - s * eps, a)
    elif kind == "x0":
        x0 = output
        eps = _safe_div(x - a * x0, s)
    elif kind == "score":
        eps = -s * output
        x0 = _safe_div(x + s * s * output, a)
    elif kind == "v":
        n = a * a + s * s
        x0 = (a * x - s * output) / n
        eps = (s * x + a * output) / n
    elif kind == "velocity":
        ad, sd = c.alpha_dot, c.sigma_dot
        det = sd * a - s * ad
        x0 = _safe_div(sd * x - s * output, det)
        eps = _safe_div(a * output - ad * x, det)
    else:
        raise ValueError(f"unknown parameterization {kind!r}; choose one of {PARAMETERIZATIONS}.")
    return x0, eps


class Prediction:
    """All views of one prediction at (x, t): x0, eps, score, v, velocity.

    Built from (x̂_0, ε̂) — or from a network output and its kind, in which case the pair is solved
    for on first use — and every other view computed on first access by its definition
    (score = −ε̂/σ, v = α ε̂ − σ x̂_0, velocity = α̇ x̂_0 + σ̇ ε̂), then kept. A sampler that reads only
    x̂_0 pays for nothing else.

    ``var_interp``: improved DDPM's learned-variance fraction ν ∈ [0, 1] (see ``posterior``); None
    for a model without learned variances.
    """

    VIEWS = ("x0", "eps", "score", "v", "velocity")

    def __init__(self, c: Coefficients, *, x0: Tensor | None = None, eps: Tensor | None = None,
                 output: tuple[str, Tensor, Tensor] | None = None, var_interp: Tensor | None = None):
        if output is None and (x0 is None or eps is None):
            raise ValueError("Prediction needs both x0 and eps, or a network output (kind, output, x).")
        self.c = c
        self._views: dict[str, Tensor] = {}
        if x0 is not None and eps is not None:
            self._views.update(x0=x0, eps=eps)
        self._output = output
        self.var_interp = var_interp

    def _pair(self) -> None:
        kind, out, x = self._output
        self._views["x0"], self._views["eps"] = to_x0_eps(kind, out, x, self.c)

    def _view(self, name: str) -> Tensor:
        v = self._views.get(name)
        if v is not None:
            return v
        if name in ("x0", "eps"):
            self._pair()
        elif name == "score":
            self._views[name] = -_safe_div(self.eps, self.c.sigma)
        elif name == "v":
            self._views[name] = self.c.alpha * self.eps - self.c.sigma * self.x0
        else:  # velocity
            self._views[name] = self.c.alpha_dot * self.x0 + self.c.sigma_dot * self.eps
        return self._views[name]

    x0 = property(lambda self: self._view("x0"), doc="x̂_0 = E[x_0 | x_t]")
    eps = property(lambda self: self._view("eps"), doc="ε̂ = (x − α x̂_0)/σ")
    score = property(lambda self: self._view("score"), doc="ŝ = −ε̂/σ ≈ ∇ log p_t(x)")
    v = property(lambda self: self._view("v"), doc="v̂ = α ε̂ − σ x̂_0")
    velocity = property(lambda self: self._view("velocity"), doc="û = α̇ x̂_0 + σ̇ ε̂ = dx/dt of the PF-ODE")

    def __repr__(self) -> str:
        return f"Prediction(computed={sorted(self._views)}, learned_variance={self.var_interp is not None})"


def from_x0_eps(x0: Tensor, eps: Tensor, c: Coefficients, var_interp: Tensor | None = None) -> Prediction:
    """The prediction with the pair (x̂_0, ε̂); the other views follow on demand."""
    return Prediction(c, x0=x0, eps=eps, var_interp=var_interp)


def target(kind: str, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
    """What a network of the given kind should output for the clean pair (x_0, ε) (kind 'edm'
    excluded: see ``EDMPreconditioning.target``)."""
    p = from_x0_eps(x0, eps, c)
    if kind not in PARAMETERIZATIONS or kind == "edm":
        raise ValueError(f"unknown parameterization {kind!r}; choose one of {PARAMETERIZATIONS[:-1]}.")
    return getattr(p, kind)


def convert(kind: str, output: Tensor, x: Tensor, c: Coefficients) -> Prediction:
    """Read a network output of ``kind`` at (x, t) as a prediction (exact formulas above, on demand)."""
    if kind not in PARAMETERIZATIONS or kind == "edm":
        raise ValueError(f"unknown parameterization {kind!r}; choose one of {PARAMETERIZATIONS[:-1]}.")
    return Prediction(c, output=(kind, output, x))


class EDMPreconditioning:
    """Karras et al. 2022 preconditioning in the scaled coordinates x̃ = x/α, σ̃ = σ/α."""

    def __init__(self, sigma_data: float = 0.5):
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}.")
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma_tilde: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise) at σ̃."""
        sd2 = self.sigma_data**2
        n = sigma_tilde * sigma_tilde + sd2
        return sd2 / n, sigma_tilde * self.sigma_data / torch.sqrt(n), 1.0 / torch.sqrt(n), 0.25 * torch.log(sigma_tilde)

    def x0(self, output: Tensor, x: Tensor, c: Coefficients) -> Tensor:
        c_skip, c_out, _, _ = self.scalings(c.sigma / c.alpha)
        return c_skip * (x / c.alpha) + c_out * output

    def target(self, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
        """F* = (x_0 − c_skip x̃)/c_out, so that ‖F − F*‖² = λ(σ̃)‖D − x_0‖² with λ = 1/c_out²."""
        c_skip, c_out, _, _ = self.scalings(c.sigma / c.alpha)
        x = c.alpha * x0 + c.sigma * eps
        return (x0 - c_skip * (x / c.alpha)) / c_out

    def net_input(self, x: Tensor, c: Coefficients) -> Tensor:
        _, _, c_in, _ = self.scalings(c.sigma / c.alpha)
        return c_in * (x / c.alpha)

    def noise_label(self, sigma_tilde: Tensor) -> Tensor:
        return 0.25 * torch.log(sigma_tilde)


class Parameterization:
    """A parameterization choice: ``kind`` in PARAMETERIZATIONS (``edm`` = x0 through EDM's
    preconditioning). Says what the network sees (``net_inputs``), what it is trained to output
    (``target``) and how to read its output (``predict``).

    The network's noise label is ``time_scale · t`` for the plain kinds (1000·t matches DDPM's
    integer timesteps) and c_noise = ¼ ln σ̃ for ``edm``.
    """

    def __init__(self, kind: str = "eps", sigma_data: float = 0.5, time_scale: float = 1000.0):
        if kind not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {kind!r}; choose one of {PARAMETERIZATIONS}.")
        self.kind = kind
        self.time_scale = float(time_scale)
        self.precond = EDMPreconditioning(sigma_data) if kind == "edm" else None

    @property
    def gives_score(self) -> bool:
        """All kinds give a score for Gaussian schedules (through ε̂ = −σ ŝ)."""
        return True

    def net_inputs(self, x: Tensor, t: Tensor, schedule: Schedule) -> tuple[Tensor, Tensor]:
        """(network input, noise label of shape (B,))."""
        if self.precond is None:
            return x, self.time_scale * t
        c = Coefficients.at(schedule, t, x)
        sigma_tilde = schedule.sigma_tilde(t.to(x.dtype))
        return self.precond.net_input(x, c), self.precond.noise_label(sigma_tilde)

    def predict(self, output: Tensor, x: Tensor, t: Tensor, schedule: Schedule) -> Prediction:
        c = Coefficients.at(schedule, t, x)
        output = output.to(x.dtype)
        if self.precond is None:
            return convert(self.kind, output, x, c)
        x0 = self.precond.x0(output, x, c)
        eps = _safe_div(x - c.alpha * x0, c.sigma)
        return from_x0_eps(x0, eps, c)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
        c = Coefficients.at(schedule, t, x0)
        if self.precond is None:
            return target(self.kind, x0, eps, c)
        return self.precond.target(x0, eps, c)

    def __repr__(self) -> str:
        return f"Parameterization({self.kind!r})"


