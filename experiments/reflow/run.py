"""Reflow on 2-D data, end to end (Liu et al. 2023, "Flow Straight and Fast"): 1-rectified flow → pairs →
2-rectified flow → pairs → distilled one-step model (and the one-step model distilled directly from the
1-RF), for the independent and the minibatch-OT coupling of stage 1 (Tong et al. 2023; Pooladian et
al. 2023). Every stage is evaluated the same way: straightness S along the model's own ODE trajectories,
and SWD / MMD / W2 against held-out real data with Euler at 1, 2, 4, 8 steps (sampler=rf_euler), with
the zoo's dopri5 (in λ; rtol = atol = 1e-5) and with RK45 in t as Liu et al. sample (same tolerances), with
their NFE. The MMD is the unbiased estimate (it can be slightly negative).

    OMP_NUM_THREADS=1 nice -n 5 python experiments/reflow/run.py [--datasets two_moons eight_gaussians gmm]
        [--couplings independent exact_ot] [--epochs 40 30 20] [--pairs 20000]

The stages are the same runs as the documented commands (experiment=two_moons_reflow_1 / _2 / _distill,
python -m diffusion_lab.reflow_pairs ...; see the README), called in-process through the same entry
functions. Writes outputs under ``--out`` (default outputs/reflow_experiment) and, beside this file,
TABLE.md (the table it prints, with the data-vs-data floors), results.json and one PNG per dataset;
RESULTS.md quotes them with the discussion. Finished stages (marked DONE) and pair chunks are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONF = REPO / "conf"

EULER_STEPS = (1, 2, 4, 8)
QUIET = ["trainer.enable_progress_bar=false", "evaluation.at_end=false", "evaluation.every_n_epochs=100000",
         "trainer.check_val_every_n_epoch=100000", "trainer.num_sanity_val_steps=0", "logger=csv"]


def compose(config: str, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)


def train(run_dir: Path, overrides: list[str]) -> Path:
    from diffusion_lab.train import run

    ckpt, done = run_dir / "checkpoints" / "last.ckpt", run_dir / "DONE"
    if done.is_file():  # rerunning the script reuses finished stages (last.ckpt alone may be mid-run)
        return ckpt
    run(compose("train", [f"run_dir={run_dir}", f"name={run_dir.name}", *QUIET, *overrides]))
    done.write_text("finished\n")
    return ckpt


def pairs(ckpt: Path, out: Path, n: int) -> Path:
    from diffusion_lab.reflow_pairs import run

    run(compose("reflow_pairs", [f"ckpt_path={ckpt}", f"out={out}", f"n={n}", "chunk_size=5000", "sampler=dopri5",
                                 "device=cpu", "progress=false"]))
    return out


@torch.no_grad()
def evaluate(ckpt: Path, reference: torch.Tensor, n: int = 2000) -> dict:
    from diffusion_lab.evaluation import generate_samples
    from diffusion_lab.flows.straightness import (adaptive_endpoint, endpoint_rms, euler_steps_needed, model_straightness,
                                                  model_velocity)
    from diffusion_lab.metrics.lowdim import mmd_rbf, sliced_wasserstein, wasserstein2
    from diffusion_lab.runs import load_run
    from diffusion_lab.samplers import Sampler

    loaded = load_run(ckpt)
    out: dict = {"samples": {}}
    with loaded.module.sampling() as den:
        st = model_straightness(den, n=n, steps=64, data_shape=(2,))
        out["straightness"] = st.straightness
        sch = den.schedule
        z = sch.prior_sample((n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        quality = endpoint_rms(model_velocity(den), z, st.x0, float(sch.t_max), float(sch.t_min))
        out["euler_steps_to_0.05"] = euler_steps_needed(quality, 0.05, max_steps=128)
        samplers = {f"euler_{k}": Sampler("euler", steps=k, grid="uniform", visit_t_min=False, variable="t",
                                          terminal="denoise", terminal_reach=None) for k in EULER_STEPS}
        samplers["dopri5"] = Sampler("dopri5", steps=2, rtol=1e-5, atol=1e-5)
        for label, s in samplers.items():
            res = generate_samples(den, s, n, (2,), seed=1, progress=False)
            x = res.x.float()
            out[label] = {"swd": sliced_wasserstein(x, reference), "mmd": mmd_rbf(x, reference),
                          "w2": wasserstein2(x, reference), "nfe": res.nfe}
            out["samples"][label] = x[:1000]
        # RK45 in t itself (Liu et al.'s sampler): its NFE reflects straightness
        x_t, nfe_t = adaptive_endpoint(model_velocity(den), z, float(sch.t_max), float(sch.t_min))
        x = x_t.float()
        out["rk45_t"] = {"swd": sliced_wasserstein(x, reference), "mmd": mmd_rbf(x, reference),
                         "w2": wasserstein2(x, reference), "nfe": nfe_t}
    return out


def reference_data(name: str, n: int) -> torch.Tensor:
    """Held-out real data: the val split of the dataset as the runs build it."""
    from diffusion_lab.runs import instantiate_group

    dm = instantiate_group(compose("train", ["run_dir=/tmp", f"dataset={name}"]), "dataset")
    return dm.sample_data(n, "val").float()


def floor(name: str, reference: torch.Tensor) -> dict:
    """SWD / MMD between the reference and as many fresh real samples: what a perfect model would score."""
    from diffusion_lab.data.toy import TOY_SETS, make_toy
    from diffusion_lab.metrics.lowdim import mmd_rbf, sliced_wasserstein
    from diffusion_lab.runs import instantiate_group

    n = len(reference)
    if name in TOY_SETS:
        fresh = make_toy(name, n, seed=12_345)
    else:
        fresh = instantiate_group(compose("train", ["run_dir=/tmp", f"dataset={name}"]), "dataset").mixture.sample(
            n, torch.Generator().manual_seed(12_345)).float()
    return {"swd": sliced_wasserstein(fresh, reference), "mmd": mmd_rbf(fresh, reference)}


def chain(data: str, coupling: str, root: Path, epochs: tuple[int, int, int], n_pairs: int) -> dict[str, Path]:
    """1-RF → pairs1 → 2-RF → pairs2 → distilled 2-RF; and the 1-RF distilled directly. Returns checkpoints."""
    e1, e2, ed = epochs
    base = [f"reflow_root={root}"]
    ck = {}
    ck["1-RF"] = train(root / "rf1", ["experiment=two_moons_reflow_1", f"dataset={data}", f"loss.coupling={coupling}",
                                      f"trainer.max_epochs={e1}", *base])
    p1 = pairs(ck["1-RF"], root / "pairs1", n_pairs)
    ck["1-RF + distill"] = train(root / "distill1", ["experiment=two_moons_reflow_distill", f"dataset.path={p1}",
                                                     f"ckpt_path={ck['1-RF']}", f"trainer.max_epochs={ed}", *base])
    ck["2-RF"] = train(root / "rf2", ["experiment=two_moons_reflow_2", f"dataset.path={p1}", f"ckpt_path={ck['1-RF']}",
                                      f"trainer.max_epochs={e2}", *base])
    p2 = pairs(ck["2-RF"], root / "pairs2", n_pairs)
    ck["2-RF + distill"] = train(root / "distill2", ["experiment=two_moons_reflow_distill", f"dataset.path={p2}",
                                                     f"ckpt_path={ck['2-RF']}", f"trainer.max_epochs={ed}", *base])
    return ck


def table(rows: list[dict]) -> str:
    head = ("| data | coupling | stage | S | Euler steps to RMS 0.05 | " +
            " | ".join(f"SWD / MMD Euler-{k}" for k in EULER_STEPS) +
            " | SWD / MMD dopri5 (λ) | NFE | SWD / MMD RK45 in t | NFE |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        m = r["metrics"]
        cells = [f"{m[f'euler_{k}']['swd']:.3f} / {m[f'euler_{k}']['mmd']:.4f}" for k in EULER_STEPS]
        need = m["euler_steps_to_0.05"]
        lines.append(f"| {r['data']} | {r['coupling']} | {r['stage']} | {m['straightness']:.4f} | "
                     f"{need if need is not None else '>128'} | " + " | ".join(cells) +
                     f" | {m['dopri5']['swd']:.3f} / {m['dopri5']['mmd']:.4f} | {m['dopri5']['nfe']:.0f} |"
                     f" {m['rk45_t']['swd']:.3f} / {m['rk45_t']['mmd']:.4f} | {m['rk45_t']['nfe']} |")
    return "\n".join(lines)


def plot(data: str, rows: list[dict], reference: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["data"] == data]
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 3.2 * len(rows)), squeeze=False)
    for ax_row, r in zip(axes, rows):
        m = r["metrics"]
        for ax, label in zip(ax_row[:2], ("euler_1", "dopri5")):
            ax.scatter(reference[:1000, 0], reference[:1000, 1], s=1, c="0.8")
            x = m["samples"][label]
            ax.scatter(x[:, 0], x[:, 1], s=1)
            ax.set_title(f"{r['coupling']} {r['stage']}: {label} (SWD {m[label]['swd']:.3f})", fontsize=8)
            ax.set_xlim(-3.5, 3.5), ax.set_ylim(-3.5, 3.5), ax.set_aspect("equal")
        ax = ax_row[2]
        ax.plot(EULER_STEPS, [m[f"euler_{k}"]["swd"] for k in EULER_STEPS], "o-", label="Euler")
        ax.axhline(m["dopri5"]["swd"], ls="--", c="k", label=f"dopri5 ({m['dopri5']['nfe']} NFE)")
        ax.set_xscale("log", base=2), ax.set_yscale("log"), ax.set_xlabel("Euler steps"), ax.set_ylabel("SWD")
        ax.set_title(f"S = {m['straightness']:.4f}", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["two_moons", "eight_gaussians", "gmm"])
    ap.add_argument("--couplings", nargs="+", default=["independent", "exact_ot"])
    ap.add_argument("--epochs", nargs=3, type=int, default=[40, 30, 20], metavar=("RF1", "RF2", "DISTILL"))
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--out", default=str(REPO / "outputs" / "reflow_experiment"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, floors, t0 = [], {}, time.time()
    for data in args.datasets:
        reference = reference_data(data, 2000)
        floors[data] = floor(data, reference)
        for coupling in args.couplings:
            ckpts = chain(data, coupling, Path(args.out) / data / coupling, tuple(args.epochs), args.pairs)
            for stage, ckpt in ckpts.items():
                rows.append({"data": data, "coupling": coupling, "stage": stage, "metrics": evaluate(ckpt, reference)})
                print(table(rows[-1:]).splitlines()[-1], flush=True)
        plot(data, rows, reference, HERE / f"reflow_{data}.png")
    minutes = (time.time() - t0) / 60
    body = table(rows)
    print(body)
    (HERE / "results.json").write_text(json.dumps(
        [{k: ({kk: vv for kk, vv in v.items() if kk != "samples"} if k == "metrics" else v) for k, v in r.items()}
         for r in rows], indent=1, default=float))
    floor_lines = "\n".join(f"* {d}: SWD {f['swd']:.3f}, MMD {f['mmd']:.4f} between the reference and fresh real data"
                            for d, f in floors.items())
    (HERE / "TABLE.md").write_text(body + f"\n\nFloors (a perfect model):\n{floor_lines}\n\n"
                                   f"(wall time {minutes:.1f} min, epochs {args.epochs}, {args.pairs} pairs)\n")


if __name__ == "__main__":
    main()
