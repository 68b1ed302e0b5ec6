"""Task items built from scenes: captions, VQA, scene graphs, chain of thought, judge items.

Every generator writes English and translates at the end, so ``make_x(Random(s), n, "xx")`` is the
parallel of ``make_x(Random(s), n)``: same scenes, same content, other surface form. ``split`` ("train",
"test" or None) keeps only scenes of that split (see :attr:`Scene.split`). ``meta["label"]`` is always
the English gold answer, whatever the item's language.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, Self

from PIL import Image
from pydantic import BaseModel, ConfigDict

from headvec.toyworld.language import NUMBERS, lexicon, tokenize_words, translate
from headvec.toyworld.scenes import (
    COLORS,
    COLUMNS,
    MAX_OBJECTS,
    PLURALS,
    RELATIONS,
    ROWS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    make_scene,
    relation,
    render,
    sample_in_split,
    sample_scene,
)

QTYPES = (
    "color",
    "shape",
    "size",
    "count",
    "count_color",
    "count_shape",
    "exist",
    "relation",
    "relation_yesno",
)
COT_QTYPES = ("count", "count_color", "count_shape", "relation", "relation_yesno")
YES_NO_QTYPES = ("exist", "relation_yesno")
DESCRIBE = "describe the image ."
SCENE_GRAPH_PROMPT = "give the scene graph ."
THINK = "think step by step ."
POSITIONS_PROMPT = "describe the scene ."
FINAL = "so the answer is"

Rng = random.Random | int


class Example(BaseModel):
    """What every toy-world example has: a scene (the image, rendered on demand) and some texts."""

    model_config = ConfigDict(frozen=True)
    text_fields: ClassVar[tuple[str, ...]] = ()

    task: str
    language: str = "en"
    scene: Scene
    meta: dict[str, Any] = {}

    def image(self, size: int = 48) -> Image.Image:
        return render(self.scene, size)

    def translate(self, language: str) -> Self:
        """The parallel example in ``language``: same scene and metadata, translated texts."""
        update = {f: translate(getattr(self, f), language) for f in self.text_fields}
        return self.model_copy(update={**update, "language": language})


class Item(Example):
    """A prompt about the image and the answer to produce."""

    text_fields: ClassVar[tuple[str, ...]] = ("prompt", "answer")

    prompt: str
    answer: str


class JudgeItem(Item):
    """Is ``candidate`` a correct answer to ``question`` about the image? ``answer`` is yes or no."""

    text_fields: ClassVar[tuple[str, ...]] = ("prompt", "answer", "question", "candidate")

    question: str
    candidate: str


def as_rng(rng: Rng) -> random.Random:
    """Accept a seed or a ``random.Random``; never the global random state."""
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def balanced(rng: random.Random, n: int, values: Sequence[str]) -> list[str]:
    """``n`` values cycling through ``values`` (counts differ by at most one), in seeded order."""
    plan = [values[i % len(values)] for i in range(n)]
    rng.shuffle(plan)
    return plan


# ---------------------------------------------------------------------------------------------- words


def join_list(parts: Sequence[str]) -> str:
    """``a , b and c``."""
    return parts[0] if len(parts) == 1 else " , ".join(parts[:-1]) + " and " + parts[-1]


def full_name(o: Obj) -> str:
    """``the red square``: unique in every sampled scene (no two objects share color and shape)."""
    return f"the {o.color} {o.shape}"


def short_name(o: Obj, scene: Scene) -> str:
    """``the square`` if it is the only square, else ``the red square``."""
    return f"the {o.shape}" if sum(x.shape == o.shape for x in scene.objects) == 1 else full_name(o)


def caption(scene: Scene) -> str:
    """``a small red square and a large blue circle .`` (reading order)."""
    return join_list([f"a {o.size} {o.color} {o.shape}" for o in scene.objects]) + " ."


def scene_graph(scene: Scene) -> str:
    """Compact JSON: objects (id = reading order) and each related pair once, as ``left of`` or ``above``."""
    objects = [
        {"id": i, "shape": o.shape, "color": o.color, "size": o.size} for i, o in enumerate(scene.objects)
    ]
    relations = [
        {"subject": i, "relation": rel, "object": j}
        for i, rel, j in scene.relations()
        if rel in ("left of", "above")
    ]
    return json.dumps({"objects": objects, "relations": relations}, separators=(",", ":"))


def parse_final_answer(text: str, language: str = "en") -> str | None:
    """The answer after the last ``so the answer is`` (in ``language``), up to the next ``.``."""
    marker = [lexicon(language)[w] for w in tokenize_words(FINAL)]
    tokens = tokenize_words(text)
    starts = [i for i in range(len(tokens)) if tokens[i : i + len(marker)] == marker]
    if not starts:
        return None
    rest = tokens[starts[-1] + len(marker) :]
    answer = rest[: rest.index(".")] if "." in rest else rest
    return " ".join(answer) or None


# ------------------------------------------------------------------------------------------------ VQA


class Question(BaseModel):
    """A question about a scene with its gold answer; the building block of VQA, CoT, judge, preferences."""

    model_config = ConfigDict(frozen=True)

    scene: Scene
    qtype: str
    question: str
    answer: str
    focus: tuple[int, ...] = ()  # objects the question is about (for wrong answers and CoT)
    relation: str | None = None
    about: str | None = None  # the color or shape a ``how many`` question counts


def _ask_color(rng: random.Random) -> Question | None:
    scene = sample_scene(rng)
    options = [i for i, o in enumerate(scene.objects) if short_name(o, scene) == f"the {o.shape}"]
    if not options:
        return None
    i = rng.choice(options)
    o = scene.objects[i]
    return Question(
        scene=scene, qtype="color", question=f"what color is the {o.shape} ?", answer=o.color, focus=(i,)
    )


def _ask_shape(rng: random.Random) -> Question | None:
    scene = sample_scene(rng)
    options = [i for i, o in enumerate(scene.objects) if sum(x.color == o.color for x in scene.objects) == 1]
    if not options:
        return None
    i = rng.choice(options)
    o = scene.objects[i]
    return Question(
        scene=scene,
        qtype="shape",
        question=f"what shape is the {o.color} object ?",
        answer=o.shape,
        focus=(i,),
    )


def _ask_size(rng: random.Random) -> Question:
    scene = sample_scene(rng)
    i = rng.randrange(len(scene.objects))
    o = scene.objects[i]
    question = f"what size is {short_name(o, scene)} ?"
    return Question(scene=scene, qtype="size", question=question, answer=o.size, focus=(i,))


def _ask_count(rng: random.Random) -> Question:
    scene = sample_scene(rng)
    return Question(
        scene=scene,
        qtype="count",
        question="how many objects are there ?",
        answer=NUMBERS[len(scene.objects)],
    )


def _ask_count_of(rng: random.Random, attribute: str) -> Question:
    """How many red objects / squares: the count (0-3) is drawn first, so answers are balanced."""
    k = rng.randint(0, 3)
    n = rng.randint(max(k, 1), MAX_OBJECTS)
    kinds = [(s, c) for s in SHAPES for c in COLORS]
    if attribute == "color":
        value = rng.choice(COLORS)
        hits = [(s, value) for s in rng.sample(SHAPES, k)]
        others = rng.sample([kc for kc in kinds if kc[1] != value], n - k)
        question = f"how many {value} objects are there ?"
    else:
        value = rng.choice(SHAPES)
        hits = [(value, c) for c in rng.sample(COLORS, k)]
        others = rng.sample([kc for kc in kinds if kc[0] != value], n - k)
        question = f"how many {PLURALS[value]} are there ?"
    scene = make_scene(rng, [(s, c, rng.choice(SIZES)) for s, c in hits + others])
    focus = tuple(i for i, o in enumerate(scene.objects) if getattr(o, attribute) == value)
    return Question(
        scene=scene,
        qtype=f"count_{attribute}",
        question=question,
        answer=NUMBERS[k],
        focus=focus,
        about=value,
    )


def _ask_exist(rng: random.Random, yes: bool) -> Question:
    scene = sample_scene(rng)
    present = {(o.color, o.shape) for o in scene.objects}
    if yes:
        color, shape = rng.choice(sorted(present))
    else:  # absent, but sharing a color or a shape with something that is there
        near = [
            (c, s)
            for c in COLORS
            for s in SHAPES
            if (c, s) not in present and any(c == pc or s == ps for pc, ps in present)
        ]
        color, shape = rng.choice(near)
    question = f"is there a {color} {shape} ?"
    focus = tuple(i for i, o in enumerate(scene.objects) if (o.color, o.shape) == (color, shape))
    return Question(scene=scene, qtype="exist", question=question, answer="yes" if yes else "no", focus=focus)


def _ask_relation(rng: random.Random) -> Question | None:
    """What is left of X: only asked when exactly one object is."""
    rel = rng.choice(RELATIONS)
    scene = sample_scene(rng, rng.randint(2, MAX_OBJECTS))
    triples = scene.relations()
    anchors = [j for j in range(len(scene.objects)) if sum(r == rel and b == j for _, r, b in triples) == 1]
    if not anchors:
        return None
    j = rng.choice(anchors)
    (i,) = [a for a, r, b in triples if r == rel and b == j]
    question = f"what is {rel} {short_name(scene.objects[j], scene)} ?"
    answer = full_name(scene.objects[i])
    return Question(
        scene=scene, qtype="relation", question=question, answer=answer, focus=(i, j), relation=rel
    )


def _ask_relation_yesno(rng: random.Random, yes: bool) -> Question | None:
    """Is X left of Y: asked of related pairs only; a no asks one of the three false relations."""
    scene = sample_scene(rng, rng.randint(2, MAX_OBJECTS))
    triples = scene.relations()
    if not triples:
        return None
    i, true_rel, j = rng.choice(triples)
    rel = true_rel if yes else rng.choice([r for r in RELATIONS if r != true_rel])
    a, b = (short_name(scene.objects[k], scene) for k in (i, j))
    return Question(
        scene=scene,
        qtype="relation_yesno",
        question=f"is {a} {rel} {b} ?",
        answer="yes" if yes else "no",
        focus=(i, j),
        relation=rel,
    )


def ask(rng: random.Random, qtype: str, *, yes: bool = True, split: str | None = None) -> Question:
    """A question of ``qtype`` about a fresh scene of ``split`` (``yes`` sets yes/no answers)."""
    builders: dict[str, Callable[[random.Random], Question | None]] = {
        "color": _ask_color,
        "shape": _ask_shape,
        "size": _ask_size,
        "count": _ask_count,
        "count_color": lambda r: _ask_count_of(r, "color"),
        "count_shape": lambda r: _ask_count_of(r, "shape"),
        "exist": lambda r: _ask_exist(r, yes),
        "relation": _ask_relation,
        "relation_yesno": lambda r: _ask_relation_yesno(r, yes),
    }
    build = builders[qtype]

    def attempt(r: random.Random) -> tuple[Scene, Question] | None:
        q = build(r)
        return None if q is None else (q.scene, q)

    return sample_in_split(rng, split, attempt)[1]


def ask_many(
    rng: random.Random, n: int, qtypes: Sequence[str] = QTYPES, split: str | None = None
) -> list[Question]:
    """``n`` questions, qtypes balanced, and yes/no alternating within each yes/no qtype."""
    seen: dict[str, int] = {}
    questions = []
    for qtype in balanced(rng, n, qtypes):
        seen[qtype] = seen.get(qtype, 0) + 1
        questions.append(ask(rng, qtype, yes=seen[qtype] % 2 == 1, split=split))
    return questions


def wrong_answer(rng: random.Random, q: Question) -> str:
    """A plausible wrong answer: another color/shape (one in the picture if possible), count +-1, ..."""
    scene = q.scene
    if q.qtype in YES_NO_QTYPES:
        return "no" if q.answer == "yes" else "yes"
    if q.qtype in ("color", "shape"):
        values = COLORS if q.qtype == "color" else SHAPES
        seen = [v for v in (getattr(o, q.qtype) for o in scene.objects) if v != q.answer]
        return (
            rng.choice(seen)
            if seen and rng.random() < 0.7
            else rng.choice([v for v in values if v != q.answer])
        )
    if q.qtype == "size":
        return "large" if q.answer == "small" else "small"
    if q.qtype.startswith("count"):
        k = NUMBERS.index(q.answer)
        low = 1 if q.qtype == "count" else 0
        near = [v for v in (k - 1, k + 1) if low <= v <= MAX_OBJECTS]
        return NUMBERS[rng.choice(near)]
    # relation: another object in the picture, else a near miss of the right one
    others = [full_name(o) for o in scene.objects if full_name(o) != q.answer]
    if others:
        return rng.choice(others)
    o = scene.objects[q.focus[0]]
    return f"the {rng.choice([c for c in COLORS if c != o.color])} {o.shape}"


def where_everything_is(scene: Scene) -> str:
    """``the red cross is at middle left . the green circle is at middle right .`` (reading order)."""
    return " ".join(f"{full_name(o)} is at {o.position} ." for o in scene.objects)


def relation_steps(q: Question) -> str:
    """Where the two named objects are, then how they relate, each step read off the ones before it.

    ``is the cross left of the circle ?`` -> ``the red cross is at top left . the green circle is at top
    right . the red cross is left of the green circle .``; ``what is left of the circle ?`` writes the
    circle's position first, then the object found from it. Training only (the ``cot_steps`` mixture
    entry): the relation chains' alternative to listing every object.
    """
    subject, anchor = (q.scene.objects[k] for k in q.focus)
    first, second = (anchor, subject) if q.qtype == "relation" else (subject, anchor)
    return (
        f"{full_name(first)} is at {first.position} . {full_name(second)} is at {second.position} . "
        f"{full_name(subject)} is {relation(subject, anchor)} {full_name(anchor)} ."
    )


def chain_of_thought(q: Question, answer: str | None = None, *, steps_for_relations: bool = False) -> str:
    """A short worked answer ending in ``so the answer is X .`` (``answer`` overrides the conclusion).

    Relation chains list every object's position, or with ``steps_for_relations`` the two named
    objects' positions and their relation (:func:`relation_steps`).
    """
    scene = q.scene
    if q.qtype.startswith("count"):
        steps = "there is " + join_list([f"a {o.color} {o.shape}" for o in scene.objects]) + " ."
        if q.qtype != "count":
            hits = [scene.objects[i] for i in q.focus]
            if q.qtype == "count_color":
                head, names = f"{q.about} objects", [o.shape for o in hits]
            else:
                head, names = PLURALS[q.about], [o.color for o in hits]
            steps += f" {head} : {' , '.join(names) or 'none'} ."
    elif q.qtype in ("relation", "relation_yesno"):
        steps = relation_steps(q) if steps_for_relations else where_everything_is(scene)
    else:
        raise ValueError(f"no chain of thought for {q.qtype!r} questions")
    return f"{steps} {FINAL} {answer or q.answer} ."


# ------------------------------------------------------------------------------------------ generators


def _finish(items: list, language: str) -> list:
    return items if language == "en" else [it.translate(language) for it in items]


def make_caption(rng: Rng, n: int, language: str = "en", *, split: str | None = None) -> list[Item]:
    """``describe the image .`` -> ``a small red square and a large blue circle .``"""
    rng = as_rng(rng)
    items = []
    for _ in range(n):
        scene, _ = sample_in_split(rng, split, lambda r: (sample_scene(r), None))
        text = caption(scene)
        items.append(Item(task="caption", scene=scene, prompt=DESCRIBE, answer=text, meta={"label": text}))
    return _finish(items, language)


def lookup_hint(q: Question) -> str | None:
    """The intermediate fact a yes/no question turns on, in English, for training's auxiliary loss:
    the size of the object an existence question names (when it is there), the true relation of the
    pair a relation question names. None for other questions."""
    if q.qtype == "exist" and q.focus:
        return q.scene.objects[q.focus[0]].size
    if q.qtype == "relation_yesno":
        i, j = q.focus
        return relation(q.scene.objects[i], q.scene.objects[j])
    return None


def position_hints(q: Question) -> list[list[str]]:
    """For a relation question, each object it names with its coordinate on the asked relation's axis
    (its column word for left / right, its row word for above / below), in English: the operands the
    relation compares, for training's auxiliary loss. Empty for other questions."""
    if q.qtype not in ("relation", "relation_yesno"):
        return []
    horizontal = q.relation in ("left of", "right of")
    named = q.focus[1:] if q.qtype == "relation" else q.focus  # "what is left of X": only X is named
    return [
        [
            short_name(q.scene.objects[k], q.scene),
            COLUMNS[q.scene.objects[k].col] if horizontal else ROWS[q.scene.objects[k].row],
        ]
        for k in named
    ]


