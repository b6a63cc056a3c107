"""Lightning glue: the LightningModule, EMA, the thin evaluation callback around ``diffusion_lab.evaluation``, loggers,
and the noise-conditional classifier's LightningModule (``classifier``)."""
