"""The one interface every reward model and judge in headvec implements.

``score`` gives one float per (prompt, response) pair, higher = better. ``compare`` says which of two
responses to one prompt is preferred. Score-based models get ``compare`` for free from
:class:`ScoreBasedComparison`; generative judges implement ``compare`` directly (and may leave ``score``
unsupported), reporting a judgement they could not parse as ``choice=None`` instead of guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from headvec.models import ImageLike


@dataclass
class Preference:
    """The outcome of comparing responses ``a`` and ``b``.

    ``choice`` is ``"a"``, ``"b"``, ``"tie"``, or ``None`` when a judge's output could not be parsed
    (``raw`` keeps it). ``scores`` holds the two rewards when the model is score-based.
    """

    choice: Literal["a", "b", "tie"] | None
    scores: tuple[float, float] | None = None
    raw: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class RewardModel(Protocol):
    """Anything that scores responses and compares pairs of them."""

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]: ...

    def compare(self, prompt: str, a: str, b: str, image: ImageLike | None = None) -> Preference: ...


def preference_from_scores(score_a: float, score_b: float) -> Preference:
    """The higher reward wins; equal rewards tie."""
    choice = "a" if score_a > score_b else "b" if score_b > score_a else "tie"
    return Preference(choice=choice, scores=(float(score_a), float(score_b)))


class ScoreBasedComparison:
    """Mixin: ``compare`` by scoring both responses (ties when the scores are equal)."""

    def compare(self, prompt: str, a: str, b: str, image: ImageLike | None = None) -> Preference:
        score_a, score_b = self.score([prompt, prompt], [a, b], [image, image])  # type: ignore[attr-defined]
        return preference_from_scores(score_a, score_b)
