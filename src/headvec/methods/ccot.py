"""Compositional chain-of-thought (CCoT; Mitra et al., CVPR 2024, arXiv 2311.17076).

Zero-shot and two calls per question: the model first writes a scene graph for the image and the
question *without* its answer options (the official prompt, greedy, at most 256 new tokens), then answers
the full question with that scene graph in its context. The graph is free text: the paper never parses
it, so an answer step gets it whether or not it is valid JSON; validity is measured and reported beside
the answers. The answer-conditioned variant (LLaVA-Bench script, three calls) answers first, writes a
graph conditioned on question and answer, then asks for an improved answer.

Generation goes through a :class:`Generator`: :class:`LocalGenerator` for any model headvec loads (its own
chat template, :meth:`~headvec.engine.HeadEngine.generate`), :class:`EndpointGenerator` for any
OpenAI-compatible endpoint (the client of :class:`~headvec.rewards.judges.OpenAIJudge`). Baselines: the
direct answer and zero-shot chain of thought ("Let's think step by step").

Scene-graph quality is scored against ground truth (:func:`graph_quality`): object, attribute and
relation precision and recall, with relations compared in one canonical direction.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from headvec.errors import DataError, HeadvecError

# ----------------------------------------------------------------------------------------- prompts
# Verbatim from chancharikmitra/CCoT @ 9ceecb7, LLaVA-1.5-13b/LLaVA_SEED.py (sgPrompt, answerPrompt).
OFFICIAL_GRAPH_PROMPT = (
    "\nFor the provided image and its associated question, generate a scene graph in JSON format that "
    "includes the following:\n"
    "1. Objects that are relevant to answering the question\n"
    "2. Object attributes that are relevant to answering the question\n"
    "3. Object relationships that are relevant to answering the question\n\n"
    "Scene Graph:\n"
)
OFFICIAL_ANSWER_PROMPT = "Use the image and scene graph as context and answer the following question: "
# Verbatim from LLaVA-1.5-13b/LLaVA_bench.py: the answer-conditioned (three-call) variant.
OFFICIAL_REFINE_GRAPH_PROMPT = (
    "\n\nFor the provided image and question-answer pair, generate a scene graph in JSON format to improve "
    "the quality and/or detail of the answer. The scene graph can include the following:\n"
    "1. Objects that are relevant to answering the question.\n"
    "2. Object attributes that are relevant to answering the question.\n"
    "3. Object relationships that are relevant to answering the question.\n\n"
    "Scene Graph:\n"
)
OFFICIAL_REFINE_ANSWER_PROMPT = (
    "Use the image and scene graph as context to improve the detail and clarity of the original answer: "
)
ZERO_SHOT_COT = "Let's think step by step."
MULTIPLE_CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class CCoTPrompts:
    """How each call is worded. Fields are ``str.format`` templates over ``{stem}`` (the question
    without options), ``{question}`` (the full question: options and answer-format instruction
    included), ``{graph}`` and ``{answer}`` (a first answer, in the answer-conditioned variant)."""

    name: str
    graph: str
    answer: str
    direct: str
    cot: str
    refine_graph: str
    refine_answer: str
    instructions: bool = True  # add the answer-format instruction to the full question

    def full_question(self, item: VQAItem) -> str:
        """The question as step 2 and the baselines ask it: options as ``A. ...`` lines, then the
        official answer-format instruction (letter for multiple choice, short answer otherwise)."""
        text = item.question
        if item.options:
            text += "".join(
                f"\n{letter}. {option}" for letter, option in zip(LETTERS, item.options, strict=False)
            )
        if self.instructions:
            text += "\n" + (MULTIPLE_CHOICE_INSTRUCTION if item.options else SHORT_ANSWER_INSTRUCTION)
        return text


OFFICIAL_PROMPTS = CCoTPrompts(
    name="official",
    graph="{stem}" + OFFICIAL_GRAPH_PROMPT,
    answer=" Scene Graph: {graph}\n\n" + OFFICIAL_ANSWER_PROMPT + "{question}",
    direct="{question}",
    cot="{stem}\n" + ZERO_SHOT_COT,  # no "answer directly" instruction: it would contradict the CoT
    refine_graph="Question: {stem}\nAnswer: {answer}\n\n" + OFFICIAL_REFINE_GRAPH_PROMPT,
    refine_answer=OFFICIAL_REFINE_ANSWER_PROMPT
    + "\n\nScene Graph: {graph}\n\nQuestion: {question}\nOriginal Answer: {answer}\nImproved Answer: ",
)

# The toy model knows only its closed vocabulary (other words become <unk>) and was trained on
# "give the scene graph ." (no question: its graphs describe the whole scene), on bare questions, and on
# "<question> think step by step ." ending in "so the answer is X .". Each official prompt maps onto the
# nearest text the toy can read; docs/ccot.md lists the mapping and what the toy does with it.
TOYWORLD_PROMPTS = CCoTPrompts(
    name="toyworld",
    graph="give the scene graph .",
    answer="scene graph : {graph} question : {question}",
    direct="{question}",
    cot="{stem} think step by step .",
    refine_graph="question : {stem} answer : {answer} . give the scene graph .",
    refine_answer="scene graph : {graph} question : {question} answer : {answer} .",
    instructions=False,
)
# The same, but step 1 also gets the question, as the official prompt does (the toy was never trained
# on that combination; measured in docs/ccot.md).
TOYWORLD_QUESTION_PROMPTS = CCoTPrompts(
    **{**TOYWORLD_PROMPTS.__dict__, "name": "toyworld-question", "graph": "{stem} give the scene graph ."}
)
PROMPTS = {p.name: p for p in (OFFICIAL_PROMPTS, TOYWORLD_PROMPTS, TOYWORLD_QUESTION_PROMPTS)}

LETTERS = "ABCDEFGHIJ"
METHODS = ("direct", "cot", "ccot", "ccot_answer", "ccot_gold")
GRAPH_METHODS = ("ccot", "ccot_answer")


def get_prompts(name: str) -> CCoTPrompts:
    try:
        return PROMPTS[name]
    except KeyError:
        raise HeadvecError(f"unknown CCoT prompts {name!r}; use one of {', '.join(PROMPTS)}") from None


# ------------------------------------------------------------------------------------------- items
@dataclass
class VQAItem:
    """A question about an image. ``options`` makes it multiple choice (``answer`` is then the letter);
    ``graph_truth`` (a toy-world scene-graph JSON string) enables graph scoring and the gold-graph
    control."""

    question: str
    image: Any
    answer: str | None = None
    options: tuple[str, ...] = ()
    qtype: str = ""
    graph_truth: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def check_items(items: Sequence[VQAItem]) -> None:
    """Fail before any generation, in one line, on a missing or unreadable image."""
    from headvec.models import load_image

    if not items:
        raise DataError("no questions to answer; give at least one item")
    for number, item in enumerate(items, start=1):
        if item.image is None:
            raise DataError(f"item {number} has no image; CCoT asks about an image, give one per question")
        item.image = load_image(item.image)  # a missing path is a one-line DataError naming it
        if len(item.options) > len(LETTERS):
            raise DataError(f"item {number} has {len(item.options)} options; at most {len(LETTERS)}")


# --------------------------------------------------------------------------------------- generators
class Generator(Protocol):
    """Greedy text for (user text, image) requests: one user turn each, the image with it."""

    def generate(self, requests: Sequence[tuple[str, Any]], max_new_tokens: int) -> list[str]: ...


class LocalGenerator:
    """A headvec-loaded model: its own chat template (``build_prompt``), greedy ``HeadEngine.generate``."""

    def __init__(self, loaded: Any, *, batch_size: int = 16) -> None:
        from headvec.engine import HeadEngine

        self.loaded, self.engine, self.batch_size = loaded, HeadEngine(loaded), batch_size

    def generate(self, requests: Sequence[tuple[str, Any]], max_new_tokens: int) -> list[str]:
        prompts = [self.loaded.build_prompt(text, [image]) for text, image in requests]
        outputs = self.engine.generate(prompts, max_new_tokens, batch_size=self.batch_size)
        return [output.strip() for output in outputs]


class EndpointGenerator:
    """Any OpenAI-compatible chat endpoint, through :class:`~headvec.rewards.judges.OpenAIJudge`'s client
    (timeouts, retries with backoff, one-line errors); temperature 0, as the official scripts run."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 8,
    ) -> None:
        from headvec.rewards.judges import OpenAIJudge, PairwiseTemplate

        plain = PairwiseTemplate("ccot", build=lambda prompt, a, b: prompt, parse=lambda output: None)
        self.client = OpenAIJudge(
            base_url,
            model,
            plain,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            concurrency=concurrency,
            temperature=0.0,
            top_p=1.0,
        )

    def generate(self, requests: Sequence[tuple[str, Any]], max_new_tokens: int) -> list[str]:
        self.client.max_tokens = max_new_tokens
        with ThreadPoolExecutor(max_workers=self.client.concurrency) as pool:
            outputs = pool.map(lambda request: self.client._chat(request[0], request[1], 0), requests)
            return [output.strip() for output in outputs]


