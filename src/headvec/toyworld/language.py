"""The closed vocabulary, the word tokenizer, and the synthetic surface languages.

English (``en``) is the language every generator writes; each synthetic language is English with every
word swapped for an invented one (a fixed bijection drawn from the language's own sound inventory) and
its own word order, built from two invertible rules:

- adjectives follow their noun (``red square`` -> ``square red``);
- a question's wh-phrase moves to its end (``what color is the square ?`` -> ``is the square what color ?``).

| language | adjectives | wh-phrase | words look like |
|---|---|---|---|
| ``en`` | before the noun | first | English |
| ``xx`` | after the noun | last | ``dob``, ``kaze`` |
| ``yy`` | after the noun | first | ``halu``, ``wimo`` |
| ``zz`` | before the noun | last | ``grek``, ``shod`` |

Punctuation, digits and JSON keys stay as they are. The lexicons are disjoint, so the language of a
text is read off its words, and ``translate(translate(t, "xx"), "en") == t`` for every generated text.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import cache, lru_cache

from headvec.toyworld.scenes import COLORS, PLURALS, SHAPES, SIZES

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


@dataclass(frozen=True)
class Grammar:
    """How a synthetic language differs from English: its word order and the sounds of its words."""

    adjectives_after: bool
    wh_last: bool
    onsets: tuple[str, ...]  # consonant (clusters) a syllable may start with
    vowels: str
    codas: str  # consonants a word may end with ("" = words end in a vowel)
    lexicon_seed: str


GRAMMARS = {
    "xx": Grammar(True, True, tuple("bdfgklmnprstvz"), "aeiou", "bdfgklmnprstvz", "toyworld-xx-1"),
    "yy": Grammar(True, False, tuple("hjlmnpw"), "aiu", "", "toyworld-yy-1"),
    "zz": Grammar(
        False, True, ("gr", "kr", "sh", "tr", "br", "pl", "dw", "sk"), "eoy", "kxdq", "toyworld-zz-1"
    ),
}
LANGUAGES = ("en", *GRAMMARS)


def tokenize_words(text: str) -> list[str]:
    """Split on whitespace and around punctuation (``**`` is one token, digits are single tokens)."""
    return _TOKEN.findall(text)


def _invent(rng: random.Random, grammar: Grammar) -> str:
    if grammar.codas:  # CVC or CVCV, the coda letters drawn from the language's own set
        pattern = "cvc" if rng.random() < 0.5 else "cvcv"
    else:  # open syllables only: CVCV or CVCVCV
        pattern = "cvcv" if rng.random() < 0.5 else "cvcvcv"
    word, last = [], len(pattern) - 1
    for i, slot in enumerate(pattern):
        if slot == "v":
            word.append(rng.choice(grammar.vowels))
        else:
            word.append(rng.choice(grammar.codas if i == last and grammar.codas else grammar.onsets))
    return "".join(word)


@cache
def _lexicons() -> dict[str, dict[str, str]]:
    """Every synthetic language's English -> word bijection, drawn in a fixed order so none share a word."""
    taken = set(ENGLISH_WORDS) | set(JSON_KEYS)
    lexicons = {}
    for language, grammar in GRAMMARS.items():
        rng = random.Random(grammar.lexicon_seed)
        mapping = {}
        for word in ENGLISH_WORDS:
            new = _invent(rng, grammar)
            while new in taken:
                new = _invent(rng, grammar)
            taken.add(new)
            mapping[word] = new
        lexicons[language] = mapping
    return lexicons


def lexicon(language: str = "xx") -> dict[str, str]:
    """The fixed English -> ``language`` word bijection."""
    _check_language(language)
    if language == "en":
        return {w: w for w in ENGLISH_WORDS}
    return _lexicons()[language]


@cache
def _word_language() -> dict[str, str]:
    """Which synthetic language each invented word belongs to."""
    return {word: language for language, table in _lexicons().items() for word in table.values()}


@cache
def _inverse_lexicon(language: str) -> dict[str, str]:
    return {v: k for k, v in _lexicons()[language].items()}


def vocabulary(language: str | None = None) -> list[str]:
    """Every token any generator writes (in ``language``, or in all languages), sorted."""
    shared = {*PUNCTUATION, *DIGITS, *JSON_KEYS}
    if language is None:
        return sorted(shared.union(*(lexicon(lang).values() for lang in LANGUAGES)))
    return sorted(shared | set(lexicon(language).values()))


def language_of(text: str) -> str:
    """The language a generated text is written in (``en`` when it holds no invented word)."""
    words = _word_language()
    for token in tokenize_words(text):
        if token in words:
            return words[token]
    return "en"


@lru_cache(maxsize=1 << 15)
def translate(text: str, language: str) -> str:
    """Translate a generated text into ``language`` (from any language; a text already in it is kept).

    A text starting with ``{`` is scene-graph JSON: its string values are translated, its keys are not.
    """
    _check_language(language)
    source = language_of(text)
    if source == language:
        return text
    if text.startswith("{"):
        return json.dumps(_translate_json(json.loads(text), language), separators=(",", ":"))
    tokens = tokenize_words(text)
    if source != "en":  # back to English first
        grammar = GRAMMARS[source]
        tokens = [_map(_inverse_lexicon(source), t) for t in tokens]
        tokens = _adjectives_before(tokens) if grammar.adjectives_after else tokens
        tokens = _move_wh_back(tokens) if grammar.wh_last else tokens
    if language != "en":
        grammar = GRAMMARS[language]
        tokens = _adjectives_after(tokens) if grammar.adjectives_after else tokens
        tokens = _move_wh(tokens) if grammar.wh_last else tokens
        tokens = [_map(lexicon(language), t) for t in tokens]
    return " ".join(tokens)


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; choose one of {LANGUAGES}")


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
