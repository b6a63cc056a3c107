"""What the three entry points (train, sample, evaluate) share: a user error — one of the project's own
error types (``diffusion_lab.errors``) — ends the command with its one sentence on stderr and exit
status 1; every other exception is a bug and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows the
traceback of user errors too."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from diffusion_lab.errors import DiffusionLabError


def run_reporting_errors(fn: Callable[[Any], Any], cfg: Any, log: logging.Logger) -> Any:
    """Call ``fn(cfg)``; on a user error, log it and exit with ``error: <sentence>``."""
    try:
        return fn(cfg)
    except DiffusionLabError as e:
        log.error("%s", e)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {e}") from None