# ------------------------------------------------------------------------------------------- CCoT
@dataclass
class CCoTOutput:
    """What one method produced for one item: the final text, the parsed answer, and the graph."""

    method: str
    output: str
    prediction: str | None
    graph: str | None = None
    graph_valid: bool | None = None
    first_answer: str | None = None


class CompositionalCoT:
    """CCoT and its baselines over a :class:`Generator`.

    Parameters
    ----------
    generator : Generator
        :class:`LocalGenerator` or :class:`EndpointGenerator`.
    prompts : CCoTPrompts, default=OFFICIAL_PROMPTS
        The wording of each call (:data:`TOYWORLD_PROMPTS` for the toy model).
    graph_max_new_tokens : int, default=256
        The official cap on the scene graph.
    answer_max_new_tokens : int, default=64
        Cap on the answer of step 2 and of the direct baseline.
    cot_max_new_tokens : int, default=256
        Cap on a zero-shot chain of thought.
    language : str, default="en"
        The toy world's language, for reading "so the answer is X" chains.
    """

    def __init__(
        self,
        generator: Generator,
        prompts: CCoTPrompts = OFFICIAL_PROMPTS,
        *,
        graph_max_new_tokens: int = 256,
        answer_max_new_tokens: int = 64,
        cot_max_new_tokens: int = 256,
        language: str = "en",
    ) -> None:
        self.generator, self.prompts = generator, prompts
        self.graph_max_new_tokens = graph_max_new_tokens
        self.answer_max_new_tokens = answer_max_new_tokens
        self.cot_max_new_tokens = cot_max_new_tokens
        self.language = language

    def _ask(
        self, template: str, items: Sequence[VQAItem], max_new_tokens: int, **per_item: list
    ) -> list[str]:
        requests = [
            (
                template.format(
                    stem=item.question,
                    question=self.prompts.full_question(item),
                    **{key: values[i] for key, values in per_item.items()},
                ),
                item.image,
            )
            for i, item in enumerate(items)
        ]
        return self.generator.generate(requests, max_new_tokens)

    def scene_graphs(self, items: Sequence[VQAItem]) -> list[str]:
        """Step 1: a scene graph per item from the image and the question without its options."""
        return self._ask(self.prompts.graph, items, self.graph_max_new_tokens)

    def answer_with_graphs(self, items: Sequence[VQAItem], graphs: Sequence[str]) -> list[str]:
        """Step 2: the full question with the graph (kept as text, valid JSON or not) in the context."""
        return self._ask(self.prompts.answer, items, self.answer_max_new_tokens, graph=list(graphs))

    def run(self, items: Sequence[VQAItem], method: str) -> list[CCoTOutput]:
        """Answer every item with ``method``: ``direct``, ``cot`` (zero-shot CoT), ``ccot`` (two calls),
        ``ccot_answer`` (answer-conditioned, three calls) or ``ccot_gold`` (step 2 with the item's true
        graph: how well the answer step reads a perfect graph)."""
        check_items(items)
        if method not in METHODS:
            raise HeadvecError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        graphs: list[str | None] = [None] * len(items)
        firsts: list[str | None] = [None] * len(items)
        if method == "direct":
            outputs = self._ask(self.prompts.direct, items, self.answer_max_new_tokens)
        elif method == "cot":
            outputs = self._ask(self.prompts.cot, items, self.cot_max_new_tokens)
        elif method == "ccot":
            graphs = list(self.scene_graphs(items))
            outputs = self.answer_with_graphs(items, graphs)  # type: ignore[arg-type]
        elif method == "ccot_gold":
            missing = [i + 1 for i, item in enumerate(items) if item.graph_truth is None]
            if missing:
                raise DataError(
                    f"ccot_gold needs the true scene graph of every item (item {missing[0]} has none); "
                    "drop ccot_gold from the methods"
                )
            graphs = [item.graph_truth for item in items]
            outputs = self.answer_with_graphs(items, graphs)  # type: ignore[arg-type]
        else:  # ccot_answer: original answer -> graph given question and answer -> improved answer
            firsts = list(self._ask(self.prompts.direct, items, self.answer_max_new_tokens))
            graphs = list(
                self._ask(self.prompts.refine_graph, items, self.graph_max_new_tokens, answer=firsts)
            )
            outputs = self._ask(
                self.prompts.refine_answer, items, self.answer_max_new_tokens, graph=graphs, answer=firsts
            )
        results = []
        for item, output, graph, first in zip(items, outputs, graphs, firsts, strict=True):
            valid = None if graph is None else parse_graph(graph) is not None
            prediction = parse_answer(output, item.options, self.language)
            results.append(CCoTOutput(method, output, prediction, graph, valid, first))
        return results


