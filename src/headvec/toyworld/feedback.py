"""The VLFeedback loop on the toy world: instructions, a response pool of toy-model variants, an oracle
annotator reading the scene graph, hallucination metrics, and the whole pipeline (``headvec feedback run``).

- :func:`toy_instructions`: captions (``describe the image .``) and VQA questions on train-split scenes,
  images written as PNGs, the scene and the gold answer kept in each row's ``meta``.
- :func:`toy_generators`: the default pool, five behaviours of the one toy model (greedy, three sampling
  temperatures, greedy with attention heads ablated).
- :class:`OracleAnnotator`: ratings from the scene graph (captions: visual faithfulness from the share of
  named objects/attributes that are in the scene, helpfulness from the share of the scene described;
  VQA: right answer 5, wrong 1-2; ethics 5: nothing in the toy world is unethical).
- :class:`ToyJudgeAnnotator`: the toy model as judge through an OpenAI-compatible endpoint, asked its own
  yes/no judge prompt per response (yes = 5, no = 1). The official all-in-one prompt is
  :class:`~headvec.feedback.OpenAIAnnotator`; the toy model (512-token context, a 299-word vocabulary)
  cannot read it.
- :func:`caption_check`: the CHAIR-style check of a caption against its scene.
- :func:`evaluate_hallucination`: caption hallucination (CHAIR), existence / attribute / all VQA
  accuracy and the judge accuracy on held-out (test-split) scenes, per item, for bootstrap CIs.
- :func:`run_pipeline`: pool -> annotate -> pairs -> DPO -> evaluation before and after, each stage
  skipped when its output is already there (a rerun resumes).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headvec.errors import HeadvecError
from headvec.feedback.annotate import Annotation, annotate_file
from headvec.feedback.pairs import FeedbackPair, build_pairs, split_pairs
from headvec.feedback.pool import Instruction, build_pool
from headvec.feedback.schema import ASPECTS, AspectAnnotation, FeedbackRow, ImageStore, read_feedback
from headvec.rewards.verdicts import TOY_FORMAT, parse_yes_no
from headvec.stats import bootstrap_ci
from headvec.toyworld.scenes import COLORS, SHAPES, SIZES, Scene, render, sample_in_split, sample_scene
from headvec.toyworld.tasks import DESCRIBE, YES_NO_QTYPES, caption, make_judge, make_vqa

IMAGE_PX = 48  # the toy model's image size (headvec.toyworld.model.IMAGE_SIZE, without importing torch)
CAPTION_TOKENS = 40
VQA_TOKENS = 8
VQA_QTYPES = ("color", "shape", "size", "count", "exist")  # attribute, counting and existence questions
ATTRIBUTE_QTYPES = ("color", "shape", "size")

# ------------------------------------------------------------------------------------ instructions


def toy_instructions(n: int, seed: int, out_dir: str | Path, split: str = "train") -> list[Instruction]:
    """``n`` instructions on ``split`` scenes, half captions and half VQA (``VQA_QTYPES`` balanced); PNGs
    written under ``out_dir/images``, ``img_path`` relative to ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_captions = n // 2
    items: list[tuple[Scene, str, dict]] = []
    for _ in range(n_captions):
        scene, _ = sample_in_split(rng, split, lambda r: (sample_scene(r), None))
        items.append((scene, DESCRIBE, {"task": "caption", "answer": caption(scene)}))
    for q in make_vqa(rng, n - n_captions, split=split, qtypes=VQA_QTYPES):
        items.append((q.scene, q.prompt, {"task": "vqa", "qtype": q.meta["qtype"], "answer": q.answer}))
    order = list(range(len(items)))
    rng.shuffle(order)
    instructions = []
    for k, i in enumerate(order):
        scene, prompt, meta = items[i]
        img_path = f"images/{scene.digest}.png"
        if not (out_dir / img_path).is_file():
            render(scene, IMAGE_PX).save(out_dir / img_path)
        meta = {**meta, "scene": {"objects": [asdict(o) for o in scene.objects]}}
        instructions.append(Instruction(f"toy-{split}-{seed}-{k:05d}", prompt, img_path, meta))
    return instructions


