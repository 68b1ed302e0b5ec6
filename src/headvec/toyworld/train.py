"""Train the toy model on freshly generated toy-world data, on a CPU, resumably.

Every step's batch is generated from ``(seed, step)`` alone, so a run killed at any point and resumed
from its last checkpoint sees exactly the data an uninterrupted run would. Checkpoints are safetensors
(model and optimizer tensors) plus JSON, never pickle. Loss is on the assistant's answer tokens only.

Binding (reading the attribute of the object a question names) forms, without help, only in the last
decoder layer, which leaves no layer to compare its result with a candidate answer: the judge then stays
at chance. Deep supervision fixes the order: an auxiliary loss reads the residual stream after
``aux_layer`` through the final norm and the (tied) output embedding and asks it for every VQA answer,
and, on judge items, for the *gold* answer at the position of the candidate. The lookup then forms by
the middle of the stack, and the layers above it learn to compare.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm.auto import tqdm

from headvec.errors import HeadvecError
from headvec.toyworld.episodes import Episode, make_icl
from headvec.toyworld.language import LANGUAGES, lexicon, translate
from headvec.toyworld.model import (
    IMAGE_SIZE,
    IMAGE_TOKENS,
    PATCH_SIZE,
    build_config,
    build_model,
    build_processor,
    save_toy_model,
)
from headvec.toyworld.scenes import COLUMNS, ROWS, Scene, render, sample_scene
from headvec.toyworld.tasks import (
    YES_NO_QTYPES,
    JudgeItem,
    make_caption,
    make_cot,
    make_judge,
    make_positions,
    make_scene_graph,
    make_vqa,
)

# Share of each task in the training stream (in-context episodes are longer, so fewer of them). A
# skill leaves the answer prior only when its examples are dense in the batches, and the yes/no verdicts
# need the lookups first, so training runs in five phases:
# 1. the first ``attribute_fraction`` of the steps: colour, shape and size questions in English only;
# 2. up to ``binding_fraction``: every VQA question type in every language, a little of the long tasks;
# 3. up to ``steps``: every task, judge-heavy;
# 4. ``verify_steps`` more at a fresh learning rate: every task, with the yes/no verdicts' intermediate
#    facts as extra targets (see :class:`Conversation`), which the verdicts do not find on their own;
# 5. ``judge_steps`` more at a fresh learning rate, judge-denser, the same targets.
# 6. ``final_steps`` more at a fresh learning rate, every verdict side by side: relation yes/no forms
#    there once the others have (docs/toyworld.md), and the others are replayed so they are kept.
ATTRIBUTE_MIXTURE = {"attribute_vqa": 1.0}
BINDING_MIXTURE = {
    "vqa": 0.8,
    "icl": 0.05,
    "caption": 0.05,
    "scene_graph": 0.1,
}
DEFAULT_MIXTURE = {
    "vqa": 0.3,
    "judge": 0.35,
    "icl": 0.1,
    "cot": 0.1,
    "caption": 0.03,
    "scene_graph": 0.12,
}
VERIFY_MIXTURE = {
    "vqa": 0.25,
    "yes_no_vqa": 0.15,
    "judge": 0.35,
    "icl": 0.08,
    "cot": 0.08,
    "caption": 0.02,
    "scene_graph": 0.07,
}
FINAL_MIXTURE = {  # relation verdicts dense, every other skill replayed (left out, a skill decays)
    "relation_vqa": 0.25,
    "relation_judge": 0.2,
    "judge": 0.15,
    "yes_no_vqa": 0.08,
    "vqa": 0.1,
    "count_vqa": 0.06,
    "cot": 0.1,
    "scene_graph": 0.03,
    "icl": 0.02,
    "caption": 0.01,
}
JUDGE_MIXTURE = {
    "vqa": 0.15,
    "yes_no_vqa": 0.1,
    "judge": 0.55,
    "icl": 0.05,
    "cot": 0.08,
    "scene_graph": 0.07,
}
RELATION_QTYPES = ("relation", "relation_yesno")
COUNT_QTYPES = ("count", "count_color", "count_shape")
GENERATORS = {
    "vqa": make_vqa,
    "attribute_vqa": partial(make_vqa, qtypes=("color", "shape", "size")),
    "yes_no_vqa": partial(make_vqa, qtypes=YES_NO_QTYPES),
    "relation_vqa": partial(make_vqa, qtypes=RELATION_QTYPES),
    "count_vqa": partial(make_vqa, qtypes=COUNT_QTYPES),
    "relation_judge": partial(make_judge, qtypes=RELATION_QTYPES),
    "judge": make_judge,
    "icl": make_icl,
    "cot": make_cot,
    "caption": make_caption,
    "scene_graph": make_scene_graph,
    "positions": make_positions,  # training only: in no default mixture
    "cot_steps": partial(make_cot, steps_for_relations=True),  # training only: in no default mixture
}


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 6400
    batch_size: int = 32
    lr: float = 6e-4
    align_steps: int = 2000
    align_lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 150
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    micro_batch_tokens: int = 2048
    checkpoint_every: int = 200
    hidden_size: int = 128
    n_layers: int = 8
    n_heads: int = 8
    aux_layer: int = 4  # deep supervision of VQA answers and judge gold answers after this layer (0: off)
    aux_weight: float = 0.5
    languages: tuple[str, ...] = LANGUAGES
    mixture: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIXTURE))
    binding_mixture: dict[str, float] = field(default_factory=lambda: dict(BINDING_MIXTURE))
    binding_fraction: float = 0.34
    attribute_mixture: dict[str, float] = field(default_factory=lambda: dict(ATTRIBUTE_MIXTURE))
    attribute_fraction: float = 0.125
    attribute_languages: tuple[str, ...] = ("en",)
    verify_steps: int = 2800
    verify_lr: float = 3e-4
    verify_mixture: dict[str, float] = field(default_factory=lambda: dict(VERIFY_MIXTURE))
    judge_steps: int = 2800
    judge_lr: float = 3e-4
    judge_mixture: dict[str, float] = field(default_factory=lambda: dict(JUDGE_MIXTURE))
    final_steps: int = 3000
    final_lr: float = 3e-4
    final_mixture: dict[str, float] = field(default_factory=lambda: dict(FINAL_MIXTURE))
    # where objects are (docs/toyworld.md, "Diagnosis"): rotary positions never reach the residual stream
    align_positions: bool = True  # stage 1 also teaches each image token its cell's row and column words
    align_weight: float = 0.2  # stage 1's loss kept on in every later step (else position fades; 1.0
    # dominated the clipped update)
    position_hints: bool = True  # relation questions' operand coordinates as auxiliary targets

    @property
    def total_steps(self) -> int:
        return self.steps + self.verify_steps + self.judge_steps + self.final_steps


@dataclass
class Conversation:
    """User turns (images + text) each followed by the assistant's answer.

    ``answer_hint``: the last answer is also a target of the auxiliary (middle-layer) loss.
    ``candidate_hint``: (candidate, gold) of a judge item: the candidate's tokens in the user text get
    the gold answer's tokens as auxiliary targets.
    ``verdict``: a judge item's yes/no is also the (final-layer) target at the candidate's last token,
    and the gold answer's auxiliary targets move onto the candidate's own tokens: the comparison then
    has both its operands in one residual stream.
    ``lookup_hint``: the fact a yes/no question turns on (see :func:`~headvec.toyworld.tasks.lookup_hint`)
    is the auxiliary target at the question's last word.
    ``position_hints``: (name, coordinate word) of each object a relation question names (see
    :func:`~headvec.toyworld.tasks.position_hints`), and ``relation`` the relation it asks: the
    coordinate is the auxiliary target at the first token where both the name and the relation have
    been read (the asked axis is unknown at the first name of ``is X left of Y``), so both operands of
    the comparison are looked up before the answer.
    """

    turns: list[tuple[int, str, str]]  # (number of images, user text, answer)
    images: list[Image.Image]
    language: str = "en"
    answer_hint: bool = False
    candidate_hint: tuple[str, str] | None = None
    verdict: str | None = None
    lookup_hint: str | None = None
    position_hints: list[tuple[str, str]] = field(default_factory=list)
    relation: str | None = None


def as_conversation(item, verify: bool = False, positions: bool = False) -> Conversation:
    """Any toy-world training item as a chat conversation (``verify``: with the targets of phases 4-5;
    ``positions``: with a relation question's position hints)."""
    if isinstance(item, Episode):
        shots = [*item.shots, item.query]
        return Conversation(
            turns=[(1, item.prompt, shot.answer) for shot in shots],
            images=[shot.image(IMAGE_SIZE) for shot in shots],
            language=item.language,
        )
    hint = None
    if isinstance(item, JudgeItem):
        hint = (item.candidate, translate(item.meta["gold"], item.language))
    yes_no = item.meta.get("qtype") in YES_NO_QTYPES
    lookup = item.meta.get("hint")
    return Conversation(
        turns=[(1, item.prompt, item.answer)],
        images=[item.image(IMAGE_SIZE)],
        language=item.language,
        answer_hint=item.task == "vqa" and not (verify and yes_no),
        candidate_hint=hint,
        verdict=item.answer if verify and isinstance(item, JudgeItem) else None,
        lookup_hint=translate(lookup, item.language) if verify and lookup and item.task == "vqa" else None,
        position_hints=[
            (translate(name, item.language), translate(word, item.language))
            for name, word in (item.meta.get("positions", []) if positions else [])
        ],
        relation=translate(item.meta["relation"], item.language)
        if positions and "relation" in item.meta
        else None,
    )


CHUNK_STEPS = 50  # items are generated for this many steps at once, so every task's types stay balanced


def _phase(config: TrainConfig, step: int) -> tuple[dict[str, float], tuple[str, ...]]:
    """The task mixture and the languages of ``step``."""
    if step < config.attribute_fraction * config.steps:
        return config.attribute_mixture, config.attribute_languages
    if step < config.binding_fraction * config.steps:
        return config.binding_mixture, config.languages
    if step < config.steps:
        return config.mixture, config.languages
    if step < config.steps + config.verify_steps:
        return config.verify_mixture, config.languages
    if step < config.steps + config.verify_steps + config.judge_steps:
        return config.judge_mixture, config.languages
    return config.final_mixture, config.languages


def _chunk_items(config: TrainConfig, chunk: int) -> list:
    """All items of ``CHUNK_STEPS`` steps, shuffled: a function of (seed, chunk) only.

    The generators balance question types (and in-context tasks) within one call, so they must be
    asked for many items at once: one item per call would always be the first type.
    """
    mixture, languages = _phase(config, chunk * CHUNK_STEPS)
    key = (config.seed, chunk, config.batch_size, tuple(mixture.items()), languages)
    if _chunk_items.cache[0] != key:
        rng = random.Random(f"toyworld-train/{config.seed}/{chunk}")
        slots = rng.choices(
            [(task, language) for task in mixture for language in languages],
            weights=[w for w in mixture.values() for _ in languages],
            k=CHUNK_STEPS * config.batch_size,
        )
        items = []
        for task, language in sorted(set(slots)):
            count = slots.count((task, language))
            items += GENERATORS[task](random.Random(f"{rng.random()}"), count, language, split="train")
        rng.shuffle(items)
        _chunk_items.cache = (key, items)
    return _chunk_items.cache[1]


_chunk_items.cache = (None, [])


def sample_batch(config: TrainConfig, step: int) -> list[Conversation]:
    """The batch of ``step``: a function of (seed, step) only, so resuming replays it exactly."""
    items = _chunk_items(config, step // CHUNK_STEPS)
    start = (step % CHUNK_STEPS) * config.batch_size
    verify = step >= config.steps
    batch = items[start : start + config.batch_size]
    return [as_conversation(item, verify, config.position_hints) for item in batch]


def encode_conversation(tokenizer, conversation: Conversation) -> tuple[list[int], list[int], list[int]]:
    """Token ids in the chat template's layout (image tokens expanded), labels on the answers, and the
    auxiliary labels of the middle-layer loss (see :class:`Conversation`)."""

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    image_id = tokenizer.convert_tokens_to_ids("<image>")
    input_ids, labels, aux = [tokenizer.bos_token_id], [-100], [-100]
    for n_images, user_text, answer in conversation.turns:
        user = ids("USER:" + " <image>" * n_images + f" {user_text} ASSISTANT:")
        user = [t for token in user for t in ([token] * IMAGE_TOKENS if token == image_id else [token])]
        reply = ids(f" {answer} </s>")
        user_aux, user_labels = [-100] * len(user), [-100] * len(user)
        if conversation.candidate_hint is not None:
            candidate, gold = (ids(text) for text in conversation.candidate_hint)
            marker = ids(f"{lexicon(conversation.language)['answer']} :")
            starts = [i for i in range(len(user)) if user[i : i + len(marker)] == marker]
            start = starts[-1] + len(marker) if starts else -1
            end = start + len(candidate)
            if start >= 0 and user[start:end] == candidate and end < len(user):
                if conversation.verdict is None and len(gold) == len(candidate):
                    user_aux[start:end] = gold  # predicted where the candidate is about to be read
                elif conversation.verdict is not None:
                    # the verify phase: each candidate token predicts the gold one, so the looked-up
                    # answer and the candidate meet in one residual stream, where the verdict is asked
                    user_aux[start + 1 : start + 1 + min(len(gold), len(candidate))] = gold[: len(candidate)]
                    user_labels[end] = ids(conversation.verdict)[0]
        taken = set()
        if conversation.position_hints and conversation.relation:
            for slot, word in _position_slots(user, conversation, ids):
                user_aux[slot] = word
                taken.add(slot)
        if conversation.lookup_hint is not None:
            marks = [i for i, token in enumerate(user) if token == ids("?")[0]]
            if marks:  # one token later where a position hint has the slot: then it is asked at the "?"
                slot = marks[-1] + (marks[-1] in taken)
                user_aux[slot] = ids(conversation.lookup_hint)[0]
        input_ids += user + reply
        labels += user_labels + reply
        aux += user_aux + ([*reply[:-1], -100] if conversation.answer_hint else [-100] * len(reply))
    return input_ids, labels, aux


def _position_slots(user: list[int], conversation: Conversation, ids) -> list[tuple[int, int]]:
    """(label index, coordinate word id) of each position hint in a user turn: labels are read one token
    earlier, so the label right after token ``t`` is predicted at ``t``; ``t`` is the later of the name's
    last token and the relation's last token (first mentions: the question comes before any candidate),
    moved on to the next free token where two hints would meet."""

    def end_of(phrase: list[int]) -> int:
        return next(
            (
                i + len(phrase) - 1
                for i in range(len(user) - len(phrase) + 1)
                if user[i : i + len(phrase)] == phrase
            ),
            -1,
        )

    relation_end = end_of(ids(conversation.relation))
    slots: list[tuple[int, int]] = []
    for name, word in conversation.position_hints:
        name_end = end_of(ids(name))
        if name_end < 0 or relation_end < 0:
            continue
        slot = max(name_end, relation_end) + 1
        while slot in {s for s, _ in slots}:
            slot += 1
        if slot < len(user):
            slots.append((slot, ids(word)[0]))
    return slots


def collate(processor, conversations: Sequence[Conversation]) -> dict[str, torch.Tensor]:
    tokenizer = processor.tokenizer
    encoded = [encode_conversation(tokenizer, c) for c in conversations]
    width = max(len(ids) for ids, _, _ in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    aux_labels = torch.full((len(encoded), width), -100)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, labs, aux) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        aux_labels[row, : len(aux)] = torch.tensor(aux)
        attention_mask[row, : len(ids)] = 1
    images = [image for c in conversations for image in c.images]
    pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "aux_labels": aux_labels,
        "pixel_values": pixel_values,
    }


def length_buckets(
    tokenizer, conversations: Sequence[Conversation], max_tokens: int
) -> list[list[Conversation]]:
    """Split a batch into micro-batches of similar length, at most ``max_tokens`` padded tokens each.

    Scene graphs are ten times longer than VQA turns: padding them together wastes most of a step.
    """
    lengths = [len(encode_conversation(tokenizer, c)[0]) for c in conversations]
    order = sorted(range(len(conversations)), key=lengths.__getitem__)
    buckets: list[list[int]] = [[]]
    for index in order:
        if buckets[-1] and lengths[index] * (len(buckets[-1]) + 1) > max_tokens:
            buckets.append([])
        buckets[-1].append(index)
    return [[conversations[i] for i in bucket] for bucket in buckets]


def _conversation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each conversation's mean cross-entropy over its labelled tokens (0 for a row without any)."""
    token_loss = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    return token_loss.sum(dim=1) / (labels != -100).sum(dim=1).clamp(min=1)


def accumulate_gradients(
    model,
    processor,
    conversations: Sequence[Conversation],
    max_tokens: int,
    aux_layer: int = 0,
    aux_weight: float = 0.0,
) -> torch.Tensor:
    """Batch loss with gradients, computed in length buckets: each conversation's mean answer-token
    cross-entropy, averaged over conversations, plus ``aux_weight`` times the same for the auxiliary
    labels read after decoder layer ``aux_layer``. Per-conversation means keep one-word VQA answers
    from being drowned by the hundred-token scene graphs."""
    buckets = length_buckets(processor.tokenizer, conversations, max_tokens)
    device = model.device
    loss_sum = torch.zeros((), device=device)
    for bucket in buckets:
        batch = {key: value.to(device) for key, value in collate(processor, bucket).items()}
        labels = batch.pop("labels")[:, 1:]
        aux_labels = batch.pop("aux_labels")[:, 1:]
        use_aux = aux_layer > 0 and aux_weight > 0 and bool((aux_labels != -100).any())
        output = model(**batch, output_hidden_states=use_aux)
        loss = _conversation_loss(output.logits[:, :-1], labels)
        if use_aux:
            hidden = model.model.language_model.norm(output.hidden_states[aux_layer][:, :-1])
            loss = loss + aux_weight * _conversation_loss(model.lm_head(hidden), aux_labels)
        loss = loss.sum() / len(conversations)
        loss.backward()
        loss_sum += loss.detach()
    return loss_sum


def cell_targets(tokenizer, scenes: Sequence[Scene], positions: bool = False) -> torch.Tensor:
    """The words each image token should read as in stage 1, ``[images, IMAGE_TOKENS, 3 or 5]``: its
    object's colour, shape and size (``<pad>`` for an empty cell), then with ``positions`` its cell's
    row and column words."""
    side = IMAGE_SIZE // PATCH_SIZE
    targets = torch.full((len(scenes), IMAGE_TOKENS, 5 if positions else 3), tokenizer.pad_token_id)
    if positions:
        cells = torch.arange(IMAGE_TOKENS)
        targets[..., 3] = torch.tensor(tokenizer.convert_tokens_to_ids(list(ROWS)))[cells // side]
        targets[..., 4] = torch.tensor(tokenizer.convert_tokens_to_ids(list(COLUMNS)))[cells % side]
    for row, scene in enumerate(scenes):
        for obj in scene.objects:
            words = tokenizer.convert_tokens_to_ids([obj.color, obj.shape, obj.size])
            targets[row, obj.row * side + obj.col, :3] = torch.tensor(words)
    return targets


def alignment_loss(model, processor, rng: random.Random, n_scenes: int, positions: bool) -> torch.Tensor:
    """Stage 1's loss on ``n_scenes`` fresh training scenes: each image token, read through the (tied)
    word embeddings, against each of its :func:`cell_targets` words (cross-entropies summed)."""
    scenes = []
    while len(scenes) < n_scenes:
        scene = sample_scene(rng)
        if scene.split == "train":
            scenes.append(scene)
    pixels = processor.image_processor(images=[render(s, IMAGE_SIZE) for s in scenes], return_tensors="pt")
    pixel_values = pixels["pixel_values"].to(model.device)
    features = model.model.get_image_features(pixel_values=pixel_values).pooler_output
    features = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
    targets = cell_targets(processor.tokenizer, scenes, positions).to(model.device)
    logits = (features @ model.get_input_embeddings().weight.T).flatten(0, 1)
    return sum(
        torch.nn.functional.cross_entropy(logits, targets[..., k].flatten()) for k in range(targets.shape[-1])
    )


def align_vision(model, processor, config: TrainConfig, progress: bool = True) -> None:
    """Stage 1, as LLaVA's connector pre-training: make each image token look like the words of its cell.

    Every grid cell's image token is trained to predict, through the (tied) word embeddings, the colour,
    shape and size words of the object in it (``<pad>`` for an empty cell), and with
    ``config.align_positions`` the cell's row and column words. Without this stage the decoder stays at
    the answer prior for thousands of steps; with it, counting and attributes start to be read from the
    image within a few hundred steps. The row and column words are the one place where the model is
    told where a cell is: the decoder's rotary positions never enter the residual stream, and without
    them the image tokens end up holding no position (a linear probe reads row and column at chance).
    """
    embeddings = model.get_input_embeddings()
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    optimizer = torch.optim.AdamW([*params, *embeddings.parameters()], lr=config.align_lr)
    for step in tqdm(range(config.align_steps), desc="align", disable=not progress):
        rng = random.Random(f"toyworld-align/{config.seed}/{step}")
        alignment_loss(model, processor, rng, 64, config.align_positions).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak; the verify, judge and final
    phases (steps from ``config.steps`` on) each have their own warm-up and decay from their own peak."""
    peak, length = config.lr, config.steps
    judged = config.steps + config.verify_steps + config.judge_steps
    if step >= judged:
        peak, length, step = config.final_lr, config.final_steps, step - judged
    elif step >= config.steps + config.verify_steps:
        peak, length = config.judge_lr, config.judge_steps
        step -= config.steps + config.verify_steps
    elif step >= config.steps:
        peak, length, step = config.verify_lr, config.verify_steps, step - config.steps
    warmup = min(config.warmup_steps, max(1, length // 10))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, length - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def _save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": value.detach().clone() if torch.is_tensor(value) else torch.tensor(value)
        for index, entries in state["state"].items()
        for key, value in entries.items()
    }
    save_file(tensors, str(path))


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    tensors = load_file(str(path))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def save_checkpoint(
    directory: Path, model, optimizer, step: int, config: TrainConfig, log: list, seconds: float
) -> None:
    """Write to a temporary folder, then swap it in: a kill leaves the previous checkpoint whole.

    ``seconds`` is the run's wall time so far, so a resumed run's logged time counts every step kept.
    """
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / "model.safetensors"))
    _save_optimizer(optimizer, tmp / "optimizer.safetensors")
    state = {"step": step, "seconds": seconds, "config": asdict(config), "log": log}
    (tmp / "state.json").write_text(json.dumps(state))
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        for file in old.iterdir():
            file.unlink()
        old.rmdir()


def train(
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    until_step: int | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> Path | None:
    """Train (or resume) a toy model in ``out_dir``; the final model is saved to ``out_dir/model``.

    ``until_step`` pauses after that many steps (checkpointed; returns None): rerun to continue.
    ``device``: where the model trains (the batches are generated on the CPU either way).
    """
    config = config or TrainConfig()
    if not 0 <= config.aux_layer < config.n_layers:
        raise HeadvecError(
            f"aux_layer {config.aux_layer} must be below n_layers {config.n_layers}; "
            "0 turns the auxiliary loss off"
        )
    out = Path(out_dir)
    checkpoint = out / "checkpoint"
    torch.manual_seed(config.seed)
    processor = build_processor()
    model = build_model(
        build_config(processor.tokenizer, config.hidden_size, config.n_layers, config.n_heads)
    ).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    start, log, saved_seconds = 0, [], 0.0
    if (checkpoint / "state.json").exists():
        state = json.loads((checkpoint / "state.json").read_text())
        wanted = json.loads(json.dumps(asdict(config)))
        # settings added since the checkpoint was made had their defaults then
        defaults = json.loads(json.dumps(asdict(TrainConfig())))
        saved = {**{k: v for k, v in defaults.items() if k not in state["config"]}, **state["config"]}
        extended = {**saved, "steps": wanted["steps"]} == wanted and wanted["steps"] > saved["steps"]
        if saved != wanted and not extended:
            raise HeadvecError(f"{checkpoint} was made with other settings; use a new --out directory")
        load_model(model, str(checkpoint / "model.safetensors"))
        _load_optimizer(optimizer, checkpoint / "optimizer.safetensors")
        start, log, saved_seconds = state["step"] + 1, state["log"], state.get("seconds", 0.0)
        if extended:  # the same settings, run longer: the learning-rate schedule follows the new length
            log.append(
                {"step": start, "extended_from_steps": saved["steps"], "extended_to_steps": config.steps}
            )

    model.train()
    started = time.perf_counter()
    # earlier sessions of this run (checkpoints made before "seconds" was saved: their last log entry)
    elapsed = max([saved_seconds, *(e["seconds"] for e in log if "seconds" in e)])

    def seconds() -> float:
        return round(elapsed + time.perf_counter() - started, 1)

    if start == 0:  # a resumed run's checkpoint already holds the aligned weights
        align_vision(model, processor, config, progress)
        log.append({"step": 0, "aligned": True, "seconds": seconds()})
    bar = tqdm(
        range(start, config.total_steps),
        initial=start,
        total=config.total_steps,
        desc="train",
        disable=not progress,
    )
    running = None
    for step in bar:
        if until_step is not None and step >= until_step:
            log.append({"step": step, "paused": True, "seconds": seconds()})
            save_checkpoint(checkpoint, model, optimizer, step - 1, config, log, seconds())
            return None
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = accumulate_gradients(
            model,
            processor,
            sample_batch(config, step),
            config.micro_batch_tokens,
            config.aux_layer,
            config.aux_weight,
        )
        if config.align_weight > 0:  # stage 1's loss kept on: without it the image tokens lose position
            rng = random.Random(f"toyworld-align/{config.seed}/train/{step}")
            kept = config.align_weight * alignment_loss(model, processor, rng, 32, config.align_positions)
            kept.backward()
            loss = loss + kept.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
        if step % 50 == 0 or step == config.total_steps - 1:
            log.append({"step": step, "loss": round(running, 4), "seconds": seconds()})
        if (step + 1) % config.checkpoint_every == 0 or step == config.total_steps - 1:
            save_checkpoint(checkpoint, model, optimizer, step, config, log, seconds())
    model.eval()
    save_toy_model(model, processor, out / "model")
    (out / "train_log.json").write_text(json.dumps({"config": asdict(config), "log": log}, indent=1))
    return out / "model"
