"""The one runner: any scorer or judge over preference pairs; seeded, k samples, resumable, local or Ray.

Sample ``j`` of a pair shows the two responses in an order drawn from ``(seed, uid, j)`` alone
(``order="seeded"``), always in the stored order (``order="stored"``, as Multimodal RewardBench's script
does), or in the stored order then swapped, alternately (``order="both"``: sample 0 as
stored, sample 1 swapped, ...), and gets its sampling seed the same way, so results do not depend on
which worker, backend or resume evaluated it. Pairs are cut into the same chunks (by position) on every
backend, so batched judges see the same batches, and a scorer scores a whole chunk in one ``rewards``
call.

With an output folder, every finished pair is one JSON line appended to ``results.jsonl`` with a single
write and an fsync, so a ``kill -9`` at any point loses at most the pair being written (its partial line
is cut off on the next start) and a rerun skips every uid already there: nothing finished is lost,
nothing is duplicated. ``run.json`` holds the run's settings, and the fingerprint of the model weights a
local reward model runs on; a rerun with other settings, or after the weights changed, is refused.

Used by the benchmark harness (:func:`headvec.harness.run_benchmark`), the PreferenceHack-style pairs
(:func:`evaluate_pairs`) and the reward-model comparison of :mod:`headvec.evaluation.rewards`.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from headvec.errors import DataError, HeadvecError
from headvec.rewards.pairs import PreferencePair
from headvec.rewards.protocol import Comparison, Scorer, as_judge
from headvec.stats import bootstrap_ci

RESULTS_NAME = "results.jsonl"
MANIFEST_NAME = "run.json"
RAW_LIMIT = 8000  # judge outputs are kept for audits, cut to this many characters
Order = Literal["seeded", "stored", "both"]
ORDERS = ("seeded", "stored", "both")


def sample_plan(seed: int, uid: str, sample: int, order: Order = "seeded") -> tuple[bool, int]:
    """(swap the display order?, sampling seed) for one sample; string-seeded, so the same everywhere."""
    rng = random.Random(f"headvec-bench/{seed}/{uid}/{sample}")
    swap = rng.random() < 0.5
    if order == "both":
        swap = sample % 2 == 1
    elif order == "stored":
        swap = False
    return swap, rng.getrandbits(31)


def sample_outcome(better: int, swap: bool, choice: str | None) -> str:
    """What one judgement means for a pair: the preferred response sits at display slot ``better``
    (or ``1 - better`` when the order was swapped); choice ``a`` picks slot 0. One of ``agree``,
    ``reject``, ``tie``, ``unparsed``."""
    if choice is None:
        return "unparsed"
    if choice == "tie":
        return "tie"
    preferred_slot = 1 - better if swap else better
    picked_slot = 0 if choice == "a" else 1
    return "agree" if picked_slot == preferred_slot else "reject"


def evaluate_items(
    rm: Any, items: Sequence[PreferencePair], k: int, seed: int, order: Order = "seeded"
) -> list[dict]:
    """Judge every pair ``k`` times (each sample in its planned order) and return one record per pair."""
    judge = as_judge(rm)
    comparisons, plans = [], []
    for item in items:
        image = item.image()
        for j in range(k):
            swap, sample_seed = sample_plan(seed, item.uid, j, order)
            a, b = (item.responses[1], item.responses[0]) if swap else item.responses
            comparisons.append(Comparison(item.prompt, a, b, image, sample_seed))
            plans.append((swap, sample_seed))
    preferences = judge.compare_batch(comparisons)
    if len(preferences) != len(comparisons):
        raise HeadvecError(
            f"{type(judge).__name__}.compare_batch returned {len(preferences)} preferences for "
            f"{len(comparisons)} comparisons; it must return one each"
        )
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
    """Append-only JSONL of finished pairs, safe against kill -9 (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, dict]:
        """Finished records by uid, after cutting off a partial last line left by a killed run (one that
        does not end in a newline, or does not parse): that pair is simply redone. Any other damaged line
        is a one-line error naming the file and the line."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        keep = len(data)
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
        lines = data[:keep].split(b"\n")[:-1] if keep else []
        while lines and not lines[-1].strip():
            lines.pop()
        if lines:
            try:
                json.loads(lines[-1])
            except (json.JSONDecodeError, UnicodeDecodeError):
                keep = sum(len(line) + 1 for line in lines[:-1])  # a torn last record: redo that pair
                lines.pop()
        if keep != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
        records: dict[str, dict] = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = _record_or_none(line)
            if record is None:
                raise DataError(
                    f"{self.path} line {number} is not a finished-pair record (damaged or edited); delete "
                    "that line and rerun the same command to redo the pair"
                )
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


RECORD_KEYS = ("uid", "category", "subset", "better", "samples")


def _record_or_none(line: bytes) -> dict | None:
    """A results line as a record, or None when it is not one (bad JSON, ``{}``, missing fields)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
        return None
    samples = record["samples"]
    if not isinstance(record["uid"], str) or not isinstance(samples, list):
        return None
    if not all(isinstance(sample, dict) and "outcome" in sample for sample in samples):
        return None
    return record


