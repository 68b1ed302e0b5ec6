"""Paired-preference benchmark (PreferenceHack form): does a reward model rank the right answer first?

A pair is a prompt (and image), a ``chosen`` (right) and a ``rejected`` (wrong) response and its split
(PreferenceHack: ``length`` / ``positivity`` / ``helpful``; the toy world: ``hallucination`` /
``reasoning`` / ``reward_hacking`` / ``flipped``). Score-based models are right on a pair when
``score(chosen) > score(rejected)``; equal scores are ties and count as wrong (reported separately).
Models that only compare (generative A/B judges) are asked in both orders, and a pair counts as right
only when both orders prefer the chosen response. Per split: accuracy with a seeded bootstrap 95% CI.

Results are appended to ``pairs.jsonl`` as each batch finishes, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from tqdm.auto import tqdm

from headvec.data import read_rows
from headvec.errors import DataError, HeadvecError
from headvec.models import ImageLike
from headvec.stats import bootstrap_ci

PREFERENCEHACK_ID = "DarthVaderSenior/PreferenceHack"


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    split: str
    image: ImageLike | None = None
    id: str = ""


class _PairRow(BaseModel):
    """PreferenceHack-like rows: ``prompt`` may be named ``question``/``query``, ``split`` ``category``."""

    model_config = ConfigDict(extra="allow")

    prompt: str
    chosen: str
    rejected: str
    split: str = "all"
    image: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, row: Any) -> Any:
        if isinstance(row, dict):
            row = dict(row)
            for name in ("question", "query", "instruction"):
                if "prompt" not in row and name in row:
                    row["prompt"] = row[name]
            for name in ("category", "bias", "subset"):
                if "split" not in row and name in row:
                    row["split"] = row[name]
        return row


def read_preference_pairs(path: str | os.PathLike, split: str | None = None) -> list[PreferencePair]:
    """Pairs from a JSONL file (line-numbered errors; image paths relative to the file must exist)."""
    path = Path(path)
    rows = read_rows(path, _PairRow)
    pairs = []
    for number, row in enumerate(rows, start=1):
        image = None
        if row.image:
            file = Path(row.image) if Path(row.image).is_absolute() else path.parent / row.image
            if not file.is_file():
                raise DataError(f"{path} row {number}: image file not found: {file}")
            image = str(file)
        pairs.append(
            PreferencePair(row.prompt, row.chosen, row.rejected, split or row.split, image, str(number))
        )
    return pairs


def load_preferencehack(source: str = PREFERENCEHACK_ID, splits: Sequence[str] = ("length", "positivity")):
    """PreferenceHack from the hub (``datasets``) when online, or from a local folder of ``<split>.jsonl``."""
    local = Path(source)
    if local.is_dir():
        return [p for s in splits for p in read_preference_pairs(local / f"{s}.jsonl", split=s)]
    try:
        from datasets import load_dataset

        pairs = []
        for split in splits:
            data = load_dataset(source, data_files=f"data/{split}.jsonl", split="train")
            for i, row in enumerate(data):
                parsed = _PairRow.model_validate(row)
                pairs.append(
                    PreferencePair(parsed.prompt, parsed.chosen, parsed.rejected, split, None, str(i))
                )
        return pairs
    except Exception as exc:  # offline, or the hub is unreachable
        raise HeadvecError(
            f"cannot load {source!r} ({type(exc).__name__}); download it once and pass the local folder of "
            "<split>.jsonl files"
        ) from None


def _has_score(rm: Any) -> bool:
    try:
        from headvec.harness.judge import _JudgeBase  # generative judges expose score() but refuse it
    except ImportError:  # pragma: no cover
        return hasattr(rm, "score")
    return hasattr(rm, "score") and not isinstance(rm, _JudgeBase)


def evaluate_pairs(
    rm: Any,
    pairs: Sequence[PreferencePair],
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy per split (and overall) of ``rm`` on ``pairs``; resumes from ``out_dir/pairs.jsonl``."""
    done: dict[int, dict[str, Any]] = {}
    log = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        log_path = out / "pairs.jsonl"
        if log_path.exists():
            lines = log_path.read_text().splitlines()
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: redone below
                    continue
                done[record["index"]] = record
            log_path.write_text("".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
        log = log_path.open("a")
    scored = _has_score(rm)
    todo = [i for i in range(len(pairs)) if i not in done]
    try:
        for start in tqdm(range(0, len(todo), batch_size), desc="pairs", disable=not progress):
            indices = todo[start : start + batch_size]
            batch = [pairs[i] for i in indices]
            records = _score_batch(rm, batch, scored)
            for index, record in zip(indices, records, strict=True):
                record["index"] = index
                done[index] = record
                if log is not None:
                    log.write(json.dumps(record) + "\n")
            if log is not None:
                log.flush()
                os.fsync(log.fileno())
    finally:
        if log is not None:
            log.close()
    return summarise([done[i] for i in range(len(pairs))], pairs, seed)


def _score_batch(rm: Any, batch: Sequence[PreferencePair], scored: bool) -> list[dict[str, Any]]:
    if scored:
        prompts = [p.prompt for p in batch for _ in (0, 1)]
        responses = [r for p in batch for r in (p.chosen, p.rejected)]
        images = [p.image for p in batch for _ in (0, 1)]
        scores = rm.score(prompts, responses, images if any(i is not None for i in images) else None)
        return [
            {
                "chosen": float(scores[2 * i]),
                "rejected": float(scores[2 * i + 1]),
                "correct": scores[2 * i] > scores[2 * i + 1],
                "tie": scores[2 * i] == scores[2 * i + 1],
            }
            for i in range(len(batch))
        ]
    records = []
    for pair in batch:
        forward = rm.compare(pair.prompt, pair.chosen, pair.rejected, pair.image)
        backward = rm.compare(pair.prompt, pair.rejected, pair.chosen, pair.image)
        records.append(
            {
                "forward": forward.choice,
                "backward": backward.choice,
                "correct": forward.choice == "a" and backward.choice == "b",
                "tie": forward.choice in ("tie", None) or backward.choice in ("tie", None),
                "unparsed": forward.choice is None or backward.choice is None,
            }
        )
    return records


def summarise(
    records: Sequence[dict[str, Any]], pairs: Sequence[PreferencePair], seed: int = 0
) -> dict[str, Any]:
    splits: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        splits.setdefault(pair.split, []).append(i)
    result: dict[str, Any] = {}
    for name, indices in [*sorted(splits.items()), ("overall", list(range(len(pairs))))]:
        hits = [float(records[i]["correct"]) for i in indices]
        mean, low, high = bootstrap_ci(hits, seed=seed)
        result[name] = {
            "accuracy": mean,
            "ci_low": low,
            "ci_high": high,
            "n": len(indices),
            "ties": sum(bool(records[i].get("tie")) for i in indices),
        }
    return result


def pairs_from_toy(
    category: str | None, seed: int, n: int, split: str, language: str = "en"
) -> list[PreferencePair]:
    """Toy-world preference pairs (images rendered), optionally one category only."""
    from headvec.toyworld.export import generate

    items = generate("preference", seed, n, split, language)
    return [
        PreferencePair(p.query, p.chosen, p.rejected, p.category, p.image(), f"{split}-{i}")
        for i, p in enumerate(items)
        if category is None or p.category == category
    ]


def judgements_from_pairs(pairs: Sequence[PreferencePair]):
    """Each pair as two labelled verdicts: the chosen response meets the criterion, the rejected does not."""
    from headvec.rewards.activation import Judgement

    out = []
    for pair in pairs:
        out.append(Judgement(pair.prompt, pair.chosen, True, pair.image))
        out.append(Judgement(pair.prompt, pair.rejected, False, pair.image))
    return out
