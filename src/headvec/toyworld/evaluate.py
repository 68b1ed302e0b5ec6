"""What the toy model can do, measured on held-out toy-world scenes through headvec's own inference path.

Every prompt is built with the model's chat template (``LoadedModel.build_prompt``) and answered by
greedy ``HeadEngine.generate``, exactly as the methods built on the toy model will see it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable

from tqdm.auto import tqdm

from headvec.engine import HeadEngine
from headvec.models import Example, LoadedModel, Prompt
from headvec.toyworld.episodes import ICL_TASKS
from headvec.toyworld.export import generate
from headvec.toyworld.language import LANGUAGES, translate
from headvec.toyworld.model import IMAGE_SIZE
from headvec.toyworld.tasks import parse_final_answer

VQA_GROUPS = {
    "color": "attribute",
    "shape": "attribute",
    "size": "attribute",
    "count": "counting",
    "count_color": "counting",
    "count_shape": "counting",
    "exist": "existence",
    "relation": "relation",
    "relation_yesno": "relation",
}


def detokenize_json(text: str) -> str:
    """Undo word-level spacing: tokens join with no space, except two words ('left of')."""
    out: list[str] = []
    for token in text.split():
        if out and out[-1][-1:].isalpha() and token[:1].isalpha():
            out.append(" ")
        out.append(token)
    return "".join(out)


def _answers(engine: HeadEngine, prompts: list[Prompt], max_new_tokens: int, batch_size: int) -> list[str]:
    return [a.strip() for a in engine.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)]


def _rate(hits: list[bool]) -> float:
    return round(sum(hits) / len(hits), 4) if hits else float("nan")


def evaluate_toy_model(
    loaded: LoadedModel,
    n: int = 200,
    seed: int = 1,
    languages: tuple[str, ...] = LANGUAGES,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Accuracy per capability and language on ``n`` held-out (test-split) items per task.

    Besides one entry per language, ``mean_other`` averages the languages other than English.
    """
    engine = HeadEngine(loaded)
    results: dict[str, dict[str, float]] = {}
    steps: list[tuple[str, Callable[[str], dict[str, float]]]] = []

    def single_turn(task: str, max_new_tokens: int, language: str):
        items = generate(task, seed, n, "test", language)
        prompts = [loaded.build_prompt(item.prompt, [item.image(IMAGE_SIZE)]) for item in items]
        return items, _answers(engine, prompts, max_new_tokens, batch_size)

    def vqa(language: str) -> dict[str, float]:
        items, answers = single_turn("vqa", 8, language)
        groups: dict[str, list[bool]] = defaultdict(list)
        for item, answer in zip(items, answers, strict=True):
            group = VQA_GROUPS[item.meta["qtype"]]
            groups[group].append(answer == item.answer)
            if group == "attribute":
                groups[f"attribute_{len(item.scene.objects)}_objects"].append(answer == item.answer)
        return {f"vqa_{group}": _rate(hits) for group, hits in sorted(groups.items())}

    def judge(language: str) -> dict[str, float]:
        items, answers = single_turn("judge", 3, language)
        groups: dict[str, list[bool]] = defaultdict(list)
        for item, answer in zip(items, answers, strict=True):
            groups["judge"].append(answer == item.answer)
            groups[f"judge_{VQA_GROUPS[item.meta['qtype']]}"].append(answer == item.answer)
        return {name: _rate(hits) for name, hits in groups.items()}

    def scene_graph(language: str) -> dict[str, float]:
        items, answers = single_turn("scene_graph", 260, language)
        valid, exact = [], []
        for item, answer in zip(items, answers, strict=True):
            try:
                parsed = json.loads(detokenize_json(answer))
                valid.append(isinstance(parsed, dict))
            except json.JSONDecodeError:
                parsed = None
                valid.append(False)
            exact.append(parsed == json.loads(item.answer))
        return {"scene_graph_valid_json": _rate(valid), "scene_graph_exact": _rate(exact)}

    def cot(language: str) -> dict[str, float]:
        items, answers = single_turn("cot", 80, language)
        hits = [
            parse_final_answer(a, language) == parse_final_answer(i.answer, language)
            for i, a in zip(items, answers, strict=True)
        ]
        return {"cot_final_answer": _rate(hits)}

    def caption(language: str) -> dict[str, float]:
        items, answers = single_turn("caption", 40, language)
        return {"caption_exact": _rate([a == i.answer for i, a in zip(items, answers, strict=True)])}

    def icl(language: str) -> dict[str, float]:
        episodes = generate("icl", seed, n, "test", language)
        answer_sets = {
            task: {translate(e.query.labels[task], language) for e in episodes} for task in ICL_TASKS
        }
        scores: dict[str, float] = {}
        for shots in (0, 1, 4):
            prompts = [
                loaded.build_prompt(
                    e.prompt,
                    [e.query.image(IMAGE_SIZE)],
                    examples=[Example(e.prompt, [s.image(IMAGE_SIZE)], s.answer) for s in e.shots[:shots]],
                )
                for e in episodes
            ]
            answers = _answers(engine, prompts, 3, batch_size)
            scores[f"icl_{shots}shot"] = _rate(
                [a == e.query.answer for e, a in zip(episodes, answers, strict=True)]
            )
            scores[f"icl_{shots}shot_task_inferred"] = _rate(
                [a in answer_sets[e.icl_task] for e, a in zip(episodes, answers, strict=True)]
            )
        return scores

    steps = [
        ("vqa", vqa),
        ("judge", judge),
        ("icl", icl),
        ("cot", cot),
        ("caption", caption),
        ("scene_graph", scene_graph),
    ]
    with tqdm(total=len(steps) * len(languages), desc="toyworld eval", disable=not progress) as bar:
        for language in languages:
            scores: dict[str, float] = {}
            for name, step in steps:
                bar.set_postfix(task=name, language=language)
                scores.update(step(language))
                bar.update()
            results[language] = scores
    others = [results[lang] for lang in languages if lang != "en"]
    if others:
        results["mean_other"] = {
            metric: round(sum(r[metric] for r in others) / len(others), 4) for metric in others[0]
        }
    return results
