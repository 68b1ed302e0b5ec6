"""Reward-model benchmarks (VL-RewardBench, Multimodal RewardBench, RewardBench) for any RewardModel.

Load a benchmark into pair items (:func:`load_benchmark`), build a reward model from a spec
(:func:`build_reward_model`), run it resumably (:func:`run_benchmark`) and write the report
(:func:`write_report`). Reward-model modules plug in with :func:`register_artifact_loader`.
"""

from headvec.harness.best_of_n import BestOfN, best_of_n, best_of_n_accuracy
from headvec.harness.metrics import benchmark_metrics
from headvec.harness.registry import (
    ARTIFACT_LOADERS,
    RM_LOADERS,
    RMOptions,
    build_reward_model,
    register_artifact_loader,
    register_rm_loader,
)
from headvec.harness.report import write_report
from headvec.harness.runner import RunSettings, run_benchmark
from headvec.harness.schema import BENCHMARKS, PairItem, load_benchmark

__all__ = [
    "ARTIFACT_LOADERS",
    "BENCHMARKS",
    "RM_LOADERS",
    "BestOfN",
    "PairItem",
    "RMOptions",
    "RunSettings",
    "benchmark_metrics",
    "best_of_n",
    "best_of_n_accuracy",
    "build_reward_model",
    "load_benchmark",
    "register_artifact_loader",
    "register_rm_loader",
    "run_benchmark",
    "write_report",
]
