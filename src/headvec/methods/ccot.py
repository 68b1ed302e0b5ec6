"""Compositional chain-of-thought (CCoT; Mitra et al., CVPR 2024, arXiv 2311.17076).

Zero-shot and two calls per question: the model first writes a scene graph for the image and the
question *without* its answer options (the official prompt, greedy, at most 256 new tokens), then answers
the full question with that scene graph in its context. The graph is free text: the paper never parses
it, so an answer step gets it whether or not it is valid JSON; validity is measured and reported beside
the answers. The answer-conditioned variant (LLaVA-Bench script, three calls) answers first, writes a
graph conditioned on question and answer, then asks for an improved answer.

Generation goes through a :class:`Generator`: :class:`LocalGenerator` for any model headvec loads (its own
chat template, :meth:`~headvec.engine.HeadEngine.generate`), :class:`EndpointGenerator` for any
OpenAI-compatible endpoint (the client of :class:`~headvec.rewards.judges.OpenAIJudge`, built by
:func:`headvec.evaluation.ccot.endpoint_generator`). Baselines: the
direct answer and zero-shot chain of thought ("Let's think step by step").

Scene-graph quality against the toy world's ground truth is in :mod:`headvec.toyworld.graphs`.
"""

from __future__ import annotations

import json
import re
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
    """Any OpenAI-compatible chat endpoint, through a client with the interface of
    :class:`~headvec.rewards.judges.OpenAIJudge` (timeouts, retries with backoff, one-line errors), run
    at temperature 0 as the official scripts are. :func:`headvec.evaluation.ccot.endpoint_generator`
    builds one from a URL."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def generate(self, requests: Sequence[tuple[str, Any]], max_new_tokens: int) -> list[str]:
        self.client.max_tokens = max_new_tokens
        with ThreadPoolExecutor(max_workers=getattr(self.client, "concurrency", 1)) as pool:
            outputs = pool.map(lambda request: self.client.chat(request[0], request[1], 0), requests)
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
    """

    def __init__(
        self,
        generator: Generator,
        prompts: CCoTPrompts = OFFICIAL_PROMPTS,
        *,
        graph_max_new_tokens: int = 256,
        answer_max_new_tokens: int = 64,
        cot_max_new_tokens: int = 256,
    ) -> None:
        self.generator, self.prompts = generator, prompts
        self.graph_max_new_tokens = graph_max_new_tokens
        self.answer_max_new_tokens = answer_max_new_tokens
        self.cot_max_new_tokens = cot_max_new_tokens

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
            prediction = parse_answer(output, item.options)
            results.append(CCoTOutput(method, output, prediction, graph, valid, first))
        return results


# ------------------------------------------------------------------------------------------ parsing
def parse_graph(text: str | None) -> dict | list | None:
    """The scene graph as JSON (an object or a list), or None when it is not JSON.

    Tried in order: the text as is; inside a Markdown code fence; the first balanced ``{...}`` block.
    Keys and strings are stripped of surrounding spaces, so the toy model's word-level spacing
    (``{ " id " : 0``, valid JSON) reads as ``{"id": 0}``. Nothing else is repaired: a graph cut off by
    the token cap stays invalid.
    """
    if not text or not text.strip():
        return None
    stripped = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", stripped, re.DOTALL)
    candidates = [stripped, fenced.group(1) if fenced else None, _first_braced(stripped)]
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


def parse_answer(text: str, options: Sequence[str] = ()) -> str | None:
    """The answer in a model's output, normalised for comparison (lower case; a letter upper case).

    A chain of thought is read at its last "answer is X" (the toy world's ``... so the answer is X .``
    too, as :func:`~headvec.toyworld.tasks.parse_final_answer` reads it in English); a multiple-choice
    answer is its letter (or the option whose text it repeats); anything else is the first line without
    a final period (:func:`~headvec.methods.mtv.normalize_answer`). None when nothing can be read.
    """
    from headvec.methods.mtv import normalize_answer

    text = text.strip()
    if not text:
        return None
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