def read_manifest(path: Path) -> dict[str, Any]:
    """A run's ``run.json``; a damaged one is a one-line error saying how to recover."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise DataError(
            f"{path} is damaged ({detail}); delete it and rerun the same command to rewrite it (finished "
            "pairs in results.jsonl are kept)"
        ) from None
    if not isinstance(stored, dict):
        raise DataError(
            f"{path} line 1: expected a JSON object of run settings, got {type(stored).__name__}; delete it "
            "and rerun the same command to rewrite it"
        )
    return stored


def check_manifest(out: Path, settings: dict[str, Any]) -> None:
    """Write ``run.json``, or refuse to resume a run whose settings differ."""
    path = out / MANIFEST_NAME
    if path.exists():
        stored = read_manifest(path)
        differs = [key for key in settings if stored.get(key) != settings[key]]
        if differs == ["weights"]:
            raise HeadvecError(
                f"{out} holds pairs judged with other model weights (fingerprint {stored.get('weights')!r}, "
                f"now {settings['weights']!r}); use another --out, or delete it to start over"
            )
        if differs:
            raise HeadvecError(
                f"{out} holds a run with different {', '.join(differs)} "
                f"({', '.join(f'{k}={stored.get(k)!r}' for k in differs)}); use another --out, or the "
                "same settings"
            )
        return
    path.write_text(json.dumps(settings, indent=1) + "\n")


def weights_of(rm: Any, depth: int = 3) -> str | None:
    """The weights fingerprint of the headvec model a reward model runs on, looked up through the
    scorer a judge wraps (None for an endpoint, a plain callable or a model not yet built): finished
    pairs judged with other weights must not be reused."""
    for name in ("loaded", "loaded_"):
        identity = getattr(getattr(rm, name, None), "identity", None)
        if isinstance(identity, dict):
            return identity.get("weights_fingerprint")
    inner = (getattr(rm, name, None) for name in ("scorer", "scorer_"))
    found = (weights_of(model, depth - 1) for model in inner if depth > 0 and model is not None)
    return next((weights for weights in found if weights is not None), None)


def chunks_of(items: Sequence[PreferencePair], done: set[str], chunk_size: int) -> list[list[PreferencePair]]:
    """Fixed chunks by position, minus finished pairs (so every backend batches alike)."""
    chunks = []
    for start in range(0, len(items), chunk_size):
        pending = [item for item in items[start : start + chunk_size] if item.uid not in done]
        if pending:
            chunks.append(pending)
    return chunks


def run_pairs(
    items: Sequence[PreferencePair],
    rm: Any = None,
    *,
    k: int = 1,
    seed: int = 0,
    order: Order = "seeded",
    out: str | os.PathLike | None = None,
    manifest: dict[str, Any] | None = None,
    chunk_size: int = 16,
    backend: str = "local",
    factory: Callable[[], Any] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Evaluate every unfinished pair (into ``out/results.jsonl`` when ``out`` is given); return one
    record per pair, in the order of ``items``.

    ``rm`` is used as given on the local backend; ``factory()`` builds it when ``rm`` is None, and
    always on Ray, where each worker builds its own copy (so ``factory`` must pickle: a
    ``functools.partial`` of a module-level function). ``manifest`` is checked against ``out/run.json``
    together with ``k``, ``seed`` and ``order``.
    """
    if k < 1:
        raise HeadvecError(f"k must be >= 1, got {k}")
    if order not in ORDERS:
        raise HeadvecError(f"unknown answer order {order!r}; use one of {', '.join(ORDERS)}")
    if chunk_size < 1:
        raise HeadvecError(f"chunk_size must be >= 1, got {chunk_size}")
    uids = [item.uid for item in items]
    if len(set(uids)) != len(uids):
        seen: set[str] = set()
        repeated = next(item for item in items if item.uid in seen or seen.add(item.uid))  # type: ignore[func-returns-value]
        raise DataError(
            f"two pairs share uid {repeated.uid} (id {repeated.id!r}, same prompt and responses); give them "
            "distinct ids or drop the repeat"
        )
    results = None
    done: dict[str, dict] = {}
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        if rm is None and backend == "local" and factory is not None:
            rm = factory()  # built before the manifest check, so the run records the weights it judged with
        weights = weights_of(rm)
        check_manifest(
            folder,
            {
                **(manifest or {}),
                "k": k,
                "seed": seed,
                **({"order": order} if order != "seeded" else {}),
                **({"weights": weights} if weights is not None else {}),
            },
        )
        results = ResultsFile(folder / RESULTS_NAME)
        done = results.load()
    chunks = chunks_of(items, set(done), chunk_size)
    total, finished = len(items), len(set(uids) & set(done))
    if progress:
        progress(finished, total)

    def sink(records: list[dict]) -> None:
        nonlocal finished
        if results is not None:
            results.append(records)
        done.update((r["uid"], r) for r in records)
        finished += len(records)
        if progress:
            progress(finished, total)

    if chunks:
        if backend == "local":
            if rm is None:
                if factory is None:
                    raise HeadvecError("run_pairs needs a reward model: pass rm= or factory=")
                rm = factory()
            for chunk in chunks:
                sink(evaluate_items(rm, chunk, k, seed, order))
        elif backend == "ray":
            if factory is None:
                raise HeadvecError("the ray backend rebuilds the reward model in each worker: pass factory=")
            run_on_ray(
                chunks, factory, sink, k=k, seed=seed, order=order, workers=workers, address=ray_address
            )
        else:
            raise HeadvecError(f"unknown backend {backend!r}; use local or ray")
    return [done[uid] for uid in uids]


