"""What every sampler shares: the registry, the runner, the progress bar.

A sampler is a plain function (k-diffusion style)

    fn(denoiser, x, grid, *, generator=None, progress=False, **options) -> x_0

that integrates from x at grid[0] down the decreasing time grid (``grids.time_grid``), asks the
denoiser for predictions (never the raw network output), keeps its state in the dtype of x (the
runner passes float64), and draws any noise from ``generator``. It is registered with
``register(name, stochastic=..., order=..., nfe_per_step=..., default_grid=...)``; ``default_grid`` is
one spacing or a mapping schedule family → spacing or (spacing, visit_t_min) (``grids.FAMILIES``),
which ``grid="auto"`` (the default of ``Sampler`` and of ``conf/sampler/*.yaml``) reads. The ODE
samplers' defaults were chosen by measurement (``defaults``; ``experiments/sampler_accuracy/defaults.py``).

``Sampler`` is the configurable object that Hydra builds (``conf/sampler/*.yaml``): it draws the
prior, builds the grid, runs the function and reports the NFE the denoiser actually counted. The prior
is the schedule's (``Schedule.prior_sample``: σ(t_max) ε with the schedule's noise, PFGM++'s radial
prior included); samplers that add Gaussian noise or read the score refuse non-Gaussian noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusion_lab.denoiser import DenoiserLike
from diffusion_lab.noise import check_gaussian
from diffusion_lab.samplers.grids import AUTO, FAMILIES, GRIDS, resolve_spacing, schedule_family, time_grid

SamplerFn = Callable[..., Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """Registry entry: the function and what a user needs to know about it."""

    fn: SamplerFn
    stochastic: bool
    order: float | None  # nominal order of convergence (ODE samplers), None if not meaningful
    nfe_per_step: float  # network calls per step (before the terminal denoise)
    grids: Mapping[str, str]  # schedule family → default spacing (what grid="auto" means)
    visits: Mapping[str, bool]  # schedule family → default end of the grid (``grids`` module docstring)
    needs_score: bool = False  # uses the score (Langevin / reverse SDE): requires a Gaussian model
    description: str = ""

    @property
    def default_grid(self) -> str:
        """The default spacing when it is the same for every family, else "auto"."""
        values = set(self.grids.values())
        return values.pop() if len(values) == 1 else "auto"


SAMPLERS: dict[str, SamplerSpec] = {}


def register(name: str, *, stochastic: bool, order: float | None, nfe_per_step: float,
             default_grid: str | Mapping[str, str | tuple[str, bool]] = "uniform", needs_score: bool = False,
             description: str = "") -> Callable[[SamplerFn], SamplerFn]:
    """Decorator: register a sampler function under ``name``. ``default_grid``: a spacing, "auto"
    (``grids.AUTO``), or a mapping over every family of ``grids.FAMILIES`` to a spacing or to
    (spacing, visit_t_min); a plain spacing visits t_min."""
    if isinstance(default_grid, str):
        table = dict(AUTO) if default_grid == "auto" else {f: default_grid for f in FAMILIES}
    else:
        table = dict(default_grid)
    entries = {f: (v, True) if isinstance(v, str) else (str(v[0]), bool(v[1])) for f, v in table.items()}
    if set(entries) != set(FAMILIES) or not {v[0] for v in entries.values()} <= set(GRIDS) - {"auto"}:
        raise ValueError(f"sampler {name!r}: default_grid must give a spacing for each of {FAMILIES}, got {table}.")
    grids = {f: v[0] for f, v in entries.items()}
    visits = {f: v[1] for f, v in entries.items()}

    def deco(fn: SamplerFn) -> SamplerFn:
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is registered twice.")
        SAMPLERS[name] = SamplerSpec(fn, stochastic, order, nfe_per_step, grids, visits, needs_score,
                                     description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def progress_steps(grid: Tensor, progress: bool, desc: str = "sampling") -> Iterator[tuple[int, Tensor, Tensor]]:
    """(i, t_cur, t_next) over consecutive grid points, with a tqdm bar when ``progress``."""
    it: Iterable[int] = range(len(grid) - 1)
    if progress:
        it = tqdm(it, desc=desc, leave=False, dynamic_ncols=True)
    for i in it:
        yield i, grid[i], grid[i + 1]


@dataclass
class SampleResult:
    x: Tensor
    nfe: int
    seconds: float
    grid: Tensor = field(repr=False)


class Sampler:
    """A configured sampler: ``Sampler("dpm_solver_pp_2m", steps=10, grid="lambda")``.

    ``grid`` is a spacing of ``grids.GRIDS``; None or "auto" takes the sampler's registered default for
    the schedule's family. ``visit_t_min`` (None: the sampler's default for the family) sets where the
    grid's last positive node sits (``grids``). ``options`` go to the sampler function (eta, churn,
    snr, ...). ``label`` names the sampler in logs (default ``<name>_<steps>``)."""

    def __init__(self, name: str, steps: int = 50, grid: str | None = None, label: str | None = None,
                 rho: float = 7.0, denoise_last: bool = True, visit_t_min: bool | None = None, **options):
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}.")
        self.name, self.steps, self.rho, self.denoise_last = name, int(steps), float(rho), bool(denoise_last)
        self.spec = SAMPLERS[name]
        self.grid = grid or "auto"
        if self.grid not in GRIDS:
            raise ValueError(f"unknown grid spacing {self.grid!r} for sampler {name!r}; choose one of {GRIDS}.")
        self.visit_t_min = None if visit_t_min is None else bool(visit_t_min)
        self.label = label or f"{name}_{self.steps}"
        self.options = dict(options)

    @property
    def kind(self) -> str:
        """"SDE" for stochastic samplers, "ODE" for deterministic ones."""
        return "SDE" if self.spec.stochastic else "ODE"

    @property
    def needs_gaussian(self) -> bool:
        """Whether it adds Gaussian noise or reads the score (SDE, ancestral, Langevin, churn, DDIM with η > 0):
        valid for Gaussian noise only (``diffusion_lab.noise``)."""
        return self.spec.stochastic or self.spec.needs_score or float(self.options.get("eta", 0.0) or 0.0) > 0

    def check_noise(self, schedule, key: str = "sampler") -> None:
        """ConfigError when this sampler needs Gaussian noise and the schedule's noise is not."""
        noise = getattr(schedule, "noise", None)
        if noise is not None and self.needs_gaussian:
            check_gaussian(noise, self.name, key)

    def spacing(self, schedule) -> str:
        """The concrete spacing this sampler uses on ``schedule`` ("auto" resolved)."""
        return resolve_spacing(schedule, self.grid, self.spec.grids)

    def visits_t_min(self, schedule) -> bool:
        """Whether the grid's last positive node is t_min on ``schedule`` (None resolved)."""
        if self.visit_t_min is not None:
            return self.visit_t_min
        return self.spec.visits[schedule_family(schedule)]

    def time_grid(self, schedule) -> Tensor:
        return time_grid(schedule, self.steps, self.spacing(schedule), rho=self.rho, denoise_last=self.denoise_last,
                         visit_t_min=self.visits_t_min(schedule))

    def __call__(self, denoiser: DenoiserLike, shape: tuple[int, ...] | None = None, *, x_T: Tensor | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 progress: bool = True) -> SampleResult:
        """Draw x_T from the prior (or take ``x_T``), run the sampler in float64, return the samples."""
        schedule = denoiser.schedule
        self.check_noise(schedule)
        if x_T is None:
            if shape is None:
                raise ValueError("Sampler needs a shape or an initial x_T.")
            x_T = schedule.prior_sample(tuple(shape), generator=generator, dtype=torch.float64, device=device)
        grid = self.time_grid(schedule)
        nfe0 = denoiser.nfe
        t0 = time.perf_counter()
        x = self.spec.fn(denoiser, x_T.to(torch.float64), grid, generator=generator, progress=progress, **self.options)
        return SampleResult(x=x, nfe=denoiser.nfe - nfe0, seconds=time.perf_counter() - t0, grid=grid)

    def __repr__(self) -> str:
        return f"Sampler({self.name!r}, steps={self.steps}, grid={self.grid!r}, options={self.options})"


