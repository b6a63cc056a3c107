"""The run layer of conditional generation: the guidance of ``conf/guidance``, the labels an evaluation
samples for, and the noise-conditional classifier's runs and checkpoints.

* ``build_conditioning(cfg, datamodule, net)`` — from ``cfg.guidance``: no guidance (``_target_: null``),
  classifier-free guidance, or classifier guidance with the classifier of ``guidance.classifier_ckpt``
  (loaded and checked: a checkpoint of ``python -m diffusion_lab.train_classifier`` for the same dataset
  and schedule), checked against the data and the model (``config_checks.check_guidance``). The samples
  get class labels when the model is class-conditional or guided: class-balanced, or
  ``guidance.class_label``.
* ``build_classifier_run(cfg)`` — the parts of a classifier run (``conf/train_classifier.yaml``): the
  labelled image dataset, the schedule, the ``NoiseConditionalClassifier`` of ``conf/classifier`` and its
  LightningModule (``lightning.classifier``).

A classifier checkpoint records ``task: noise_classifier`` in its saved config, with the dataset,
schedule and classifier groups that built it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.checkpoints import config_differences, load_checkpoint, state_dict_differences
from diffusion_lab.config_checks import check_guidance, check_values
from diffusion_lab.errors import CheckpointError, ConfigError

#: the saved config's ``task`` of a classifier checkpoint
CLASSIFIER_TASK = "noise_classifier"
#: the dataset keys that say what the data are (not how they are loaded): a classifier must match them
DATASET_IDENTITY = ("_target_", "name", "channels", "image_size", "num_classes", "value_range")


@dataclass
class Conditioning:
    """guidance (None: none); num_classes (None: unconditional samples, no labels); class_label (None:
    class-balanced labels)."""

    guidance: Any = None
    num_classes: int | None = None
    class_label: int | None = None


def _container(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})


def dataset_differences(saved: dict, current: dict) -> list[str]:
    """``dataset.<key>: saved → current`` for the keys that say what the data are (DATASET_IDENTITY)."""
    a, b = saved.get("dataset") or {}, current.get("dataset") or {}
    return [f"dataset.{k}: {a.get(k, '<unset>')} → {b.get(k, '<unset>')}" for k in DATASET_IDENTITY
            if a.get(k, "<unset>") != b.get(k, "<unset>")]


def dataset_name(cfg: Any, choices: dict[str, str] | None = None) -> str:
    """The dataset's name for messages: Hydra's choice, else its ``name`` key, else its class (DigitsDataModule → digits)."""
    if (choices or {}).get("dataset"):
        return choices["dataset"]
    ds = cfg.get("dataset") or {}
    if ds.get("name"):
        return str(ds.get("name"))
    return str(ds.get("_target_", "<dataset>")).split(".")[-1].replace("DataModule", "").lower() or "<dataset>"


def load_noise_classifier(path: Any, cfg: DictConfig | dict, key: str = "guidance.classifier_ckpt") -> torch.nn.Module:
    """The classifier of a ``train_classifier`` checkpoint, in eval mode without gradients, after checking that
    it was trained on this run's dataset and schedule (one sentence naming the differing keys otherwise)."""
    if path in (None, "", "???"):
        raise ConfigError(f"{key} is not set; train a classifier with python -m diffusion_lab.train_classifier and "
                          f"pass {key}=outputs/classifier/<run>/checkpoints/last.ckpt.")
    ckpt = load_checkpoint(path)
    saved = ckpt["hyper_parameters"]["config"]
    if saved.get("task") != CLASSIFIER_TASK:
        raise CheckpointError(f"{key}={path} is not a noise-conditional classifier (it has no task: {CLASSIFIER_TASK}); "
                              "give a checkpoint written by python -m diffusion_lab.train_classifier.")
    current = _container(cfg)
    diffs = dataset_differences(saved, current) + config_differences(saved, current, ("schedule",))
    if diffs:
        raise CheckpointError(f"{key}={path} was trained for another dataset or schedule ({'; '.join(diffs[:3])}"
                              f"{'; ...' if len(diffs) > 3 else ''}); train one for this run's data and schedule with "
                              f"python -m diffusion_lab.train_classifier dataset={dataset_name(current)} and this run's schedule.")
    classifier = instantiate(saved["classifier"])
    state = {k[len("classifier."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("classifier.")}
    diffs = state_dict_differences(classifier.state_dict(), state)
    if diffs:
        raise CheckpointError(f"{key}={path} does not match the classifier its config builds ({'; '.join(diffs[:3])}); "
                              "was the classifier code changed since?")
    classifier.load_state_dict(state)
    return classifier.eval().requires_grad_(False)


def build_conditioning(cfg: DictConfig, datamodule: Any, net: Any, choices: dict[str, str] | None = None) -> Conditioning:
    """The guidance and labels of a run (module docstring); ConfigError / CheckpointError for bad input."""
    g = cfg.get("guidance")
    g = _container(g) if g is not None else {}
    target = g.pop("_target_", None)
    class_label = g.get("class_label")
    dataset_classes = getattr(datamodule, "num_classes", None)
    net_classes = getattr(net, "num_classes", None) or None
    kind = None if not target else ("classifier" if target.endswith("ClassifierGuidance") else
                                    "cfg" if target.endswith("ClassifierFreeGuidance") else target)
    ds_name = dataset_name(cfg, choices)
    common = dict(class_label=class_label, dataset_classes=dataset_classes, net_classes=net_classes,
                  p_uncond=float(cfg.get("p_uncond") or 0.0), dataset_name=ds_name)
    if kind is None:
        check_guidance(None, **common)
        return Conditioning(None, dataset_classes if net_classes else None, class_label)
    if kind not in ("cfg", "classifier"):
        raise ConfigError(f"guidance._target_={target} is not a guidance of diffusion_lab.guidance; choose guidance=none, "
                          "cfg or classifier.")
    try:
        if kind == "classifier":
            classifier = load_noise_classifier(g.pop("classifier_ckpt", None), cfg)
            check_guidance(kind, null_label=bool(g.get("null_label", False)),
                           classifier_classes=getattr(classifier, "num_classes", None), **common)
            guidance = instantiate({"_target_": target, **g}, classifier=classifier)
        else:
            check_guidance(kind, **common)
            guidance = instantiate({"_target_": target, **g})
    except Exception as e:  # a constructor's complaint (a bad value or an unknown key) is one sentence
        cause = e.__cause__ if e.__cause__ is not None else e
        if isinstance(e, (ConfigError, CheckpointError)):
            raise
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"guidance: {str(cause).strip().splitlines()[0]}") from None
        raise
    return Conditioning(guidance, dataset_classes, class_label)


# ------------------------------------------------------------------------------------------ classifier runs
@dataclass
class ClassifierRun:
    datamodule: Any
    schedule: Any
    classifier: torch.nn.Module
    module: Any


def build_classifier_run(cfg: DictConfig, choices: dict[str, str] | None = None) -> ClassifierRun:
    """The parts of ``python -m diffusion_lab.train_classifier`` (module docstring), checked before any work."""
    from diffusion_lab.lightning.classifier import NoiseClassifierModule
    from diffusion_lab.runs import instantiate_group

    check_values(cfg)
    ds_name = dataset_name(cfg, choices)
    ds = cfg.get("dataset")
    if ds is None or ds.get("num_classes") is None:
        raise ConfigError(f"the noise-conditional classifier needs class labels, but dataset={ds_name} has none; use a "
                          "labelled dataset (digits, mnist, fashion_mnist, cifar10).")
    if "image_size" not in ds:
        raise ConfigError(f"the noise-conditional classifier is an image network, but dataset={ds_name} gives vectors; "
                          "use an image dataset.")
    datamodule = instantiate_group(cfg, "dataset")
    schedule = instantiate_group(cfg, "schedule")
    classifier = instantiate_group(cfg, "classifier")
    if getattr(classifier, "num_classes", None) != datamodule.num_classes:
        raise ConfigError(f"classifier.num_classes={getattr(classifier, 'num_classes', None)} but dataset={ds_name} has "
                          f"{datamodule.num_classes} classes; set classifier.num_classes=${{dataset.num_classes}}.")
    shape = tuple(datamodule.data_shape)
    if (getattr(classifier, "in_channels", shape[0]), getattr(classifier, "image_size", shape[-1])) != (shape[0], shape[-1]):
        raise ConfigError(f"classifier.in_channels={classifier.in_channels}, classifier.image_size={classifier.image_size} "
                          f"do not match dataset={ds_name}'s images {shape}; set them to ${{dataset.channels}} and "
                          "${dataset.image_size}.")
    config = {**OmegaConf.to_container(cfg, resolve=True), "task": CLASSIFIER_TASK}
    try:
        module = NoiseClassifierModule(classifier, schedule, optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
                                       levels=cfg.accuracy_levels, out_dir=str(cfg.run_dir), config=config, seed=cfg.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return ClassifierRun(datamodule, schedule, classifier, module)