# ------------------------------------------------------------------------------------------ parsing
def parse_graph(text: str | None) -> dict | list | None:
    """The scene graph as JSON (an object or a list), or None when it is not JSON.

    Tried in order: the text as is; inside a Markdown code fence; with the toy model's word-level spacing
    undone (``{ " id " : 0`` -> ``{"id":0``); the first balanced ``{...}`` block. Keys and strings are
    stripped of surrounding spaces. Nothing else is repaired: a graph cut off by the token cap stays
    invalid.
    """
    if not text or not text.strip():
        return None
    from headvec.toyworld.evaluate import detokenize_json

    stripped = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", stripped, re.DOTALL)
    candidates = [stripped, fenced.group(1) if fenced else None, detokenize_json(stripped)]
    block = _first_braced(stripped)
    candidates += [block, detokenize_json(block) if block else None]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            parsed = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict | list):
            return _strip_strings(parsed)
    return None


def _strip_strings(value: Any) -> Any:
    """Keys and strings without surrounding spaces: word-level spacing (``" shape "``) is valid JSON."""
    if isinstance(value, dict):
        return {str(k).strip(): _strip_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_strings(v) for v in value]
    return value.strip() if isinstance(value, str) else value


def _first_braced(text: str) -> str | None:
    start = text.find("{")
    if start < 0:
        return None
    depth, in_string, escaped = 0, False, False
    for i, char in enumerate(text[start:], start):
        if in_string:
            escaped = char == "\\" and not escaped
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


