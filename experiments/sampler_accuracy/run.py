"""Sampler accuracy: our ODE samplers against diffusers' and k-diffusion's on the same exact problems.

    .venv/bin/python experiments/sampler_accuracy/run.py          # defaults: config.yaml beside this file

Problem (``problem.py``): random Gaussian mixtures in 2-D and 16-D, the exact denoiser as the network,
under the discrete DDPM schedule (linear β, T = 1000, sampled from its noisiest step t = T down to
data) and the EDM schedule (σ from 80 to 0.002, then 0). All samplers start from the same x_T.
Reference: the exact probability-flow endpoint at σ = 0 (not at t_min followed by a jump).
Error: median over samples of ‖x − x_ref‖₂.

Columns at each NFE budget (every sampler runs with the most steps whose network calls fit):
* ours best — the lowest error over our ODE samplers, each with its defaults and with the grid and
  option variants of config.yaml;
* best external — the lowest over diffusers' and k-diffusion's samplers × their spacings (``external``);
* ratio = ours best / best external (goal ≤ 0.8);
* default — ``default_sampler`` exactly as ``conf/sampler/<name>.yaml`` gives it (only ``steps``
  changed), and its ratio to the best external (goal ≤ 1.0 at NFE 10 and 20).

Outputs beside this file: RESULTS.md (the tables and the command), results.json (every run),
error_vs_nfe.png (error against NFE per problem: the best envelopes and each default).
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.samplers import SAMPLERS, Sampler
from diffusion_lab.schedules import EDMSchedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import external as ext  # noqa: E402
from problem import F64, error, make_case, steps_for  # noqa: E402

HERE = Path(__file__).resolve().parent
CONF = HERE.parent.parent / "conf" / "sampler"


def external_problem(case) -> ext.Problem:
    """The case as the external samplers see it: x̂_0(x̃, σ̃) in α = 1 coordinates (module docstring)."""
    sch = case.schedule
    probe = EDMSchedule(sigma_min=1e-9, sigma_max=1e4)  # reads σ̃ as its own σ (α = 1)

    def x0(x_tilde: torch.Tensor, sigma_tilde: torch.Tensor) -> torch.Tensor:
        return case.mixture.predict(x_tilde, probe.t_from_sigma_tilde(sigma_tilde), probe).x0

    t_max, t_min = (torch.tensor(v, dtype=F64) for v in (sch.t_max, sch.t_min))
    betas = sch.betas.numpy() if case.family == "discrete" else None
    return ext.Problem(x0, case.x_T / sch.alpha(t_max), float(sch.sigma_tilde(t_min)), float(sch.sigma_tilde(t_max)),
                       "ddpm" if case.family == "discrete" else "edm", betas)


def default_sampler(name: str, steps: int) -> Sampler:
    """``conf/sampler/<name>.yaml`` as Hydra builds it, with ``steps`` changed."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.steps = steps
    return instantiate(cfg)


def our_configs(cfg: DictConfig) -> list[tuple[str, str, dict]]:
    """(label, sampler, Sampler kwargs): each sampler's defaults, then its variants."""
    out = []
    for name in cfg.ours:
        out.append((f"{name} (default)", name, {}))
        for g in cfg.variants.grids:
            for v in (True, False):
                out.append((f"{name} {g}{'' if v else '-early'}", name, {"grid": g, "visit_t_min": v}))
        for opts in (cfg.variants.options.get(name) or []):
            opts = dict(opts)
            out.append((f"{name} {opts}", name, opts))
    return out


def run_ours(case, label: str, name: str, kwargs: dict, nfe: int) -> dict:
    steps = steps_for(name, nfe)
    try:
        sampler = default_sampler(name, steps) if not kwargs else Sampler(name, steps=steps, **kwargs)
        case.denoiser.reset_nfe()
        res = sampler(case.denoiser, x_T=case.x_T, progress=False)
    except ValueError as e:  # a grid the schedule cannot hold at this step count
        return {"label": label, "nfe_budget": nfe, "error": None, "note": str(e)[:120]}
    return {"label": label, "nfe_budget": nfe, "nfe": res.nfe, "error": error(res.x, case.ref)}


