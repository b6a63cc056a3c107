"""Lightning glue: the LightningModule, EMA, and the callbacks that sample and evaluate."""
