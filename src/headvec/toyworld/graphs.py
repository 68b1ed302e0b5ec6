"""Scene graphs of the toy world as countable facts: what a generated graph got right, and what it says.

:func:`graph_quality` scores a scene graph against the true one (object, attribute and relation
precision and recall, relations compared in one canonical direction); :func:`answer_from_graph` reads
a toy-world question's answer off a graph by rule. Both read any JSON schema whose values use the toy
world's words (``shape``/``name``/``attributes`` keys, ids or names for relation ends), so graphs written
by other models in other layouts are scored too.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headvec.errors import HeadvecError
from headvec.methods.ccot import parse_graph
from headvec.toyworld.language import NUMBERS
from headvec.toyworld.scenes import COLORS, PLURALS, SHAPES, SIZES
from headvec.toyworld.tasks import short_name

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