def toy_generators(loaded: Any, *, seed: int = 0, batch_size: int = 32) -> list[Any]:
    """Five behaviours of one toy model, of measurably different quality: greedy; sampled at temperature
    0.7, 1.0 and 1.5; greedy with the heads of layers 0-1 ablated (zeroed at the answer positions)."""
    import torch

    from headvec.engine import HeadPatch
    from headvec.feedback.pool import LocalGenerator

    arch = loaded.arch
    mask = torch.zeros(arch.n_layers, arch.n_heads, dtype=torch.bool)
    mask[:2] = True
    ablation = HeadPatch(values=torch.zeros(arch.n_layers, arch.n_heads, arch.head_dim), mask=mask)

    def make(name: str, **kw: Any) -> LocalGenerator:
        return LocalGenerator(
            loaded, name, max_new_tokens=CAPTION_TOKENS, batch_size=batch_size, seed=seed, **kw
        )

    return [
        make("toy-greedy"),
        make("toy-t0.7", temperature=0.7),
        make("toy-t1.0", temperature=1.0),
        make("toy-t1.5", temperature=1.5),
        make("toy-ablated-l0-1", patch=ablation),
    ]


# ---------------------------------------------------------------------------- CHAIR-style checking

_WORD = re.compile(r"[a-z]+|[^\sa-z]")


@dataclass(frozen=True)
class Mention:
    """An object named in a text: its shape and the colour / size words right before it (or a colour
    word on its own, ``shape`` None)."""

    shape: str | None
    color: str | None
    size: str | None


def mentions(text: str) -> list[Mention]:
    """Objects and stray colour words named in ``text`` (toy vocabulary; plurals count as the shape)."""
    tokens = _WORD.findall(text.lower())
    plural = {"squares": "square", "circles": "circle", "triangles": "triangle", "crosses": "cross"}
    tokens = [plural.get(t, t) for t in tokens]
    found: list[Mention] = []
    used: set[int] = set()
    for p, token in enumerate(tokens):
        if token not in SHAPES:
            continue
        color = size = None
        for q in range(p - 1, max(-1, p - 3), -1):  # up to two words back: "large red square"
            word = tokens[q]
            if word in COLORS and color is None:
                color = word
                used.add(q)
            elif word in SIZES and size is None:
                size = word
                used.add(q)
            else:
                break
        found.append(Mention(token, color, size))
    found += [Mention(None, t, None) for q, t in enumerate(tokens) if t in COLORS and q not in used]
    return found


@dataclass
class CaptionCheck:
    """A text checked against its scene: named objects / attributes, those not in the scene, coverage."""

    mentions: int
    hallucinated: int
    object_errors: int
    attribute_errors: int
    recall: float  # share of the scene's objects named with the right shape, colour and size

    @property
    def rate(self) -> float:
        return self.hallucinated / self.mentions if self.mentions else 0.0


def caption_check(text: str, scene: Scene) -> CaptionCheck:
    """CHAIR for the toy world: a named object is hallucinated when no object of that shape (and colour,
    if named) is in the scene; a named size or a colour on a present shape is an attribute error when
    it does not match; a colour word on its own is an error when nothing has that colour."""
    objects = scene.objects
    object_errors = attribute_errors = 0
    described: set[int] = set()
    found = mentions(text)
    for m in found:
        if m.shape is None:
            if not any(o.color == m.color for o in objects):
                attribute_errors += 1
            continue
        same_shape = [i for i, o in enumerate(objects) if o.shape == m.shape]
        if not same_shape:
            object_errors += 1
            continue
        match = [i for i in same_shape if m.color is None or objects[i].color == m.color]
        if not match:
            attribute_errors += 1  # the shape is there, in another colour
            continue
        if m.size is not None and not any(objects[i].size == m.size for i in match):
            attribute_errors += 1
            continue
        if m.color is not None and m.size is not None:
            described.update(i for i in match if objects[i].size == m.size)
    return CaptionCheck(
        mentions=len(found),
        hallucinated=object_errors + attribute_errors,
        object_errors=object_errors,
        attribute_errors=attribute_errors,
        recall=len(described) / len(objects),
    )


# ---------------------------------------------------------------------------------------- annotators


