"""A trained model of ours, out to diffusers and back (``python -m diffusion_lab.export``, ``pretrained=``).

Trains the digits UNet on the discrete DDPM schedule (``schedule=ddpm +model.norm_groups=8``: one GroupNorm
group count, so our UNet maps exactly onto ``UNet2DModel``), exports it, then samples the same seeded noise
three ways with DDIM (20 leading steps, no clipping): our sampler on the checkpoint, diffusers' own
``DDIMScheduler`` loop on the exported folder, and our sampler on the exported folder (``pretrained=``);
and evaluates the checkpoint and the exported folder with ``evaluate`` (classifier-feature FID).

    OMP_NUM_THREADS=1 python experiments/diffusers_roundtrip/run.py [--epochs 60]

Writes RESULTS.md and samples.png beside itself and prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def sh(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    return res.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="roundtrip_"))
    t0 = time.perf_counter()
    sh("diffusion_lab.train", "schedule=ddpm", "+model.norm_groups=8", f"trainer.max_epochs={args.epochs}",
       "evaluation.every_n_epochs=1000", "evaluation.at_end=false", "trainer.enable_progress_bar=false",
       f"hydra.run.dir={work / 'run'}")
    train_s = time.perf_counter() - t0
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    sh("diffusion_lab.export", f"ckpt_path={ckpt}", f"out={work / 'exported'}")

    import diffusers

    from diffusion_lab.images import save_picture
    from diffusion_lab.pretrained import load_pretrained
    from diffusion_lab.runs import load_run

    sampler = {"_target_": "diffusion_lab.samplers.Sampler", "name": "ddim", "steps": 20, "grid": "leading"}
    x_T = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        run = load_run(ckpt, sampler=sampler)
        with run.module.sampling(use_ema=True) as d:
            ours = run.parts.sampler(d, x_T=x_T.double(), progress=False).x.float()
        back = load_pretrained(work / "exported", sampler=sampler)
        with back.module.sampling(use_ema=True) as d:
            ours_on_export = back.parts.sampler(d, x_T=x_T.double(), progress=False).x.float()
        pipe = diffusers.DDPMPipeline.from_pretrained(str(work / "exported"))
        sched = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
        sched.set_timesteps(20)
        x = x_T.clone()
        for tau in sched.timesteps:
            x = sched.step(pipe.unet(x, tau).sample, tau, x).prev_sample
    rows = []
    for label, extra in (("checkpoint", [f"ckpt_path={ckpt}"]),
                         ("exported folder", [f"pretrained={work / 'exported'}", "dataset=digits"])):
        out = sh("diffusion_lab.evaluate", *extra, "sampler=ddim", "sampler.steps=20", "sampler.grid=leading",
                 "evaluation.n=1000", "evaluation.progress=false", f"out_dir={work / label.replace(' ', '_')}")
        rows.append((label, json.loads(out.strip().splitlines()[-1])))
    save_picture(torch.cat([ours[:32], x[:32]]), (1, 8, 8), HERE / "samples.png", "[-1,1]")
    diff_ckpt_vs_diffusers = float((ours - x).abs().max())
    diff_ckpt_vs_export = float((ours - ours_on_export).abs().max())
    table = ["| comparison (64 samples, same noise, DDIM 20 leading steps) | max abs difference |", "|---|---|",
             f"| ours on the checkpoint vs diffusers' DDIMScheduler on the export | {diff_ckpt_vs_diffusers:.2e} |",
             f"| ours on the checkpoint vs ours on the export (`pretrained=`) | {diff_ckpt_vs_export:.2e} |",
             "", "| evaluate (1,000 samples, DDIM 20) | FID | KID | IS |", "|---|---|---|---|"]
    table += [f"| {label} | {r['fid']:.3f} | {r['kid']:.4f} | {r['is']:.3f} |" for label, r in rows]
    text = "\n".join(table)
    print(text)
    (HERE / "RESULTS.md").write_text(
        "# A trained model of ours, out to diffusers and back\n\n"
        f"`OMP_NUM_THREADS=1 python experiments/diffusers_roundtrip/run.py --epochs {args.epochs}` (training "
        f"{train_s:.0f} s wall on the shared 2-core machine). The digits UNet on schedule=ddpm with "
        "`+model.norm_groups=8`, exported with `python -m diffusion_lab.export` (our UNet's weights mapped onto "
        "`UNet2DModel`), sampled from the same noise by our DDIM and by diffusers' `DDIMScheduler` (float32; "
        "diffusers computes its β in float32, we in float64).\n\n" + text +
        "\n\n![ours (first 4 rows) and diffusers (last 4 rows) from the same noise](samples.png)\n")


if __name__ == "__main__":
    main()