_ANSWER_IS = re.compile(r"answer is\s*:?\s*(.+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-J])(?:[\).:]|\s|$)")


def parse_answer(text: str, options: Sequence[str] = (), language: str = "en") -> str | None:
    """The answer in a model's output, normalised for comparison (lower case; a letter upper case).

    A toy-world chain (``... so the answer is X .``) is read by
    :func:`~headvec.toyworld.tasks.parse_final_answer`; an English chain by its last "answer is X"; a
    multiple-choice answer is its letter (or the option whose text it repeats); anything else is the
    first line without a final period (:func:`~headvec.methods.mtv.normalize_answer`). None when nothing
    can be read.
    """
    from headvec.methods.mtv import normalize_answer
    from headvec.toyworld.tasks import parse_final_answer

    text = text.strip()
    if not text:
        return None
    chained = parse_final_answer(text, language) if language else None
    if chained is None:
        found = _ANSWER_IS.findall(text)
        chained = found[-1].strip() if found else None
    answer = chained.lstrip(": ") if chained is not None else text
    if options:
        letter = _LETTER.match(answer.strip())
        if letter and LETTERS.index(letter.group(1)) < len(options):
            return letter.group(1)
        normalized = normalize_answer(answer)
        for letter_, option in zip(LETTERS, options, strict=False):
            if normalized == normalize_answer(option):
                return letter_
        return None
    return normalize_answer(answer) or None


def is_correct(prediction: str | None, item: VQAItem) -> bool:
    """The parsed prediction equals the gold answer (a letter for multiple choice)."""
    from headvec.methods.mtv import normalize_answer

    if prediction is None or item.answer is None:
        return False
    if item.options:
        return prediction.upper() == item.answer.strip().upper()
    return prediction == normalize_answer(item.answer)


# ------------------------------------------------------------------------------------ graph quality
KINDS = ("objects", "attributes", "relations")
_CANONICAL = {"left of": ("left of", False), "right of": ("left of", True), "above": ("above", False)}
_CANONICAL["below"] = ("above", True)


