"""Write the toy world to disk: JSONL per task, split and language, and one PNG per distinct scene.

Layout of ``out_dir`` (image paths in the rows are relative to it, like every headvec JSONL)::

    <task>.<split>.<lang>.jsonl        caption, vqa, scene_graph, cot, judge, preference, icl
    vlrewardbench.<split>.<lang>.jsonl the preference pairs in VL-RewardBench's field layout
    images/<scene digest>.png          named by the scene, so a scene shared by rows is drawn once
    vocabulary.txt, manifest.json

Row ids (``vqa-train-00012``) and file bytes depend only on the seed and the counts. Each task and split
draws from its own seeded generator; test rows use only held-out scenes (:attr:`Scene.split`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from headvec.toyworld.episodes import Episode, Shot, make_icl
from headvec.toyworld.language import LANGUAGES, vocabulary
from headvec.toyworld.preferences import PreferenceExample, make_preference
from headvec.toyworld.scenes import OBJ_FIELDS, Scene, render
from headvec.toyworld.tasks import Example, make_caption, make_cot, make_judge, make_scene_graph, make_vqa

GENERATORS: dict[str, Callable[..., Sequence[Any]]] = {
    "caption": make_caption,
    "vqa": make_vqa,
    "scene_graph": make_scene_graph,
    "cot": make_cot,
    "judge": make_judge,
    "preference": make_preference,
    "icl": make_icl,
}
TASKS = tuple(GENERATORS)
VLRB_PREFIX = {
    "hallucination": "hallucination_pair",
    "reasoning": "toyworld_reasoning",
    "reward_hacking": "toyworld_hack",
    "flipped": "toyworld_flipped",
}
VLRB_FIELDS = (
    "id",
    "query",
    "image",
    "response",
    "human_ranking",
    "models",
    "query_source",
    "ground_truth",
    "category",
)
DEFAULT_COUNTS = {"train": 5000, "test": 500}


def derived_rng(seed: int, *parts: str) -> random.Random:
    """An independent generator per (seed, task, split); string seeds go through sha512, not ``hash()``."""
    return random.Random("/".join(("toyworld", str(seed), *parts)))


def generate(task: str, seed: int, n: int, split: str, language: str = "en") -> list:
    """The items of one task and split exactly as :func:`export` writes them."""
    return list(GENERATORS[task](derived_rng(seed, task, split), n, language, split=split))


class _Images:
    """Writes each distinct scene's PNG once and hands back its relative path."""

    def __init__(self, out: Path, size: int):
        self.out, self.size, self.done = out, size, set()
        (out / "images").mkdir(parents=True, exist_ok=True)

    def __call__(self, scene: Scene) -> str:
        name = f"images/{scene.digest}.png"
        if name not in self.done:
            render(scene, self.size).save(self.out / name)
            self.done.add(name)
        return name


def _shot_row(shot: Shot, images: _Images) -> dict:
    return {
        "image": images(shot.scene),
        "answer": shot.answer,
        "labels": shot.labels,
        "scene": _scene(shot.scene),
    }


def _scene(scene: Scene) -> dict:
    """What ``dataclasses.asdict`` gives (:meth:`Scene.from_dict` reads it back), a lot faster."""
    return {"objects": [{f: getattr(o, f) for f in OBJ_FIELDS} for o in scene.objects]}


def to_row(item: Example | Episode, row_id: str, images: _Images) -> dict:
    """One JSONL row: id, image path(s), the item's fields, and the scene graph it was built from."""
    if isinstance(item, Episode):
        fields = item.model_dump(exclude={"shots", "query"})
        shots = [_shot_row(s, images) for s in item.shots]
        return {"id": row_id, **fields, "shots": shots, "query": _shot_row(item.query, images)}
    fields = item.model_dump(exclude={"scene", "meta"})
    return {
        "id": row_id,
        "image": images(item.scene),
        **fields,
        "meta": item.meta,
        "scene": _scene(item.scene),
    }


def vlrewardbench_row(pair: PreferenceExample, row_id: str, image: str, chosen_first: bool) -> dict:
    """A pair in VL-RewardBench's layout; ``human_ranking`` [0, 1] means the first response is preferred."""
    response = [pair.chosen, pair.rejected] if chosen_first else [pair.rejected, pair.chosen]
    return {
        "id": row_id,
        "query": pair.query,
        "image": image,
        "response": response,
        "human_ranking": [0, 1] if chosen_first else [1, 0],
        "models": ["toyworld", "toyworld"],
        "query_source": "toyworld",
        "ground_truth": pair.ground_truth,
        "category": pair.category,
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def export(
    out_dir: str | Path,
    seed: int,
    n_per_task: int | Mapping[str, int],
    splits: Sequence[str] = ("train", "test"),
    *,
    tasks: Sequence[str] = TASKS,
    languages: Sequence[str] = LANGUAGES,
    image_size: int = 48,
) -> dict[str, int]:
    """Write every task's splits in every language; return ``{file name: rows}``."""
    out = Path(out_dir)
    images = _Images(out, image_size)
    files: dict[str, int] = {}
    for task in tasks:
        for split in splits:
            n = n_per_task if isinstance(n_per_task, int) else n_per_task[split]
            items = generate(task, seed, n, split)
            ids = [f"{task}-{split}-{i:05d}" for i in range(n)]
            order = derived_rng(seed, "vlrewardbench", split)
            chosen_first = [order.random() < 0.5 for _ in items]
            for language in languages:
                local = items if language == "en" else [item.translate(language) for item in items]
                name = f"{task}.{split}.{language}.jsonl"
                _write_jsonl(
                    out / name, [to_row(item, i, images) for item, i in zip(local, ids, strict=True)]
                )
                files[name] = n
                if task == "preference":
                    rows = [
                        vlrewardbench_row(
                            p, f"{VLRB_PREFIX[p.category]}-{split}-{k:05d}", images(p.scene), first
                        )
                        for k, (p, first) in enumerate(zip(local, chosen_first, strict=True))
                    ]
                    name = f"vlrewardbench.{split}.{language}.jsonl"
                    _write_jsonl(out / name, rows)
                    files[name] = n
    (out / "vocabulary.txt").write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    manifest = {
        "seed": seed,
        "n_per_task": n_per_task if isinstance(n_per_task, int) else dict(n_per_task),
        "splits": list(splits),
        "languages": list(languages),
        "image_size": image_size,
        "images": len(images.done),
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return files


def export_all(out_dir: str | Path, seed: int = 0) -> dict[str, int]:
    """Every task, both splits (5000 train / 500 test items each), both languages, 48 px images."""
    return export(out_dir, seed, DEFAULT_COUNTS)
