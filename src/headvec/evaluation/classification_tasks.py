"""Labelled few-shot classification tasks the project builds itself (no hub needed).

Toy-world tasks (images + questions, for the toy vision-language model): the colour of a named object,
the shape of a coloured object, the number of objects, and whether a proposed answer matches the image.
Pools come from the train split, test items from the held-out scenes of the test split.

``topics``: short English sentences about five topics, built from seeded templates whose frame words
are shared across topics (so only the topic words carry the label), for text models such as MiniLM.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from headvec.errors import HeadvecError
from headvec.evaluation.classification import ClassificationTask
from headvec.methods.sav import ClassifierInput
from headvec.toyworld.export import derived_rng
from headvec.toyworld.scenes import render
from headvec.toyworld.tasks import ask_many, make_judge

IMAGE_SIZE = 48


def _toy_question_task(name: str, qtype: str, seed: int, n_pool: int, n_test: int) -> ClassificationTask:
    def items(split: str, n: int) -> tuple[list[ClassifierInput], list[str]]:
        questions = ask_many(derived_rng(seed, f"sav-{qtype}", split), n, (qtype,), split)
        inputs = [ClassifierInput(q.question, [render(q.scene, IMAGE_SIZE)]) for q in questions]
        return inputs, [q.answer for q in questions]

    pool, pool_labels = items("train", n_pool)
    test, test_labels = items("test", n_test)
    return ClassificationTask(name, pool, pool_labels, test, test_labels, meta={"qtype": qtype, "seed": seed})


def _toy_match_task(seed: int, n_pool: int, n_test: int) -> ClassificationTask:
    def items(split: str, n: int) -> tuple[list[ClassifierInput], list[str]]:
        judged = make_judge(derived_rng(seed, "sav-match", split), n, split=split)
        return [ClassifierInput(j.prompt, [j.image(IMAGE_SIZE)]) for j in judged], [j.answer for j in judged]

    pool, pool_labels = items("train", n_pool)
    test, test_labels = items("test", n_test)
    return ClassificationTask("toy-match", pool, pool_labels, test, test_labels, meta={"seed": seed})


TOPIC_WORDS: dict[str, list[str]] = {
    "animals": ["cat", "dog", "horse", "owl", "rabbit", "wolf", "parrot", "fox", "goat", "duck"],
    "food": ["bread", "soup", "pizza", "cheese", "pasta", "rice", "cake", "salad", "curry", "noodles"],
    "sport": [
        "football",
        "tennis",
        "marathon",
        "cycling",
        "boxing",
        "rugby",
        "hockey",
        "golf",
        "rowing",
        "chess",
    ],
    "weather": ["rain", "snow", "storm", "fog", "heatwave", "frost", "thunder", "hail", "drizzle", "wind"],
    "music": ["guitar", "piano", "violin", "drums", "choir", "concert", "song", "trumpet", "album", "opera"],
}
TOPIC_FRAMES = [
    "Everyone was talking about the {w} yesterday.",
    "She wrote a long article on the {w}.",
    "I did not expect the {w} to be like that.",
    "The {w} was the main story on the evening news.",
    "My neighbour has strong opinions about the {w}.",
    "We spent the whole afternoon with the {w}.",
    "Nobody in the office mentioned the {w}.",
    "The children asked questions about the {w}.",
    "He took a photo of the {w} for his friends.",
    "There is a new book about the {w} in the library.",
    "They argued about the {w} until midnight.",
    "The {w} reminded her of her childhood.",
]


def topics_task(seed: int = 0, n_pool: int = 40, n_test: int = 40) -> ClassificationTask:
    """Topic of a templated sentence; pool and test use disjoint frames, so frames cannot leak labels."""
    rng = random.Random(seed)
    frames = TOPIC_FRAMES[:]
    rng.shuffle(frames)
    pool_frames, test_frames = frames[:8], frames[8:]

    def items(frame_set: list[str], per_topic: int) -> tuple[list[ClassifierInput], list[str]]:
        inputs, labels = [], []
        for topic, words in TOPIC_WORDS.items():
            for _ in range(per_topic):
                inputs.append(ClassifierInput(rng.choice(frame_set).format(w=rng.choice(words))))
                labels.append(topic)
        return inputs, labels

    pool, pool_labels = items(pool_frames, n_pool)
    test, test_labels = items(test_frames, n_test)
    return ClassificationTask("topics", pool, pool_labels, test, test_labels, chat=False, meta={"seed": seed})


TASKS: dict[str, Callable[..., ClassificationTask]] = {
    "toy-color": lambda seed=0, n_pool=200, n_test=200: _toy_question_task(
        "toy-color", "color", seed, n_pool, n_test
    ),
    "toy-shape": lambda seed=0, n_pool=200, n_test=200: _toy_question_task(
        "toy-shape", "shape", seed, n_pool, n_test
    ),
    "toy-count": lambda seed=0, n_pool=200, n_test=200: _toy_question_task(
        "toy-count", "count", seed, n_pool, n_test
    ),
    "toy-match": lambda seed=0, n_pool=200, n_test=200: _toy_match_task(seed, n_pool, n_test),
    "topics": lambda seed=0, n_pool=40, n_test=40: topics_task(seed, n_pool, n_test),
}


def build_task(name: str, seed: int = 0, **sizes: int) -> ClassificationTask:
    if name not in TASKS:
        raise HeadvecError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name](seed=seed, **sizes)
