"""Run a reward model over a benchmark: resumable, seeded, on this process or spread over Ray.

Every finished item is one JSON line appended to ``results.jsonl`` with a single write and an fsync, so a
``kill -9`` at any point loses at most the item being written (its partial line is cut off on the next
start) and a rerun skips every uid already there: nothing finished is lost, nothing is duplicated.

Sample ``j`` of an item shows the two responses in an order drawn from ``(seed, uid, j)`` alone, and gets
its sampling seed the same way, so results do not depend on which worker, backend or resume evaluated it.
Items are cut into the same chunks (by position in the benchmark) on every backend, so batched local
judges see the same batches too.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from headvec.errors import DataError, HeadvecError
from headvec.harness.metrics import sample_outcome
from headvec.harness.schema import PairItem

RESULTS_NAME = "results.jsonl"
MANIFEST_NAME = "run.json"
RAW_LIMIT = 8000  # judge outputs are kept for audits, cut to this many characters


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


def sample_plan(seed: int, uid: str, sample: int) -> tuple[bool, int]:
    """(swap the display order?, sampling seed) for one sample; string-seeded, so the same everywhere."""
    rng = random.Random(f"headvec-bench/{seed}/{uid}/{sample}")
    return rng.random() < 0.5, rng.getrandbits(31)


def evaluate_items(rm: Any, items: Sequence[PairItem], k: int, seed: int) -> list[dict]:
    """Judge every item ``k`` times (each sample with its own seeded order) and return the records."""
    from headvec.harness.judge import CompareRequest

    requests, plans = [], []
    for item in items:
        image = item.image()
        for j in range(k):
            swap, sample_seed = sample_plan(seed, item.uid, j)
            a, b = (item.responses[1], item.responses[0]) if swap else item.responses
            requests.append(CompareRequest(item.prompt, a, b, image, sample_seed))
            plans.append((swap, sample_seed))
    if hasattr(rm, "compare_batch"):
        preferences = rm.compare_batch(requests)
    else:
        preferences = [rm.compare(r.prompt, r.a, r.b, r.image) for r in requests]
    records = []
    for index, item in enumerate(items):
        samples = []
        for j in range(k):
            swap, sample_seed = plans[index * k + j]
            pref = preferences[index * k + j]
            samples.append(
                {
                    "sample": j,
                    "swap": swap,
                    "seed": sample_seed,
                    "choice": pref.choice,
                    "outcome": sample_outcome(item.better, swap, pref.choice),
                    "scores": list(pref.scores) if pref.scores is not None else None,
                    "raw": pref.raw[:RAW_LIMIT] if pref.raw is not None else None,
                }
            )
        records.append(
            {
                "uid": item.uid,
                "id": item.id,
                "category": item.category,
                "subset": item.subset,
                "better": item.better,
                "samples": samples,
            }
        )
    return records


class ResultsFile:
    """Append-only JSONL of finished items, safe against kill -9 (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, dict]:
        """Finished records by uid, after cutting off a partial last line left by a killed run."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
            data = data[:keep]
        records: dict[str, dict] = {}
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(
                    f"{self.path} line {number} is not valid JSON; delete that line and rerun to redo "
                    "the item"
                ) from None
            records.setdefault(record["uid"], record)
        return records

    def append(self, records: Sequence[dict]) -> None:
        """Write each record as one line and fsync before returning."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for record in records:
                data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
        finally:
            os.close(fd)


def _check_manifest(out: Path, settings: RunSettings) -> None:
    path = out / MANIFEST_NAME
    wanted = settings.to_dict()
    if path.exists():
        stored = json.loads(path.read_text())
        differs = [key for key in wanted if stored.get(key) != wanted[key]]
        if differs:
            raise HeadvecError(
                f"{out} holds a run with different {', '.join(differs)} "
                f"({', '.join(f'{k}={stored.get(k)!r}' for k in differs)}); use another --out, or the "
                "same settings"
            )
        return
    path.write_text(json.dumps(wanted, indent=1) + "\n")


def chunks_of(items: Sequence[PairItem], done: set[str], chunk_size: int) -> list[list[PairItem]]:
    """Fixed chunks by position in the benchmark, minus finished items (so every backend batches alike)."""
    chunks = []
    for start in range(0, len(items), chunk_size):
        pending = [item for item in items[start : start + chunk_size] if item.uid not in done]
        if pending:
            chunks.append(pending)
    return chunks


def run_benchmark(
    items: Sequence[PairItem],
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, settings)
    results = ResultsFile(out / RESULTS_NAME)
    done = results.load()
    wanted = {item.uid for item in items}
    chunks = chunks_of(items, set(done), chunk_size)
    total, finished = len(items), len(wanted & set(done))
    if progress:
        progress(finished, total)
    if chunks:
        if backend == "local":
            if rm is None:
                from headvec.harness.registry import RMOptions, build_reward_model

                rm = build_reward_model(settings.rm, RMOptions(**settings.options))
            for chunk in chunks:
                records = evaluate_items(rm, chunk, settings.k, settings.seed)
                results.append(records)
                finished += len(records)
                if progress:
                    progress(finished, total)
        elif backend == "ray":
            from headvec.harness.distributed import run_on_ray

            def sink(records: list[dict]) -> None:
                nonlocal finished
                results.append(records)
                finished += len(records)
                if progress:
                    progress(finished, total)

            run_on_ray(chunks, settings, sink, workers=workers, address=ray_address)
        else:
            raise HeadvecError(f"unknown backend {backend!r}; use local or ray")
    final = results.load()
    return {uid: final[uid] for uid in (item.uid for item in items) if uid in final}
