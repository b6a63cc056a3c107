"""How a loss draws the diffusion time t of each training example, and the weight that keeps the
estimator unbiased.

Every sampler returns ``(t, w)`` of shape (B,): t in the schedule's range [t_min, t_max] (on the
grid t_i = i/T, i ∈ {1, …, T}, for discrete schedules, those with ``schedule.num_timesteps``) and an
importance weight w such that E[w · L(t)] is the average of L over the *uniform* law of t (w ≡ 1
for the samplers that define the objective's own time law).

* ``UniformTime``: t ~ U[t_min, t_max]; discrete schedules: i ~ U{1, …, T}, t = i/T (Ho et al. 2020).
* ``LogNormalTime``: EDM's noise distribution (Karras et al. 2022, §5 and Table 1):
  ln σ̃ ~ N(P_mean, P_std²) with P_mean = −1.2, P_std = 1.2, where σ̃ = σ/α = e^{−λ}; then
  t = t(λ = −ln σ̃) through ``schedule.t_from_log_snr`` and clamped to [t_min, t_max] (for a
  discrete schedule, rounded to the nearest grid point i/T). Its weight is 1: the log-normal law is
  part of the EDM objective, not a variance-reduction device.
* ``ImportanceTime``: improved DDPM's importance sampling of the variational bound (Nichol &
  Dhariwal 2021, §3.3, Eq. 17). With L_k the loss at grid point k (k = 1..K; K = T for a discrete
  schedule, else K equal-width bins of [t_min, t_max] with t uniform inside its bin), keep the last
  H = 10 values of L_k; until every point has H values sample uniformly (w = 1), then

      p_k ∝ √E[L_k²]   (mean over the history),      p_k ← (1 − u)·p_k + u/K,

  with a small uniform mixture u (default 1e-3) so no point starves, and weight w = 1/(K p_k),
  so that E_p[w · L_k] = Σ_k p_k L_k / (K p_k) = (1/K) Σ_k L_k. The loss feeds its per-sample,
  unweighted L_k back through ``update``. p ∝ √E[L²] minimises the variance of the weighted
  estimator E_p[(w L)²] − (mean L)² among all p (Cauchy–Schwarz).
* ``FixedTime``: every example at the same t (tests and diagnostics).

Randomness comes from ``generator`` (on its own device) when given.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from diffusion_lab.schedules.base import Schedule


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def is_discrete(schedule: Schedule) -> bool:
    """True for discrete-time schedules (``num_timesteps`` set): t lives on the grid i/T."""
    return getattr(schedule, "num_timesteps", None) is not None


def grid_index(t: Tensor, num_timesteps: int) -> Tensor:
    """i = round(t·T) ∈ {1, …, T} for t on (or near) the discrete grid t_i = i/T (int64)."""
    return torch.round(t.to(torch.float64) * num_timesteps).long().clamp(1, num_timesteps)


class TimeSampler:
    """Base class: ``sample`` returns (t, importance weight), ``update`` receives per-sample losses."""

    name = "time_sampler"

    def validate(self, schedule: Schedule, loss_name: str = "loss") -> None:
        """Raise ValueError with one sentence if this sampler cannot work with ``schedule``."""

    def sample(
        self,
        batch_size: int,
        schedule: Schedule,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record per-sample (unweighted) losses at their t; a no-op unless the sampler adapts."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class UniformTime(TimeSampler):
    """t ~ U[t_min, t_max] (defaults: the schedule's range); discrete schedules: i ~ U{i_lo..i_hi}, t = i/T."""

    name = "uniform"

    def __init__(self, t_min: float | None = None, t_max: float | None = None):
        self.t_min, self.t_max = t_min, t_max

    def _range(self, schedule: Schedule) -> tuple[float, float]:
        lo = schedule.t_min if self.t_min is None else float(self.t_min)
        hi = schedule.t_max if self.t_max is None else float(self.t_max)
        return lo, hi

    def validate(self, schedule: Schedule, loss_name: str = "loss") -> None:
        lo, hi = self._range(schedule)
        if not (schedule.t_min - 1e-12 <= lo < hi <= schedule.t_max + 1e-12) and not is_discrete(schedule):
            raise ValueError(
                f"{loss_name}: time_sampler t_min={lo}, t_max={hi} must satisfy "
                f"{schedule.t_min} <= t_min < t_max <= {schedule.t_max} (the range of {type(schedule).__name__}); "
                f"leave them null to use the schedule's range."
            )
        if is_discrete(schedule):
            T = schedule.num_timesteps
            if not 1 <= max(1, math.ceil(lo * T - 1e-9)) <= min(T, math.floor(hi * T + 1e-9)):
                raise ValueError(f"{loss_name}: time_sampler range [{lo}, {hi}] contains no grid point i/T of a T={T} schedule.")

    def sample(self, batch_size, schedule, *, device=None, dtype=torch.float32, generator=None):
        dev = _draw_device(generator, device)
        lo, hi = self._range(schedule)
        if is_discrete(schedule):
            T = schedule.num_timesteps
            i_lo, i_hi = max(1, math.ceil(lo * T - 1e-9)), min(T, math.floor(hi * T + 1e-9))
            i = torch.randint(i_lo, i_hi + 1, (batch_size,), generator=generator, device=dev)
            t = i.to(torch.float64) / T
        else:
            u = torch.rand(batch_size, generator=generator, device=dev, dtype=torch.float64)
            t = lo + (hi - lo) * u
        t = t.to(device=device if device is not None else dev, dtype=dtype)
        return t, torch.ones_like(t)

    def __repr__(self) -> str:
        return f"UniformTime(t_min={self.t_min}, t_max={self.t_max})"


class LogNormalTime(TimeSampler):
    """EDM's ln σ̃ ~ N(p_mean, p_std²) mapped to t (Karras et al. 2022); weight 1."""

    name = "log_normal"

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        if not p_std > 0:
            raise ValueError(f"LogNormalTime needs p_std > 0, got p_std={p_std}.")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def sample(self, batch_size, schedule, *, device=None, dtype=torch.float32, generator=None):
        dev = _draw_device(generator, device)
        z = torch.randn(batch_size, generator=generator, device=dev, dtype=torch.float64)
        log_sigma_tilde = self.p_mean + self.p_std * z
        t = schedule.t_from_log_snr(-log_sigma_tilde).clamp(schedule.t_min, schedule.t_max)
        if is_discrete(schedule):
            t = grid_index(t, schedule.num_timesteps).to(torch.float64) / schedule.num_timesteps
        t = t.to(device=device if device is not None else dev, dtype=dtype)
        return t, torch.ones_like(t)

    def __repr__(self) -> str:
        return f"LogNormalTime(p_mean={self.p_mean}, p_std={self.p_std})"


class FixedTime(TimeSampler):
    """Every example at the same t (for tests and diagnostics)."""

    name = "fixed"

    def __init__(self, t: float):
        self.t = float(t)

    def validate(self, schedule: Schedule, loss_name: str = "loss") -> None:
        if not schedule.t_min - 1e-12 <= self.t <= schedule.t_max + 1e-12:
            raise ValueError(f"{loss_name}: FixedTime t={self.t} lies outside [{schedule.t_min}, {schedule.t_max}] of {type(schedule).__name__}.")

    def sample(self, batch_size, schedule, *, device=None, dtype=torch.float32, generator=None):
        t = torch.full((batch_size,), self.t, device=device, dtype=dtype)
        return t, torch.ones_like(t)

    def __repr__(self) -> str:
        return f"FixedTime(t={self.t})"


class ImportanceTime(TimeSampler):
    """Improved-DDPM importance sampling on the loss's second moment (Nichol & Dhariwal 2021, §3.3).

    ``history`` values per grid point (default 10), uniform mixture ``uniform_mix`` (default 1e-3),
    ``num_bins`` for continuous schedules (discrete ones use their T points).
    """

    name = "importance"

    def __init__(self, history: int = 10, uniform_mix: float = 1e-3, num_bins: int | None = None):
        if history < 1:
            raise ValueError(f"ImportanceTime needs history >= 1, got history={history}.")
        if not 0.0 < uniform_mix <= 1.0:
            raise ValueError(f"ImportanceTime needs 0 < uniform_mix <= 1, got uniform_mix={uniform_mix}.")
        if num_bins is not None and num_bins < 1:
            raise ValueError(f"ImportanceTime needs num_bins >= 1 or null, got num_bins={num_bins}.")
        self.history, self.uniform_mix, self.num_bins = int(history), float(uniform_mix), num_bins
        self._K: int | None = None
        self._buf: np.ndarray | None = None  # (K, H) ring buffer of losses
        self._count: np.ndarray | None = None  # (K,) values written so far (saturates at H)
        self._ptr: np.ndarray | None = None  # (K,) next write position
        self._range: tuple[float, float] = (0.0, 1.0)
        self._discrete = False

    # ------------------------------------------------------------------ set-up
    def validate(self, schedule: Schedule, loss_name: str = "loss") -> None:
        if not is_discrete(schedule) and self.num_bins is None:
            raise ValueError(
                f"{loss_name}: time_sampler=importance needs a discrete schedule (schedule.num_timesteps) or "
                f"time_sampler.num_bins for a continuous one; {type(schedule).__name__} is continuous and num_bins is null."
            )

    def _setup(self, schedule: Schedule) -> None:
        discrete = is_discrete(schedule)
        K = schedule.num_timesteps if discrete else self.num_bins
        if K is None:
            self.validate(schedule)
        if self._K is None or self._K != K:
            if self._K is not None and self._K != K:
                raise ValueError(f"ImportanceTime was set up for {self._K} grid points but the schedule now has {K}.")
            self._K = int(K)
            self._buf = np.zeros((self._K, self.history), dtype=np.float64)
            self._count = np.zeros(self._K, dtype=np.int64)
            self._ptr = np.zeros(self._K, dtype=np.int64)
        self._discrete = discrete
        self._range = (0.0, 1.0) if discrete else (schedule.t_min, schedule.t_max)

    # ------------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        """True once every grid point holds ``history`` loss values."""
        return self._count is not None and bool((self._count >= self.history).all())

    def probabilities(self) -> Tensor:
        """Current p_k (float64, shape (K,)): uniform until ``ready``, then the √E[L²] mixture."""
        if self._K is None:
            raise RuntimeError("ImportanceTime has not seen a schedule yet; call sample() first.")
        K = self._K
        if not self.ready:
            return torch.full((K,), 1.0 / K, dtype=torch.float64)
        rms = np.sqrt(np.mean(self._buf**2, axis=1))
        total = rms.sum()
        p = rms / total if total > 0 and np.isfinite(total) else np.full(K, 1.0 / K)
        p = (1.0 - self.uniform_mix) * p + self.uniform_mix / K
        return torch.from_numpy(p / p.sum())

    def _index(self, t: Tensor) -> np.ndarray:
        K = self._K
        t64 = t.detach().to("cpu", torch.float64)
        if self._discrete:
            return (grid_index(t64, K) - 1).numpy()
        lo, hi = self._range
        return ((t64 - lo) / (hi - lo) * K).floor().long().clamp(0, K - 1).numpy()

    def sample(self, batch_size, schedule, *, device=None, dtype=torch.float32, generator=None):
        self._setup(schedule)
        dev = _draw_device(generator, device)
        p = self.probabilities()
        k = torch.multinomial(p.to(dev), batch_size, replacement=True, generator=generator)
        weight = 1.0 / (self._K * p.to(dev)[k]) if self.ready else torch.ones(batch_size, dtype=torch.float64, device=dev)
        if self._discrete:
            t = (k + 1).to(torch.float64) / self._K
        else:
            lo, hi = self._range
            u = torch.rand(batch_size, generator=generator, device=dev, dtype=torch.float64)
            t = lo + (hi - lo) * (k.to(torch.float64) + u) / self._K
        out_dev = device if device is not None else dev
        return t.to(device=out_dev, dtype=dtype), weight.to(device=out_dev, dtype=dtype)

    def update(self, t: Tensor, losses: Tensor) -> None:
        if self._K is None:
            raise RuntimeError("ImportanceTime.update called before sample(); the grid is not set up yet.")
        idx = self._index(t)
        vals = losses.detach().to("cpu", torch.float64).reshape(-1).numpy()
        H = self.history
        for k, v in zip(idx.tolist(), vals.tolist()):
            if not math.isfinite(v):
                continue
            self._buf[k, self._ptr[k]] = v
            self._ptr[k] = (self._ptr[k] + 1) % H
            self._count[k] = min(self._count[k] + 1, H)

    def history_values(self) -> Tensor:
        """(K, H) float64 copy of the stored losses (unfilled slots are 0; see ``counts``)."""
        return torch.from_numpy(self._buf.copy())

    def counts(self) -> Tensor:
        return torch.from_numpy(self._count.copy())

    def state_dict(self) -> dict:
        if self._K is None:
            return {}
        return {
            "buffer": torch.from_numpy(self._buf.copy()),
            "count": torch.from_numpy(self._count.copy()),
            "ptr": torch.from_numpy(self._ptr.copy()),
            "range": list(self._range),
            "discrete": self._discrete,
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        buf = torch.as_tensor(state["buffer"], dtype=torch.float64).cpu().numpy()
        if buf.shape[1] != self.history:
            raise ValueError(f"ImportanceTime state has history {buf.shape[1]} but this sampler keeps history={self.history}.")
        self._buf = buf.copy()
        self._K = buf.shape[0]
        self._count = torch.as_tensor(state["count"]).cpu().numpy().astype(np.int64).copy()
        self._ptr = torch.as_tensor(state["ptr"]).cpu().numpy().astype(np.int64).copy()
        self._range = tuple(float(x) for x in state["range"])
        self._discrete = bool(state["discrete"])

    def __repr__(self) -> str:
        return f"ImportanceTime(history={self.history}, uniform_mix={self.uniform_mix}, num_bins={self.num_bins})"


TIME_SAMPLERS = {"uniform": UniformTime, "log_normal": LogNormalTime, "importance": ImportanceTime}


def make_time_sampler(spec: TimeSampler | str | None, default: str = "uniform") -> TimeSampler:
    """A TimeSampler from an instance, a name in TIME_SAMPLERS, or None (the default)."""
    if spec is None:
        spec = default
    if isinstance(spec, TimeSampler):
        return spec
    if isinstance(spec, str):
        if spec not in TIME_SAMPLERS:
            raise ValueError(f"unknown time_sampler {spec!r}; choose one of {sorted(TIME_SAMPLERS)} or pass a TimeSampler.")
        return TIME_SAMPLERS[spec]()
    raise ValueError(f"time_sampler must be a TimeSampler or one of {sorted(TIME_SAMPLERS)}, got {type(spec).__name__}.")
