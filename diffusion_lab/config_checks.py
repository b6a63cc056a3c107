"""Start-up validation: an incompatible choice stops the run before any training (or sampling), with
one sentence that names the config keys and the fix. Two stages, each rule in exactly one of them:

* ``check_values``: every numeric value's type and range, with the key named (``optimizer.lr=abc``
  would otherwise end in a traceback from the optimizer, ``sampler.steps=0`` only when sampling);
* ``check_config``: what the composed config decides before anything is built (an image network on
  vectors would otherwise end in an interpolation error, a class-conditional model on unlabelled
  data in a shape error);
* ``check_components``: what needs the built objects (the loss against the schedule and
  parameterization, learned variances, each evaluated sampler against the model, network against
  data shape).

The run layer (``diffusion_lab.runs.build_parts``) calls both, once per entry point; ``check_guidance``
checks the guidance of ``conf/guidance`` against the model and the data (``diffusion_lab.conditioning``).
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from diffusion_lab.errors import ConfigError

__all__ = ["ConfigError", "check_values", "check_config", "check_components", "check_sampler", "check_guidance"]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: key → (test, what it must be); checked where the key exists and is not null (null = "off"/"default")
VALUE_RULES: dict[str, tuple[Any, str]] = {
    "seed": (lambda v: _integer(v) and v >= 0, "an integer ≥ 0"),
    "optimizer.name": (lambda v: v in ("adam", "adamw"), "adam or adamw"),
    "optimizer.lr": (lambda v: _number(v) and v > 0, "a number > 0, e.g. 2e-4"),
    "optimizer.eps": (lambda v: _number(v) and v > 0, "a number > 0"),
    "optimizer.weight_decay": (lambda v: _number(v) and v >= 0, "a number ≥ 0"),
    "optimizer.warmup_steps": (lambda v: _integer(v) and v >= 0, "an integer ≥ 0"),
    "optimizer.betas": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
                        "two numbers in [0, 1), e.g. [0.9,0.999]"),
    "ema.decay": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1), e.g. 0.999"),
    "ema.half_life_images": (lambda v: _number(v) and v > 0, "a number of images > 0"),
    "ema.ramp_up": (lambda v: _number(v) and v > 0, "a number > 0, e.g. 0.05"),
    "dataset.batch_size": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
    "dataset.num_workers": (lambda v: _integer(v) and v >= 0, "an integer ≥ 0"),
    "dataset.val_fraction": (lambda v: _number(v) and 0 <= v < 1, "a fraction in [0, 1)"),
    "dataset.test_fraction": (lambda v: _number(v) and 0 <= v < 1, "a fraction in [0, 1)"),
    "dataset.n_train": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
    "dataset.n_val": (lambda v: _integer(v) and v >= 0, "an integer ≥ 0"),
    "sampler.steps": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
    "p_uncond": (lambda v: _number(v) and 0 <= v < 1, "a probability in [0, 1), e.g. 0.1"),
    "guidance.scale": (lambda v: _number(v) and v >= 0, "a number ≥ 0"),
    "guidance.class_label": (lambda v: _integer(v) and v >= 0, "a class index ≥ 0 (or null: class-balanced)"),
    "trainer.max_epochs": (lambda v: _integer(v) and (v >= 1 or v == -1), "an integer ≥ 1 (or -1: no limit)"),
    "trainer.max_steps": (lambda v: _integer(v) and (v >= 1 or v == -1), "an integer ≥ 1 (or -1: no limit)"),
    "trainer.gradient_clip_val": (lambda v: _number(v) and v > 0, "a number > 0 (or null: no clipping)"),
    "trainer.accumulate_grad_batches": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
    "trainer.log_every_n_steps": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
    "trainer.check_val_every_n_epoch": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
    "trainer.limit_train_batches": (lambda v: _number(v) and (0 < v <= 1 or (_integer(v) and v >= 1)),
                                    "a fraction in (0, 1] or a number of batches ≥ 1"),
    "callbacks.checkpoint.every_n_train_steps": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
}


def check_values(cfg: Any) -> None:
    """Each numeric value of ``VALUE_RULES`` present in the config has the right type and range."""
    from omegaconf import OmegaConf

    for key, (ok, what) in VALUE_RULES.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not ok(value):
            raise ConfigError(f"{key}={value!r} must be {what}.")


def check_config(cfg: Any, choices: dict[str, str] | None = None) -> None:
    """Checks on the composed config itself; ``choices`` maps each group to its chosen file (Hydra's
    runtime choices), for the messages."""
    check_values(cfg)
    choices = choices or {}
    ds, model = cfg.get("dataset"), cfg.get("model")
    if ds is None or model is None:
        raise ConfigError("the config needs a dataset and a model group; add dataset=... and model=....")
    ds_name = choices.get("dataset") or ds.get("name") or str(ds.get("_target_", "dataset")).rsplit(".", 1)[-1]
    model_name = choices.get("model") or str(model.get("_target_", "model")).rsplit(".", 1)[-1]
    is_image_data = "image_size" in ds
    model_target = str(model.get("_target_", ""))
    if model_target.endswith("UNet") and not is_image_data:
        raise ConfigError(
            f"model={model_name} is an image network but dataset={ds_name} gives {ds.get('dim', 'low')}-D vectors; "
            "use model=mlp for low-dimensional data."
        )
    if model_target.endswith("MLP") and is_image_data:
        raise ConfigError(
            f"model={model_name} is for low-dimensional vectors but dataset={ds_name} gives images; use a UNet model "
            "(e.g. model=unet_digits)."
        )
    if model.get("num_classes") and ds.get("num_classes") is None:
        raise ConfigError(
            f"model.num_classes={model.get('num_classes')} makes the model class-conditional, but dataset={ds_name} has no "
            "labels; set model.num_classes=null or use a labelled dataset."
        )
    if (cfg.get("p_uncond") or 0) > 0 and not model.get("num_classes"):
        raise ConfigError(
            f"p_uncond={cfg.get('p_uncond')} drops class labels, but model={model_name} is unconditional; set "
            f"model.num_classes={ds.get('num_classes') or '<K>'} (a class-conditional model) or p_uncond=0."
        )


def check_sampler(sampler: Any, schedule: Any, parameterization: Any, key: str = "sampler") -> None:
    """One sampler against the model it will sample (``key`` names it in the message)."""
    if not _integer(sampler.steps) or sampler.steps < 1:
        raise ConfigError(f"{key}.steps={sampler.steps} must be an integer ≥ 1.")
    params = inspect.signature(sampler.spec.fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        options = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
                   and n not in ("generator", "progress")]
        for name in sampler.options:
            if name not in options:
                raise ConfigError(f"{key}.{name} is not an option of sampler {sampler.name}; its options are "
                                  f"{', '.join(options) or 'none'} (and steps, grid, rho, denoise_last, visit_t_min, label).")
    if sampler.spec.needs_score and not getattr(parameterization, "gives_score", True):
        raise ConfigError(
            f"{key}={sampler.name} needs the score, but parameterization={parameterization.kind} cannot give one; "
            "choose an ODE sampler."
        )
    if getattr(schedule, "process", None) is not None and sampler.name != "forward_process":
        raise ConfigError(f"{key}={sampler.name} integrates a Gaussian model, but schedule={type(schedule).__name__} is a "
                          "general forward process; use sampler=forward_process.")
    if getattr(schedule, "discrete", False) and sampler.options.get("update", "corrected") not in ("posterior", "naive"):
        raise ConfigError(f"{key}.update={sampler.options.get('update', 'corrected')} is for continuous processes; "
                          f"schedule={schedule.kind} is discrete: use {key}.update=posterior or naive.")
    if hasattr(sampler, "check_noise"):
        sampler.check_noise(schedule, key)  # PFGM++ noise: ODE samplers only
    if sampler.grid in ("linspace", "leading", "trailing") and getattr(schedule, "num_timesteps", None) is None:
        raise ConfigError(
            f"{key}.grid={sampler.grid} needs a discrete schedule, but schedule={type(schedule).__name__} is "
            "continuous; use grid=uniform, lambda, quadratic or karras."
        )


def check_components(*, schedule: Any, parameterization: Any, loss: Any, net: Any, data_shape: tuple[int, ...],
                     samplers: Sequence[Any] = (), sampler_keys: Sequence[str] | None = None) -> None:
    """Raise ConfigError for the first incompatible combination among the built parts."""
    try:
        loss.validate(schedule, parameterization)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    learned = bool(getattr(loss, "learned_variance", False))
    net_learned = bool(getattr(net, "learned_variance", False))
    if learned != net_learned:
        raise ConfigError(
            f"loss.learned_variance={learned} but model.learned_variance={net_learned}: a loss with learned variances "
            "needs a network with the extra output channels; set model.learned_variance to match."
        )
    keys = list(sampler_keys or ["sampler"] * len(samplers))
    for sampler, key in zip(samplers, keys):
        check_sampler(sampler, schedule, parameterization, key)
        if sampler.options.get("variance") == "learned" and not net_learned:
            raise ConfigError(f"{key}.variance=learned needs a model with learned variances (model.learned_variance=true "
                              "and loss=hybrid or vlb); use variance=small or large.")
    image_net = getattr(net, "image_size", None) is not None
    if image_net and (getattr(net, "in_channels", data_shape[0]) != data_shape[0]
                      or getattr(net, "image_size", data_shape[-1]) != data_shape[-1]):
        raise ConfigError(
            f"model.in_channels={getattr(net, 'in_channels', None)}, model.image_size={getattr(net, 'image_size', None)} "
            f"do not match the dataset's images {data_shape}; set them to ${{dataset.channels}} and ${{dataset.image_size}}."
        )


def check_guidance(kind: str | None, *, class_label: int | None, dataset_classes: int | None, net_classes: int | None,
                   p_uncond: float, null_label: bool = False, classifier_classes: int | None = None,
                   dataset_name: str = "<dataset>") -> None:
    """The guidance of ``conf/guidance`` (kind 'cfg', 'classifier' or None) against the data and the model."""
    if kind is not None and not dataset_classes:
        raise ConfigError(f"guidance={kind} needs class labels, but dataset={dataset_name} is unlabelled; use a labelled "
                          "dataset or guidance=none.")
    if kind == "cfg" and not net_classes:
        raise ConfigError("guidance=cfg needs a class-conditional model trained with label dropout (model.num_classes="
                          f"{dataset_classes} and p_uncond=0.1 when training); an unconditional model takes "
                          "guidance=classifier.")
    if (kind == "cfg" or (kind == "classifier" and null_label and net_classes)) and not p_uncond > 0:
        raise ConfigError(f"guidance={kind}{' with guidance.null_label=true' if kind == 'classifier' else ''} needs the "
                          "null label, but the model was trained with p_uncond=0 (no label dropout); train with "
                          "p_uncond=0.1, or use guidance=none for its conditional samples.")
    if classifier_classes is not None and dataset_classes and classifier_classes != dataset_classes:
        raise ConfigError(f"guidance.classifier_ckpt has {classifier_classes} classes but dataset={dataset_name} has "
                          f"{dataset_classes}; train the classifier on this dataset.")
    if class_label is not None:
        if kind is None and not net_classes:
            raise ConfigError(f"guidance.class_label={class_label} needs a class-conditional model or a guidance "
                              "(guidance=classifier for an unconditional model).")
        if not 0 <= class_label < int(dataset_classes or 0):
            raise ConfigError(f"guidance.class_label={class_label} is out of range: dataset={dataset_name} has classes "
                              f"0..{int(dataset_classes or 0) - 1}.")
