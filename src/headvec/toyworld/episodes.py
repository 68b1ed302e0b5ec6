"""In-context episodes whose task only the examples define.

Every image is a group of 1-4 identical objects, so its color, shape, size and count are all well
defined, and every task asks the same neutral question (``what is it ?``). The image distribution is the
same for all four tasks: with no shots a model can only guess the task (1 in 4); one shot names it,
because the tasks' answer words are disjoint. Each shot keeps all four labels, so one set of images
can be relabelled for any task.
"""

from __future__ import annotations

import random
from typing import ClassVar, Self

from PIL import Image
from pydantic import BaseModel, ConfigDict

from headvec.toyworld.language import NUMBERS, translate
from headvec.toyworld.scenes import Scene, render, sample_group, sample_in_split
from headvec.toyworld.tasks import Rng, as_rng, balanced

ICL_TASKS = ("color", "shape", "size", "count")
ICL_PROMPT = "what is it ?"


class Shot(BaseModel):
    """One image and its answer under the episode's task; ``labels`` has the English answer of every task."""

    model_config = ConfigDict(frozen=True)

    scene: Scene
    answer: str
    labels: dict[str, str]

    def image(self, size: int = 48) -> Image.Image:
        return render(self.scene, size)


class Episode(BaseModel):
    """``shots`` then ``query``, each shown with ``prompt``; the task (``icl_task``) is never named."""

    model_config = ConfigDict(frozen=True)
    text_fields: ClassVar[tuple[str, ...]] = ("prompt",)

    task: str = "icl"
    language: str = "en"
    icl_task: str
    prompt: str
    shots: tuple[Shot, ...]
    query: Shot

    def translate(self, language: str) -> Self:
        """The parallel episode in ``language``."""
        shots = tuple(s.model_copy(update={"answer": translate(s.answer, language)}) for s in self.shots)
        query = self.query.model_copy(update={"answer": translate(self.query.answer, language)})
        prompt = translate(self.prompt, language)
        return self.model_copy(
            update={"language": language, "prompt": prompt, "shots": shots, "query": query}
        )


def group_labels(scene: Scene) -> dict[str, str]:
    """The answer of every in-context task for a group of identical objects."""
    o = scene.objects[0]
    return {"color": o.color, "shape": o.shape, "size": o.size, "count": NUMBERS[len(scene.objects)]}


def _shot(rng: random.Random, task: str, split: str | None) -> Shot:
    scene, _ = sample_in_split(rng, split, lambda r: (sample_group(r), None))
    labels = group_labels(scene)
    return Shot(scene=scene, answer=labels[task], labels=labels)


def make_icl(
    rng: Rng, n: int, language: str = "en", *, shots: int = 4, split: str | None = None
) -> list[Episode]:
    """``n`` episodes of ``shots`` examples + a query, the four tasks balanced."""
    rng = as_rng(rng)
    episodes = []
    for task in balanced(rng, n, ICL_TASKS):
        examples = [_shot(rng, task, split) for _ in range(shots + 1)]
        episodes.append(
            Episode(icl_task=task, prompt=ICL_PROMPT, shots=tuple(examples[:-1]), query=examples[-1])
        )
    return episodes if language == "en" else [e.translate(language) for e in episodes]
