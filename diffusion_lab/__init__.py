from diffusion_lab import sweeps as _sweeps  # noqa: F401  (registers the ${dl_job_dir:...} resolver of conf/train.yaml)