@dataclass(frozen=True)
class GraphFacts:
    """A scene graph as countable facts: object categories (shapes), ``(shape, attribute, value)``
    attributes, and ``(subject, relation, object)`` relations between ``"color shape"`` names in one
    direction (``left of`` / ``above``: ``right of`` and ``below`` are swapped into them)."""

    objects: Counter
    attributes: Counter
    relations: Counter
    named: tuple[tuple[str | None, str | None, str | None], ...] = ()  # (shape, color, size) per object


def _words_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return re.findall(r"[a-z]+", value.lower())
    if isinstance(value, dict):
        return [w for v in value.values() for w in _words_of(v)]
    if isinstance(value, list | tuple):
        return [w for v in value for w in _words_of(v)]
    return []


def _describe(entry: Any) -> tuple[str | None, str | None, str | None]:
    """(shape, color, size) read from an object entry's words, whatever its keys (toy vocabulary)."""
    from headvec.toyworld.scenes import COLORS, PLURALS, SHAPES, SIZES

    singular = {plural: shape for shape, plural in PLURALS.items()}
    words = [singular.get(w, w) for w in _words_of(entry)]

    def first(allowed: Sequence[str]) -> str | None:
        return next((w for w in words if w in allowed), None)

    return first(SHAPES), first(COLORS), first(SIZES)


def graph_facts(graph: dict | list | str | None) -> GraphFacts:
    """Read a scene graph (parsed, or text that :func:`parse_graph` can read) into :class:`GraphFacts`.

    Objects are the entries of ``objects`` (a list, or a dict name -> entry); an object's shape, colour
    and size are the toy-world words among its values (any keys: ``shape``/``name``/``attributes``...).
    Relations are entries of ``relations`` (or ``relationships``) as dicts with subject / relation (or
    predicate) / object, or ``[subject, relation, object]`` lists; their ends are object ids, indices
    or names. An invalid graph gives no facts.
    """
    if isinstance(graph, str) or graph is None:
        graph = parse_graph(graph)
    empty = GraphFacts(Counter(), Counter(), Counter())
    if not isinstance(graph, dict):
        return empty
    raw_objects = graph.get("objects", [])
    if isinstance(raw_objects, dict):
        raw_objects = [
            {"name": key, **v} if isinstance(v, dict) else [key, v] for key, v in raw_objects.items()
        ]
    if not isinstance(raw_objects, list):
        raw_objects = []
    described = [_describe(entry) for entry in raw_objects]
    by_id: dict[str, tuple] = {}
    for index, (entry, desc) in enumerate(zip(raw_objects, described, strict=True)):
        by_id[str(index)] = desc
        if isinstance(entry, dict):
            for key in ("id", "name"):
                if key in entry and isinstance(entry[key], str | int):
                    by_id.setdefault(str(entry[key]), desc)
    objects = Counter(shape for shape, _, _ in described if shape)
    attributes: Counter = Counter()
    for shape, color, size in described:
        if shape:
            attributes.update(
                (shape, kind, value) for kind, value in (("color", color), ("size", size)) if value
            )
    relations: Counter = Counter()
    raw_relations = graph.get("relations", graph.get("relationships", []))
    for entry in raw_relations if isinstance(raw_relations, list) else []:
        triple = _relation_triple(entry, by_id)
        if triple is not None:
            relations[triple] += 1
    return GraphFacts(objects, attributes, +relations, tuple(described))


def _relation_triple(entry: Any, by_id: dict[str, tuple]) -> tuple[str, str, str] | None:
    if isinstance(entry, dict):
        subject = entry.get("subject", entry.get("source"))
        rel = entry.get("relation", entry.get("predicate", entry.get("relationship")))
        obj = entry.get("object", entry.get("target"))
    elif isinstance(entry, list | tuple) and len(entry) == 3:
        subject, rel, obj = entry
    else:
        return None
    if not isinstance(rel, str):
        return None
    canonical = _CANONICAL.get(" ".join(_words_of(rel)).replace("to the ", "").replace(" the", ""))
    ends = [_name(end, by_id) for end in (subject, obj)]
    if canonical is None or None in ends:
        return ("?", rel, "?")  # a relation the vocabulary cannot express: counted, never matched
    relation, swap = canonical
    a, b = ends[::-1] if swap else ends
    return (a, relation, b)  # type: ignore[return-value]


