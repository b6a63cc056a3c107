"""The project's own errors: the ones that are the user's to fix. Each carries one sentence that names
the bad value (a config key, a file) and the fix; the entry points print it as ``error: <sentence>``
and exit with status 1, without a traceback. Every other exception is a bug and keeps its traceback.

They subclass ``ValueError`` too, so code that uses diffusion_lab as a library can catch them as such.
"""

from __future__ import annotations


class DiffusionLabError(Exception):
    """Base class: a problem with the user's input, stated in one sentence."""


class ConfigError(DiffusionLabError, ValueError):
    """A configuration value or combination that cannot work; the message names the keys to change."""


class CheckpointError(DiffusionLabError, ValueError):
    """A checkpoint that is missing, unreadable, foreign, or does not match the run."""


class DataError(DiffusionLabError, ValueError):
    """A dataset that is missing or unreadable."""


class DivergenceError(DiffusionLabError, FloatingPointError):
    """Training diverged (a non-finite or exploding loss or weight); the last good checkpoint is kept."""
