"""The closed vocabulary, the word tokenizer, and the second surface language ``xx``.

``xx`` is English with every word swapped for an invented one (a fixed bijection) and two word-order
rules: adjectives follow their noun (``red square`` -> ``square red``) and a question's wh-phrase moves
to its end (``what color is the square ?`` -> ``is the square what color ?``). Punctuation, digits and
JSON keys stay as they are. Both rules are invertible on the texts the generators write, so
``translate(translate(t, "xx"), "en") == t``.
"""

from __future__ import annotations

import json
import random
import re
from functools import cache, lru_cache

from headvec.toyworld.scenes import COLORS, PLURALS, SHAPES, SIZES

LANGUAGES = ("en", "xx")
NUMBERS = ("zero", "one", "two", "three", "four")
FUNCTION_WORDS = (
    # questions, answers and prompts
    *("a", "the", "and", "is", "are", "there", "what", "how", "many", "it", "yes", "no", "none"),
    *("color", "shape", "size", "object", "objects", "question", "answer", "correct"),
    *("describe", "image", "give", "scene", "graph", "think", "step", "by", "so"),
    # relations and positions
    *("left", "right", "of", "above", "below", "at", "top", "middle", "bottom", "center"),
    # the reward-hacking biases
    *("looking", "carefully", "i", "can", "see", "that", "definitely", "certainly"),
)
ENGLISH_WORDS = tuple(sorted({*SHAPES, *PLURALS.values(), *COLORS, *SIZES, *NUMBERS, *FUNCTION_WORDS}))
JSON_KEYS = ("objects", "id", "shape", "color", "size", "relations", "subject", "relation", "object")
PUNCTUATION = (".", ",", "?", ":", "!", "-", "**", "{", "}", "[", "]", '"')
DIGITS = ("0", "1", "2", "3")

ADJECTIVES = frozenset((*SIZES, *COLORS))
NOUNS = frozenset((*SHAPES, *PLURALS.values(), "object", "objects"))
WH_NOUNS = frozenset(("color", "shape", "size"))
TERMINATORS = frozenset((".", "?", ":", "!"))

_TOKEN = re.compile(r"\*\*|[A-Za-z]+|\d|[^\sA-Za-z\d]")
_LEXICON_SEED = "toyworld-xx-1"


def tokenize_words(text: str) -> list[str]:
    """Split on whitespace and around punctuation (``**`` is one token, digits are single tokens)."""
    return _TOKEN.findall(text)


@cache
def lexicon() -> dict[str, str]:
    """The fixed English -> ``xx`` word bijection (invented CVC / CVCV words, none of them English)."""
    rng = random.Random(_LEXICON_SEED)
    taken = set(ENGLISH_WORDS) | set(JSON_KEYS)
    mapping = {}
    for word in ENGLISH_WORDS:
        while True:
            pattern = "cvc" if rng.random() < 0.5 else "cvcv"
            new = "".join(rng.choice("bdfgklmnprstvz" if p == "c" else "aeiou") for p in pattern)
            if new not in taken:
                break
        taken.add(new)
        mapping[word] = new
    return mapping


@cache
def _inverse_lexicon() -> dict[str, str]:
    return {v: k for k, v in lexicon().items()}


def vocabulary(language: str | None = None) -> list[str]:
    """Every token any generator writes (in ``language``, or in both), sorted."""
    shared = {*PUNCTUATION, *DIGITS, *JSON_KEYS}
    words = {"en": set(ENGLISH_WORDS), "xx": set(lexicon().values())}
    if language is None:
        return sorted(shared | words["en"] | words["xx"])
    _check_language(language)
    return sorted(shared | words[language])


@lru_cache(maxsize=1 << 14)
def translate(text: str, language: str) -> str:
    """Translate a generated text into ``language`` (either way; a text already in it is returned as is).

    A text starting with ``{`` is scene-graph JSON: its string values are translated, its keys are not.
    """
    _check_language(language)
    if ("xx" if _is_xx(text) else "en") == language:
        return text
    if text.startswith("{"):
        return json.dumps(_translate_json(json.loads(text), language), separators=(",", ":"))
    tokens = tokenize_words(text)
    if language == "xx":
        out = [_map(lexicon(), t) for t in _move_wh(_adjectives_after(tokens))]
    else:
        out = _move_wh_back(_adjectives_before([_map(_inverse_lexicon(), t) for t in tokens]))
    return " ".join(out)


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; choose one of {LANGUAGES}")


def _is_xx(text: str) -> bool:
    return any(t in _inverse_lexicon() for t in tokenize_words(text))


def _map(table: dict[str, str], token: str) -> str:
    if token in PUNCTUATION or token in DIGITS:
        return token
    if token not in table:
        raise ValueError(f"{token!r} is not in the toy-world vocabulary")
    return table[token]


def _translate_json(value, language: str):
    if isinstance(value, dict):
        return {key: _translate_json(v, language) for key, v in value.items()}
    if isinstance(value, list):
        return [_translate_json(v, language) for v in value]
    if isinstance(value, str):
        return translate(value, language)
    return value


def _adjectives_after(tokens: list[str]) -> list[str]:
    """``a small red square`` -> ``a square small red``."""
    out, run = [], []
    for t in tokens:
        if t in ADJECTIVES:
            run.append(t)
            continue
        out += [t, *run] if t in NOUNS and run else [*run, t]
        run = []
    return out + run


def _adjectives_before(tokens: list[str]) -> list[str]:
    """Undo :func:`_adjectives_after`: a noun's trailing adjectives move back in front of it."""
    out, i = [], 0
    while i < len(tokens):
        j = i + 1
        if tokens[i] in NOUNS:
            while j < len(tokens) and tokens[j] in ADJECTIVES:
                j += 1
        out += [*tokens[i + 1 : j], tokens[i]]
        i = j
    return out


def _segments(tokens: list[str]) -> list[list[str]]:
    segments, current = [], []
    for t in tokens:
        current.append(t)
        if t in TERMINATORS:
            segments.append(current)
            current = []
    return [*segments, current] if current else segments


def _wh_length(segment: list[str]) -> int:
    if segment[:2] == ["how", "many"]:
        return 2
    if segment[:1] == ["what"]:
        return 2 if len(segment) > 1 and segment[1] in WH_NOUNS else 1
    return 0


def _move_wh(tokens: list[str]) -> list[str]:
    """``what color is the square ?`` -> ``is the square what color ?``."""
    out = []
    for seg in _segments(tokens):
        n = _wh_length(seg) if seg[-1] == "?" else 0
        out += seg[n:-1] + seg[:n] + seg[-1:] if n else seg
    return out


def _move_wh_back(tokens: list[str]) -> list[str]:
    out = []
    for seg in _segments(tokens):
        body = seg[:-1]
        n = 0
        if seg[-1] == "?":
            if body[-2:] == ["how", "many"] or (
                len(body) >= 2 and body[-2] == "what" and body[-1] in WH_NOUNS
            ):
                n = 2
            elif body[-1:] == ["what"]:
                n = 1
        out += body[len(body) - n :] + body[: len(body) - n] + seg[-1:] if n else seg
    return out