def _ratings(helpful: int, faithful: int, why_helpful: str, why_faithful: str) -> dict[str, AspectAnnotation]:
    return {
        "Helpfulness": AspectAnnotation(Rating=str(helpful), Rationale=why_helpful),
        "Ethical Considerations": AspectAnnotation(Rating="5", Rationale="nothing unsafe in the toy world"),
        "Visual Faithfulness": AspectAnnotation(Rating=str(faithful), Rationale=why_faithful),
    }


def oracle_ratings(row: FeedbackRow) -> list[dict[str, AspectAnnotation]]:
    """The scene graph's ratings of a toy row's responses (see the module docstring)."""
    meta = row.meta
    if "scene" not in meta or "task" not in meta:
        raise HeadvecError(f"row {row.id!r} has no toy-world scene in meta; the oracle rates toy rows only")
    scene = Scene.from_dict(meta["scene"])
    out = []
    for completion in row.completions:
        response = completion.response.strip()
        check = caption_check(response, scene)
        if meta["task"] == "caption":
            faithful = 1 if check.mentions == 0 else 5 - round(4 * check.rate)
            helpful = 1 + round(4 * check.recall)
            if response == meta["answer"]:
                helpful = faithful = 5
            out.append(
                _ratings(
                    helpful,
                    faithful,
                    f"describes {check.recall:.0%} of the objects",
                    f"{check.hallucinated} of {check.mentions} named objects/attributes not in the image",
                )
            )
            continue
        right = response == meta["answer"]
        if right:
            out.append(_ratings(5, 5, "the right answer", "agrees with the image"))
            continue
        one_word = len(response.split()) <= 3 and check.hallucinated == 0
        out.append(
            _ratings(
                2 if one_word else 1,
                2 if meta.get("qtype") not in YES_NO_QTYPES and one_word else 1,
                f"wrong answer (gold: {meta['answer']})",
                "contradicts the image",
            )
        )
    return out


class OracleAnnotator:
    """Ratings from the scene graph: the toy world's ground truth as an annotator."""

    name = "toy-oracle"

    def annotate(self, rows: Sequence[FeedbackRow], images: Sequence[Any]) -> list[Annotation]:
        return [Annotation(oracle_ratings(row)) for row in rows]


class ToyJudgeAnnotator:
    """The toy model as judge through an OpenAI-compatible endpoint: its own judge prompt per response
    (``question : ... answer : ... . is the answer correct ?``), yes -> 5 and no -> 1 on helpfulness and
    visual faithfulness; a reply that is neither is kept as a failed annotation."""

    def __init__(self, client: Any, name: str = "toy-judge", concurrency: int = 16) -> None:
        self.client, self.name, self.concurrency = client, name, max(1, concurrency)

    @classmethod
    def over_http(cls, base_url: str, model: str, **options: Any) -> ToyJudgeAnnotator:
        from headvec.rewards.judges import TOY_JUDGE_TEMPLATE, OpenAIJudge

        options = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 2, "concurrency": 1} | options
        return cls(OpenAIJudge(base_url, model, TOY_JUDGE_TEMPLATE, **options), f"openai-toy-judge:{model}")

    def annotate(self, rows: Sequence[FeedbackRow], images: Sequence[Any]) -> list[Annotation]:
        from concurrent.futures import ThreadPoolExecutor

        jobs = [
            (TOY_FORMAT.text(row.prompt, c.response), image, 0)
            for row, image in zip(rows, images, strict=True)
            for c in row.completions
        ]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:  # the server batches them
            answers = iter(list(pool.map(lambda job: self.client.chat(*job), jobs)))
        out = []
        for row in rows:
            replies = [next(answers) for _ in row.completions]
            verdicts = [parse_yes_no(r, TOY_FORMAT.yes, TOY_FORMAT.no) for r in replies]
            raw = "\n---\n".join(replies)
            if any(v is None for v in verdicts):
                out.append(Annotation(None, raw=raw, error="a verdict was neither yes nor no"))
                continue
            ratings = [
                _ratings(5 if v else 1, 5 if v else 1, f"judge said {r!r}", f"judge said {r!r}")
                for v, r in zip(verdicts, replies, strict=True)
            ]
            out.append(Annotation(ratings, raw=raw))
        return out


