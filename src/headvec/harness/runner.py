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

__all__ = ["MANIFEST_NAME", "RESULTS_NAME", "RunSettings", "reward_model_factory", "run_benchmark"]


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    k, seed = manifest.pop("k"), manifest.pop("seed")
    records = run_pairs(
        items,
        rm,
        k=k,
        seed=seed,
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
