"""Evaluation without Lightning: seeded, sharded generation (``generation``), the metrics a dataset gets
(``suite``), the likelihood rows (``likelihood``), the comparison table (``table``) and the evaluator that runs samplers × metrics
(``evaluator``). The training callback (``diffusion_lab.lightning.evaluation``) and
``python -m diffusion_lab.evaluate`` both drive ``Evaluator``."""

from diffusion_lab.evaluation.evaluator import Evaluator, as_samplers, epoch_of_step
from diffusion_lab.evaluation.generation import (SAMPLER_NOISE_OFFSET, GeneratedSamples, generate_samples, rank_labels,
                                                rank_share)
from diffusion_lab.evaluation.likelihood import LikelihoodEvaluation
from diffusion_lab.evaluation.suite import MAX_LOWDIM_SAMPLES, MetricSuite
from diffusion_lab.evaluation.table import EvalTable

__all__ = ["Evaluator", "as_samplers", "epoch_of_step", "SAMPLER_NOISE_OFFSET", "GeneratedSamples", "generate_samples", "rank_share",
           "rank_labels", "LikelihoodEvaluation", "MAX_LOWDIM_SAMPLES", "MetricSuite", "EvalTable"]
