"""A procedural vision-language toy world: simple objects on a grid, their scene graphs, and task data.

Small enough for a tiny LLaVA-style model to learn on a CPU, deterministic for a seed, with a closed
vocabulary (:func:`vocabulary`) in parallel surface languages (``en`` and the invented ``xx``, ``yy``,
``zz``, each with its own words and word order).

    import random
    from headvec.toyworld import make_vqa, export_all
    items = make_vqa(random.Random(0), 100)          # items[0].prompt, .answer, .image()
    export_all("data/toyworld", seed=0)              # JSONL + PNGs for every task
"""

from headvec.toyworld.episodes import ICL_PROMPT, ICL_TASKS, Episode, Shot, make_icl
from headvec.toyworld.export import TASKS, export, export_all, generate, vlrewardbench_row
from headvec.toyworld.language import (
    LANGUAGES,
    language_of,
    lexicon,
    tokenize_words,
    translate,
    vocabulary,
)
from headvec.toyworld.preferences import BIASES, CATEGORIES, PreferenceExample, make_preference
from headvec.toyworld.scenes import (
    COLORS,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    relation,
    render,
    sample_group,
    sample_scene,
)
from headvec.toyworld.tasks import (
    QTYPES,
    Item,
    JudgeItem,
    Question,
    ask,
    caption,
    chain_of_thought,
    make_caption,
    make_cot,
    make_judge,
    make_scene_graph,
    make_vqa,
    parse_final_answer,
    scene_graph,
)

__all__ = [
    "BIASES",
    "CATEGORIES",
    "COLORS",
    "ICL_PROMPT",
    "ICL_TASKS",
    "LANGUAGES",
    "QTYPES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "TASKS",
    "Episode",
    "Item",
    "JudgeItem",
    "Obj",
    "PreferenceExample",
    "Question",
    "Scene",
    "Shot",
    "ask",
    "caption",
    "chain_of_thought",
    "export",
    "export_all",
    "generate",
    "language_of",
    "lexicon",
    "make_caption",
    "make_cot",
    "make_icl",
    "make_judge",
    "make_preference",
    "make_scene_graph",
    "make_vqa",
    "parse_final_answer",
    "relation",
    "render",
    "sample_group",
    "sample_scene",
    "scene_graph",
    "tokenize_words",
    "translate",
    "vlrewardbench_row",
    "vocabulary",
]
