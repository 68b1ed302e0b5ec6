"""Toy-world data as the types of the methods and the reward stack: the only place that converts.

Methods, reward models and the benchmark harness import nothing from :mod:`headvec.toyworld`; whatever
needs toy-world data (the CLI, benchmarks, tests) converts it here.
"""

from __future__ import annotations

from collections.abc import Sequence

from headvec.methods.mtv import IclEpisode
from headvec.models import Example
from headvec.rewards.judges import TOY_JUDGE_TEMPLATE, YesNoTemplate
from headvec.rewards.pairs import PreferencePair, png_bytes
from headvec.rewards.verdicts import Judgement, VerdictFormat
from headvec.toyworld.episodes import Episode, Shot
from headvec.toyworld.language import LANGUAGES, translate
from headvec.toyworld.preferences import PreferenceExample
from headvec.toyworld.tasks import JudgeItem


def preference_pair(pair: PreferenceExample, id: str = "") -> PreferencePair:
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


def icl_episode(episode: Episode, image_size: int | None = None) -> IclEpisode:
    """A toy-world in-context episode as MTV's :class:`~headvec.methods.mtv.IclEpisode` (images rendered
    once, here, at the toy model's image size unless ``image_size`` is given)."""
    from headvec.toyworld.model import IMAGE_SIZE  # transformers: imported only when used

    size = image_size or IMAGE_SIZE

    def example(shot: Shot) -> Example:
        return Example(episode.prompt, [shot.image(size)], shot.answer)

    return IclEpisode(tuple(example(s) for s in episode.shots), example(episode.query), episode.icl_task)


def toy_judge_template(language: str) -> YesNoTemplate:
    """The toy judge prompt and its yes/no words in ``language`` (``toyworld-xx``), as the toy model was
    trained on them: each fixed phrase translated, the question and the answer left as the row has them."""
    if language == "en":
        return TOY_JUDGE_TEMPLATE
    english = TOY_JUDGE_TEMPLATE.fmt
    head, rest = english.template.split(" {prompt} ")  # "question :", "answer : {response} . is ... ?"
    middle, tail = rest.split(" {response} . ")
    head, middle, tail = (translate(text, language) for text in (head, middle, tail))
    fmt = VerdictFormat(
        f"{head} {{prompt}} {middle} {{response}} . {tail}",
        english.criterion,
        translate("yes", language),
        translate("no", language),
        english.benchmark_text,
    )
    return YesNoTemplate(f"toyworld-{language}", fmt, TOY_JUDGE_TEMPLATE.default_max_new_tokens)


def toy_judge_templates() -> dict[str, YesNoTemplate]:
    """Every language's toy judge template by name (``toyworld`` is English)."""
    return {template.name: template for template in map(toy_judge_template, LANGUAGES)}
