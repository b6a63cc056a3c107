"""Conditional generation through the run layer: label dropout in the training step, class-balanced labels
reaching the network (CFG's null label in the same call), the conditional metrics (accuracy, precision,
recall) on exact examples, a tiny class-conditional run with CFG and bits/dim, the noise-conditional
classifier trained from the command line and used for classifier guidance, guidance sweeps through
``evaluate`` and ``sample``, and bad input in one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import CONF, FAST_TRAIN, SMALL_UNET
from diffusion_lab.errors import CheckpointError, ConfigError
from diffusion_lab.evaluation import Evaluator, rank_labels
from diffusion_lab.guidance import NULL_LABEL
from diffusion_lab.metrics.fid import ImageMetrics
from diffusion_lab.metrics.precision_recall import knn_radii, precision_recall
from diffusion_lab.samplers import Sampler

CFG_RUN = ["experiment=digits_cfg", *SMALL_UNET]
TINY_LIKELIHOOD = ["evaluation.likelihood.n=8", "evaluation.likelihood.rtol=1e-3", "evaluation.likelihood.atol=1e-3"]


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


# ------------------------------------------------------------------------------------- metrics
def test_precision_and_recall_on_a_hand_computed_example():
    """k = 1: real points 0..9 have radius 1; fake 0.5 lies in a real ball, 20 does not → precision ½; the
    fake balls have radius 19.5 and cover every real point → recall 1. The same set against itself: (1, 1)."""
    real = torch.arange(10, dtype=torch.float64)[:, None]
    fake = torch.tensor([[0.5], [20.0]], dtype=torch.float64)
    torch.testing.assert_close(knn_radii(real, 1), torch.ones(10, dtype=torch.float64))
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    far = real + 100
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    with pytest.raises(ValueError, match="k=3 for 3 samples"):
        knn_radii(real[:3], 3)


def test_accuracy_counts_the_asked_class_and_needs_labels():
    m = ImageMetrics(["accuracy", "precision", "recall"], num_features=2, n_fake=4, n_real=10, pr_k=1)
    m.update_real(torch.arange(20, dtype=torch.float64).reshape(10, 2))
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    m.update_fake(torch.zeros(4, 2, dtype=torch.float64), logits, torch.tensor([0, 1, 1, 2]))
    out = m.compute()
    assert out["accuracy"] == pytest.approx(0.5) and set(out) == {"accuracy", "precision", "recall"}
    with pytest.raises(ValueError, match="no class labels"):
        m.update_fake(torch.zeros(1, 2), logits[:1], None)


def test_class_balanced_labels_over_ranks():
    """Sample i of the job has label i mod K whatever the number of ranks; class_label fixes them all."""
    one = rank_labels(25, 0, 1, 10)
    two = torch.cat([rank_labels(25, r, 3, 10) for r in range(3)])
    assert torch.equal(one, torch.arange(25) % 10) and torch.equal(one, two)
    assert rank_labels(5, 1, 2, 10, class_label=7).tolist() == [7, 7]


# ------------------------------------------------------------------------------------- wiring
class LabelSpy(torch.nn.Module):
    """Wraps a network and records the class labels of each call."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.num_classes, self.seen = net, net.num_classes, []

    def forward(self, x, label, class_labels=None):
        self.seen.append(None if class_labels is None else class_labels.detach().cpu().clone())
        return self.inner(x, label, class_labels=class_labels)


def test_label_dropout_sends_the_null_label_in_training_only(build_run):
    _, parts, module = build_run([*CFG_RUN, *FAST_TRAIN, "p_uncond=0.5"])
    spy = LabelSpy(module.net)
    module.train_model.net.net = spy  # the adapter the loss sees
    module.net = spy  # the one validation builds
    x = torch.zeros(256, 1, 8, 8)
    y = torch.arange(256) % 10
    module.training_step((x, y), 0)
    sent = spy.seen[-1]
    dropped = sent == NULL_LABEL
    assert 0.4 < float(dropped.float().mean()) < 0.6 and torch.equal(sent[~dropped], y[~dropped])
    module.validation_step((x, y), 0)  # validation: the real labels
    assert torch.equal(spy.seen[-1], y)


