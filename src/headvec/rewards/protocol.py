"""The two interfaces every reward model and judge in headvec implements, and the adapter between them.

- :class:`Scorer`: ``rewards(prompts, responses, images=None) -> list[float]``, one reward per
  (prompt, response), higher = better (activation reward models, the verdict baselines, Hugging Face
  sequence classifiers, the length floor).
- :class:`Judge`: ``compare_batch(comparisons) -> list[Preference]``, which of two responses shown in a
  given order is preferred (generative judges on a local model or an endpoint). A judgement that could
  not be parsed is ``choice=None``, never a guess.

Both are ``runtime_checkable``, so callers ask ``isinstance(model, Scorer)`` instead of probing methods.
:func:`as_judge` turns any scorer into a judge (the higher reward wins), which is how the runner,
Best-of-N and the servers take either kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from headvec.errors import HeadvecError

if TYPE_CHECKING:
    from headvec.models import ImageLike

Choice = Literal["a", "b", "tie"] | None


@dataclass
class Preference:
    """The outcome of comparing responses ``a`` and ``b``.

    ``choice`` is ``"a"``, ``"b"``, ``"tie"``, or ``None`` when a judge's output could not be parsed
    (``raw`` keeps it). ``scores`` holds the two rewards when a scorer decided.
    """

    choice: Choice
    scores: tuple[float, float] | None = None
    raw: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """One judge call: two responses in display order (``a`` shown first) and this sample's seed."""

    prompt: str
    a: str
    b: str
    image: Any = None
    seed: int = 0


@runtime_checkable
class Scorer(Protocol):
    """Anything that gives each (prompt, response[, image]) a scalar reward, higher = better."""

    def rewards(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]: ...


@runtime_checkable
class Judge(Protocol):
    """Anything that says which of two responses to one prompt is better."""

    def compare_batch(self, comparisons: Sequence[Comparison]) -> list[Preference]: ...


def preference_from_scores(score_a: float, score_b: float) -> Preference:
    """The higher reward wins; equal rewards tie."""
    choice = "a" if score_a > score_b else "b" if score_b > score_a else "tie"
    return Preference(choice=choice, scores=(float(score_a), float(score_b)))


class BaseJudge:
    """Gives a judge ``compare`` (one pair) on top of its ``compare_batch``."""

    def compare_batch(self, comparisons: Sequence[Comparison]) -> list[Preference]:
        raise NotImplementedError

    def compare(self, prompt: str, a: str, b: str, image: ImageLike | None = None) -> Preference:
        return self.compare_batch([Comparison(prompt, a, b, image)])[0]


class ScorerJudge(BaseJudge):
    """A scorer as a judge: all responses of a batch are scored in one ``rewards`` call, in display
    order (``a`` then ``b`` of each comparison); the higher reward wins, equal rewards tie."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def compare_batch(self, comparisons: Sequence[Comparison]) -> list[Preference]:
        if not comparisons:
            return []
        prompts = [c.prompt for c in comparisons for _ in (0, 1)]
        responses = [x for c in comparisons for x in (c.a, c.b)]
        images = [c.image for c in comparisons for _ in (0, 1)]
        scores = self.scorer.rewards(
            prompts, responses, images if any(i is not None for i in images) else None
        )
        if len(scores) != len(responses):
            raise HeadvecError(
                f"{type(self.scorer).__name__}.rewards returned {len(scores)} rewards for {len(responses)} "
                "responses; it must return one per response"
            )
        return [preference_from_scores(scores[2 * i], scores[2 * i + 1]) for i in range(len(comparisons))]


def as_judge(model: Any) -> Judge:
    """``model`` itself if it is a :class:`Judge`, a :class:`ScorerJudge` around it if it is a
    :class:`Scorer`; anything else is a one-line error."""
    if isinstance(model, Judge):
        return model
    if isinstance(model, Scorer):
        return ScorerJudge(model)
    raise HeadvecError(
        f"{type(model).__name__} is neither a Scorer (rewards(prompts, responses, images)) nor a Judge "
        "(compare_batch(comparisons)); implement one of the two"
    )
