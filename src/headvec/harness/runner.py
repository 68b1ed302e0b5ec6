"""Run a reward model over a benchmark: :func:`headvec.rewards.runner.run_pairs` with a run manifest.

A run folder holds ``run.json`` (the :class:`RunSettings`) and ``results.jsonl`` (one line per finished
item); rerunning the same command resumes it, and a rerun with other settings is refused. The reward
model is built from its spec (``settings.rm``) with the benchmarks' published judge templates, on this
process or in each Ray worker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from headvec.harness.prompts import TEMPLATES
from headvec.rewards.loading import RMOptions, build_reward_model
from headvec.rewards.pairs import PreferencePair
from headvec.rewards.runner import MANIFEST_NAME, RESULTS_NAME, run_pairs

__all__ = [
    "MANIFEST_NAME",
    "OFFICIAL_PROTOCOL",
    "RESULTS_NAME",
    "RunSettings",
    "official_defaults",
    "reward_model_factory",
    "run_benchmark",
]

# How each benchmark's official script queries a judge: answer order (VL-RewardBench ``inference_hf.py``
# and RewardBench ``run_generative.py`` shuffle each sample at random; Multimodal RewardBench's
# ``1_run_model_as_judge_gpt4o.py`` never swaps), samples per item and sampling. Multimodal RewardBench
# leaves temperature and top_p at the API's defaults, so headvec keeps its greedy default there.
OFFICIAL_PROTOCOL: dict[str, dict[str, Any]] = {
    "vlrewardbench": {"order": "seeded", "k": 10, "temperature": 0.2, "top_p": 0.2, "max_new_tokens": 2048},
    "multimodal-rewardbench": {"order": "stored", "k": 1, "max_new_tokens": 1024},
    "rewardbench": {"order": "seeded", "k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 2048},
}


def official_defaults(benchmark: str, *, sampling: bool = True, **given: Any) -> dict[str, Any]:
    """``given`` settings with each one left as None replaced by the benchmark's official value (so a
    user's explicit choice always wins); keys without an official value stay None. With ``sampling``
    False (a scorer, or a judge on another prompt, which the official numbers say nothing about) only
    the answer order is defaulted."""
    official = OFFICIAL_PROTOCOL.get(benchmark, {})
    if not sampling:
        official = {key: value for key, value in official.items() if key == "order"}
    return {key: official.get(key) if value is None else value for key, value in given.items()}


@dataclass
class RunSettings:
    """What defines a run; a rerun into the same folder must match it (else results would mix)."""

    benchmark: str
    rm: str
    k: int = 1
    seed: int = 0
    source: str | None = None
    split: str | None = None
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    order: str | None = None  # None: the benchmark's official order; "both" / "seeded" for position bias
    prior_sets: str | None = None  # RewardBench's Prior Sets source, when they are part of the run

    def to_dict(self) -> dict[str, Any]:
        settings = asdict(self)
        if settings["prior_sets"] is None:  # runs made without them keep resuming
            del settings["prior_sets"]
        return settings


def reward_model_factory(settings: RunSettings) -> Callable[[], Any]:
    """A picklable builder of the run's reward model (what each Ray worker calls)."""
    return functools.partial(build_reward_model, settings.rm, RMOptions(**settings.options), TEMPLATES)


def run_benchmark(
    items: Sequence[PreferencePair],
    settings: RunSettings,
    out: str | Path,
    *,
    rm: Any = None,
    backend: str = "local",
    workers: int = 1,
    chunk_size: int = 16,
    ray_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict]:
    """Evaluate every unfinished item into ``out/results.jsonl``; return all records by uid.

    ``rm`` is used as given on the local backend; otherwise (and always on Ray, whose workers each build
    their own copy) it is built from ``settings.rm`` with ``settings.options``.
    """
    manifest = settings.to_dict()
    k, seed, order = manifest.pop("k"), manifest.pop("seed"), manifest.pop("order")
    order = order or OFFICIAL_PROTOCOL.get(settings.benchmark, {}).get("order", "seeded")
    records = run_pairs(
        items,
        rm,
        k=k,
        seed=seed,
        order=order,
        out=out,
        manifest=manifest,
        chunk_size=chunk_size,
        backend=backend,
        factory=reward_model_factory(settings),
        workers=workers,
        ray_address=ray_address,
        progress=progress,
    )
    return {record["uid"]: record for record in records}
