"""Preference pairs from annotated VLFeedback rows: the official recipe, the paper's two baselines, a control.

- :func:`official_pairs` is ``run_dpo.py::make_vlfeedback_paired_dataset``: every pair of an
  instruction's responses (``combinations(range(4), 2)``), each scored by the mean of its three aspect
  ratings, the higher one chosen; ties and pairs with a non-numeric rating dropped (and counted).
- :func:`longest_as_best` ("DPO (Longest as Best)"): the longest response chosen over each other one.
- :func:`top_choice_as_best` ("DPO (GPT-4V as Best)" read as the judge's top choice): the response with
  the highest mean rating chosen over each other one (no pair when the top is tied).
- :func:`random_labels`: the same pairs with chosen and rejected swapped by a seeded coin, a control that
  should teach nothing.
- :func:`split_pairs`: the official hold-out, ``train_test_split(test_size=0.005, seed=42)`` in ``datasets``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import combinations

from headvec.errors import DataError
from headvec.feedback.schema import ASPECTS, FeedbackRow, check_rating, rating_value

PAIRINGS = ("official", "longest", "top-choice", "random-labels")


@dataclass(frozen=True)
class FeedbackPair:
    """One preference pair of an instruction's responses, with where each came from and its score."""

    id: str
    prompt: str
    img_path: str | None
    chosen: str
    rejected: str
    chosen_model: str
    rejected_model: str
    chosen_score: float
    rejected_score: float

    def to_dict(self) -> dict:
        return asdict(self)

    def swapped(self) -> FeedbackPair:
        """Chosen and rejected exchanged (the id ``row-i-j``, chosen first, follows)."""
        row, i, j = self.id.rsplit("-", 2)
        return FeedbackPair(
            f"{row}-{j}-{i}",
            self.prompt,
            self.img_path,
            self.rejected,
            self.chosen,
            self.rejected_model,
            self.chosen_model,
            self.rejected_score,
            self.chosen_score,
        )


@dataclass
class PairStats:
    """What pair building kept and dropped; nothing is dropped without being counted here."""

    instructions: int = 0
    candidate_pairs: int = 0
    pairs: int = 0
    ties: int = 0
    non_numeric: int = 0
    unannotated_rows: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def scores(row: FeedbackRow) -> list[float | None]:
    """Each response's mean rating over the three aspects (None: missing or non-numeric); a numeric rating
    outside 1-5 is a one-line error naming the row."""
    out: list[float | None] = []
    for i, completion in enumerate(row.completions):
        annotations = completion.annotations or {}
        values = []
        for aspect in ASPECTS:
            value = rating_value(annotations[aspect].Rating) if aspect in annotations else None
            if value is not None:
                check_rating(value, f"row {row.id!r} response {i + 1} {aspect}")
            values.append(value)
        out.append(None if any(v is None for v in values) else sum(values) / len(values))  # type: ignore[arg-type,misc]
    return out


def _pair(row: FeedbackRow, i: int, j: int, score: Sequence[float]) -> FeedbackPair:
    """``i`` chosen over ``j``."""
    a, b = row.completions[i], row.completions[j]
    return FeedbackPair(
        f"{row.id}-{i}-{j}",
        row.prompt,
        row.img_path,
        a.response,
        b.response,
        a.model,
        b.model,
        score[i],
        score[j],
    )


def official_pairs(rows: Sequence[FeedbackRow]) -> tuple[list[FeedbackPair], PairStats]:
    """All pairs of each row's responses, the higher mean rating chosen; ties and non-numeric dropped."""
    stats, pairs = PairStats(instructions=len(rows)), []
    for row in rows:
        if not row.annotated:
            stats.unannotated_rows += 1
        score = scores(row)
        for i, j in combinations(range(len(row.completions)), 2):
            stats.candidate_pairs += 1
            if score[i] is None or score[j] is None:
                stats.non_numeric += 1
            elif score[i] == score[j]:
                stats.ties += 1
            else:
                pairs.append(_pair(row, i, j, score) if score[i] > score[j] else _pair(row, j, i, score))  # type: ignore[arg-type]
    stats.pairs = len(pairs)
    return pairs, stats