def _position_meta(q: Question) -> dict[str, Any]:
    """A relation question's :func:`position_hints` and the relation they are read against (else empty)."""
    positions = position_hints(q)
    return {"positions": positions, "relation": q.relation} if positions else {}


def _question_item(task: str, q: Question, prompt: str, answer: str) -> Item:
    meta = {"qtype": q.qtype, "label": q.answer, **_position_meta(q)}
    if (hint := lookup_hint(q)) is not None:
        meta["hint"] = hint
    return Item(task=task, scene=q.scene, prompt=prompt, answer=answer, meta=meta)


def make_vqa(
    rng: Rng,
    n: int,
    language: str = "en",
    *,
    split: str | None = None,
    qtypes: Sequence[str] = QTYPES,
) -> list[Item]:
    """Short answers to attribute, counting, existence and relation questions (``qtypes`` balanced)."""
    rng = as_rng(rng)
    items = [_question_item("vqa", q, q.question, q.answer) for q in ask_many(rng, n, qtypes, split)]
    return _finish(items, language)


def make_positions(rng: Rng, n: int, language: str = "en", *, split: str | None = None) -> list[Item]:
    """Where the objects are, for training only (no evaluation asks it): half ``describe the scene .`` ->
    every object's position in reading order (:func:`where_everything_is`, the relation chains' first
    steps), half ``what is at middle left ?`` -> the object there (three in four ask about an occupied
    cell) or ``none``. The scene graphs' relations and the relation chains need every position at once.
    """
    rng = as_rng(rng)
    items = []
    for i in range(n):
        scene, _ = sample_in_split(rng, split, lambda r: (sample_scene(r), None))
        if i % 2 == 0:
            prompt, answer = POSITIONS_PROMPT, where_everything_is(scene)
        else:
            taken = {(o.row, o.col): o for o in scene.objects}
            empty = [(r, c) for r in range(len(ROWS)) for c in range(len(COLUMNS)) if (r, c) not in taken]
            occupied = not empty or rng.random() < 0.75
            row, col = rng.choice(sorted(taken) if occupied else empty)
            prompt = f"what is at {ROWS[row]} {COLUMNS[col]} ?"
            answer = full_name(taken[row, col]) if occupied else "none"
        items.append(
            Item(task="positions", scene=scene, prompt=prompt, answer=answer, meta={"label": answer})
        )
    return _finish(items, language)


