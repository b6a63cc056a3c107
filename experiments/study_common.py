"""What the study scripts of experiments/ share (sde_vs_ode, paper_*): every step is a command of the
project's own entry points — ``python -m diffusion_lab.train`` for a model, ``python -m
diffusion_lab.evaluate`` for samplers × NFE on its checkpoint — printed and recorded, so each number in a
RESULTS.md can be reproduced from the command line; the table comes back as ``EvalTable`` from the
evaluation's own ``eval/table.csv``.

Models go to ``experiments/runs/<name>/`` (not in git) and are reused by every study that names them:
one checkpoint serves several sampling-only comparisons. ``STUDY_REUSE=1`` reuses an evaluation's table
already under ``experiments/runs/`` (to rewrite a RESULTS.md without sampling again).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from diffusion_lab.evaluation.table import EvalTable  # noqa: E402

RUNS = REPO / "experiments" / "runs"

# the models the studies use: run name -> `python -m diffusion_lab.train` overrides (paper twins at the
# size 2 shared CPU cores train in ~10 minutes each; `--epochs` of the scripts overrides max_epochs)
MODELS = {
    "vp_digits": ["experiment=score_sde_vp_digits", "trainer.max_epochs=60"],
    "ddpm_digits": ["experiment=ddpm_digits", "trainer.max_epochs=50"],
    "edm_digits": ["experiment=edm_digits", "trainer.max_epochs=50"],
    "ve_digits": ["experiment=score_sde_ve_digits", "trainer.max_epochs=50"],
    "iddpm_cosine_hybrid": ["experiment=iddpm_digits", "trainer.max_epochs=50"],
    "iddpm_cosine_simple": ["experiment=iddpm_digits", "loss=eps_mse", "model.learned_variance=false",
                            "sampler.variance=small", "trainer.max_epochs=50"],
    "iddpm_linear_hybrid": ["experiment=iddpm_digits", "schedule=ddpm", "trainer.max_epochs=50"],
    "iddpm_linear_simple": ["experiment=iddpm_digits", "schedule=ddpm", "loss=eps_mse", "model.learned_variance=false",
                            "sampler.variance=small", "trainer.max_epochs=50"],
}
# training only evaluates at the very end of a run that needs none: the studies evaluate the checkpoint
TRAIN_QUIET = ["evaluation.every_n_epochs=1000", "evaluation.at_end=false", "trainer.enable_progress_bar=false"]


def run_cli(module: str, args: list[str], log: list[str]) -> None:
    """``python -m diffusion_lab.<module> args`` in the repository (recorded in ``log`` for RESULTS.md)."""
    shown = f"python -m diffusion_lab.{module} " + " ".join(args)
    print(f"\n$ {shown}", flush=True)
    log.append(shown)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"diffusion_lab.{module}", *args], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL)
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"the command above failed (exit status {proc.returncode}).")


def checkpoint(name: str, log: list[str], epochs: int | None = None, ckpt: str | None = None) -> Path:
    """The checkpoint of model ``name`` (``MODELS``): ``ckpt`` when given, the existing finished run, or a new
    training run (resumed from its last checkpoint if it was interrupted)."""
    if ckpt:
        return Path(ckpt).resolve()
    run_dir = RUNS / name
    last = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / "DONE").is_file() and last.is_file():
        log.append(f"python -m diffusion_lab.train {' '.join(MODELS[name])} hydra.run.dir=experiments/runs/{name} "
                   f"{' '.join(TRAIN_QUIET)}  # (trained before; reused)")
        return last
    args = list(MODELS[name]) + (["ckpt_path=last"] if last.is_file() else [])
    if epochs is not None:
        args = [a for a in args if not a.startswith("trainer.max_epochs=")] + [f"trainer.max_epochs={epochs}"]
    run_cli("train", [*args, f"hydra.run.dir=experiments/runs/{name}", *TRAIN_QUIET], log)
    (run_dir / "DONE").touch()
    return last


def evaluate(ckpt: Path, evaluation: str, out_dir: Path, log: list[str], extra: list[str] = ()) -> EvalTable:
    """``python -m diffusion_lab.evaluate ckpt_path=<ckpt> evaluation=<evaluation> <extra>``; its table."""
    rel = os.path.relpath(ckpt, REPO)
    if os.environ.get("STUDY_REUSE") == "1" and (out_dir / "eval" / "table.csv").is_file():
        log.append(f"python -m diffusion_lab.evaluate ckpt_path={rel} evaluation={evaluation} {' '.join(extra)} "
                   f"hydra.run.dir={os.path.relpath(out_dir, REPO)} evaluation.progress=false")
        return EvalTable.read_csv(out_dir / "eval" / "table.csv")
    run_cli("evaluate", [f"ckpt_path={rel}", f"evaluation={evaluation}", *extra,
                         f"hydra.run.dir={os.path.relpath(out_dir, REPO)}", "evaluation.progress=false"], log)
    return EvalTable.read_csv(out_dir / "eval" / "table.csv")


def machine() -> str:
    """One line on where the numbers were measured."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} cores (shared; load average {load:.1f} at the end), "
            f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")


def value(table: EvalTable, sampler: str, metric: str = "fid") -> float:
    """The metric of the row labelled ``sampler`` (NaN when absent)."""
    for row in table.rows:
        if row.get("sampler") == sampler:
            return float(row.get(metric, float("nan")))
    return float("nan")


def pivot(table: EvalTable, metric: str = "fid", column: str = "nfe") -> str:
    """Markdown: one line per family, one column per value of ``column`` (nfe or steps), cells ``metric``
    (with the counted NFE in brackets where the columns are steps)."""
    fams = table.families()
    keys = sorted({float(r[column]) for rows in fams.values() for r in rows})
    head = "| family | kind | " + " | ".join(f"{column} {k:g}" for k in keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 2)]
    for fam, rows in fams.items():
        cells = []
        for k in keys:
            match = [r for r in rows if float(r[column]) == k]
            if not match or match[0].get(metric) is None:
                cells.append("")
            else:
                r = match[0]
                extra = f" ({float(r['nfe']):g})" if column != "nfe" else ""
                cells.append(f"{float(r[metric]):.2f}{extra}")
        lines.append(f"| {fam} | {rows[0]['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fid_at(table: EvalTable, family: str, column: str, key: float, metric: str = "fid") -> float:
    """The metric of ``family``'s row whose ``column`` (nfe / steps) is ``key`` (NaN when absent)."""
    for row in table.families().get(family, []):
        if float(row[column]) == float(key):
            return float(row.get(metric, float("nan")))
    return float("nan")


def write_results(path: Path, title: str, claim: str, sections: list[str], verdict: list[str], log: list[str],
                  command: str, notes: str = "") -> None:
    """RESULTS.md of a paper study: the paper's claim, our numbers, the verdict, the commands."""
    text = [f"# {title}", "", "## The paper's claim", "", claim, "", "## Our numbers", "", *sections, "",
            "## Verdict", "", *verdict, ""]
    if notes:
        text += ["## Notes", "", notes, ""]
    text += ["## Commands", "", "```", command, "# which runs:", *log, "```", "", f"Measured on {machine()}.", ""]
    path.write_text("\n".join(text))
    print("\n".join(verdict))