def serve_in_thread(loaded: Any, model_name: str = "toy") -> tuple[Any, str]:
    """``headvec serve chat`` over ``loaded`` on 127.0.0.1 (a free port) in a daemon thread: (server,
    base_url). Stop it with ``server.should_exit = True``."""
    import socket
    import threading

    from headvec._optional import require
    from headvec.serving import DEFAULT_HOST
    from headvec.serving.chat import create_app

    uvicorn = require("uvicorn", extra="serve")
    with socket.socket() as probe:
        probe.bind((DEFAULT_HOST, 0))
        port = probe.getsockname()[1]
    app = create_app(loaded, model_name, default_max_tokens=4, max_batch_size=32, max_wait_ms=20)
    server = uvicorn.Server(uvicorn.Config(app, host=DEFAULT_HOST, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise HeadvecError(f"the loopback chat server did not start on {DEFAULT_HOST}:{port}")
    return server, f"http://{DEFAULT_HOST}:{port}/v1"


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_hallucination(
    loaded: Any, n: int = 200, seed: int = 1, batch_size: int = 32, progress: bool = False
) -> dict[str, list[float]]:
    """Per-item scores on held-out (test-split) scenes, greedy, through headvec's generate:

    ``chair_s`` (1 if a caption names anything not in the scene), ``chair_i`` (share of a caption's named
    objects/attributes not in the scene; captions naming nothing count 0), ``mentions`` and ``recall``
    per caption (saying less is not a gain), ``vqa_existence`` / ``vqa_attribute`` / ``vqa`` (VQA
    exact match; ``vqa`` over all nine question types = helpfulness), ``judge`` (the toy judge task).
    """
    from headvec.engine import HeadEngine

    engine = HeadEngine(loaded)
    rng = random.Random(seed)

    def answers(prompts: list[str], scenes: list[Scene], tokens: int) -> list[str]:
        built = [loaded.build_prompt(p, [render(s, IMAGE_PX)]) for p, s in zip(prompts, scenes, strict=True)]
        return [a.strip() for a in engine.generate(built, tokens, batch_size=batch_size)]

    scenes = [sample_in_split(rng, "test", lambda r: (sample_scene(r), None))[0] for _ in range(n)]
    captions = answers([DESCRIBE] * n, scenes, CAPTION_TOKENS)
    checks = [caption_check(c, s) for c, s in zip(captions, scenes, strict=True)]
    vqa = make_vqa(random.Random(seed + 1), n, split="test")
    vqa_answers = answers([q.prompt for q in vqa], [q.scene for q in vqa], VQA_TOKENS)
    right = [float(a == q.answer) for a, q in zip(vqa_answers, vqa, strict=True)]
    judge = make_judge(random.Random(seed + 2), n, split="test")
    verdicts = answers([j.prompt for j in judge], [j.scene for j in judge], 3)
    return {
        "chair_s": [float(c.hallucinated > 0) for c in checks],
        "chair_i": [c.rate for c in checks],
        "mentions": [float(c.mentions) for c in checks],
        "recall": [c.recall for c in checks],
        "vqa_existence": [r for r, q in zip(right, vqa, strict=True) if q.meta["qtype"] == "exist"],
        "vqa_attribute": [r for r, q in zip(right, vqa, strict=True) if q.meta["qtype"] in ATTRIBUTE_QTYPES],
        "vqa": right,
        "judge": [float(v == j.answer) for v, j in zip(verdicts, judge, strict=True)],
        "examples": [
            {"caption": c, "gold": caption(s)} for c, s in list(zip(captions, scenes, strict=True))[:5]
        ],  # type: ignore[dict-item]
    }


METRICS = ("chair_s", "chair_i", "mentions", "recall", "vqa_existence", "vqa_attribute", "vqa", "judge")


def summarise(per_item: dict[str, list[float]]) -> dict[str, list[float]]:
    """``metric -> [mean, low, high]`` (95 % bootstrap over held-out items)."""
    return {m: [round(x, 4) for x in bootstrap_ci(per_item[m])] for m in METRICS}


def paired_change(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, list[float]]:
    """``metric -> [after - before, low, high]``; the items are the same, so the CI is of the difference."""
    out = {}
    for m in METRICS:
        diff = [a - b for a, b in zip(after[m], before[m], strict=True)]
        out[m] = [round(x, 4) for x in bootstrap_ci(diff)]
    return out


# ------------------------------------------------------------------------------------------- pipeline


@dataclass
class PipelineSize:
    """The default run: 600 instructions, 5 toy-model behaviours, 4 responses each, DPO 1 epoch."""

    instructions: int = 600
    eval_items: int = 200
    dpo_epochs: float = 1.0
    dpo_batch: int = 8
    dpo_lr: float = 5e-4
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = 0  # instructions, pool sampling
    dpo_seed: int = 0  # DPO (data order, LoRA init) and the random-label coin

    @property
    def suffix(self) -> str:
        """How a condition's directory is named for another DPO seed (``oracle-seed1``)."""
        return f"-seed{self.dpo_seed}" if self.dpo_seed else ""

    @property
    def comparison_name(self) -> str:
        return f"comparison{self.suffix}"


def dpo_settings(size: PipelineSize) -> Any:
    """Silkie's recipe scaled to the toy model: same loss, beta, schedule, warm-up, weight decay and
    Adam beta2; a smaller LoRA (r 16, alpha 32), a higher learning rate and one epoch, since the toy
    model has 1 M parameters and a few thousand pairs."""
    from headvec.alignment.dpo import DPOSettings

    return DPOSettings(
        learning_rate=size.dpo_lr,
        lora_r=size.lora_r,
        lora_alpha=size.lora_alpha,
        epochs=size.dpo_epochs,
        batch_size=size.dpo_batch,
        gradient_accumulation=1,
        save_steps=50,
        logging_steps=10,
        seed=size.dpo_seed,
    )


def preference_rows(pairs: Sequence[FeedbackPair], store: ImageStore) -> list[Any]:
    """Feedback pairs as the DPO trainer's rows (images opened from the store)."""
    from headvec.alignment.dpo import PreferenceRow

    cache: dict[str, Any] = {}

    def image(path: str | None, pair_id: str) -> Any:
        if path is None:
            return None
        if path not in cache:
            cache[path] = store.open(path, pair_id)
        return cache[path]

    return [PreferenceRow(p.prompt, p.chosen, p.rejected, image(p.img_path, p.id), p.id) for p in pairs]


def _json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def build_toy_pool(out: Path, loaded: Any, size: PipelineSize, progress: bool = True) -> Path:
    """Stage 1: instructions and the response pool (resumes)."""
    pool_path = out / "pool.jsonl"
    instructions = toy_instructions(size.instructions, size.seed, out)
    build_pool(
        instructions,
        toy_generators(loaded, seed=size.seed),
        pool_path,
        images=out,
        seed=size.seed,
        progress=progress,
    )
    return pool_path


def train_on_feedback(
    out: Path,
    annotated: Path,
    pairing: str,
    size: PipelineSize,
    base: Any,
    before: dict[str, list[float]] | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Stages 3-5 for one annotated file: pairs, DPO, evaluation after (``before`` given) -> summary."""
    from headvec.alignment.dpo import train_dpo
    from headvec.models import load

    result_path = out / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    rows = read_feedback(annotated)
    pairs, stats = build_pairs(rows, pairing, seed=size.dpo_seed)
    train, held_out = split_pairs(pairs)
    _json(out / "pairs.json", {"stats": stats.to_dict(), "train": len(train), "held_out": len(held_out)})
    started = time.time()
    result = train_dpo(
        base,
        preference_rows(train, ImageStore(annotated.parent)),
        out / "dpo",
        dpo_settings(size),
        progress=progress,
    )
    dpo_seconds = time.time() - started
    after = evaluate_hallucination(load(result.model_dir, device="cpu"), size.eval_items)
    _json(out / "eval_after.json", after)
    summary = {
        "pairing": pairing,
        "pair_stats": stats.to_dict(),
        "train_pairs": len(train),
        "dpo_steps": result.steps,
        "dpo_seconds": round(dpo_seconds, 1),
        "loss_first_last": [result.metric("loss")[0], result.metric("loss")[-1]]
        if result.metric("loss")
        else [],
        "margin_first_last": [result.metric("rewards/margins")[0], result.metric("rewards/margins")[-1]]
        if result.metric("rewards/margins")
        else [],
        "after": summarise(after),
        "change": paired_change(before, after) if before is not None else None,
        "after_examples": after["examples"],
    }
    _json(result_path, summary)
    return summary


def run_pipeline(
    out: str | Path, size: PipelineSize | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """The whole default loop on the toy world with the oracle annotator; each stage resumes."""
    from headvec.models import load

    size = size or PipelineSize()
    out = Path(out)
    timings: dict[str, float] = {}
    clock = time.time()
    base = load("toy", device="cpu")
    pool_path = build_toy_pool(out, base, size, progress)
    timings["pool"] = time.time() - clock
    clock = time.time()
    annotated = out / "annotated.oracle.jsonl"
    stats = annotate_file(pool_path, annotated, OracleAnnotator(), images=out, progress=progress)
    timings["annotate"] = time.time() - clock
    clock = time.time()
    before_path = out / "eval_before.json"
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        before = evaluate_hallucination(base, size.eval_items)
        _json(before_path, before)
    timings["eval_before"] = time.time() - clock
    clock = time.time()
    summary = train_on_feedback(out / "oracle", annotated, "official", size, base, before, progress)
    timings["dpo_and_eval_after"] = time.time() - clock
    report = {
        "size": asdict(size),
        "annotation": stats.to_dict(),
        "pool_models": pool_model_quality(read_feedback(annotated)),
        "before": summarise(before),
        "oracle": summary,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    _json(out / "report.json", report)
    return report


def pool_model_quality(rows: Sequence[FeedbackRow]) -> dict[str, dict[str, float]]:
    """Mean rating per pool model and aspect (does the pool differ in quality?)."""
    sums: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for c in row.completions:
            if c.annotations is None:
                continue
            for aspect in ASPECTS:
                sums.setdefault(c.model, {}).setdefault(aspect, []).append(
                    float(c.annotations[aspect].Rating)
                )
    return {
        m: {a: round(sum(v) / len(v), 3) for a, v in aspects.items()}
        | {"responses": len(next(iter(aspects.values())))}
        for m, aspects in sorted(sums.items())
    }


# ----------------------------------------------------------------------------------------- comparison

CONDITIONS = (
    "oracle",
    "model-judge",
    "activation-rm",
    "longest-as-best",
    "top-choice-as-best",
    "random-labels",
)


def fit_toy_activation_rm(loaded: Any, n: int = 48, seed: int = 0, steps: int = 100) -> Any:
    """A small activation reward model on the toy model: verdicts of toy judge items and of right /
    hallucinated captions (train split)."""
    from headvec.rewards.activation import ActivationRewardModel
    from headvec.rewards.verdicts import Judgement
    from headvec.toyworld.preferences import make_preference

    judgements = [
        Judgement(j.question, j.candidate, j.answer == "yes", j.image())
        for j in make_judge(seed, n, split="train")
    ]
    for p in make_preference(seed + 1, 4 * n, split="train"):
        if p.category == "hallucination":
            judgements += [
                Judgement(p.query, p.chosen, True, p.image()),
                Judgement(p.query, p.rejected, False, p.image()),
            ]
    rm = ActivationRewardModel(
        loaded,
        TOY_FORMAT,
        n_shots=4,
        n_prompts=40,
        steps=steps,
        samples_per_step=16,
        n_search_items=40,
        n_selection_items=20,
        seed=seed,
    )
    return rm.fit(judgements)


def official_template_probe(loaded_base_url: str, pool: Path, n_rows: int = 4) -> dict[str, Any]:
    """Send the official all-in-one prompt for a few rows to the loopback toy model and report what came
    back (the toy model's 512-token context cannot hold the prompt)."""
    from headvec.feedback.annotate import OpenAIAnnotator

    rows = read_feedback(pool, limit=n_rows)
    store = ImageStore(pool.parent)
    annotator = OpenAIAnnotator(loaded_base_url, "toy", max_tokens=64, max_retries=0, concurrency=1)
    try:
        results = annotator.annotate(rows, [store.open(r.img_path, r.id) for r in rows])
    except HeadvecError as exc:
        return {"rows": len(rows), "parsed": 0, "error": str(exc)}
    return {
        "rows": len(rows),
        "parsed": sum(r.error is None for r in results),
        "failures": [r.error for r in results if r.error is not None],
    }


def compare_annotators(
    out: str | Path,
    size: PipelineSize | None = None,
    conditions: Sequence[str] = CONDITIONS,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Same instructions, same pool, same DPO settings; only the preference labels differ (see
    :data:`CONDITIONS`). Every condition's result is saved as it finishes; a rerun resumes."""
    from headvec.feedback.annotate import ScorerAnnotator
    from headvec.models import load

    size = size or PipelineSize()
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise HeadvecError(f"unknown condition {unknown[0]!r}; choose from {', '.join(CONDITIONS)}")
    out = Path(out)
    base = load("toy", device="cpu")
    pool_path = build_toy_pool(out, base, size, progress)
    before_path = out / "eval_before.json"
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        before = evaluate_hallucination(base, size.eval_items)
        _json(before_path, before)
    report: dict[str, Any] = {"size": asdict(size), "before": summarise(before), "conditions": {}}
    oracle_file = out / "annotated.oracle.jsonl"
    annotate_file(pool_path, oracle_file, OracleAnnotator(), images=out, progress=progress)
    report["pool_models"] = pool_model_quality(read_feedback(oracle_file))
    plan = {
        "oracle": (oracle_file, "official"),
        "longest-as-best": (oracle_file, "longest"),
        "top-choice-as-best": (oracle_file, "top-choice"),
        "random-labels": (oracle_file, "random-labels"),
        "model-judge": (out / "annotated.model-judge.jsonl", "official"),
        "activation-rm": (out / "annotated.activation-rm.jsonl", "official"),
    }
    for condition in conditions:
        annotated, pairing = plan[condition]
        if condition == "model-judge" and not (out / condition / "result.json").is_file():
            server, url = serve_in_thread(load("toy", device="cpu"))
            try:
                clock = time.time()
                judge = ToyJudgeAnnotator.over_http(url, "toy")
                stats = annotate_file(pool_path, annotated, judge, images=out, progress=progress)
                notes = {
                    "model_judge_annotation": stats.to_dict() | {"seconds": round(time.time() - clock, 1)},
                    "official_template_on_toy": official_template_probe(url, pool_path),
                }
                _json(out / "annotation.model-judge.json", notes)
            finally:
                server.should_exit = True
        if condition == "activation-rm" and not (out / condition / "result.json").is_file():
            clock = time.time()
            rm = fit_toy_activation_rm(load("toy", device="cpu"), seed=size.seed)
            scorer = ScorerAnnotator(rm, "toy-activation-rm")
            stats = annotate_file(pool_path, annotated, scorer, images=out, progress=progress)
            notes = {"activation_rm_annotation": stats.to_dict() | {"seconds": round(time.time() - clock, 1)}}
            _json(out / "annotation.activation-rm.json", notes)
        notes_path = out / f"annotation.{condition}.json"
        if notes_path.is_file():  # what annotating took, kept for reruns that reuse the annotations
            report |= json.loads(notes_path.read_text())
        run_dir = out / f"{condition}{size.suffix}"
        summary = train_on_feedback(run_dir, annotated, pairing, size, base, before, progress)
        summary["agreement_with_oracle"] = label_agreement(
            read_feedback(annotated), read_feedback(oracle_file), pairing
        )
        report["conditions"][condition] = summary
        _json(out / f"{size.comparison_name}.json", report)
    return report


def label_agreement(rows: Sequence[FeedbackRow], oracle_rows: Sequence[FeedbackRow], pairing: str) -> float:
    """Share of a condition's training pairs whose chosen response the oracle also rates higher (ties
    with the oracle count as disagreement): how right the labels are."""
    from headvec.feedback.schema import mean_rating

    truth = {r.id: [mean_rating(c) for c in r.completions] for r in oracle_rows}
    pairs, _ = build_pairs(rows, pairing, seed=0)
    hits = []
    for p in pairs:
        row_id, i, j = p.id.rsplit("-", 2)
        score = truth[row_id]
        hits.append(
            float(score[int(i)] is not None and score[int(j)] is not None and score[int(i)] > score[int(j)])
        )
    return round(sum(hits) / len(hits), 4) if hits else float("nan")


TABLE_METRICS = ("chair_i", "chair_s", "mentions", "recall", "vqa_existence", "vqa_attribute", "vqa", "judge")


def _fmt(ci: Sequence[float], signed: bool = False) -> str:
    mean, low, high = ci
    spec = "+.3f" if signed else ".3f"
    return f"{mean:{spec}} [{low:{spec}}, {high:{spec}}]"


def comparison_table(report: dict[str, Any]) -> str:
    """Markdown: the base model, then each condition's scores after DPO and its paired change."""
    header = "| condition | train pairs | label agreement with oracle | " + " | ".join(TABLE_METRICS) + " |"
    lines = [header, "|" + "---|" * (3 + len(TABLE_METRICS))]
    lines.append(
        "| base toy model | | | " + " | ".join(_fmt(report["before"][m]) for m in TABLE_METRICS) + " |"
    )
    for name, result in report["conditions"].items():
        after = " | ".join(_fmt(result["after"][m]) for m in TABLE_METRICS)
        change = " | ".join(_fmt(result["change"][m], signed=True) for m in TABLE_METRICS)
        agreement = result.get("agreement_with_oracle", float("nan"))
        lines.append(f"| {name} (after) | {result['train_pairs']} | {agreement:.3f} | {after} |")
        lines.append(f"| {name} (change) | | | {change} |")
    return "\n".join(lines)


def plot_comparison(report: dict[str, Any], path: str | Path) -> Path:
    """Change in caption hallucination (CHAIR_i), in what captions name, and in VQA accuracy per
    condition, 95 % CIs; a bar is blue when the change is good."""
    from headvec._optional import require

    plt = require("matplotlib.pyplot", extra="plot")
    names = list(report["conditions"])
    panels = (
        ("chair_i", "CHAIR_i (lower = fewer hallucinations)", -1),
        ("mentions", "objects/attributes named per caption", 0),
        ("vqa", "VQA accuracy (helpfulness)", 1),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.6), sharey=True)
    for ax, (metric, title, good) in zip(axes, panels, strict=True):
        values = [report["conditions"][n]["change"][metric] for n in names]
        means = [v[0] for v in values]
        errors = [[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]]
        colors = ["#999999" if good == 0 else "#4c72b0" if m * good > 0 else "#dd8452" for m in means]
        ax.barh(names, means, xerr=errors, color=colors, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.set_title(f"change in {title}", fontsize=9)
    fig.suptitle(
        "DPO on toy-model feedback vs the base model (held-out scenes, 95 % bootstrap CI)", fontsize=10
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def after_items(out: Path, condition: str, size: PipelineSize) -> dict[str, list[float]]:
    """A condition's per-item scores after DPO (saved by :func:`train_on_feedback`; recomputed from the
    saved model for runs made before it saved them)."""
    from headvec.models import load

    path = out / f"{condition}{size.suffix}" / "eval_after.json"
    if not path.is_file():
        _json(
            path,
            evaluate_hallucination(load(path.parent / "dpo" / "model", device="cpu"), size.eval_items),
        )
    return json.loads(path.read_text())


def versus_control(
    out: str | Path, conditions: Sequence[str], size: PipelineSize, control: str = "random-labels"
) -> dict[str, dict[str, list[float]]]:
    """Each condition's scores after DPO minus the random-label control's, paired over the same held-out
    items: what the labels taught beyond what DPO on this pool does with any labels."""
    out = Path(out)
    if control not in conditions:
        return {}
    reference = after_items(out, control, size)
    return {c: paired_change(reference, after_items(out, c, size)) for c in conditions if c != control}


def control_table(contrasts: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: each condition minus the random-label control, 95 % CIs."""
    lines = ["| condition minus random-labels | " + " | ".join(TABLE_METRICS) + " |"]
    lines.append("|" + "---|" * (1 + len(TABLE_METRICS)))
    for name, change in contrasts.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(change[m], signed=True) for m in TABLE_METRICS) + " |")
    return "\n".join(lines)
