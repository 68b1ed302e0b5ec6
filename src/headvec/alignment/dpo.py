"""DPO on a vision-language model with TRL's ``DPOTrainer``: Silkie's recipe, resumable, saved merged.

Public API (what other packages build on, e.g. implicit rewards / ReGap):

- :class:`PreferenceRow` ``(prompt, chosen, rejected, image)``: one preference pair; the image is a PIL
  image or a path (``None`` for text-only models).
- :class:`DPOSettings`: the recipe. Defaults are Silkie's (``vlf-silkie/VLFeedback``
  ``dpo_config/example.yaml``): sigmoid loss, beta 0.1, LoRA r 64 / alpha 16 / dropout 0.05 on the
  language model's attention and MLP projections (:data:`LANGUAGE_MODEL_PROJECTIONS`, a regex, because
  the CLIP tower's ``q_proj`` / ``k_proj`` / ``v_proj`` match the bare names too), lr 1e-5 with a cosine
  schedule and 10 % warm-up, weight decay 0.05, Adam beta2 0.98, 3 epochs, batch 2 x 8 accumulation.
  ``lora=False`` is full fine-tuning. Gradient checkpointing is off (it only slows small models) and
  ``max_length`` is None (TRL refuses a truncation that cuts image tokens).
- :func:`train_dpo` ``(model, rows, output_dir, settings)`` -> :class:`DPOResult`: trains, checkpoints
  every ``save_steps`` into ``output_dir``, resumes from the last checkpoint when rerun (after a crash or
  kill -9; a run with other settings or other rows in the same directory is refused), shows TRL's
  progress bar, and saves the merged model (LoRA folded in) with its processor in
  ``output_dir/model``, which ``headvec.models.load`` and ``AutoModelForImageTextToText`` read.
- :func:`sequence_logprobs` ``(loaded, rows, which)``: the summed log-probability of each row's chosen or
  rejected response given its prompt and image, tokenised with the model's chat template like TRL does.
- :func:`implicit_rewards` ``(policy, reference, rows, beta)``: DPO's implicit reward
  ``beta * (log pi(y|x) - log pi_ref(y|x))`` of chosen and rejected responses and their margin.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headvec._optional import require
from headvec.errors import HeadvecError

if TYPE_CHECKING:
    from headvec.models import LoadedModel

# Attention and MLP projections of the decoder only (Silkie: LLM blocks only); a regex because peft
# matches bare names against every module, and CLIP's attention has q_proj / k_proj / v_proj too.
LANGUAGE_MODEL_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
SETTINGS_FILE = "dpo_run.json"
RESULT_FILE = "dpo_result.json"
MODEL_DIR = "model"


@dataclass
class PreferenceRow:
    """One preference pair: ``chosen`` beats ``rejected`` as an answer to ``prompt`` on ``image``."""

    prompt: str
    chosen: str
    rejected: str
    image: Any = None
    id: str = ""


@dataclass
class DPOSettings:
    """Silkie's DPO recipe (defaults) and the knobs a small run changes (steps, learning rate, batch)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    lora: bool = True
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target: str = LANGUAGE_MODEL_PROJECTIONS
    learning_rate: float = 1e-5
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.05
    adam_beta2: float = 0.98
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 2
    gradient_accumulation: int = 8
    max_length: int | None = None
    save_steps: int = 100
    save_total_limit: int = 2
    logging_steps: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise HeadvecError(f"DPO beta must be > 0, got {self.beta}")
        if self.batch_size < 1 or self.gradient_accumulation < 1:
            raise HeadvecError(
                f"batch_size and gradient_accumulation must be >= 1, got {self.batch_size} and "
                f"{self.gradient_accumulation}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise HeadvecError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class DPOResult:
    """Where the merged model is, how many optimiser steps ran, and TRL's logged metrics per step."""

    model_dir: Path
    steps: int
    resumed_from: str | None
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def metric(self, name: str) -> list[float]:
        """One logged metric (``loss``, ``rewards/margins``, ``rewards/accuracies``...) in step order."""
        return [entry[name] for entry in self.log_history if name in entry]


def rows_digest(rows: Sequence[PreferenceRow]) -> str:
    """A stable hash of the rows' texts and image identities: a resumed run must train on the same data."""
    digest = hashlib.blake2b(digest_size=8)
    for row in rows:
        image = row.image if isinstance(row.image, str | os.PathLike) else _image_digest(row.image)
        digest.update(json.dumps([row.prompt, row.chosen, row.rejected, str(image)]).encode())
    return digest.hexdigest()


def _image_digest(image: Any) -> str:
    if image is None:
        return ""
    return hashlib.blake2b(image.tobytes(), digest_size=8).hexdigest()


def _as_loaded(model: str | os.PathLike | LoadedModel, device: str) -> LoadedModel:
    """A model of our own to train: loaded from a path, or a copy of a loaded one (left as it is)."""
    import copy

    from headvec.models import LoadedModel, load

    if isinstance(model, LoadedModel):
        return LoadedModel.from_model(
            copy.deepcopy(model.model), model.processor or model.tokenizer, name_or_path=model.name_or_path
        )
    return load(model, device=device)


def _dataset(rows: Sequence[PreferenceRow], multimodal: bool) -> Any:
    """TRL's conversational preference format; an ``images`` column makes TRL use its vision collator."""
    datasets = require("datasets", extra="trl")

    from headvec.models import load_image

    if not rows:
        raise HeadvecError("no preference rows to train on; build pairs first (headvec feedback pairs)")
    columns: dict[str, list] = {
        "prompt": [[{"role": "user", "content": r.prompt}] for r in rows],
        "chosen": [[{"role": "assistant", "content": r.chosen}] for r in rows],
        "rejected": [[{"role": "assistant", "content": r.rejected}] for r in rows],
    }
    if multimodal:
        missing = [i for i, r in enumerate(rows) if r.image is None]
        if missing:
            raise HeadvecError(
                f"preference row {missing[0]} ({rows[missing[0]].id or 'no id'}) has no image but the model "
                "is a vision-language model; give every row its image"
            )
        columns["images"] = [[load_image(r.image)] for r in rows]
    return datasets.Dataset.from_dict(columns)


def _check_run_dir(output_dir: Path, record: dict[str, Any]) -> None:
    path = output_dir / SETTINGS_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != record:
            changed = sorted(k for k in record.keys() | previous.keys() if record.get(k) != previous.get(k))
            raise HeadvecError(
                f"{output_dir} holds a DPO run with other {', '.join(changed)}; resume it with the same "
                "settings and data, or train into a new directory"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))


