"""The configuration tree: the default composes, every file of every group instantiates the class its
``_target_`` names with the file's values, and a value set on the command line reaches the object."""

from __future__ import annotations

import pytest
import torch
import yaml
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from conftest import CONF

INSTANTIATED_GROUPS = ["dataset", "schedule", "parameterization", "loss", "model", "sampler", "evaluation", "trainer", "logger"]


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _value_of(obj, key: str):
    """The object's value for a config key: an attribute, or a sampler option."""
    if hasattr(obj, key):
        return getattr(obj, key)
    return getattr(obj, "options", {}).get(key, getattr(obj, "hparams", {}).get(key, KeyError))


def test_default_config_composes(compose_cfg):
    cfg = compose_cfg()
    for group in INSTANTIATED_GROUPS + ["callbacks"]:
        assert group in cfg, f"default config lacks group {group}"
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.sampler.name == "unipc_2" and cfg.trainer.max_steps == -1 and cfg.trainer.max_time is None


@pytest.mark.parametrize("group,choice", [(g, c) for g in INSTANTIATED_GROUPS for c in _choices(g)])
def test_every_group_file_instantiates_its_target_with_its_values(compose_cfg, group, choice):
    if (group, choice) == ("dataset", "pairs"):
        pytest.skip("dataset=pairs needs a folder of reflow pairs: tests/test_flows_reflow.py makes one and trains on it")
    cfg = compose_cfg([f"{group}={choice}"])
    node = cfg[group]
    if group == "logger" and node.get("_target_") is None:
        return  # logger=none
    target = get_class(node._target_)
    if group == "trainer":
        if node.accelerator not in ("auto", "cpu"):  # gpu / ddp trainers need a GPU: check they resolve
            assert OmegaConf.to_container(node, resolve=True)["_target_"] == "pytorch_lightning.Trainer"
            return
        obj = instantiate(node, logger=False, enable_checkpointing=False, callbacks=[])
        assert obj.max_epochs == node.max_epochs and obj.gradient_clip_val == node.gradient_clip_val
        return
    if group == "model":
        with torch.device("meta"):  # shapes and counts only: no memory for 296M parameters
            obj = instantiate(node)
    else:
        obj = instantiate(node)
    assert isinstance(obj, target)
    # every plain value of the file that the object keeps under the same name has the file's value
    raw = yaml.safe_load((CONF / group / f"{choice}.yaml").read_text()) or {}
    resolved = OmegaConf.to_container(node, resolve=True)
    checked = 0
    # documented transformations: null means "the default", a learned-variance model has 2x the channels,
    # the logger classes are Lightning's (their attributes have their own meanings)
    skip = {"out_channels"} if raw.get("learned_variance") else set()
    for key, value in ([] if group == "logger" else raw.items()):
        if key.startswith("_") or value is None or isinstance(value, (dict, list)) or key not in resolved or key in skip:
            continue
        got = _value_of(obj, key)
        if got is KeyError or callable(got):
            continue
        expect = resolved[key]
        if isinstance(got, (tuple, list)):
            got = list(got)
        assert got == expect or (isinstance(got, float) and got == pytest.approx(expect)), (key, got, expect)
        checked += 1
    if group in ("sampler", "dataset"):
        assert checked >= 1, f"no value of {group}={choice} could be checked on the object"


def test_callbacks_instantiate(compose_cfg):
    cfg = compose_cfg()
    objs = {k: instantiate(c) for k, c in cfg.callbacks.items()}
    assert objs["checkpoint"].dirpath.endswith("checkpoints") and objs["checkpoint"]._every_n_train_steps == 500


@pytest.mark.parametrize("choice", _choices("experiment") + [f"hp:{c}" for c in _choices("hparams_search")])
def test_experiment_and_search_files_compose(compose_cfg, choice):
    if choice.startswith("hp:"):
        cfg = compose_cfg([f"hparams_search={choice[3:]}"])
    else:
        cfg = compose_cfg([f"experiment={choice}"])
    OmegaConf.to_container(cfg, resolve=True)


def test_launcher_configs_are_valid_yaml():
    for path in (CONF / "hydra" / "launcher").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert "_target_" in data, path


def test_command_line_values_reach_the_objects(build_run):
    cfg, parts, module = build_run(["sampler=ddim", "sampler.steps=7", "optimizer.lr=0.5", "schedule=cosine",
                                    "parameterization=v", "evaluation.n=33", "model.ch=16", "ema.decay=0.9"])
    assert parts.sampler.name == "ddim" and parts.sampler.steps == 7 and parts.sampler.label == "ddim_7"
    assert type(parts.schedule).__name__ == "VPCosineSchedule" and parts.parameterization.kind == "v"
    assert parts.evaluator.n == 33 and parts.evaluator.samplers == [parts.sampler]  # the selected sampler is evaluated
    assert parts.net.encoder.conv_in.out_channels == 16 and module.ema.decay == 0.9
    assert module.configure_optimizers()["optimizer"].defaults["lr"] == 0.5  # (the warm-up scales the current lr)
