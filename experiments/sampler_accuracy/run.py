"""Sampler accuracy on the Gaussian-mixture oracle: every registered sampler, under VP, VE and
rectified flow, at NFE ∈ {5, 10, 20, 50, 100, 1000}; plus each sampler's overhead per step.

    .venv/bin/python experiments/sampler_accuracy/run.py            # defaults: config.yaml beside this file
    .venv/bin/python experiments/sampler_accuracy/run.py n_samples=4000 'samplers=[heun,ddpm]'

Setup. Data p_0 is a random 2-D Gaussian mixture (``GaussianMixture.random``); the "network" is its exact
denoiser, so every error below is the sampler's own (discretization, and for SDE samplers also the
stochastic scheme), never a training error. All samplers run from the same x_T (drawn once per
schedule) on their registry's default grid; stochastic samplers use the same seed.

Metrics.
* endpoint error (ODE samplers only): mean over samples of ‖x − x_ref‖₂, where x_ref is the exact PF-ODE
  solution from the same x_T to t_min followed by the same terminal denoising step x̂_0(·, t_min) every
  sampler takes. x_ref: classical RK4 in u = log σ̃ on x̃ = x/α (dx̃/du = x̃ − x̂_0), ``reference.rk4_steps``
  steps; its own error is estimated against half as many steps and printed. For SDE samplers the endpoint
  is random: n/a.
* sliced W2: sliced 2-Wasserstein distance between the n samples and n exact samples of p_0 (``n_projections``
  random directions; per direction the sorted projections are matched). It has a sampling floor that falls
  slowly with n (≈0.13 at n = 2000 here): the distance between two independent exact sample sets is reported as
  "floor"; below it SW2 cannot rank samplers.
* MMD² to p_0: unbiased, against the mixture itself in closed form (no exact-sample noise), so its floor is
  O(1/n) (the mean ± std over ``mmd_null_draws`` exact sample sets is reported). This is the metric that
  separates the SDE samplers once they are near the SW2 floor.

NFE → steps: steps = ⌊NFE / nfe_per_step⌋ (the registry's network calls per step); a combination with
steps < 1, or that the sampler rejects, is skipped and listed. The NFE actually counted by the denoiser is
recorded as ``nfe_actual`` (EDM-style Heun samplers use 2·steps − 1). Adaptive samplers (``adaptive`` in the
config) are swept over tolerances instead and tabulated at the NFE they used.

Overhead. A sampler's cost beyond the network: an MLP (width × depth, batch ``overhead.batch``, one CPU thread)
replaces the oracle, the wall time spent inside the network is measured by wrapping it, and
overhead = (sampler wall time − network time) / network time, also given in ms per step and split into
the conversion layer (Denoiser) and the sampler's own update.

Outputs, beside this file: RESULTS.md (tables), results.json (one row per sampler × schedule × NFE with
sampler, schedule, nfe, endpoint_error, sliced_w2, ...), error_vs_nfe.png; the tables are printed too.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.oracles import GaussianMixture
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.samplers import SAMPLERS, Denoiser, Sampler

HERE = Path(__file__).resolve().parent
F64 = torch.float64


# ----------------------------------------------------------------------------------------- metrics
def sliced_w2(x: torch.Tensor, y: torch.Tensor, n_projections: int, seed: int) -> float:
    """Sliced 2-Wasserstein distance between equal-size sample sets: √(mean over directions of W2²)."""
    if x.shape != y.shape:
        raise ValueError("sliced_w2 needs equal-size sample sets.")
    if not torch.isfinite(x).all():
        return float("inf")
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n_projections, x.shape[1], generator=g, dtype=F64)
    d = d / d.norm(dim=1, keepdim=True)
    px = torch.sort(x.to(F64) @ d.T, dim=0).values
    py = torch.sort(y.to(F64) @ d.T, dim=0).values
    return float(((px - py) ** 2).mean().sqrt())


def mmd2_to_mixture(x: torch.Tensor, gm: GaussianMixture, widths=(0.2, 0.5, 1.0)) -> float:
    """Unbiased MMD² between the samples and p_0 itself, in closed form (``GaussianMixture.mmd2``)."""
    return gm.mmd2(x, widths)


def endpoint_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    err = (x.to(F64) - ref).norm(dim=1).mean()
    return float(err) if torch.isfinite(err) else float("inf")


# ----------------------------------------------------------------------------------------- reference
@torch.no_grad()
def reference_endpoint(den: Denoiser, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """Exact PF-ODE endpoint: RK4 in u = log σ̃ on x̃ = x/α (dx̃/du = x̃ − x̂_0) from t_max to t_min, then
    the terminal denoising step x̂_0(x, t_min)."""
    sch = den.schedule
    t_hi = torch.tensor(sch.t_max, dtype=F64)
    t_lo = torch.tensor(sch.t_min, dtype=F64)
    u_hi, u_lo = float(torch.log(sch.sigma_tilde(t_hi))), float(torch.log(sch.sigma_tilde(t_lo)))

    def rhs(u: float, xt: torch.Tensor) -> torch.Tensor:
        t = sch.t_from_sigma_tilde(torch.tensor(math.exp(u), dtype=F64)).clamp(float(t_lo), float(t_hi))
        return xt - den(sch.alpha(t) * xt, t).x0

    h = (u_lo - u_hi) / steps
    xt = x_T / sch.alpha(t_hi)
    for i in range(steps):
        u = u_hi + i * h
        k1 = rhs(u, xt)
        k2 = rhs(u + h / 2, xt + h / 2 * k1)
        k3 = rhs(u + h / 2, xt + h / 2 * k2)
        k4 = rhs(u + h, xt + h * k3)
        xt = xt + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return den(sch.alpha(t_lo) * xt, t_lo).x0


# ----------------------------------------------------------------------------------------- overhead
class MLP(torch.nn.Module):
    """A network of realistic cost for the overhead measurement: sinusoidal time embedding + MLP."""

    def __init__(self, dim: int, width: int, depth: int):
        super().__init__()
        self.freqs = torch.exp(torch.linspace(0, math.log(1000.0), 32))
        layers: list[torch.nn.Module] = [torch.nn.Linear(dim + 64, width), torch.nn.SiLU()]
        for _ in range(depth - 1):
            layers += [torch.nn.Linear(width, width), torch.nn.SiLU()]
        layers.append(torch.nn.Linear(width, dim))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        a = label[:, None] / 1000.0 * self.freqs[None]
        return 0.1 * self.net(torch.cat([x, torch.sin(a), torch.cos(a)], dim=1))


class TimedDenoiser:
    """Proxy of a Denoiser that sums the wall time spent in its calls (network + conversion layer)."""

    def __init__(self, den: Denoiser):
        self.den, self.seconds = den, 0.0
        self.schedule = den.schedule

    @property
    def nfe(self) -> int:
        return self.den.nfe

    @property
    def gives_score(self) -> bool:
        return self.den.gives_score

    def __call__(self, x, t):
        t0 = time.perf_counter()
        out = self.den(x, t)
        self.seconds += time.perf_counter() - t0
        return out


class TimedNet(torch.nn.Module):
    """Wraps a network and sums the wall time spent in its forward calls."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.inner, self.seconds = net, 0.0

    def forward(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


def measure_overhead(cfg: DictConfig, names: list[str], schedule) -> list[dict]:
    oc = cfg.overhead
    threads = torch.get_num_threads()
    torch.set_num_threads(int(oc.threads))
    torch.manual_seed(cfg.seed)
    net = TimedNet(MLP(2, int(oc.width), int(oc.depth)).to(F64))
    den = TimedDenoiser(Denoiser(net, schedule, Parameterization("x0")))
    x_T = schedule.prior_sample((int(oc.batch), 2), generator=torch.Generator().manual_seed(cfg.seed), dtype=F64)
    rows = []
    for name in names:
        spec = SAMPLERS[name]
        steps = max(1, int(oc.nfe // spec.nfe_per_step))
        sampler = Sampler(name, steps=steps, **dict(cfg.sampler_options.get(name, {}) or {}))
        best = None
        for rep in range(int(oc.repeats) + 1):  # the first run warms up
            net.seconds = den.seconds = 0.0
            nfe0 = den.nfe
            t0 = time.perf_counter()
            sampler(den, x_T=x_T, generator=torch.Generator().manual_seed(rep), progress=False)
            total = time.perf_counter() - t0
            nfe = den.nfe - nfe0
            if rep and (best is None or total - net.seconds < best[0] - best[1]):
                best = (total, net.seconds, den.seconds, nfe)
        total, net_s, den_s, nfe = best
        rows.append({
            "sampler": name, "steps": steps, "nfe": nfe, "ms_per_call": 1e3 * net_s / max(nfe, 1),
            "overhead_ms_per_step": 1e3 * (total - net_s) / steps,
            "sampler_own_ms_per_step": 1e3 * (total - den_s) / steps,
            "conversion_ms_per_call": 1e3 * (den_s - net_s) / max(nfe, 1),
            "overhead_pct": 100.0 * (total - net_s) / net_s,
        })
    torch.set_num_threads(threads)
    return rows


# ----------------------------------------------------------------------------------------- sweep
def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and not math.isfinite(v):
        return "diverged"
    return f"{v:.2e}"


def run_sweep(cfg: DictConfig, names: list[str]) -> tuple[list[dict], dict]:
    gm = GaussianMixture.random(int(cfg.mixture.dim), int(cfg.mixture.components), seed=int(cfg.mixture.seed),
                                spread=float(cfg.mixture.spread), scale=float(cfg.mixture.scale))
    n = int(cfg.n_samples)
    exact = gm.sample(n, torch.Generator().manual_seed(cfg.seed + 1))
    floor = sliced_w2(gm.sample(n, torch.Generator().manual_seed(cfg.seed + 2)), exact, cfg.n_projections, cfg.seed)
    null = torch.tensor([mmd2_to_mixture(gm.sample(n, torch.Generator().manual_seed(cfg.seed + 10 + i)), gm)
                         for i in range(int(cfg.mmd_null_draws))])
    info = {"sw2_floor": floor, "mmd2_null_mean": float(null.mean()), "mmd2_null_std": float(null.std()),
            "reference_error": {}, "skipped": []}
    rows: list[dict] = []
    adaptive = {k: v for k, v in (cfg.adaptive or {}).items()}
    for sname, scfg in cfg.schedules.items():
        sch = instantiate(scfg)
        param = Parameterization(cfg.parameterization)
        den = Denoiser(gm.network(sch, param), sch, param)
        x_T = sch.prior_sample((n, gm.dim), generator=torch.Generator().manual_seed(cfg.seed), dtype=F64)
        t0 = time.perf_counter()
        ref = reference_endpoint(den, x_T, int(cfg.reference.rk4_steps))
        ref_half = reference_endpoint(den, x_T, int(cfg.reference.rk4_steps) // 2)
        info["reference_error"][sname] = endpoint_error(ref_half, ref)
        print(f"[{sname}] reference: RK4 {cfg.reference.rk4_steps} steps, |ref − ref(half steps)| = "
              f"{info['reference_error'][sname]:.1e} ({time.perf_counter() - t0:.1f}s)", flush=True)
        for name in names:
            spec = SAMPLERS[name]
            opts = dict(cfg.sampler_options.get(name, {}) or {})
            if name in adaptive:
                a = adaptive[name]
                keys = list(a.option) if not isinstance(a.option, str) else [a.option]
                # steps=2: the grid [t_max, t_min, 0] (the adaptive solver only reads its ends)
                plan = [(None, {**opts, **{k: float(v) for k in keys}}, 2, float(v)) for v in a["values"]]
            else:
                plan = []
                for nfe in cfg.nfe:
                    steps = int(nfe // spec.nfe_per_step)
                    if steps < 1:
                        info["skipped"].append(f"{name} / {sname} / NFE {nfe}: one step costs {spec.nfe_per_step:g} NFE")
                        rows.append(_row(name, sname, spec, nfe, None, None, None, None, "skipped: NFE below one step"))
                        continue
                    plan.append((nfe, opts, steps, None))
            for nfe, o, steps, tol in plan:
                t1 = time.perf_counter()
                try:
                    den.reset_nfe()
                    res = Sampler(name, steps=steps, **o)(den, x_T=x_T, generator=torch.Generator().manual_seed(cfg.seed + 3),
                                                        progress=False)
                except (ValueError, RuntimeError) as e:  # a combination the sampler rejects
                    msg = str(e).split("\n")[0][:160]
                    info["skipped"].append(f"{name} / {sname} / NFE {nfe}: {msg}")
                    rows.append(_row(name, sname, spec, nfe, None, None, None, None, f"skipped: {msg}"))
                    continue
                err = None if spec.stochastic else endpoint_error(res.x, ref)
                sw = sliced_w2(res.x, exact, cfg.n_projections, cfg.seed)
                row = _row(name, sname, spec, nfe if nfe is not None else res.nfe, steps, res.nfe, err, sw, "")
                row["mmd2"] = mmd2_to_mixture(res.x, gm)
                if tol is not None:
                    row["tolerance"] = tol
                    row["steps"] = None
                row["seconds"] = round(time.perf_counter() - t1, 3)
                rows.append(row)
            print(f"[{sname}] {name:22s} " + "  ".join(
                f"{r['nfe']}:{_fmt(r['endpoint_error'])}/{_fmt(r['sliced_w2'])}" for r in rows
                if r["sampler"] == name and r["schedule"] == sname and r["sliced_w2"] is not None), flush=True)
    return rows, info


def _row(name, sname, spec, nfe, steps, nfe_actual, err, sw, note) -> dict:
    return {"sampler": name, "schedule": sname, "nfe": nfe, "endpoint_error": err, "sliced_w2": sw,
            "steps": steps, "nfe_actual": nfe_actual, "kind": "SDE" if spec.stochastic else "ODE",
            "grid": spec.default_grid, "mmd2": None, "note": note}


# ----------------------------------------------------------------------------------------- report
def tables(cfg: DictConfig, rows: list[dict], info: dict, overhead: list[dict], names: list[str], seconds: float) -> str:
    nfes = list(cfg.nfe)
    out = ["# Sampler accuracy on a Gaussian-mixture oracle", "",
           f"Generated by `experiments/sampler_accuracy/run.py` ({seconds / 60:.1f} min on {platform.machine()} CPU, "
           f"{cfg.threads} threads). Data: random {cfg.mixture.dim}-D mixture of {cfg.mixture.components} Gaussians "
           f"(seed {cfg.mixture.seed}); exact denoiser ({cfg.parameterization} output), so all error is the sampler's. "
           f"n = {cfg.n_samples} samples from one shared x_T per schedule; each sampler on its default grid.", "",
           "Each cell: **endpoint error** (mean ‖x − x_ref‖ to the exact PF-ODE endpoint from the same x_T; n/a for SDE "
           "samplers, whose endpoint is random) / **sliced W2** to exact samples of p_0 "
           f"(floor from sampling alone, two exact sets: {info['sw2_floor']:.2e}). — = skipped (see below). "
           "NFE per cell is the nominal budget; steps = ⌊NFE / NFE-per-step⌋ (the count actually used is in results.json).",
           ""]
    for sname in cfg.schedules:
        out += [f"## {sname.upper()}  (reference RK4 accuracy {info['reference_error'][sname]:.1e})", "",
                "| sampler | kind | NFE/step | grid | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                "|---|---|---|---|" + "---|" * len(nfes)]
        adaptive_rows = []
        mmd_lines = ["", f"MMD² to p_0 (closed form, kernel widths 0.2/0.5/1; exact samples give "
                         f"{info['mmd2_null_mean']:.1e} ± {info['mmd2_null_std']:.1e}):", "",
                     "| sampler | kind | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
        for name in names:
            spec = SAMPLERS[name]
            mine = [r for r in rows if r["sampler"] == name and r["schedule"] == sname]
            if any("tolerance" in r for r in mine):
                adaptive_rows += mine
                continue
            cells = []
            for k in nfes:
                r = next((r for r in mine if r["nfe"] == k), None)
                cells.append("—" if r is None or r["sliced_w2"] is None else f"{_fmt(r['endpoint_error'])} / {_fmt(r['sliced_w2'])}")
            out.append(f"| {name} | {'SDE' if spec.stochastic else 'ODE'} | {spec.nfe_per_step:g} | {spec.default_grid} | "
                       + " | ".join(cells) + " |")
            mmd_cells = []
            for k in nfes:
                r = next((r for r in mine if r["nfe"] == k), None)
                mmd_cells.append("—" if r is None or r.get("mmd2") is None else _fmt(r["mmd2"]))
            mmd_lines.append(f"| {name} | {'SDE' if spec.stochastic else 'ODE'} | " + " | ".join(mmd_cells) + " |")
        if adaptive_rows:
            out += ["", "Adaptive (NFE set by the tolerance):", "",
                    "| sampler | tolerance | NFE used | endpoint error | sliced W2 | MMD² |", "|---|---|---|---|---|---|"]
            for r in adaptive_rows:
                out.append(f"| {r['sampler']} | {r.get('tolerance', ''):.0e} | {r['nfe_actual']} | {_fmt(r['endpoint_error'])} | "
                           f"{_fmt(r['sliced_w2'])} | {_fmt(r.get('mmd2'))} |")
        out += mmd_lines
        out.append("")
    if info["skipped"]:
        out += ["## Skipped combinations", ""] + [f"- {s}" for s in info["skipped"]] + [""]
    if overhead:
        oc = cfg.overhead
        out += ["## Overhead beyond the network", "",
                f"MLP {oc.depth}×{oc.width} (float64, batch {oc.batch}, {oc.threads} thread), schedule {oc.schedule}, "
                f"≈{oc.nfe} NFE; wall time inside the network measured by wrapping it; minimum over {oc.repeats} runs. "
                "overhead % = (sampler time − network time) / network time; the overhead splits into the conversion "
                "layer (Denoiser: parameterization, guidance; per call) and the sampler's own update (per step).", "",
                "| sampler | steps | NFE | network ms/call | overhead ms/step | of which sampler update ms/step | "
                "conversion ms/call | overhead % |", "|---|---|---|---|---|---|---|---|"]
        for r in overhead:
            out.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['ms_per_call']:.2f} | {r['overhead_ms_per_step']:.3f} | "
                       f"{r['sampler_own_ms_per_step']:.3f} | {r['conversion_ms_per_call']:.3f} | {r['overhead_pct']:.1f} |")
        out.append("")
    return "\n".join(out)


def plot(cfg: DictConfig, rows: list[dict], names: list[str], path: Path, floor: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scheds = list(cfg.schedules)
    fig, axes = plt.subplots(2, len(scheds), figsize=(5 * len(scheds), 8.5), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for j, sname in enumerate(scheds):
        for i, name in enumerate(names):
            spec = SAMPLERS[name]
            rs = sorted((r for r in rows if r["sampler"] == name and r["schedule"] == sname and r["sliced_w2"] is not None),
                        key=lambda r: r["nfe_actual"] or 0)
            if not rs:
                continue
            style = dict(color=cmap(i % 20), marker="o", ms=3, ls="--" if spec.stochastic else "-", label=name)
            x = [r["nfe_actual"] for r in rs]
            if not spec.stochastic:
                e = [(a, r["endpoint_error"]) for a, r in zip(x, rs) if r["endpoint_error"] and math.isfinite(r["endpoint_error"])]
                if e:
                    axes[0, j].plot(*zip(*e), **style)
            w = [(a, r["sliced_w2"]) for a, r in zip(x, rs) if math.isfinite(r["sliced_w2"])]
            if w:
                axes[1, j].plot(*zip(*w), **style)
        axes[1, j].axhline(floor, color="gray", lw=1, ls=":", label="SW2 floor (n samples)" if j == 0 else None)
        axes[0, j].set_title(f"{sname.upper()}: endpoint error (ODE samplers)")
        axes[1, j].set_title(f"{sname.upper()}: sliced W2 to p0 (dashed: SDE)")
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("NFE")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


@hydra.main(config_path=".", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    t0 = time.perf_counter()
    torch.set_num_threads(int(cfg.threads))
    names = list(cfg.samplers) if cfg.samplers else list(SAMPLERS)
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown samplers {unknown}; registered: {sorted(SAMPLERS)}.")
    out_dir = Path(cfg.output_dir) if cfg.output_dir else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"samplers ({len(names)}): {', '.join(names)}", flush=True)
    rows, info = run_sweep(cfg, names)
    overhead = []
    if cfg.overhead.enabled:
        overhead = measure_overhead(cfg, names, instantiate(cfg.schedules[cfg.overhead.schedule]))
    seconds = time.perf_counter() - t0
    md = tables(cfg, rows, info, overhead, names, seconds)
    (out_dir / "RESULTS.md").write_text(md + "\n")
    (out_dir / "results.json").write_text(json.dumps(
        {"config": OmegaConf.to_container(cfg, resolve=True), "sw2_floor": info["sw2_floor"],
         "mmd2_null": [info["mmd2_null_mean"], info["mmd2_null_std"]],
         "reference_error": info["reference_error"], "skipped": info["skipped"], "rows": rows, "overhead": overhead},
        indent=1, default=lambda v: None) + "\n")
    plot(cfg, rows, names, out_dir / "error_vs_nfe.png", info["sw2_floor"])
    print(md)
    print(f"\nwrote {out_dir / 'RESULTS.md'}, results.json, error_vs_nfe.png in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