def train_dpo(
    model: str | os.PathLike | LoadedModel,
    rows: Sequence[PreferenceRow],
    output_dir: str | os.PathLike,
    settings: DPOSettings | None = None,
    *,
    device: str = "cpu",
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> DPOResult:
    """Train ``model`` with DPO on ``rows``; rerunning resumes from the last checkpoint in ``output_dir``.

    The reference model is the starting model (with LoRA: the same weights with the adapter disabled).
    A :class:`~headvec.models.LoadedModel` is copied, never trained in place. ``callbacks`` go to the
    trainer (``transformers.TrainerCallback``). Returns the merged model's directory and TRL's log
    history (``loss``, ``rewards/margins``...).
    """
    trl = require("trl", extra="trl")
    from transformers.trainer_utils import get_last_checkpoint

    settings = settings or DPOSettings()
    output_dir = Path(output_dir)
    loaded = _as_loaded(model, device)
    result_path = output_dir / RESULT_FILE
    record = {
        "model": loaded.name_or_path,
        "settings": asdict(settings),
        "rows": len(rows),
        "rows_digest": rows_digest(rows),
    }
    dataset = _dataset(rows, loaded.is_multimodal)  # bad rows are refused before anything is written
    _check_run_dir(output_dir, record)
    if result_path.is_file() and (output_dir / MODEL_DIR / "config.json").is_file():
        done = json.loads(result_path.read_text())
        return DPOResult(output_dir / MODEL_DIR, done["steps"], done["resumed_from"], done["log_history"])

    peft_config = None
    if settings.lora:
        peft = require("peft", extra="trl")
        peft_config = peft.LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=settings.lora_target,
            bias="none",
            task_type="CAUSAL_LM",
        )
    config = trl.DPOConfig(
        output_dir=str(output_dir),
        beta=settings.beta,
        loss_type=[settings.loss_type],
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=settings.weight_decay,
        adam_beta2=settings.adam_beta2,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        max_length=settings.max_length,
        activation_checkpointing=False,  # (gradient checkpointing) only slows a small model
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        logging_steps=settings.logging_steps,
        report_to="none",
        use_cpu=device == "cpu",
        bf16=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        seed=settings.seed,
        data_seed=settings.seed,
    )
    loaded.model.train()
    trainer = trl.DPOTrainer(
        model=loaded.model,
        args=config,
        train_dataset=dataset,
        processing_class=loaded.processor or loaded.tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks) or None,
    )
    checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    trainer.train(resume_from_checkpoint=checkpoint)
    trained = trainer.model
    if settings.lora:
        trained = trained.merge_and_unload()
    trained.eval()
    model_dir = output_dir / MODEL_DIR
    trained.save_pretrained(model_dir)
    (loaded.processor or loaded.tokenizer).save_pretrained(model_dir)
    result = DPOResult(model_dir, trainer.state.global_step, checkpoint, list(trainer.state.log_history))
    result_path.write_text(
        json.dumps(
            {"steps": result.steps, "resumed_from": checkpoint, "log_history": result.log_history}, indent=1
        )
    )
    return result


