#!/usr/bin/env bash
# A learning-rate sweep of the default digits run, two jobs at a time on this machine (joblib launcher), ending
# with the sweep's table and plot (diffusion_lab/sweep_summary.py); the three files are copied here.
#   bash experiments/sweep_workflow/run.sh            (about 4 CPU-minutes; needs the joblib extra)
set -euo pipefail
cd "$(dirname "$0")/../.."
SWEEP=${SWEEP:-/tmp/diffusion_lab_sweep_workflow}
rm -rf "$SWEEP"
OMP_NUM_THREADS=1 python -m diffusion_lab.train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 \
  optimizer.lr=5e-4,1e-3,2e-3,4e-3 trainer.max_epochs=30 evaluation.every_n_epochs=1000 sampler.steps=20 \
  trainer.enable_progress_bar=false evaluation.progress=false hydra.sweep.dir="$SWEEP"
cp "$SWEEP"/sweep_summary.{csv,md,png} experiments/sweep_workflow/
ls "$SWEEP"
