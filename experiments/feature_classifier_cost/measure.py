"""What the first run on a new dataset pays once: training the FID feature classifier
(``diffusion_lab.metrics.features.train_feature_classifier``, 15 epochs by default) before the first
evaluation. Measures the CPU time of one process (one thread) for ``--epochs`` epochs on digits and MNIST
and extrapolates linearly to the default 15 epochs (each epoch is the same number of steps), so the
figure does not depend on how loaded the machine is; the wall time on a shared machine is larger.

    OMP_NUM_THREADS=1 python experiments/feature_classifier_cost/measure.py --epochs 1 --data-dir ../shared/data

Writes RESULTS.md beside itself and prints the same table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diffusion_lab.data import DigitsDataModule, TorchvisionDataModule
from diffusion_lab.metrics.features import CLASSIFIER_RECIPE, train_feature_classifier


def measure(name: str, datamodule, epochs: int) -> dict:
    datamodule.setup()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    _, info = train_feature_classifier(datamodule, epochs=epochs, progress=False)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    full = CLASSIFIER_RECIPE["epochs"]
    return {"dataset": name, "train images": info["train_size"], "epochs run": epochs, "cpu s": cpu, "wall s": wall,
            f"cpu s for {full} epochs": cpu * full / epochs, "val acc": info["val_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure("digits", DigitsDataModule(), args.epochs)]
    rows.append(measure("mnist", TorchvisionDataModule(name="mnist", data_dir=args.data_dir, channels=1, image_size=28,
                                                       num_classes=10), args.epochs))
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    table = "\n".join(lines)
    print(table)
    text = (f"# The FID feature classifier's one-time cost\n\n`OMP_NUM_THREADS=1 python experiments/feature_classifier_cost/measure.py "
            f"--epochs {args.epochs} --data-dir {args.data_dir}` (one thread, CPU time of the process; the default recipe trains "
            f"{CLASSIFIER_RECIPE['epochs']} epochs, extrapolated linearly; val accuracy after {args.epochs} epoch(s)).\n\n{table}\n")
    (Path(__file__).parent / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