def run_external(prob, lib: str, name: str, spacing: str, nfe: int, ref) -> dict:
    out = ext.run_external(prob, lib, name, spacing, nfe)
    label = f"{lib}: {name} {spacing}"
    if out is None:
        return {"label": label, "nfe_budget": nfe, "error": None}
    x, calls = out
    return {"label": label, "nfe_budget": nfe, "nfe": calls, "error": error(x, ref)}


def best(rows: list[dict], nfe: int) -> dict | None:
    ok = [r for r in rows if r["nfe_budget"] == nfe and r["error"] is not None and math.isfinite(r["error"])]
    return min(ok, key=lambda r: r["error"]) if ok else None


def fmt(v) -> str:
    return "—" if v is None else ("inf" if not math.isfinite(v) else f"{v:.2e}")


def tables(cfg: DictConfig, results: dict, seconds: float) -> str:
    d = cfg.default_sampler
    out = ["# Sampler accuracy: ours against diffusers and k-diffusion", "",
           f"Generated by `python experiments/sampler_accuracy/run.py` ({seconds / 60:.1f} min on {platform.machine()} "
           f"CPU, {cfg.threads} thread). Random Gaussian mixtures (components of standard deviation ≈ 0.05–0.15), the "
           f"exact denoiser as the network; {cfg.n_samples} samples from one x_T per problem. Error = median "
           "‖x − x_ref‖ to the **exact probability-flow endpoint at σ = 0**. Discrete DDPM: linear β, T = 1000, from "
           "t = T; EDM: σ from 80 to 0.002, then 0. Every sampler gets the most steps whose network calls fit in the "
           "NFE budget.", "",
           f"*ours best*: lowest error over our ODE samplers ({', '.join(cfg.ours)}) with their defaults and with "
           "grid/option variants; *best external*: lowest over diffusers' and k-diffusion's samplers × spacings "
           "(`external.py`); *default*: `sampler=" + d + "` exactly as `conf/sampler/" + d + ".yaml` gives it, "
           "only `steps` changed. Goal: ratio ≤ 0.8 at every NFE; default ≤ 1.0 at NFE 10 and 20.", ""]
    for pname, res in results.items():
        out += [f"## {pname}", "", "| NFE | ours best | (config) | best external | (config) | ratio | default "
                f"`{d}` | default / external |", "|---|---|---|---|---|---|---|---|"]
        for nfe in cfg.nfe:
            ob, eb = best(res["ours"], nfe), best(res["external"], nfe)
            df = next((r for r in res["ours"] if r["nfe_budget"] == nfe and r["label"] == f"{d} (default)"), None)
            ratio = ob["error"] / eb["error"] if ob and eb else None
            dratio = df["error"] / eb["error"] if df and eb and df["error"] is not None else None
            out.append(f"| {nfe} | {fmt(ob and ob['error'])} | {ob['label'] if ob else ''} | {fmt(eb and eb['error'])} | "
                       f"{eb['label'] if eb else ''} | {'—' if ratio is None else f'{ratio:.2f}'} | "
                       f"{fmt(df and df['error'])} | {'—' if dratio is None else f'{dratio:.2f}'} |")
        out.append("")
    # every sampler's own defaults against the best external
    out += ["## Each sampler with its defaults (conf/sampler), error / best external", "",
            "| sampler | " + " | ".join(f"{p} NFE {n}" for p in results for n in (10, 20)) + " |",
            "|---|" + "---|" * (2 * len(results))]
    for name in cfg.ours:
        cells = []
        for res in results.values():
            for nfe in (10, 20):
                eb = best(res["external"], nfe)
                r = next((r for r in res["ours"] if r["nfe_budget"] == nfe and r["label"] == f"{name} (default)"), None)
                cells.append("—" if not (r and eb and r["error"] is not None) else f"{r['error'] / eb['error']:.2f}")
        out.append(f"| `{name}` | " + " | ".join(cells) + " |")
    out += ["", "## Best external sampler per library", "", "| problem | NFE | " + " | ".join(("diffusers", "k-diffusion"))
            + " |", "|---|---|---|---|"]
    for pname, res in results.items():
        for nfe in cfg.nfe:
            cells = []
            for lib in ("diffusers", "k-diffusion"):
                b = best([r for r in res["external"] if r["label"].startswith(lib)], nfe)
                cells.append("—" if b is None else f"{b['error']:.2e} ({b['label'].split(': ')[1]})")
            out.append(f"| {pname} | {nfe} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def plot(cfg: DictConfig, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.4), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (pname, res) in zip(axes[0], results.items()):
        for key, style in (("ours", dict(color="black", lw=2.5, label="ours best")),
                           ("external", dict(color="tab:red", lw=2.5, ls="--", label="best external"))):
            pts = [(n, b["error"]) for n in cfg.nfe if (b := best(res[key], n))]
            ax.plot(*zip(*pts), marker="o", **style)
        for i, name in enumerate(cfg.ours):
            pts = [(r["nfe_budget"], r["error"]) for r in res["ours"] if r["label"] == f"{name} (default)"
                   and r["error"] is not None and math.isfinite(r["error"])]
            if pts:
                ax.plot(*zip(*pts), color=cmap(i % 20), lw=1, alpha=0.8, label=f"{name} (default)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(pname)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("median ‖x − x_ref‖ (exact endpoint at σ = 0)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


@hydra.main(config_path=".", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    t0 = time.perf_counter()
    torch.set_num_threads(int(cfg.threads))
    unknown = [n for n in cfg.ours if n not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown samplers {unknown}; registered: {sorted(SAMPLERS)}.")
    out_dir = Path(cfg.output_dir) if cfg.output_dir else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.tables_only:
        saved = json.loads((out_dir / "results.json").read_text())
        seconds = float(saved.get("seconds", 0.0))
        (out_dir / "RESULTS.md").write_text(tables(cfg, saved["results"], seconds))
        plot(cfg, saved["results"], out_dir / "error_vs_nfe.png")
        print(f"rewrote {out_dir / 'RESULTS.md'} and error_vs_nfe.png from results.json")
        return
    results: dict = {}
    for family, dim in cfg.problems:
        t1 = time.perf_counter()
        case = make_case(family, int(dim), int(cfg.n_samples), int(cfg.seed), float(cfg.scale))
        pname = f"{'DDPM (discrete)' if family == 'discrete' else family.upper()}, {dim}-D"
        prob = external_problem(case)
        res = {"ours": [], "external": []}
        for label, name, kwargs in our_configs(cfg):
            for nfe in cfg.nfe:
                res["ours"].append(run_ours(case, label, name, kwargs, int(nfe)))
        for lib, name, spacing in ext.external_configs(prob.kind):
            for nfe in cfg.nfe:
                res["external"].append(run_external(prob, lib, name, spacing, int(nfe), case.ref))
        results[pname] = res
        summary = []
        for nfe in cfg.nfe:
            ob, eb = best(res["ours"], nfe), best(res["external"], nfe)
            summary.append(f"{nfe}: {fmt(ob and ob['error'])}/{fmt(eb and eb['error'])}")
        print(f"[{pname}] ours/external  " + "  ".join(summary) + f"  ({time.perf_counter() - t1:.0f}s)", flush=True)
    seconds = time.perf_counter() - t0
    md = tables(cfg, results, seconds)
    (out_dir / "RESULTS.md").write_text(md)
    (out_dir / "results.json").write_text(json.dumps({"config": OmegaConf.to_container(cfg, resolve=True),
                                                      "seconds": seconds, "results": results}, indent=1) + "\n")
    plot(cfg, results, out_dir / "error_vs_nfe.png")
    print(md)
    print(f"wrote {out_dir / 'RESULTS.md'}, results.json, error_vs_nfe.png in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
