"""What the three entry points (train, sample, evaluate) share: a user error — one of the project's own
error types (``diffusion_lab.errors``) — ends the command with its one sentence on stderr and exit
status 1; every other exception is a bug and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows the
traceback of user errors too."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any, Callable, Sequence

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


#: Hydra launchers / sweepers of conf/hydra and the plugin package each needs (pip name, module)
PLUGINS = {"hydra/launcher=slurm": ("hydra-submitit-launcher", "hydra_plugins.hydra_submitit_launcher"),
           "hydra/sweeper=optuna": ("hydra-optuna-sweeper", "hydra_plugins.hydra_optuna_sweeper"),
           "hydra/launcher=joblib": ("hydra-joblib-launcher", "hydra_plugins.hydra_joblib_launcher")}


def check_plugins(argv: Sequence[str]) -> None:
    """A launcher or sweeper chosen on the command line whose plugin is not installed ends the command with
    one sentence (Hydra would fail inside its launcher with a long error)."""
    for arg in argv:
        key = arg.lstrip("+~")
        if key in PLUGINS:
            package, module = PLUGINS[key]
            if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
                raise SystemExit(f"error: {key} needs the {package} plugin, which is not installed; "
                                 f"pip install {package} (or pip install 'diffusion_lab[dev]').")


def entry_point(main: Callable[[], Any]) -> None:
    """Run a Hydra main after the checks that must happen before Hydra starts."""
    check_plugins(sys.argv[1:])
    main()