def longest_as_best(rows: Sequence[FeedbackRow]) -> tuple[list[FeedbackPair], PairStats]:
    """The longest response (characters) chosen over each other one; no pair if two share the top length.
    Ratings are not used (scores are the lengths)."""
    stats, pairs = PairStats(instructions=len(rows)), []
    for row in rows:
        lengths = [float(len(c.response)) for c in row.completions]
        best = max(range(len(lengths)), key=lengths.__getitem__)
        for j in range(len(lengths)):
            if j == best:
                continue
            stats.candidate_pairs += 1
            if lengths[j] == lengths[best]:
                stats.ties += 1
            else:
                pairs.append(_pair(row, best, j, lengths))
    stats.pairs = len(pairs)
    return pairs, stats


def top_choice_as_best(rows: Sequence[FeedbackRow]) -> tuple[list[FeedbackPair], PairStats]:
    """The judge's top-rated response chosen over each other one (ties with the top dropped)."""
    stats, pairs = PairStats(instructions=len(rows)), []
    for row in rows:
        score = scores(row)
        if any(s is None for s in score):
            stats.non_numeric += len(score) - 1
            stats.candidate_pairs += len(score) - 1
            continue
        best = max(range(len(score)), key=lambda k: score[k])  # type: ignore[arg-type,return-value]
        for j in range(len(score)):
            if j == best:
                continue
            stats.candidate_pairs += 1
            if score[j] == score[best]:
                stats.ties += 1
            else:
                pairs.append(_pair(row, best, j, score))  # type: ignore[arg-type]
    stats.pairs = len(pairs)
    return pairs, stats


def random_labels(pairs: Sequence[FeedbackPair], seed: int = 0) -> list[FeedbackPair]:
    """The pairs with chosen and rejected swapped by a seeded fair coin (the control)."""
    rng = random.Random(seed)
    return [p.swapped() if rng.random() < 0.5 else p for p in pairs]


def build_pairs(
    rows: Sequence[FeedbackRow], pairing: str = "official", seed: int = 0
) -> tuple[list[FeedbackPair], PairStats]:
    """Pairs by one of :data:`PAIRINGS`."""
    if pairing == "official":
        return official_pairs(rows)
    if pairing == "longest":
        return longest_as_best(rows)
    if pairing == "top-choice":
        return top_choice_as_best(rows)
    if pairing == "random-labels":
        pairs, stats = official_pairs(rows)
        return random_labels(pairs, seed), stats
    raise DataError(f"unknown pairing {pairing!r}; choose one of {', '.join(PAIRINGS)}")


def split_pairs(
    pairs: Sequence[FeedbackPair], test_size: float = 0.005, seed: int = 42
) -> tuple[list[FeedbackPair], list[FeedbackPair]]:
    """(train, test) exactly as the official code splits: ``datasets``' ``train_test_split``."""
    from headvec._optional import require

    if len(pairs) < 2:
        return list(pairs), []
    datasets = require("datasets", extra="trl")
    index = datasets.Dataset.from_dict({"i": list(range(len(pairs)))})
    split = index.train_test_split(test_size=test_size, seed=seed)
    return [pairs[i] for i in split["train"]["i"]], [pairs[i] for i in split["test"]["i"]]


def model_counts(pairs: Sequence[FeedbackPair]) -> dict[str, dict[str, int]]:
    """How often each model's response was chosen and rejected (a quick view of who the annotator likes)."""
    chosen, rejected = Counter(p.chosen_model for p in pairs), Counter(p.rejected_model for p in pairs)
    return {m: {"chosen": chosen[m], "rejected": rejected[m]} for m in sorted(chosen | rejected)}
