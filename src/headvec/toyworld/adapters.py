"""Toy-world data as the types of the reward stack: the only place that converts between the two.

Methods, reward models and the benchmark harness import nothing from :mod:`headvec.toyworld`; whatever
needs toy-world data (the CLI, benchmarks, tests) converts it here.
"""

from __future__ import annotations

from collections.abc import Sequence

from headvec.rewards.pairs import PreferencePair, png_bytes
from headvec.rewards.verdicts import Judgement
from headvec.toyworld.preferences import Preference
from headvec.toyworld.tasks import JudgeItem


def preference_pair(pair: Preference, id: str = "") -> PreferencePair:
    """A toy-world preference (image rendered, as PNG) as the reward stack's pair, chosen first."""
    return PreferencePair(
        prompt=pair.query,
        responses=(pair.chosen, pair.rejected),
        better=0,
        category=pair.category,
        subset=pair.bias,
        id=id,
        image_bytes=png_bytes(pair.image()),
    )


def pairs_from_toy(
    category: str | None, seed: int, n: int, split: str, language: str = "en"
) -> list[PreferencePair]:
    """``n`` toy-world preference pairs of ``split`` (optionally one category only), images rendered."""
    from headvec.toyworld.export import generate

    items = generate("preference", seed, n, split, language)
    return [
        preference_pair(p, f"{split}-{i}")
        for i, p in enumerate(items)
        if category is None or p.category == category
    ]


def judgements_from_judge_items(items: Sequence[JudgeItem], with_images: bool = True) -> list[Judgement]:
    """Toy-world judge items (question, candidate answer, yes/no) as labelled verdicts."""
    return [
        Judgement(item.question, item.candidate, item.answer == "yes", item.image() if with_images else None)
        for item in items
    ]
