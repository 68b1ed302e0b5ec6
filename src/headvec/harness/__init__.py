"""Reward-model benchmarks (VL-RewardBench, Multimodal RewardBench, RewardBench) for any scorer or judge.

What is benchmark-specific lives here: the loaders (:func:`load_benchmark`), the published judge
prompts (:mod:`headvec.harness.prompts`), the official metrics (:func:`benchmark_metrics`) and the
reports (:func:`write_report`). The reward models, their spec registry and the runner are
:mod:`headvec.rewards`; :func:`run_benchmark` runs one with a resumable run folder.
"""

from headvec.harness.metrics import benchmark_metrics
from headvec.harness.prompts import DEFAULT_TEMPLATE, TEMPLATES, get_template
from headvec.harness.report import write_report
from headvec.harness.runner import RunSettings, run_benchmark
from headvec.harness.schema import BENCHMARKS, load_benchmark

__all__ = [
    "BENCHMARKS",
    "DEFAULT_TEMPLATE",
    "TEMPLATES",
    "RunSettings",
    "benchmark_metrics",
    "get_template",
    "load_benchmark",
    "run_benchmark",
    "write_report",
]
