"""EDM vs PFGM++ (several D) vs PFGM on the 2-D Gaussian mixture of ``dataset=gmm``: sample quality against
the number of network evaluations, for the exact denoisers and for MLPs trained on the same data with the
same budget, and robustness to model error (Gaussian noise on the trained weights).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python experiments/pfgm_compare/run.py           # ~10 min on 1 core
    ... --quick                                                                           # a 1-minute smoke run

The paper's claim (Xu et al. 2023, "PFGM++", Sec. 5.2–5.3 and Fig. 5): moderate D (e.g. 128 on CIFAR-10,
N = 3072) is more robust than D → ∞ (diffusion, EDM) to the step size (fewer NFE) and to model error
(noise on the weights, post-training quantisation), while D = 2048 gives the best FID at 35 NFE.

What runs (all through the library: ``noise.PFGMPPNoise`` in the EDM schedule, the EDM loss, ``heun`` /
``dpm_solver_pp_2m`` / ``euler`` from the zoo; PFGM with ``schedule=pfgm``'s object, ``PoissonFieldLoss``,
``PoissonFieldNetwork``, RK45 in log z (``dopri5``) and Euler in log z (``euler``, variable t)):

1. exact denoisers: PFGM++ x̂0 by quadrature (``pfgmpp_oracle``) for D ∈ {1, 8, 128, 2048, ∞}, and for PFGM
   the empirical field of 4096 exact samples; quality at 5, 10, 20, 35 NFE isolates the discretisation error;
2. trained MLPs (the same residual MLP, 128 wide, 3 blocks; Adam 2e-3, batch 256, EMA 0.999, the same
   number of steps for every model; PFGM: batches of 2048 as its field reference, 256 perturbed);
3. the trained models at 35 NFE (Heun) with Gaussian noise of std α added to every weight (3 draws each).

Metrics: MMD² against the mixture itself (closed-form expectations, unbiased: ~0 ± 1e-4 for exact samples
of this size; ×10³ in the tables) and the sliced Wasserstein-2 distance to 4000 held-out exact samples.
Outputs beside this file: RESULTS.md, results.json, nfe.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from diffusion_lab.denoiser import Denoiser  # noqa: E402
from diffusion_lab.losses import DenoisingScoreMatching, LogNormalTime, PoissonFieldLoss  # noqa: E402
from diffusion_lab.metrics.lowdim import sliced_wasserstein  # noqa: E402
from diffusion_lab.nets import MLP, PoissonFieldNetwork  # noqa: E402
from diffusion_lab.nets.poisson import EmpiricalFieldNetwork  # noqa: E402
from diffusion_lab.noise import PFGMPPNoise  # noqa: E402
from diffusion_lab.oracles import GaussianMixture  # noqa: E402
from diffusion_lab.parameterization import Parameterization  # noqa: E402
from diffusion_lab.pfgmpp_oracle import PFGMPPMixtureOracle  # noqa: E402
from diffusion_lab.samplers import Sampler  # noqa: E402
from diffusion_lab.schedules import EDMSchedule, PoissonFlowSchedule  # noqa: E402

D_VALUES = [1.0, 8.0, 128.0, 2048.0, None]
NFES = [5, 10, 20, 35]
HIDDEN, LAYERS, BATCH = 128, 3, 256


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def label(D) -> str:
    return "EDM (D=∞)" if D is None else f"PFGM++ D={int(D)}"


def samplers_for(kind: str) -> dict[str, list[tuple[int, Sampler]]]:
    """Sampler name → [(nominal NFE, Sampler)]. Heun: NFE = 2·steps − 1, so 5, 9, 19, 35."""
    heun = [(n, Sampler("heun", steps=(n + 1) // 2, grid="karras")) for n in NFES]
    dpm = [(n, Sampler("dpm_solver_pp_2m", steps=n, grid="karras")) for n in NFES]
    if kind == "pfgm":
        euler_logz = [(n, Sampler("euler", steps=n, grid="uniform", variable="t")) for n in NFES]
        return {"heun": heun, "dpm_solver_pp_2m": dpm, "euler_log_z": euler_logz}
    return {"heun": heun, "dpm_solver_pp_2m": dpm}


def evaluate(den: Denoiser, kind: str, mixture: GaussianMixture, test: torch.Tensor, n: int) -> dict:
    rows = {}
    for name, entries in samplers_for(kind).items():
        for nominal, sampler in entries:
            res = sampler(den, (n, 2), generator=gen(1), progress=False)
            x = res.x.float()
            finite = torch.isfinite(x).all(1)
            rows[f"{name}@{nominal}"] = {
                "sampler": name, "nfe": res.nfe, "mmd": mixture.mmd2(x[finite]) if finite.any() else float("inf"),
                "swd": sliced_wasserstein(x[finite], test) if finite.any() else float("inf"),
                "nonfinite": int((~finite).sum())}
    if kind == "pfgm":
        try:
            res = Sampler("dopri5", steps=2, rtol=1e-4, atol=1e-4)(den, (n, 2), generator=gen(1), progress=False)
            rows["rk45_log_z"] = {"sampler": "rk45_log_z", "nfe": res.nfe, "mmd": mixture.mmd2(res.x.float()),
                                  "swd": sliced_wasserstein(res.x.float(), test), "nonfinite": 0}
        except AssertionError as e:  # torchdiffeq's step-size underflow on a stiff learned field
            rows["rk45_log_z"] = {"sampler": "rk45_log_z", "nfe": den.nfe, "mmd": float("inf"), "swd": float("inf"),
                                  "nonfinite": n, "error": str(e)}
    return rows


# ------------------------------------------------------------------------------------------ models
def edm_parts(D):
    schedule = EDMSchedule().with_noise(PFGMPPNoise(D))
    return schedule, Parameterization("edm")


def pfgm_schedule() -> PoissonFlowSchedule:
    return PoissonFlowSchedule(2, data_norm=2.16)  # the mixture's average norm (conf/schedule/pfgm.yaml)


def train(kind: str, D, data: torch.Tensor, steps: int, seed: int = 0) -> tuple[torch.nn.Module, list[float], float]:
    torch.manual_seed(seed)
    if kind == "pfgm":
        schedule, param = pfgm_schedule(), Parameterization("eps")
        net = PoissonFieldNetwork("mlp", in_dim=2, hidden_dim=HIDDEN, num_layers=LAYERS)
        loss, batch = PoissonFieldLoss(small_batch_size=BATCH), 2048
    else:
        schedule, param = edm_parts(D)
        net = MLP(in_dim=2, hidden_dim=HIDDEN, num_layers=LAYERS)
        loss, batch = DenoisingScoreMatching(weighting="edm", time_sampler=LogNormalTime(-1.2, 1.2)), BATCH
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = gen(100 + seed)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 100)
        idx = torch.randint(0, data.shape[0], (batch,), generator=g)
        out = loss(Denoiser(net, schedule, param), data[idx], generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - 0.999)
        losses.append(out.loss.item())
    return ema.eval(), losses, time.perf_counter() - t0


def noisy_copy(net: torch.nn.Module, alpha: float, seed: int) -> torch.nn.Module:
    other = copy.deepcopy(net)
    g = gen(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(alpha * torch.randn(p.shape, generator=g))
    return other


# ------------------------------------------------------------------------------------------ report
def table(results: dict, section: str, names: list[str]) -> list[str]:
    lines = []
    for sampler in ("heun", "dpm_solver_pp_2m", "euler_log_z"):
        present = [m for m in names if any(r["sampler"] == sampler for r in results[section].get(m, {}).values())]
        if not present:
            continue
        lines += [f"**{sampler}** (MMD² ×10³ / SWD ×10²; NFE of Heun: 5, 9, 19, 35)", "",
                  "| model | " + " | ".join(f"NFE {n}" for n in NFES) + " |", "|---|" + "---|" * len(NFES)]
        for m in present:
            cells = []
            for n in NFES:
                r = results[section][m].get(f"{sampler}@{n}")
                cells.append("—" if r is None else f"{1e3 * r['mmd']:.2f} / {1e2 * r['swd']:.2f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    rk = [(m, results[section][m]["rk45_log_z"]) for m in names if "rk45_log_z" in results[section].get(m, {})]
    for m, r in rk:
        lines += [f"{m}, RK45 in log z (rtol = atol = 1e-4): NFE {r['nfe']}, MMD² ×10³ {1e3 * r['mmd']:.2f}, "
                  f"SWD ×10² {1e2 * r['swd']:.2f}", ""]
    return lines


def plot(results: dict, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, section, title in ((axes[0], "exact", "exact denoisers, DPM-Solver++(2M)"),
                               (axes[1], "trained", "trained MLPs, DPM-Solver++(2M)")):
        for m in names:
            rows = results[section].get(m, {})
            key = "dpm_solver_pp_2m"
            pts = [(rows[f"{key}@{n}"]["nfe"], 1e3 * rows[f"{key}@{n}"]["mmd"]) for n in NFES if f"{key}@{n}" in rows]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m)
        ax.axhspan(-0.3, 1.1, color="gray", alpha=0.2, label="exact samples (10 seeds)")
        ax.set_xlabel("NFE")
        ax.set_ylabel("MMD² ×10³ against the mixture")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(-1, 400)  # PFGM++ D=1 (diverged training) is off the chart
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax = axes[2]
    for m, rows in results["robustness"].items():
        alphas = sorted(float(a) for a in rows)
        ax.plot(alphas, [1e3 * rows[str(a)]["mmd"] for a in alphas], marker="o", label=m)
    ax.set_xlabel("std α of the noise on the weights")
    ax.set_ylabel("MMD² ×10³ (Heun, 35 NFE)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(-1, 2000)
    ax.set_title("robustness to model error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "nfe.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps and samples: a smoke run (numbers meaningless)")
    ap.add_argument("--steps", type=int, default=3000, help="training steps of every model")
    ap.add_argument("--n", type=int, default=2000, help="samples per evaluation")
    ap.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md and nfe.png from results.json")
    args = ap.parse_args()
    if args.report_only:
        results = json.loads((HERE / "results.json").read_text())
        names = [label(D) for D in D_VALUES] + ["PFGM"]
        write_report(results, names)
        plot(results, names)
        return
    steps, n = (60, 300) if args.quick else (args.steps, args.n)
    torch.set_num_threads(1)
    mixture = GaussianMixture.random(dim=2, components=4, seed=0, spread=2.0, scale=0.3)  # dataset=gmm's mixture
    data = mixture.sample(20000, gen(0)).float()
    test = mixture.sample(4000, gen(99)).float()
    results: dict = {"exact": {}, "trained": {}, "robustness": {}, "train": {},
                     "floor": {"mmd": mixture.mmd2(mixture.sample(n, gen(7))),
                               "swd": sliced_wasserstein(mixture.sample(n, gen(7)).float(), test)}}
    names = [label(D) for D in D_VALUES] + ["PFGM"]
    t0 = time.perf_counter()

    # 1. exact denoisers
    for D in D_VALUES:
        schedule, param = edm_parts(D)
        oracle = PFGMPPMixtureOracle(mixture, D, nodes=128, tail=1e-16)  # within 1e-5 of nodes=1024 here
        results["exact"][label(D)] = evaluate(Denoiser(oracle.network(schedule, param), schedule, param), "edm",
                                              mixture, test, n)
        print(f"exact {label(D)} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    s = pfgm_schedule()
    field = EmpiricalFieldNetwork(mixture.sample(4096, gen(3)), s)
    results["exact"]["PFGM"] = evaluate(Denoiser(field, s, "eps"), "pfgm", mixture, test, n)
    print(f"exact PFGM done ({time.perf_counter() - t0:.0f}s)", flush=True)

    # 2. trained models, 3. weight noise
    alphas = [0.0, 0.005, 0.01, 0.02]
    for D, kind in [(D, "edm") for D in D_VALUES] + [(None, "pfgm")]:
        name = "PFGM" if kind == "pfgm" else label(D)
        net, losses, seconds = train(kind, D, data, steps)
        results["train"][name] = {"seconds": seconds, "loss_first100": sum(losses[:100]) / 100,
                                  "loss_last100": sum(losses[-100:]) / 100}
        schedule, param = (pfgm_schedule(), Parameterization("eps")) if kind == "pfgm" else edm_parts(D)
        results["trained"][name] = evaluate(Denoiser(net, schedule, param), kind, mixture, test, n)
        heun35 = Sampler("heun", steps=18, grid="karras")
        rob = {}
        for a in alphas:
            vals = []
            for rep in range(1 if a == 0 else 3):
                den = Denoiser(noisy_copy(net, a, 1000 + rep), schedule, param)
                x = heun35(den, (n, 2), generator=gen(1), progress=False).x.float()
                x = x[torch.isfinite(x).all(1)]
                vals.append((mixture.mmd2(x), sliced_wasserstein(x, test)))
            rob[str(a)] = {"mmd": sum(v[0] for v in vals) / len(vals), "swd": sum(v[1] for v in vals) / len(vals)}
        results["robustness"][name] = rob
        print(f"trained {name} done: {seconds:.0f}s training ({time.perf_counter() - t0:.0f}s)", flush=True)

    results["meta"] = {"steps": steps, "n": n, "quick": args.quick, "python": platform.python_version(),
                       "torch": torch.__version__, "seconds": time.perf_counter() - t0}
    (HERE / ("results_quick.json" if args.quick else "results.json")).write_text(json.dumps(results, indent=1))
    if args.quick:
        print(json.dumps(results["trained"], indent=1)[:2000])
        return
    write_report(results, names)
    plot(results, names)


READING = (HERE / "reading.md").read_text() if (HERE / "reading.md").is_file() else "## Reading\n\n(not written)"


def write_report(results: dict, names: list[str]) -> None:
    meta, floor = results["meta"], results["floor"]
    lines = ["# EDM vs PFGM++ vs PFGM on the 2-D Gaussian mixture", "",
             "Command: `OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python experiments/pfgm_compare/run.py` "
             f"({meta['seconds'] / 60:.1f} min wall time, one thread, on a 2-core machine shared with other jobs; torch {meta['torch']}). Data: `dataset=gmm`'s mixture "
             f"(4 components in 2-D); {meta['n']} samples per cell, one seed. Noise floor of one draw of exact samples (see Reading for the spread): MMD² ×10³ "
             f"{1e3 * floor['mmd']:.2f}, SWD ×10² {1e2 * floor['swd']:.2f}.", "",
             "## 1. Exact denoisers (discretisation error only)", ""]
    lines += table(results, "exact", names)
    lines += ["## 2. Trained MLPs, same budget", "",
              f"{meta['steps']} Adam steps each (MLP 128 wide, 3 residual blocks; EDM/PFGM++: batch 256, EDM loss and "
              "log-normal σ; PFGM: batch 2048 as the field's reference, 256 perturbed), EMA 0.999.", ""]
    lines += ["| model | train s | loss (first 100 → last 100 steps) |", "|---|---|---|"]
    for m, r in results["train"].items():
        lines.append(f"| {m} | {r['seconds']:.0f} | {r['loss_first100']:.4f} → {r['loss_last100']:.4f} |")
    lines.append("")
    lines += table(results, "trained", names)
    lines += ["## 3. Robustness to model error", "",
              "Heun 35 NFE with N(0, α²) added to every weight of the trained EMA network (mean of 3 draws); "
              "SWD ×10² (MMD² ×10³).", "",
              "| model | " + " | ".join(f"α = {a}" for a in results["robustness"][names[0]]) + " |",
              "|---|" + "---|" * len(results["robustness"][names[0]])]
    for m, rows in results["robustness"].items():
        lines.append(f"| {m} | " + " | ".join(f"{1e2 * r['swd']:.2f} ({1e3 * r['mmd']:.2f})" for r in rows.values()) + " |")
    lines += ["", "![quality vs NFE and vs weight noise](nfe.png)", "", READING]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
