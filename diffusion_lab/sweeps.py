"""Naming the jobs of a Hydra multirun by what they sweep: job folders, W&B run names and tags.

``python -m diffusion_lab.train -m sampler=ddim,heun trainer.max_steps=20`` runs two jobs. Hydra's
default names their folders ``0`` and ``1`` and gives both W&B runs the same name; here each job is
named by the values of the *swept* keys only (the keys with a comma list, a range or a sweeper
``params`` entry), e.g. ``0_sampler-ddim`` and ``1_sampler-heun`` (folders) and ``sampler=ddim`` (W&B);
the fixed overrides (``trainer.max_steps=20``) are the same in every job and stay out of the name.

How a job knows which keys are swept: the multirun's Hydra callback
(``diffusion_lab.sweep_summary.SweepSummaryCallback``, in conf/train.yaml) reads the sweep's
command line (``hydra.overrides.task``: the overrides Hydra's parser marks as sweeps) and the
sweeper's ``params`` before the first job starts, and puts the keys in the environment variable
``DIFFUSION_LAB_SWEPT_KEYS``, which every launcher's workers inherit (in-process, joblib's processes,
submitit's local and SLURM jobs). Without it (another root config) every override of the job that is
not in ``EXCLUDED_KEYS`` names it, which is Hydra's ``override_dirname`` with those keys excluded.

The folder keeps the job number in front (``<num>_<key>-<value>+<key>-<value>``): two Optuna trials
may draw the same categorical values, and the number keeps them apart and in launch order. Floats are
written with 4 significant digits; ``=``, ``,`` and other characters that Hydra's override grammar or a
path would read are replaced (``ckpt_path=<job folder>/checkpoints/last.ckpt`` works unquoted).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Sequence

from omegaconf import OmegaConf

SWEPT_ENV = "DIFFUSION_LAB_SWEPT_KEYS"
#: keys that never name a job: paths, the run's own bookkeeping, Hydra's settings
EXCLUDED_KEYS = ("run_dir", "name", "ckpt_path", "hydra", "dataset.data_dir", "evaluation.cache_dir",
                 "evaluation.inception_weights", "hparams_search", "optimized_metric")
MAX_DIRNAME = 120


def _parse(overrides: Iterable[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([str(o) for o in overrides])


def _excluded(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in EXCLUDED_KEYS)


def swept_keys(task_overrides: Sequence[str], sweeper_params: Any = None) -> list[str]:
    """The keys a multirun sweeps: command-line overrides with several values, then the sweeper's
    ``params`` (the basic sweeper's and Optuna's search space)."""
    keys = [o.get_key_element().lstrip("+~") for o in _parse(task_overrides) if o.is_sweep_override()]
    keys += [str(k) for k in (sweeper_params or {})]
    return [k for k in dict.fromkeys(keys) if not _excluded(k)]


def current_swept_keys() -> list[str] | None:
    """The swept keys published by the multirun callback, or None outside such a multirun."""
    raw = os.environ.get(SWEPT_ENV)
    return json.loads(raw) if raw else None


def format_value(value: str) -> str:
    """A value as it appears in a name: floats with 4 significant digits, other text as given."""
    try:
        number = float(value)
    except ValueError:
        return value
    if re.fullmatch(r"[+-]?\d+", value.strip()):
        return value.strip()
    return f"{number:.4g}"


def override_values(task_overrides: Sequence[str]) -> list[tuple[str, str]]:
    """(key, value as in a name) of every override outside ``EXCLUDED_KEYS``."""
    out = []
    for o in _parse(task_overrides):
        key = o.get_key_element().lstrip("+~")
        if not _excluded(key):
            out.append((key, format_value(o.get_value_element_as_str())))
    return out


def job_values(task_overrides: Sequence[str], swept: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(key, value) of the job's overrides that name it: those of ``swept`` (default: the published
    swept keys), or, without a list of swept keys, every override outside ``EXCLUDED_KEYS``."""
    swept = current_swept_keys() if swept is None else list(swept)
    return [(k, v) for k, v in override_values(task_overrides) if swept is None or k in swept]


def job_label(values: Sequence[tuple[str, str]]) -> str:
    """``key=value,key=value`` (empty when nothing is swept)."""
    return ",".join(f"{k}={v}" for k, v in values)


def job_dirname(num: Any, task_overrides: Sequence[str]) -> str:
    """The folder of job ``num`` of a sweep: ``<num>_<key>-<value>+<key>-<value>...``, or ``<num>`` when nothing
    is swept. No ``=`` or ``,``: Hydra's override grammar reads those, so the folder's path can be given to
    ``ckpt_path=`` unquoted."""
    items = [re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{k}-{v}") for k, v in job_values(list(task_overrides))]
    label = "+".join(items)[:MAX_DIRNAME].rstrip("+")
    return f"{num}_{label}" if label else str(num)


def hydra_job() -> tuple[bool, list[str]]:
    """(inside a multirun?, the job's overrides), from Hydra's runtime config; (False, []) outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return False, []
    return hc.mode == RunMode.MULTIRUN, [str(o) for o in hc.overrides.task]


def wandb_name_and_tags(name: str | None) -> tuple[str | None, list[str]]:
    """In a multirun job: the run name with the swept values appended (``digits_vp_eps/sampler=ddim``)
    and one tag per swept value (``sampler=ddim``, at most 64 characters: W&B's limit); else (name, [])."""
    multirun, overrides = hydra_job()
    if not multirun:
        return name, []
    values = job_values(overrides)
    label = job_label(values)
    tags = [f"{k}={v}"[:64] for k, v in values]
    return (f"{name}/{label}" if name and label else (name or label or None)), tags


def _register_resolver() -> None:
    if not OmegaConf.has_resolver("dl_job_dir"):
        OmegaConf.register_new_resolver("dl_job_dir", lambda num, overrides: job_dirname(num, list(overrides)))


_register_resolver()