# ---------------------------------------------------------------------------------- log-probabilities


def _texts(loaded: LoadedModel, prompt: str, response: str, with_image: bool) -> tuple[str, str]:
    """(prompt text, prompt + response text) through the chat template, as TRL renders them."""
    owner = loaded.processor if loaded.processor is not None else loaded.tokenizer
    content: Any = [{"type": "image"}, {"type": "text", "text": prompt}] if with_image else prompt
    user = [{"role": "user", "content": content}]
    prompt_text = owner.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = owner.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
    return prompt_text, full


def sequence_logprobs(
    loaded: LoadedModel,
    rows: Sequence[PreferenceRow],
    which: str = "chosen",
    *,
    batch_size: int = 16,
) -> list[float]:
    """Summed log-probability of each row's ``which`` ("chosen" or "rejected") response tokens, given the
    prompt and image; the end-of-turn token the template appends counts, as in TRL's loss."""
    import torch

    from headvec.models import load_image

    if which not in ("chosen", "rejected"):
        raise HeadvecError(f"which must be 'chosen' or 'rejected', got {which!r}")
    model = loaded.model
    was_training = model.training
    model.eval()
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            with_image = loaded.is_multimodal
            pairs = [_texts(loaded, r.prompt, getattr(r, which), with_image) for r in batch]
            images = [[load_image(r.image)] for r in batch] if with_image else None
            kwargs = {"return_tensors": "pt", "padding": True, "add_special_tokens": False}
            if with_image:
                full = loaded.processor(text=[f for _, f in pairs], images=images, **kwargs)
                prompt_ids = loaded.processor(text=[p for p, _ in pairs], images=images, **kwargs)
            else:
                full = loaded.tokenizer([f for _, f in pairs], **kwargs)
                prompt_ids = loaded.tokenizer([p for p, _ in pairs], **kwargs)
            prompt_lengths = prompt_ids["attention_mask"].sum(dim=1)
            full = full.to(loaded.device)
            logits = model(**full).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (batch, seq-1, vocab)
            targets = full["input_ids"][:, 1:]
            token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (batch, seq-1)
            positions = torch.arange(targets.shape[1], device=targets.device).unsqueeze(0)
            mask = (positions >= (prompt_lengths.to(targets.device) - 1).unsqueeze(1)) & (
                full["attention_mask"][:, 1:] == 1
            )
            out += (token_logp * mask).sum(dim=1).tolist()
    model.train(was_training)
    return out


@dataclass
class ImplicitRewards:
    """Per row: DPO's implicit rewards of the chosen and rejected responses and their margin."""

    chosen: list[float]
    rejected: list[float]

    @property
    def margins(self) -> list[float]:
        return [c - r for c, r in zip(self.chosen, self.rejected, strict=True)]

    @property
    def accuracy(self) -> float:
        """Share of rows where the chosen response gets the higher implicit reward."""
        return sum(m > 0 for m in self.margins) / len(self.margins) if self.margins else float("nan")


def implicit_rewards(
    policy: LoadedModel,
    reference: LoadedModel,
    rows: Sequence[PreferenceRow],
    beta: float = 0.1,
    *,
    batch_size: int = 16,
) -> ImplicitRewards:
    """``beta * (log pi(y|x) - log pi_ref(y|x))`` for each row's chosen and rejected response."""
    sides = {}
    for which in ("chosen", "rejected"):
        pi = sequence_logprobs(policy, rows, which, batch_size=batch_size)
        ref = sequence_logprobs(reference, rows, which, batch_size=batch_size)
        sides[which] = [beta * (a - b) for a, b in zip(pi, ref, strict=True)]
    return ImplicitRewards(sides["chosen"], sides["rejected"])