def _name(end: Any, by_id: dict[str, tuple]) -> str | None:
    desc = by_id.get(str(end)) if isinstance(end, str | int) else None
    shape, color, _ = desc if desc is not None else _describe(end)
    return f"{color} {shape}" if shape and color else None


@dataclass
class GraphScore:
    """True positives, predicted and gold counts of one graph, per kind of fact."""

    tp: dict[str, int]
    predicted: dict[str, int]
    gold: dict[str, int]

    def precision(self, kind: str) -> float | None:
        return self.tp[kind] / self.predicted[kind] if self.predicted[kind] else None

    def recall(self, kind: str) -> float | None:
        return self.tp[kind] / self.gold[kind] if self.gold[kind] else None


def graph_quality(predicted: dict | list | str | None, truth: dict | list | str) -> GraphScore:
    """Match a predicted scene graph's facts against the true graph's (multiset intersection per kind).

    Precision is undefined (None) for a graph with no facts of a kind, recall for a truth without any
    (e.g. relations of a one-object scene); an invalid predicted graph has no facts, so recall 0.
    """
    pred, gold = graph_facts(predicted), graph_facts(truth)
    tp, n_pred, n_gold = {}, {}, {}
    for kind in KINDS:
        p, g = getattr(pred, kind), getattr(gold, kind)
        tp[kind] = sum((p & g).values())
        n_pred[kind], n_gold[kind] = sum(p.values()), sum(g.values())
    return GraphScore(tp, n_pred, n_gold)


# ---------------------------------------------------------------------------- answers read off a graph
def answer_from_graph(question: Any, graph: dict | list | str | None) -> str | None:
    """The answer a toy-world question (:class:`~headvec.toyworld.tasks.Question`) has in this graph,
    read off by rule: what a perfect answer step would say given the model's own graph. None when the
    graph does not determine it (the named object missing or not unique)."""
    from headvec.toyworld.language import NUMBERS
    from headvec.toyworld.tasks import short_name

    facts = graph_facts(graph)
    objects = [o for o in facts.named if o[0] is not None]
    scene = question.scene

    def named(index: int) -> list[tuple]:
        target = scene.objects[index]
        by_shape_only = short_name(target, scene) == f"the {target.shape}"
        return [o for o in objects if o[0] == target.shape and (by_shape_only or o[1] == target.color)]

    def number(n: int) -> str:
        return NUMBERS[n] if n < len(NUMBERS) else str(n)

    def one(found: list[tuple]) -> tuple | None:
        return found[0] if len(found) == 1 else None

    qtype = question.qtype
    if qtype == "color":
        target = scene.objects[question.focus[0]]
        found = one([o for o in objects if o[0] == target.shape])
        return found[1] if found else None
    if qtype == "shape":
        target = scene.objects[question.focus[0]]
        found = one([o for o in objects if o[1] == target.color])
        return found[0] if found else None
    if qtype == "size":
        found = one(named(question.focus[0]))
        return found[2] if found else None
    if qtype == "count":
        return number(len(facts.named))
    if qtype in ("count_color", "count_shape"):
        slot = 1 if qtype == "count_color" else 0
        return number(sum(o[slot] == question.about for o in objects))
    if qtype == "exist":
        words = question.question.rstrip(" ?").split()
        color, shape = words[-2], words[-1]
        return "yes" if any(o[0] == shape and o[1] == color for o in objects) else "no"
    canonical, swap = _CANONICAL[question.relation]
    if qtype == "relation":
        anchor = one(named(question.focus[1]))
        if anchor is None:
            return None
        anchor_name = f"{anchor[1]} {anchor[0]}"
        hits = [
            (a if swap else b, a if not swap else b)
            for (a, rel, b) in facts.relations
            if rel == canonical and (a if swap else b) == anchor_name
        ]
        return f"the {hits[0][1]}" if len(hits) == 1 else None
    if qtype == "relation_yesno":
        ends = [one(named(i)) for i in question.focus]
        if None in ends:
            return None
        a, b = (f"{o[1]} {o[0]}" for o in ends)  # type: ignore[index]
        triple = (b, canonical, a) if swap else (a, canonical, b)
        return "yes" if facts.relations[triple] else "no"
    raise HeadvecError(f"no graph reading for {qtype!r} questions")
