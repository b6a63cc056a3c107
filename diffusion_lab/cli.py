"""What the three entry points (train, sample, evaluate) share: a user error ends the command with one
sentence on stderr and a non-zero exit, not a traceback (HYDRA_FULL_ERROR=1 shows the traceback)."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from diffusion_lab.checkpoints import CheckpointError
from diffusion_lab.config_checks import ConfigError

#: errors that are the user's to fix; each carries a sentence naming the bad value and the fix
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, CheckpointError, FileNotFoundError, FloatingPointError, ValueError)


def run_reporting_errors(fn: Callable[[Any], Any], cfg: Any, log: logging.Logger) -> Any:
    """Call ``fn(cfg)``; on a user error, log it and exit with ``error: <sentence>``."""
    try:
        return fn(cfg)
    except USER_ERRORS as e:
        log.error("%s", e)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {e}") from None
