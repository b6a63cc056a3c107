"""How the ODE samplers' defaults were chosen: every candidate at NFE 10, 15, 20 on 2-D and 16-D
mixtures under the five schedule families (discrete DDPM, VP, VE, EDM, rectified flow).

    .venv/bin/python experiments/sampler_accuracy/defaults.py                 # options, then grids
    .venv/bin/python experiments/sampler_accuracy/defaults.py grids options   # stages in this order

Score of a candidate = geometric mean of the endpoint error (``problem.error``, exact reference at
σ = 0) over NFE ∈ {10, 15, 20} and the two mixtures, per family; a candidate that diverges anywhere
scores inf. Candidates within 5 % of the best score are a tie, broken by the same score at
NFE ∈ {50, 100} (where the last step to σ = 0 decides the floor); exact ties (uniform ≡ λ on VE,
uniform ≡ Karras on EDM) go to the first spacing of ``SPACINGS``.

* stage ``options``: on the grids of the previous ``grids`` stage, the options that change the
  update: the 3M variant (published / derived), the step-down near the end (``lower_order_final``
  off, or below 10 / 15 / 20 / ∞ steps), the order of the last step to σ̃ = 0 (``terminal_order``;
  1 = the denoising jump), UniPC's B(h), the order of LMS and iPNDM. The score here is the geometric
  mean over all five families; the winner is the sampler's default option set.
* stage ``grids``: with those options, for each sampler and family, the spacing (lambda, karras ρ = 7,
  quadratic, uniform; on DDPM also linspace and trailing) × the grid's end (``visit_t_min``). The
  winner is the sampler's ``auto`` grid on that family (``diffusion_lab/samplers/defaults.py``).

Writes DEFAULTS.md and defaults.json beside this file (tables of scores, winners marked).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch

from diffusion_lab.samplers import Sampler
from diffusion_lab.samplers.grids import FAMILIES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from problem import error, make_case, steps_for  # noqa: E402

HERE = Path(__file__).resolve().parent
NFES = (10, 15, 20)
DIMS = (2, 16)
N_SAMPLES = 256
ODE = ["ddim", "euler", "heun", "rk4", "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2s", "dpm_solver_pp_2m",
       "dpm_solver_pp_3m", "unipc_2", "unipc_3", "deis", "lms", "ipndm"]
SPACINGS = ("lambda", "karras", "quadratic", "uniform")
NFES_TIE = (50, 100)
TIE = 1.05
DISCRETE_SPACINGS = ("linspace", "trailing")


def score(cases, name: str, grid: str, visit_t_min: bool, options: dict, nfes=NFES) -> float:
    logs = []
    for case in cases:
        for nfe in nfes:
            try:
                s = Sampler(name, steps=steps_for(name, nfe), grid=grid, visit_t_min=visit_t_min, **options)
                x = s(case.denoiser, x_T=case.x_T, progress=False).x
            except ValueError:
                return math.inf
            e = error(x, case.ref)
            if not math.isfinite(e) or e > 1e3:
                return math.inf
            logs.append(math.log(e))
    return math.exp(sum(logs) / len(logs))


def _split(grid: str) -> tuple[str, bool]:
    return grid.replace("-early", ""), not grid.endswith("-early")


def pick(scores: dict, tie_score) -> tuple[str, dict]:
    """The key with the lowest score; within ``TIE`` of it, the lowest ``tie_score(key)`` (computed only
    for the tied keys, returned as the second value)."""
    best = min(scores.values())
    tied = [k for k, v in scores.items() if v <= TIE * best]  # in insertion order: preferred first
    if len(tied) == 1:
        return tied[0], {}
    tie = {k: tie_score(k) for k in tied}
    low = min(tie.values())
    return next(k for k in tied if tie[k] <= low * (1 + 1e-9)), tie


def stage_grids(cases_by_family, chosen_options: dict) -> dict:
    out: dict = {}
    for name in ODE:
        out[name] = {}
        opts = chosen_options.get(name, {})
        for fam, cases in cases_by_family.items():
            spacings = SPACINGS + (DISCRETE_SPACINGS if fam == "discrete" else ())
            res = {}
            for v, sp in itertools.product((False, True), spacings):
                if sp == "trailing" and v:
                    continue  # trailing is the same in both conventions
                res[f"{sp}{'' if v else '-early'}"] = score(cases, name, sp, v, opts)
            best, tie = pick(res, lambda k: score(cases, name, *_split(k), opts, NFES_TIE))
            out[name][fam] = {"scores": res, "best": best, "tie_scores": tie}
            print(f"[grids] {name:17s} {fam:8s} best {best:18s} {res[best]:.2e}  "
                  + " ".join(f"{k}:{v:.1e}" for k, v in res.items()), flush=True)
    return out


#: option candidates per sampler (the first is the current default)
def option_candidates(name: str) -> list[dict]:
    step_down = [{"lower_order_final": False}] + [{"lower_order_final": True, "final_threshold": k}
                                                   for k in (10, 15, 20, 1000)]
    if name in ("dpm_solver_pp_2m",):
        return [dict(a, terminal_order=t) for a in step_down for t in (1, 2, 3)]
    if name == "dpm_solver_pp_3m":
        return [dict(a, variant=v, terminal_order=t) for a in step_down for v in ("published", "derived")
                for t in (1, 2, 3)]
    if name in ("unipc_2", "unipc_3"):
        return [dict(a, variant=v, terminal_order=t) for a in step_down for v in ("bh2", "bh1") for t in (1, 2, 3, 4)]
    if name in ("heun", "rk4", "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2s", "deis"):
        return [{"terminal_order": t} for t in (1, 2, 3, 4)]
    if name in ("lms", "ipndm"):
        return [{"order": k} for k in (2, 3, 4)] + [{"order": k, "terminal": "denoise"} for k in (3, 4)]
    return [{}]


def stage_options(cases_by_family, grids: dict) -> dict:
    out: dict = {}
    cases = [c for cs in cases_by_family.values() for c in cs]
    for name in ODE:
        cands = option_candidates(name)
        if len(cands) < 2:
            continue
        def total(opts: dict, nfes=NFES) -> float:
            logs = []
            for fam, cs in cases_by_family.items():
                logs.append(math.log(score(cs, name, *_split(grids[name][fam]["best"]), opts, nfes)))
            return math.exp(sum(logs) / len(logs))

        scores = {json.dumps(o, sort_keys=True): total(o) for o in cands}
        best, tie = pick(scores, lambda k: total(json.loads(k), NFES_TIE))
        rows = sorted(({"score": v, "options": json.loads(k), "tie_score": tie.get(k)} for k, v in scores.items()),
                      key=lambda r: r["score"])
        out[name] = {"rows": rows, "best": json.loads(best)}
        print(f"[options] {name:17s} best {best} {scores[best]:.2e} (ties: {len(tie)})", flush=True)
    del cases
    return out


def write(grids: dict, options: dict, seconds: float) -> None:
    lines = ["# How the samplers' defaults were chosen", "",
             f"Generated by `experiments/sampler_accuracy/defaults.py` ({seconds / 60:.1f} min, {N_SAMPLES} samples per "
             "case). Score = geometric mean of the endpoint error (median ‖x − x_ref‖, exact reference at σ = 0) over "
             f"NFE {list(NFES)} and the {len(DIMS)} mixtures ({', '.join(f'{d}-D' for d in DIMS)}); inf = diverged. "
             "Grids: `-early` = `visit_t_min=False` (the last positive node one step above t_min).", ""]
    if grids:
        lines += ["## Default grid per sampler and schedule family (winner in bold)", ""]
        for name, fams in grids.items():
            lines += [f"### {name}", "", "| family | " + " | ".join(next(iter(fams.values()))["scores"]) + " |",
                      "|---|" + "---|" * len(next(iter(fams.values()))["scores"])]
            for fam, r in fams.items():
                cells = []
                keys = list(next(iter(fams.values()))["scores"])
                for k in keys:
                    v = r["scores"].get(k)
                    txt = "—" if v is None else ("inf" if not math.isfinite(v) else f"{v:.2e}")
                    cells.append(f"**{txt}**" if k == r["best"] else txt)
                lines.append(f"| {fam} | " + " | ".join(cells) + " |")
            lines.append("")
    if options:
        lines += ["## Options (on the default grids; geometric mean over the five families)", "",
                  f"Second column: the score at NFE {list(NFES_TIE)} of the candidates tied (within {TIE - 1:.0%}) "
                  "with the best at NFE 10–20.", ""]
        for name, r in options.items():
            rows = r["rows"]
            lines += [f"### {name}", "", f"| score NFE {NFES[0]}–{NFES[-1]} | tie-break NFE {NFES_TIE[0]}–{NFES_TIE[-1]} "
                      "| options |", "|---|---|---|"]
            for row in rows[:10]:
                s = "inf" if not math.isfinite(row["score"]) else f"{row['score']:.3e}"
                t = "" if row["tie_score"] is None else f"{row['tie_score']:.3e}"
                mark = row["options"] == r["best"]
                lines.append(f"| {'**' + s + '**' if mark else s} | {'**' + t + '**' if mark and t else t} | "
                             f"`{row['options']}` |")
            if len(rows) > 10:
                lines.append(f"| … | | ({len(rows)} candidates; worst {rows[-1]['score']:.3e} `{rows[-1]['options']}`) |")
            lines.append("")
    (HERE / "DEFAULTS.md").write_text("\n".join(lines) + "\n")
    (HERE / "defaults.json").write_text(json.dumps({"grids": grids, "options": options}, indent=1,
                                                   default=lambda v: None) + "\n")


def main() -> None:
    torch.set_num_threads(1)
    stages = sys.argv[1:] or ["options", "grids"]
    t0 = time.perf_counter()
    cases = {fam: [make_case(fam, d, N_SAMPLES) for d in DIMS] for fam in FAMILIES}
    print(f"references: {time.perf_counter() - t0:.1f}s", flush=True)
    previous = json.loads((HERE / "defaults.json").read_text()) if (HERE / "defaults.json").exists() else {}
    options = previous.get("options", {})
    grids = previous.get("grids", {})
    for stage in stages:
        if stage == "grids":
            grids = stage_grids(cases, {k: v["best"] for k, v in options.items() if "best" in v})
        elif stage == "options":
            options = stage_options(cases, grids)
        write(grids, options, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
