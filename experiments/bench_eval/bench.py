"""Cost of evaluation on this CPU: feature extraction and FID per 1,000 samples for both feature
networks, and the share of a training epoch that the default evaluation takes in the default run.

    .venv/bin/python experiments/bench_eval/bench.py [--epochs 10] [--inception-images 16]

Writes experiments/bench_eval/RESULTS.md and prints the same tables. The Inception network is
torch-fidelity's InceptionV3 architecture with random weights (the real weights cannot be downloaded
here): the cost is the same, the features are meaningless.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))


def _time(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_features(cache: Path, inception_images: int) -> list[dict]:
    from diffusion_lab.data import DigitsDataModule
    from diffusion_lab.metrics import (ImageMetrics, InceptionFeatures, extract_features, load_or_train_classifier,
                                       write_random_inception_weights)

    dm = DigitsDataModule()
    x = dm.sample_data(1000, "train")
    rows = []
    t0 = time.perf_counter()
    clf = load_or_train_classifier(dm, cache_dir=cache, progress=False)  # the default recipe (15 epochs)
    train_s = time.perf_counter() - t0
    extract_features(clf, x[:64])  # warm-up
    clf_s = _time(lambda: extract_features(clf, x, batch_size=256), repeats=3)
    weights = write_random_inception_weights(cache / "inception_random.pth")
    inc = InceptionFeatures(weights)
    k = inception_images
    extract_features(inc, x[:2], batch_size=2)  # warm-up
    inc_s = _time(lambda: extract_features(inc, x[:k], batch_size=k)) * 1000 / k
    for name, d, feat_s, once in (("classifier (128-d, 1x8x8 input)", 128, clf_s, f"{train_s:.1f} s (train once, cached)"),
                                  ("inception (2048-d, resized to 299x299)", 2048, inc_s, "0 (weights file)")):
        f = torch.randn(1000, d)
        real = torch.randn(1000, d)

        def fid_update():
            m = ImageMetrics(["fid"], d, n_fake=1000, n_real=1000)
            m.update_real(real)
            m.update_fake(f)
            return m

        upd = _time(fid_update, repeats=3)
        comps = []
        for _ in range(2):  # a fresh metric each time (torchmetrics caches a computed value)
            m = fid_update()
            comps.append(_time(m.compute))
        comp = min(comps)

        def all3():
            mm = ImageMetrics(["fid", "kid", "is"], d, n_fake=1000, n_real=1000)
            mm.update_real(real)
            mm.update_fake(f, torch.randn(1000, 10))
            mm.compute()

        everything = _time(all3)
        rows.append({"network": name, "features_s_per_1k": feat_s, "fid_update_s_per_1k": upd, "fid_compute_s": comp,
                     "fid_kid_is_s_per_1k": everything, "one_time": once})
    return rows


def bench_default_run(epochs: int, cache: Path) -> dict:
    """The default config (`make train`: 8x8 digits, VP, eps, the default evaluation), `epochs` epochs."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from diffusion_lab.lightning.evaluation import EvaluationCallback
    from diffusion_lab.runs import build_module, build_parts

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.train_s: dict[int, float] = {}
            self._t0 = 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):  # runs before the evaluation callback (list order)
            self.end = time.perf_counter()
            self.train_s[trainer.current_epoch] = self.end - self._t0

    class EvalTimer(pl.Callback):
        def __init__(self):
            self.eval_s: dict[int, float] = {}

        def on_train_epoch_end(self, trainer, pl_module):  # right after the evaluation callback
            if ev.due(trainer.current_epoch, last=False):
                self.eval_s[trainer.current_epoch] = time.perf_counter() - timer.end

    run_dir = Path(tempfile.mkdtemp(prefix="bench_eval_run_"))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"run_dir={run_dir}", "name=bench", f"trainer.max_epochs={epochs}",
                                                      "logger=csv", "callbacks.progress.refresh_rate=0",
                                                      f"evaluation.cache_dir={cache}", "evaluation.progress=false"])
    pl.seed_everything(cfg.seed)
    parts = build_parts(cfg, choices={})
    module = build_module(cfg, parts)
    timer, ev_timer = EpochTimer(), EvalTimer()
    ev = parts.evaluator
    t0 = time.perf_counter()
    ev.prepare(parts.datamodule, parts.data_shape)  # the one-time part (classifier cached already, real features)
    setup_s = time.perf_counter() - t0
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    trainer = instantiate(cfg.trainer, logger=instantiate(cfg.logger),
                          callbacks=[*callbacks, timer, EvaluationCallback(ev, out_dir=str(run_dir)), ev_timer],
                          default_root_dir=str(run_dir))
    trainer.fit(module, datamodule=parts.datamodule)
    evaluated = sorted(ev_timer.eval_s)
    per_eval = [{"epoch": e + 1, "train_s": timer.train_s[e], "eval_s": ev_timer.eval_s[e],
                 "share": ev_timer.eval_s[e] / timer.train_s[e]} for e in evaluated]
    plain = sorted(timer.train_s[e] for e in timer.train_s)
    fid = {e + 1: r["fid"] for e in evaluated for r in ev.table.rows if r["epoch"] == e}
    return {"every": ev.every_n_epochs, "per_eval": per_eval, "median_epoch_s": plain[len(plain) // 2], "epochs_s": [timer.train_s[e] for e in
            sorted(timer.train_s)], "setup_s": setup_s, "fid": fid,
            "label": ev.samplers[0].label, "n": ev.n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the default run to time (two evaluations by default)")
    ap.add_argument("--inception-images", type=int, default=16, help="images timed through Inception (CPU is slow)")
    args = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="bench_eval_cache_"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    feats = bench_features(cache, args.inception_images)
    run = bench_default_run(args.epochs, cache)
    lines = ["# Evaluation cost on this CPU", "",
             f"`{Path(sys.executable).name} experiments/bench_eval/bench.py --epochs {args.epochs} --inception-images "
             f"{args.inception_images}` — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f} at the start "
             "(the machine is shared: timings are noisy).", "",
             "## Per 1,000 samples", "",
             "| feature network | features (s / 1k) | FID statistics update (s / 1k) | FID compute (s, N=1k) | FID+KID+IS (s / 1k) | one-time cost |",
             "|---|---|---|---|---|---|"]
    for r in feats:
        lines.append(f"| {r['network']} | {r['features_s_per_1k']:.3f} | {r['fid_update_s_per_1k']:.4f} | "
                     f"{r['fid_compute_s']:.4f} | {r['fid_kid_is_s_per_1k']:.3f} | {r['one_time']} |")
    lines += ["", "Inception on a CPU costs minutes per 1,000 images: use `features=classifier` for CPU runs and "
              "Inception on a GPU (or with a small N) only.", "",
              f"## The default run (`make train`): evaluation = {run['label']}, N = {run['n']}, every {run['every']} epochs", "",
              "| epoch | training epoch (s) | evaluation after it (s) | evaluation / epoch | FID (classifier) |",
              "|---|---|---|---|---|"]
    for r in run["per_eval"]:
        lines.append(f"| {r['epoch']} | {r['train_s']:.2f} | {r['eval_s']:.2f} | {r['share']:.0%} | "
                     f"{run['fid'].get(r['epoch'], float('nan')):.2f} |")
    mean_eval = sum(r["eval_s"] for r in run["per_eval"]) / max(1, len(run["per_eval"]))
    lines += ["", f"Training epochs (s): {', '.join(f'{t:.1f}' for t in run['epochs_s'])} (every 5th includes "
              f"validation); median {run['median_epoch_s']:.2f} s. Evaluation every {run['every']} epochs adds "
              f"{mean_eval / (run['every'] * run['median_epoch_s']):.0%} to the training time. One-time set-up at fit start "
              f"(real-data features; the classifier was already cached): {run['setup_s']:.2f} s.", ""]
    text = "\n".join(lines)
    (HERE / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