# ------------------------------------------------------------------------------------------------
# Ray: one actor per worker builds the reward model and judges whole chunks


class _ChunkJudge:
    """What each Ray actor holds: the reward model, built once, judging the chunks it is sent."""

    def __init__(self, factory: Callable[[], Any], k: int, seed: int, order: Order) -> None:
        self.rm, self.k, self.seed, self.order = factory(), k, seed, order

    def __call__(self, items: list[dict]) -> list[dict]:
        pairs = [PreferencePair.model_validate(i) for i in items]
        return evaluate_items(self.rm, pairs, self.k, self.seed, self.order)


def run_on_ray(
    chunks: Sequence[Sequence[PreferencePair]],
    factory: Callable[[], Any],
    sink: Callable[[list[dict]], None],
    *,
    k: int,
    seed: int,
    order: Order = "seeded",
    workers: int = 1,
    address: str | None = None,
    threads_per_worker: int = 1,
) -> None:
    """Judge ``chunks`` on Ray actors (:func:`headvec.parallel.run_on_actors`), handing each finished
    chunk's records to ``sink`` in arrival order."""
    from headvec.parallel import run_on_actors

    run_on_actors(
        functools.partial(_ChunkJudge, factory, k, seed, order),
        [[item.model_dump() for item in chunk] for chunk in chunks],
        lambda _chunk, records: sink(records),
        workers=workers,
        address=address,
        threads_per_worker=threads_per_worker,
    )


# ------------------------------------------------------------------------------------------------
# PreferenceHack-style pairs: accuracy per category


def pair_accuracy(records: Sequence[dict], seed: int = 0) -> dict[str, Any]:
    """Accuracy per category and overall with a seeded bootstrap 95% CI. A pair counts as right when
    every sample picked the preferred response (a scorer: a higher reward; a judge asked in both orders:
    both orders); ``ties`` counts pairs with a tied or unreadable sample."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record["category"], []).append(i)
    hits = [all(s["outcome"] == "agree" for s in r["samples"]) for r in records]
    tied = [any(s["outcome"] in ("tie", "unparsed") for s in r["samples"]) for r in records]
    result: dict[str, Any] = {}
    for name, indices in [*sorted(groups.items()), ("overall", list(range(len(records))))]:
        mean, low, high = bootstrap_ci([float(hits[i]) for i in indices], seed=seed)
        result[name] = {
            "accuracy": mean,
            "ci_low": low,
            "ci_high": high,
            "n": len(indices),
            "ties": sum(tied[i] for i in indices),
        }
    return result


def evaluate_pairs(
    rm: Any,
    pairs: Sequence[PreferencePair],
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy per category (and overall) of ``rm`` on ``pairs`` (chosen first), resumable in ``out_dir``.

    A :class:`Scorer` is right on a pair when ``reward(chosen) > reward(rejected)`` (equal rewards are
    ties and count as wrong); a judge is asked in both orders and is right only when both prefer the
    chosen response. ``batch_size`` pairs are judged per call.
    """
    k = 1 if isinstance(rm, Scorer) else 2
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="pairs")

    def tick(done: int, total: int) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()

    try:
        records = run_pairs(
            pairs,
            rm,
            k=k,
            seed=seed,
            order="both",
            out=out_dir,
            manifest={"kind": "pairs", "rm": type(rm).__name__},
            chunk_size=batch_size,
            progress=tick,
        )
    finally:
        if bar is not None:
            bar.close()
    return pair_accuracy(records, seed)