def make_scene_graph(rng: Rng, n: int, language: str = "en", *, split: str | None = None) -> list[Item]:
    """``give the scene graph .`` -> compact JSON of the objects and their relations."""
    rng = as_rng(rng)
    items = []
    for _ in range(n):
        scene, _ = sample_in_split(rng, split, lambda r: (sample_scene(r), None))
        graph = scene_graph(scene)
        items.append(
            Item(
                task="scene_graph",
                scene=scene,
                prompt=SCENE_GRAPH_PROMPT,
                answer=graph,
                meta={"label": graph},
            )
        )
    return _finish(items, language)


def make_cot(
    rng: Rng, n: int, language: str = "en", *, split: str | None = None, steps_for_relations: bool = False
) -> list[Item]:
    """Counting and relation questions + ``think step by step .`` -> a worked answer ending in the answer."""
    rng = as_rng(rng)
    chains = partial(chain_of_thought, steps_for_relations=steps_for_relations)
    questions = ask_many(rng, n, COT_QTYPES, split)
    items = [_question_item("cot", q, f"{q.question} {THINK}", chains(q)) for q in questions]
    return _finish(items, language)


def judge_prompt(question: str, candidate: str) -> str:
    return f"question : {question} answer : {candidate} . is the answer correct ?"


def make_judge(
    rng: Rng,
    n: int,
    language: str = "en",
    *,
    split: str | None = None,
    qtypes: Sequence[str] = QTYPES,
) -> list[JudgeItem]:
    """Question + candidate answer -> yes/no; half the candidates are plausible wrong answers."""
    rng = as_rng(rng)
    items = []
    for q, label in zip(ask_many(rng, n, qtypes, split), balanced(rng, n, ("yes", "no")), strict=True):
        candidate = q.answer if label == "yes" else wrong_answer(rng, q)
        meta = {"qtype": q.qtype, "label": label, "gold": q.answer, **_position_meta(q)}
        items.append(
            JudgeItem(
                task="judge",
                scene=q.scene,
                prompt=judge_prompt(q.question, candidate),
                answer=label,
                question=q.question,
                candidate=candidate,
                meta=meta,
            )
        )
    return _finish(items, language)