def test_the_evaluation_samples_class_balanced_labels_with_cfg_in_one_call(build_run, tmp_path, monkeypatch):
    from diffusion_lab.evaluation.suite import Accumulator

    _, parts, module = build_run(CFG_RUN)
    ev = parts.evaluator
    spy = LabelSpy(module.ema.net)
    module.ema.net = spy
    ev.samplers = [Sampler("ddim", steps=2)]
    ev.n, ev.batch_size, ev.suite.metrics_cfg, ev.likelihood = 13, 8, ["accuracy"], None
    fed = []
    monkeypatch.setattr(Accumulator, "feed", lambda self, x, labels=None: fed.append(labels.clone()))
    monkeypatch.setattr(Accumulator, "compute", lambda self: {})
    ev.prepare(parts.datamodule, parts.data_shape)
    with module.sampling() as den:
        (row,) = ev.evaluate(den, 0, 0, tmp_path)
    assert torch.equal(torch.cat(fed), torch.arange(13) % 10)  # the metrics see each batch's own labels
    # two batches (8 + 5) x 2 steps, each call [y; ∅] on the doubled batch
    assert [len(s) for s in spy.seen] == [16, 16, 10, 10] and (row["nfe"], row["passes"]) == (2, 4)
    assert torch.equal(spy.seen[0], torch.cat([torch.arange(8), torch.full((8,), NULL_LABEL)]))
    assert torch.equal(spy.seen[2][:5], torch.tensor([8, 9, 0, 1, 2]))
    assert row["guidance"] == "cfg" and row["guidance_scale"] == 1.0


