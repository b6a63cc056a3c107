"""Bad input gets one sentence: a table of wrong config values, incompatible choices, missing or corrupt
data and checkpoints, unwritable outputs and missing integrations. Each row runs the entry point's own
path in-process (``run_reporting_errors(run, cfg)``, what ``main`` does after Hydra composes): it must
stop with ``SystemExit("error: <one line naming the key or file>")`` — exit status 1, no traceback —
before any training. A genuine bug keeps its traceback."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
import torch

from conftest import CONF, FAST_TRAIN, SMALL_UNET
from diffusion_lab.cli import check_plugins, run_reporting_errors

log = logging.getLogger("test")


def _stops(fn, cfg) -> str:
    """The one-line message an entry point ends with (asserting it ends that way)."""
    with pytest.raises(SystemExit) as e:
        run_reporting_errors(fn, cfg, log)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error: "), msg  # a string code: exit status 1
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _small(overrides: list[str]) -> list[str]:
    """The small UNet, unless another network is chosen."""
    other = any(o.startswith("model=") and not o.startswith("model=unet") for o in overrides)
    return [] if other else SMALL_UNET


def _train(compose_cfg, overrides: list[str]) -> str:
    from diffusion_lab.train import run

    return _stops(run, compose_cfg([*FAST_TRAIN, *_small(overrides), *overrides]))


TRAIN_ROWS = [
    # wrong values, named with their key
    (["optimizer.lr=abc"], "optimizer.lr='abc' must be a number > 0"),
    (["optimizer.lr=-1"], "optimizer.lr=-1 must be a number > 0"),
    (["optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5] must be two numbers in [0, 1)"),
    (["sampler.steps=0"], "sampler.steps=0 must be an integer ≥ 1"),
    (["sampler.steps=-3"], "sampler.steps=-3 must be an integer ≥ 1"),
    (["dataset.batch_size=0"], "dataset.batch_size=0 must be an integer ≥ 1"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 must be an integer ≥ 1 (or -1: no limit)"),
    (["ema.decay=1.5"], "ema.decay=1.5 must be a number in [0, 1)"),
    (["evaluation.n=0"], "evaluation.n=0 must be an integer ≥ 1"),
    (["evaluation.features=vgg"], "evaluation.features='vgg' is not a feature network"),
    (["+evaluation.out_dir=x"], "evaluation.out_dir is not an evaluation setting"),
    (["dataset=two_moons", "model=mlp", "evaluation.n=100000"], "evaluation.n=100000 is more generated vectors"),
    (["evaluation=compare", "evaluation.samplers.ode_heun.steps=0"], "evaluation.samplers[ode_heun_0].steps=0 must be"),
    (["schedule=ve", "schedule.sigma_min=-1"], "schedule"),
    (["+sampler.bogus=1"], "sampler.bogus is not an option of sampler unipc_2; its options are"),
    # incompatible choices
    (["loss=hybrid", "schedule=vp", "model.learned_variance=true"], "needs a discrete schedule"),
    (["loss=hybrid", "schedule=ddpm"], "loss.learned_variance=True but model.learned_variance=False"),
    (["dataset=two_moons"], "model=UNet is an image network but dataset=two_moons gives 2-D vectors"),
    (["model=mlp"], "model=MLP is for low-dimensional vectors but dataset=DigitsDataModule gives images"),
    (["dataset=two_moons", "model=mlp", "model.num_classes=10"], "model.num_classes=10 makes the model class-conditional"),
    (["sampler=ddim", "sampler.grid=trailing"], "sampler.grid=trailing needs a discrete schedule"),
    (["sampler=ddpm", "sampler.variance=learned"], "sampler.variance=learned needs a model with learned variances"),
    (["experiment=pfgm_digits", "noise=pfgmpp"], "would replace the prior of schedule=pfgm"),
    (["experiment=pfgmpp_digits", "guidance=classifier", "guidance.classifier_ckpt=x.ckpt"],
     "guidance=classifier adds a classifier's gradient to a Gaussian score"),
    (["parameterization=x0", "sampler=pc", "schedule=rectified_flow", "loss=rectified_flow"], None),  # valid: trains
]


@pytest.mark.parametrize("overrides,sentence", TRAIN_ROWS, ids=[" ".join(r[0]) for r in TRAIN_ROWS])
def test_bad_training_config_stops_before_training_with_one_sentence(compose_cfg, tmp_path, overrides, sentence):
    if sentence is None:  # a control row: the same path runs when nothing is wrong
        from diffusion_lab.train import run

        run(compose_cfg([*FAST_TRAIN, *_small(overrides), "trainer.max_steps=1", "~evaluation", *overrides]))
        return
    msg = _train(compose_cfg, overrides)
    assert sentence in msg, msg
    assert not (tmp_path / "checkpoints").exists()


def test_missing_dataset_names_the_folder(compose_cfg, tmp_path):
    msg = _train(compose_cfg, ["dataset=mnist", f"dataset.data_dir={tmp_path / 'nowhere'}", "model=unet_mnist"])
    assert "dataset=mnist: no data found under" in msg and "dataset.data_dir" in msg


def test_corrupt_image_in_a_folder_is_named_before_training_or_skipped(compose_cfg, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (12, 12), (40 * i, 10, 200)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    common = ["dataset=image_folder", f"dataset.data_dir={tmp_path / 'imgs'}", "dataset.image_size=8",
              "dataset.batch_size=2", "dataset.num_workers=0", "dataset.val_fraction=0.2", "model=unet_digits",
              "model.in_channels=3", "model.out_channels=3", "model.image_size=8", "trainer.max_steps=1", "~evaluation"]
    msg = _train(compose_cfg, common)
    assert "1 of 7 files cannot be read as images" in msg and "broken.png" in msg and "dataset.skip_corrupt=true" in msg
    assert not (tmp_path / "checkpoints").exists()
    from diffusion_lab.train import run

    out = run(compose_cfg([*FAST_TRAIN, *SMALL_UNET, *common, "dataset.skip_corrupt=true"]))
    assert out["trainer"].global_step == 1 and len(out["parts"].datamodule.train_set) + len(out["parts"].datamodule.val_set) == 6


def test_unwritable_output_and_full_disk_are_one_sentence(compose_cfg, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = compose_cfg([*FAST_TRAIN, *SMALL_UNET])
    cfg.run_dir = str(blocker / "run")
    from diffusion_lab.train import run

    msg = _stops(run, cfg)
    assert f"cannot write {blocker / 'run' / 'config.yaml'}" in msg and "set hydra.run.dir" in msg

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    msg = _stops(run, compose_cfg([*FAST_TRAIN, *SMALL_UNET]))
    assert "(the disk is full)" in msg


def test_wandb_without_credentials_suggests_offline(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    msg = _train(compose_cfg, ["logger=wandb"])
    assert "logger=wandb needs a W&B login" in msg and "WANDB_MODE=offline" in msg


def test_missing_launcher_plugin_is_one_sentence(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_submitit") else real(name, *a))
    with pytest.raises(SystemExit, match="hydra/launcher=slurm needs the hydra-submitit-launcher plugin"):
        check_plugins(["-m", "hydra/launcher=slurm", "trainer=ddp"])
    check_plugins(["-m", "sampler=ddim,heun"])  # nothing to check


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_reporting_errors(lambda cfg: 1 / 0, None, log)
    with pytest.raises(KeyError):  # not a user error, even if it looks like one
        run_reporting_errors(lambda cfg: {}["x"], None, log)


# ------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from diffusion_lab.train import run

    out = tmp_path_factory.mktemp("ckpt_run")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"run_dir={out}", "name=t", *FAST_TRAIN, *SMALL_UNET,
                                                      "trainer.max_steps=2", "~evaluation"])
    run(cfg)
    return out / "checkpoints" / "last.ckpt"


def test_resuming_another_architecture_or_schedule_names_the_keys(compose_cfg, tiny_ckpt):
    msg = _train(compose_cfg, [f"ckpt_path={tiny_ckpt}", "model.ch=8"])
    assert "was trained with other settings (model.ch: 16 → 8)" in msg and "finetune=true" in msg
    msg = _train(compose_cfg, [f"ckpt_path={tiny_ckpt}", "parameterization=v"])
    assert "(parameterization.kind: eps → v)" in msg
    msg = _train(compose_cfg, [f"ckpt_path={tiny_ckpt}", "schedule=cosine"])
    assert "schedule._target_: diffusion_lab.schedules.VPLinearSchedule → diffusion_lab.schedules.VPCosineSchedule" in msg
    msg = _train(compose_cfg, [f"ckpt_path={tiny_ckpt}", "model.ch=8", "finetune=true"])
    assert "does not fit this network" in msg and "shape" in msg


def test_finetune_starts_a_new_run_from_the_weights(compose_cfg, tiny_ckpt):
    from diffusion_lab.checkpoints import load_checkpoint
    from diffusion_lab.train import run

    cfg = compose_cfg([*FAST_TRAIN, *SMALL_UNET, f"ckpt_path={tiny_ckpt}", "parameterization=v", "finetune=true",
                       "trainer.max_steps=1", "optimizer.lr=1e-30", "~evaluation"])
    out = run(cfg)
    assert out["trainer"].global_step == 1  # a new run: step 0 + 1, not the checkpoint's 2 + 1
    saved = load_checkpoint(tiny_ckpt)["state_dict"]
    got = out["module"].state_dict()
    assert torch.allclose(got["ema.net.out.weight"], saved["ema.net.out.weight"], atol=1e-6) if "ema.net.out.weight" in saved else True
    k = next(k for k in saved if k.startswith("net.") and saved[k].is_floating_point() and saved[k].numel() > 10)
    assert torch.allclose(got[k], saved[k], atol=1e-6)  # lr 1e-30: the weights are the checkpoint's


@pytest.mark.parametrize("which", ["directory", "missing", "last", "corrupt"])
def test_bad_ckpt_path_is_one_sentence(compose_cfg, tmp_path, which):
    path = {"directory": str(tmp_path), "missing": str(tmp_path / "nope.ckpt"), "last": "last",
            "corrupt": str(tmp_path / "bad.ckpt")}[which]
    if which == "corrupt":
        Path(path).write_bytes(b"\x00" * 100)
    msg = _train(compose_cfg, [f"ckpt_path={path}"])
    expect = {"directory": "is a directory; give a checkpoint file inside it", "missing": "no checkpoint at",
              "last": "ckpt_path=last: no checkpoint at", "corrupt": "cannot be read"}[which]
    assert expect in msg, msg


# ------------------------------------------------------------------------------------- sample / evaluate
def _entry_cfg(name: str, tmp_path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=[f"out_dir={tmp_path}", *overrides])


def test_sample_and_evaluate_bad_input(tmp_path, tiny_ckpt):
    from diffusion_lab.evaluate import run as evaluate
    from diffusion_lab.sample import run as sample

    assert "ckpt_path is not set" in _stops(sample, _entry_cfg("sample", tmp_path, []))
    assert "ckpt_path is not set" in _stops(evaluate, _entry_cfg("evaluate", tmp_path, []))
    msg = _stops(evaluate, _entry_cfg("evaluate", tmp_path, [f"ckpt_path={tiny_ckpt}", "+sampler.steps=5"]))
    assert "sampler.steps set without a sampler: choose one with sampler=<name>" in msg
    msg = _stops(sample, _entry_cfg("sample", tmp_path, [f"ckpt_path={tiny_ckpt}", "n=0"]))
    assert "n=0 must be a positive integer" in msg
    if not torch.cuda.is_available():
        msg = _stops(sample, _entry_cfg("sample", tmp_path, [f"ckpt_path={tiny_ckpt}", "device=cuda"]))
        assert "device=cuda but CUDA is not available here" in msg
    msg = _stops(evaluate, _entry_cfg("evaluate", tmp_path, [f"ckpt_path={tiny_ckpt}", "sampler=ddim",
                                                             "sampler.grid=trailing"]))
    assert "sampler.grid=trailing needs a discrete schedule" in msg
