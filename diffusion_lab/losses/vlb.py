"""The variational bound of a discrete-time diffusion, the hybrid loss, and the full bound in bits/dim.

Discrete chain (Ho et al. 2020, §2; Nichol & Dhariwal 2021, "Improved DDPM", §2–3). On the grid
t_i = i/T write α_i = α(t_i), σ_i = σ(t_i) for i = 1..T and α_0 = 1, σ_0 = 0 (the data). The
Markov chain with marginals q(x_i | x_0) = N(α_i x_0, σ_i² I) has steps
q(x_i | x_{i−1}) = N(a_i x_{i−1}, β_i I) with

    a_i = α_i/α_{i−1},      β_i = σ_i² − a_i² σ_{i−1}²          (VP: a_i² = 1 − β_i, DDPM's β_i),

and, by Bayes' rule for Gaussians, the posterior q(x_{i−1} | x_i, x_0) = N(μ̃_i, β̃_i I):

    μ̃_i(x_i, x_0) = (a_i σ_{i−1}²/σ_i²) x_i + (α_{i−1} β_i/σ_i²) x_0,      β̃_i = β_i σ_{i−1}²/σ_i².

The model p(x_{i−1} | x_i) = N(μ̂_i, Σ_i I) takes μ̂_i = μ̃_i(x_i, x̂_0) with x̂_0 read from the network
through the parameterization (Ho et al. Eq. 10 in any parameterization) and Σ_i:

    small    Σ_i = β̃_i  (at i = 1, where β̃_1 = 0, β̃_2: the clipped value)
    large    Σ_i = β_i
    learned  log Σ_i = ν log β_i + (1 − ν) log β̃_i (clipped),  ν = (v + 1)/2, v the variance output
             (Nichol & Dhariwal 2021, Eq. 15).

The negative ELBO, in nats, is L = L_T + Σ_{i=2}^{T} L_{i−1} + L_0 with

    L_T     = KL(q(x_T | x_0) ‖ p(x_T)),  p(x_T) = N(0, σ(t_max)² I) the schedule's prior,
    L_{i−1} = E_{x_i} KL(N(μ̃_i, β̃_i) ‖ N(μ̂_i, Σ_i))
            = ½ Σ_dims [log(Σ_i/β̃_i) + β̃_i/Σ_i + (μ̃_i − μ̂_i)²/Σ_i − 1],
    L_0     = −E_{x_1} log p(x_0 | x_1).

The decoder p(x_0 | x_1) is N(μ̂_1, Σ_1) (μ̂_1 = x̂_0 since σ_0 = 0) either integrated over the 256
bins of width 2/255 of data in [−1, 1] (``decoder="discretized"``, Ho et al. §3.3; the edge bins
extend to ±∞; ``bins`` sets another number of levels, e.g. 17 for the 8x8 digits), or read as a density (``decoder="gaussian"``, for continuous low-dimensional data).
Dividing by D·ln 2 gives bits/dim.

Training estimates Σ_i L_{i−1} with one term per example: for i from the time sampler (uniform, or
``ImportanceTime`` as in improved DDPM), T·L_{i−1} (bits/dim) is unbiased for the model-dependent
part of the bound; L_T, which no parameter touches, is only logged. The hybrid loss (Nichol &
Dhariwal 2021, §3.1) is

    L_hybrid = L_simple + λ·L_vlb,   λ = 0.001,

with the gradient of the L_vlb term stopped through μ̂ (x̂_0 detached), so that L_vlb trains only the
variances and L_simple only the mean. ``variational_bound`` evaluates every term for a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_lab.denoiser import Denoiser, NetOutput
from diffusion_lab.losses.base import Loss, LossOutput, gaussian_noise, mean_flat, schedule_name
from diffusion_lab.noise import check_gaussian
from diffusion_lab.losses.dsm import DenoisingScoreMatching
from diffusion_lab.losses.time_sampling import TimeSampler, grid_index, is_discrete
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.posterior import VARIANCES, Posterior, log_variance, posterior
from diffusion_lab.schedules.base import Schedule, broadcast_like

DECODERS = ("discretized", "gaussian")
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------- chain coefficients
@dataclass
class StepCoefficients:
    """Step i of the chain, per sample (shape (B,), float64): q(x_{i−1} | x_i, x_0) and the fixed
    variances, with log β̃_1 (= −∞) clipped to log β̃_2 as improved DDPM does."""

    posterior: Posterior
    log_beta: Tensor
    log_beta_tilde: Tensor
    is_first: Tensor  # i == 1 (bool)


def step_coefficients(schedule: Schedule, t: Tensor) -> StepCoefficients:
    """The coefficients of step i = round(t·T) → i − 1 (``diffusion_lab.posterior``, s = (i−1)/T)."""
    T = schedule.num_timesteps
    i = grid_index(t, T).to(torch.float64)
    q = posterior(schedule, i / T, (i - 1) / T)
    two = torch.full_like(i, 2.0)
    beta_tilde_2 = posterior(schedule, two / T, (two - 1) / T).beta_tilde
    first = i == 1
    log_bt = torch.log(torch.where(first, beta_tilde_2, q.beta_tilde))
    return StepCoefficients(q, torch.log(q.beta), log_bt, first)


# ---------------------------------------------------------------------------------- densities
def gaussian_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^{logvar1}) ‖ N(mean2, e^{logvar2})) in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _log_cdf_diff(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Φ(hi) − Φ(lo)) for lo < hi, stable in both tails (reflect to the left tail)."""
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)  # Φ(b) − Φ(a) unchanged, now a < b ≤ |…| in the accurate tail
    lb, la = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return lb + torch.log(-torch.expm1((la - lb).clamp(max=-1e-300)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256) -> Tensor:
    """Elementwise log P(x) of the Gaussian N(mean, e^{2 log_scale}) integrated over the bin of x:
    bins of width 2/(bins−1) centred on the levels of [−1, 1], the two edge bins open to ±∞."""
    half = 1.0 / (bins - 1)
    inv = torch.exp(-log_scale)
    lo = (x - half - mean) * inv
    hi = (x + half - mean) * inv
    left = x < -1.0 + half / 2  # the bin of −1: (−∞, −1 + half]
    right = x > 1.0 - half / 2  # the bin of +1: [1 − half, ∞)
    log_mid = _log_cdf_diff(lo, hi)
    log_left = torch.special.log_ndtr(hi)
    log_right = torch.special.log_ndtr(-lo)
    return torch.where(left, log_left, torch.where(right, log_right, log_mid))


def gaussian_log_density(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log N(x; mean, e^{logvar})."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def prior_kl_bits(x0: Tensor, schedule: Schedule) -> Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, σ(t_max)² I)) in bits/dim, shape (B,), at t = 1 (i = T)."""
    x = x0.to(torch.float64)
    one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    a, s = schedule.alpha(one), schedule.sigma(one)
    s_prior = schedule.prior_std()
    mean = broadcast_like(a, x) * x
    logvar = broadcast_like(2 * torch.log(s), x).expand_as(x)
    kl = gaussian_kl(mean, logvar, torch.zeros_like(x), torch.full_like(x, 2 * math.log(s_prior)))
    return mean_flat(kl) / LN2


def vlb_term_bits(
    x0_hat: Tensor,
    var_interp: Tensor | None,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    schedule: Schedule,
    *,
    variance: str = "small",
    decoder: str = "discretized",
    bins: int = 256,
) -> Tensor:
    """Per-sample bits/dim of the bound term at i = round(t·T): the decoder NLL −log p(x_0|x_1) at
    i = 1, KL(q(x_{i−1}|x_i,x_0) ‖ p(x_{i−1}|x_i)) for i ≥ 2 (see the module docstring). Shape (B,).
    ``var_interp``: the learned-variance fraction ν of the model's prediction (variance="learned")."""
    sc = step_coefficients(schedule, t)
    x0d, xtd, x0h = x0.to(torch.float64), x_t.to(torch.float64), x0_hat.to(torch.float64)
    mu_true = sc.posterior.mean(xtd, x0d)
    mu_model = sc.posterior.mean(xtd, x0h)
    nu = None if var_interp is None else var_interp.to(torch.float64)
    logvar_model = log_variance(variance, broadcast_like(sc.log_beta, xtd), broadcast_like(sc.log_beta_tilde, xtd),
                                nu).expand_as(xtd)
    logvar_true = broadcast_like(sc.log_beta_tilde, xtd).expand_as(xtd)
    kl = mean_flat(gaussian_kl(mu_true, logvar_true, mu_model, logvar_model)) / LN2
    if decoder == "discretized":
        ll = discretized_gaussian_log_likelihood(x0d, mu_model, 0.5 * logvar_model, bins)
    else:
        ll = gaussian_log_density(x0d, mu_model, logvar_model)
    nll = -mean_flat(ll) / LN2
    return torch.where(sc.is_first, nll, kl)


def _check_decoder_data(x0: Tensor, decoder: str, loss_name: str) -> None:
    if decoder == "discretized":
        lo, hi = float(x0.min()), float(x0.max())
        if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(
                f"loss={loss_name}: decoder=discretized needs data in [-1, 1] (256 levels), got values in [{lo:.4g}, {hi:.4g}]; "
                f"rescale the data or set decoder=gaussian for continuous data."
            )


def _validate_discrete(loss_name: str, schedule: Schedule, what: str) -> None:
    if not is_discrete(schedule):
        raise ValueError(
            f"loss={loss_name} {what} needs a discrete schedule (schedule.num_timesteps set, e.g. schedule=ddpm); "
            f"schedule {schedule_name(schedule)} is continuous."
        )
    if schedule.num_timesteps < 2:
        raise ValueError(f"loss={loss_name} needs schedule.num_timesteps >= 2, got {schedule.num_timesteps}.")


# ---------------------------------------------------------------------------------- losses
class VariationalBoundLoss(Loss):
    """L_vlb in bits/dim (improved DDPM), per example T·L_{i−1} at i from the time sampler.

    Args:
        variance: "small" (β̃), "large" (β) or "learned" (network outputs 2C channels).
        decoder: "discretized" (256 bins of data in [−1, 1]) or "gaussian" (a density).
        time_sampler: default ``ImportanceTime`` (improved DDPM §3.3).
    """

    name = "vlb"
    gaussian_only = True

    def __init__(self, variance: str = "learned", decoder: str = "discretized", time_sampler: TimeSampler | str | None = None):
        super().__init__(time_sampler, default_time_sampler="importance")
        if variance not in VARIANCES:
            raise ValueError(f"unknown loss.variance {variance!r}; choose one of {VARIANCES}.")
        if decoder not in DECODERS:
            raise ValueError(f"unknown loss.decoder {decoder!r}; choose one of {DECODERS}.")
        self.variance, self.decoder = variance, decoder

    @property
    def learned_variance(self) -> bool:  # type: ignore[override]
        return self.variance == "learned"

    def validate(self, schedule: Schedule, parameterization: Parameterization) -> None:
        what = "(learned variances)" if self.learned_variance else "(the variational bound)"
        _validate_discrete(self.name, schedule, what)
        super().validate(schedule, parameterization)

    def __call__(self, model, x0, *, generator=None, net_kwargs=None) -> LossOutput:
        self._check(model)
        schedule = model.schedule
        _check_decoder_data(x0, self.decoder, self.name)
        t, w, _, x_t = self._draw(x0, schedule, generator)
        pred = model.read(model.output(x_t, t, **(net_kwargs or {})), x_t, t)
        term = vlb_term_bits(pred.x0, pred.var_interp, x0, x_t, t, schedule, variance=self.variance, decoder=self.decoder)
        per_sample = (schedule.num_timesteps * term).to(x0.dtype)
        prior = prior_kl_bits(x0, schedule)
        return self._finish(per_sample, w, t, {"vlb_prior_bpd": float(prior.mean())})

    def __repr__(self) -> str:
        return f"VariationalBoundLoss(variance={self.variance!r}, decoder={self.decoder!r}, time_sampler={self.time_sampler!r})"


class HybridLoss(Loss):
    """L_hybrid = L_simple + λ·L_vlb with stop-gradient on the mean in L_vlb (Nichol & Dhariwal 2021).

    Per example: m(t)·MSE(own target) + λ·T·L_{i−1} (bits/dim), x̂_0 detached in the second term.
    ``weighting`` is the DSM weighting of the first term ("simple" = ε-MSE for eps).
    """

    name = "hybrid"
    gaussian_only = True
    learned_variance = True

    def __init__(
        self,
        vlb_weight: float = 0.001,
        weighting: str = "simple",
        decoder: str = "discretized",
        time_sampler: TimeSampler | str | None = None,
    ):
        super().__init__(time_sampler)
        if not vlb_weight > 0:
            raise ValueError(f"loss.vlb_weight must be positive, got {vlb_weight}; use loss=eps_mse for λ = 0.")
        if decoder not in DECODERS:
            raise ValueError(f"unknown loss.decoder {decoder!r}; choose one of {DECODERS}.")
        self.vlb_weight, self.decoder = float(vlb_weight), decoder
        self.simple = DenoisingScoreMatching(weighting=weighting, time_sampler=self.time_sampler)
        self.simple.name = self.name

    def validate(self, schedule: Schedule, parameterization: Parameterization) -> None:
        _validate_discrete(self.name, schedule, "(learned variances)")
        self.simple.validate(schedule, parameterization)
        check_gaussian(schedule.noise, self.name, key="loss", fix="use loss=edm or another denoising loss")

    def __call__(self, model, x0, *, generator=None, net_kwargs=None) -> LossOutput:
        self._check(model)
        schedule, parameterization = model.schedule, model.parameterization
        _check_decoder_data(x0, self.decoder, self.name)
        t, w, eps, x_t = self._draw(x0, schedule, generator)
        out = model.output(x_t, t, **(net_kwargs or {}))
        l_simple = self.simple.regression(out.prediction, x0, eps, t, schedule, parameterization)
        # stop-gradient on the mean: L_vlb trains only the variances
        pred = model.read(NetOutput(out.prediction.detach(), out.var_raw), x_t, t)
        term = vlb_term_bits(pred.x0, pred.var_interp, x0, x_t, t, schedule, variance="learned", decoder=self.decoder)
        l_vlb = (schedule.num_timesteps * term).to(l_simple.dtype)
        per_sample = l_simple + self.vlb_weight * l_vlb
        logs = {"l_simple": float(l_simple.detach().mean()), "l_vlb_bpd": float(l_vlb.detach().mean())}
        return self._finish(per_sample, w, t, logs)

    def __repr__(self) -> str:
        return (f"HybridLoss(vlb_weight={self.vlb_weight}, weighting={self.simple.weighting!r}, decoder={self.decoder!r}, "
                f"time_sampler={self.time_sampler!r})")


# ---------------------------------------------------------------------------------- evaluation
@dataclass
class VariationalBound:
    """The full bound of a batch, bits/dim: total (B,) = prior (B,) + terms.sum(1); terms (B, T),
    column i−1 holding the i-th term (column 0 the decoder NLL L_0)."""

    total: Tensor
    terms: Tensor
    prior: Tensor


@torch.no_grad()
def variational_bound(
    model: Denoiser,
    x0: Tensor,
    *,
    variance: str = "small",
    decoder: str = "discretized",
    generator: torch.Generator | None = None,
    net_kwargs: dict | None = None,
    bins: int = 256,
) -> VariationalBound:
    """Evaluate L_T + Σ_{i=2}^{T} L_{i−1} + L_0 for each example (one fresh x_i per term; T network
    calls). ``variance="learned"`` reads the variance from the model's learned-variance output."""
    schedule = model.schedule
    _validate_discrete("vlb", schedule, "(variational_bound)")
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}.")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}.")
    _check_decoder_data(x0, decoder, "vlb")
    T = schedule.num_timesteps
    B = x0.shape[0]
    terms = torch.zeros(B, T, dtype=torch.float64, device=x0.device)
    for i in range(1, T + 1):
        t = torch.full((B,), i / T, dtype=x0.dtype, device=x0.device)
        eps = gaussian_noise(x0, generator)
        x_t = schedule.add_noise(x0, eps, t)
        pred = model.read(model.output(x_t, t, **(net_kwargs or {})), x_t, t)
        terms[:, i - 1] = vlb_term_bits(pred.x0, pred.var_interp, x0, x_t, t, schedule, variance=variance, decoder=decoder,
                                        bins=bins)
    prior = prior_kl_bits(x0, schedule)
    return VariationalBound(total=prior + terms.sum(1), terms=terms, prior=prior)