# ------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def cfg_run(tmp_path_factory):
    """A tiny class-conditional run with label dropout, evaluated with CFG and the likelihood: (run dir, ckpt)."""
    from diffusion_lab.train import run

    out = tmp_path_factory.mktemp("cfg")
    run(_compose("train", [f"run_dir={out}", "name=t", *CFG_RUN, *FAST_TRAIN, "sampler=ddim", "sampler.steps=3",
                           "evaluation.n=20",
                           "evaluation.progress=false", "logger=csv", *TINY_LIKELIHOOD]))
    return out, out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A tiny noise-conditional classifier run on digits, schedule vp: (run dir, ckpt, result)."""
    from diffusion_lab.train_classifier import run

    out = tmp_path_factory.mktemp("classifier")
    res = run(_compose("train_classifier", [f"run_dir={out}", "name=c", "trainer.max_epochs=1",
                                            "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0",
                                            "trainer.enable_progress_bar=false", "logger=csv", "classifier.ch=8",
                                            "accuracy_levels=4"]))
    return out, out / "checkpoints" / "last.ckpt", res


def test_a_conditional_run_reports_accuracy_precision_recall_and_bits_per_dim(cfg_run):
    import csv

    run_dir, ckpt = cfg_run
    rows = list(csv.DictReader(open(run_dir / "eval" / "table.csv")))
    sample_row, ode_row = rows
    assert sample_row["sampler"] == "ddim_3" and sample_row["guidance"] == "cfg"
    assert float(sample_row["passes"]) == 2 * float(sample_row["nfe"]) == 6
    for key in ("fid", "accuracy", "precision", "recall"):
        assert 0 <= float(sample_row[key]) < (1e4 if key == "fid" else 1.0001), key
    assert ode_row["sampler"] == "likelihood_ode" and ode_row["kind"] == "likelihood"
    bpd, nll = float(ode_row["bpd"]), float(ode_row["nll"])
    assert 0 < bpd < 50 and nll == pytest.approx(bpd * 64 * np.log(2)) and float(ode_row["nfe"]) > 10


def test_the_classifier_trains_from_the_command_line_with_accuracy_by_noise_level(classifier_run):
    import csv

    out, ckpt, res = classifier_run
    assert ckpt.is_file()
    rows = list(csv.DictReader(open(out / "eval" / "accuracy_by_noise.csv")))
    assert len(rows) == 4 and all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    t = [float(r["t"]) for r in rows]
    assert t == sorted(t) and t[0] > 0 and t[-1] < 1  # levels inside the schedule's range, increasing noise
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["config"]["task"] == "noise_classifier" and len(saved["accuracy_by_noise"]) == 4


def test_evaluate_sweeps_guidance_scales_for_cfg_and_classifier_guidance(cfg_run, classifier_run, tmp_path, capsys):
    from diffusion_lab.evaluate import run

    _, ckpt = cfg_run
    _, clf, _ = classifier_run
    common = [f"ckpt_path={ckpt}", "evaluation=guidance_sweep", "evaluation.n=10", "evaluation.progress=false",
              "sampler=ddim", "sampler.steps=2", f"out_dir={tmp_path}", "device=cpu"]
    run(_compose("evaluate", [*common, "guidance=cfg", "evaluation.guidance_scales=[0,2]"]))
    run(_compose("evaluate", [*common, "guidance=classifier", f"guidance.classifier_ckpt={clf}",
                              "guidance.null_label=true", "evaluation.guidance_scales=[0,3]"]))
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    got = [(r["sampler"], r["nfe"], r["passes"], r.get("classifier_nfe")) for r in lines]
    assert got == [("ddim_2_cfg0", 2, 2, None), ("ddim_2_cfg2", 2, 4, None),
                   ("ddim_2_classifier0", 2, 2, 0), ("ddim_2_classifier3", 2, 2, 2)]
    assert all("accuracy" in r and "recall" in r for r in lines)


def test_sample_with_cfg_writes_the_labels(cfg_run, tmp_path, capsys):
    from diffusion_lab.sample import run

    _, ckpt = cfg_run
    run(_compose("sample", [f"ckpt_path={ckpt}", "guidance=cfg", "guidance.scale=2", "guidance.class_label=3",
                            "sampler=ddim", "sampler.steps=2", "n=4", "progress=false", f"out_dir={tmp_path}"]))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["nfe"], summary["passes"], summary["guidance_scale"]) == (2, 4, 2.0)
    assert np.load(tmp_path / "ddim_2.npz")["labels"].tolist() == [3, 3, 3, 3]


# ------------------------------------------------------------------------------------- bad input
BAD = [
    ([*SMALL_UNET, "guidance=cfg"], "guidance=cfg needs a class-conditional model trained with label dropout"),
    ([*CFG_RUN, "p_uncond=0"], "needs the null label, but the model was trained with p_uncond=0"),
    ([*CFG_RUN, "guidance.class_label=12"], "guidance.class_label=12 is out of range: dataset=digits has classes 0..9"),
    ([*SMALL_UNET, "p_uncond=0.1"], "p_uncond=0.1 drops class labels, but model=UNet is unconditional"),
    ([*SMALL_UNET, "guidance=classifier"], "guidance.classifier_ckpt is not set"),
    (["dataset=two_moons", "model=mlp", "model.num_classes=null", "guidance=cfg"], "is unlabelled"),
    ([*CFG_RUN, "guidance.scale=-1"], "guidance.scale=-1 must be a number ≥ 0"),
    ([*CFG_RUN, "guidance.interval=[3,1]"], "guidance: guidance.interval=[3, 1] must satisfy 0 ≤ sigma_lo < sigma_hi"),
    ([*SMALL_UNET, "guidance.class_label=2"], "guidance.class_label=2 needs a class-conditional model or a guidance"),
    ([*SMALL_UNET, "evaluation.metrics=[fid,accuracy]"], "has 'accuracy', but the samples have no class labels"),
    ([*SMALL_UNET, "evaluation=guidance_sweep"], "evaluation.guidance_scales is set but there is no guidance"),
    ([*CFG_RUN, "+evaluation.likelihood.bogus=1"], "evaluation.likelihood.bogus is not a likelihood setting"),
    ([*CFG_RUN, "evaluation.likelihood.vlb=true"], "evaluation.likelihood.vlb=true needs a discrete schedule"),
]


@pytest.mark.parametrize("overrides,sentence", BAD, ids=[" ".join(b[0][-2:]) for b in BAD])
def test_bad_guidance_input_is_one_sentence(compose_cfg, overrides, sentence):
    from diffusion_lab.runs import build_parts

    with pytest.raises(ConfigError) as e:
        build_parts(compose_cfg(overrides), choices={})
    assert sentence in str(e.value) and "\n" not in str(e.value)


def test_a_classifier_of_another_schedule_or_dataset_or_kind_is_refused(compose_cfg, cfg_run, classifier_run):
    from diffusion_lab.runs import build_parts

    _, clf, _ = classifier_run
    _, model_ckpt = cfg_run
    guided = [*SMALL_UNET, "guidance=classifier"]
    with pytest.raises(CheckpointError, match=r"was trained for another dataset or schedule \(schedule\._target_"):
        build_parts(compose_cfg([*guided, f"guidance.classifier_ckpt={clf}", "schedule=cosine"]), choices={})
    with pytest.raises(CheckpointError, match=r"another dataset or schedule \(dataset\._target_.*dataset\.image_size: 8 → 28"):
        build_parts(compose_cfg([*guided, f"guidance.classifier_ckpt={clf}", "dataset=fashion_mnist", "model=unet_mnist",
                                 "model.ch=16"]), choices={})
    with pytest.raises(CheckpointError, match="is not a noise-conditional classifier"):
        build_parts(compose_cfg([*guided, f"guidance.classifier_ckpt={model_ckpt}"]), choices={})
    parts = build_parts(compose_cfg([*guided, f"guidance.classifier_ckpt={clf}"]), choices={})  # the matching run: fine
    assert parts.conditioning.guidance.classifier.num_classes == 10


@pytest.mark.parametrize("overrides,sentence", [
    (["dataset=two_moons"], "needs class labels, but dataset=two_moons has none"),
    (["classifier.num_classes=7"], "classifier.num_classes=7 but dataset=digits has 10 classes"),
])
def test_bad_classifier_runs_are_one_sentence(tmp_path, overrides, sentence):
    from diffusion_lab.conditioning import build_classifier_run

    with pytest.raises(ConfigError, match=sentence):
        build_classifier_run(_compose("train_classifier", [f"run_dir={tmp_path}", "name=c", *overrides]))


def test_the_evaluator_refuses_a_guidance_without_classes():
    ev = Evaluator(metrics=[], progress=False)
    with pytest.raises(ValueError, match="guidance needs class labels"):
        ev.set_conditioning(guidance=object(), num_classes=None)
