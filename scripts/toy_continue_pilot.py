"""Continue a toy model's training on one batch mixture and watch its yes/no verdicts form
(the "toy-judge pilot" rows of the trial table in docs/toyworld.md).

    python scripts/toy_continue_pilot.py MODEL_DIR STEPS OUT_DIR '{"judge": 0.35, "vqa": 0.65}'

Every 250 steps: first-answer-token accuracy on held-out scenes (en, xx) of the judge, existence,
relation yes/no and relation judges. Verify and position targets on, the stage-1 loss kept (weight
``ALIGN_W``, default 0.2), constant learning rate ``LR`` (default 3e-4) after 50 warm-up steps, on
``DEVICE`` (default cpu).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import replace

import torch
from transformers import AutoModelForImageTextToText

from headvec.toyworld.model import build_processor
from headvec.toyworld.tasks import make_judge, make_vqa
from headvec.toyworld.train import (
    TrainConfig,
    accumulate_gradients,
    alignment_loss,
    as_conversation,
    collate,
    sample_batch,
)


def held_out_sets() -> dict[str, list]:
    sets = {}
    for lang in ("en", "xx"):
        sets[f"{lang}_judge"] = make_judge(random.Random(11), 160, lang, split="test")
        sets[f"{lang}_exist"] = make_vqa(random.Random(12), 64, lang, split="test", qtypes=("exist",))
        relation_yes_no = ("relation_yesno",)
        sets[f"{lang}_relyn"] = make_vqa(random.Random(13), 64, lang, split="test", qtypes=relation_yes_no)
        sets[f"{lang}_relopen"] = make_vqa(random.Random(15), 64, lang, split="test", qtypes=("relation",))
        sets[f"{lang}_reljudge"] = make_judge(
            random.Random(14), 64, lang, split="test", qtypes=("relation", "relation_yesno")
        )
    return sets


@torch.no_grad()
def first_token_accuracy(model, processor, sets: dict[str, list]) -> dict[str, float]:
    model.eval()
    result = {}
    for name, items in sets.items():
        batch = collate(processor, [replace(as_conversation(i), answer_hint=False) for i in items])
        batch = {key: value.to(model.device) for key, value in batch.items()}
        labels = batch.pop("labels")[:, 1:]
        batch.pop("aux_labels")
        logits = model(**batch).logits[:, :-1]
        first = (labels != -100).float().argmax(1)
        rows = torch.arange(len(items), device=model.device)
        result[name] = round((logits[rows, first].argmax(-1) == labels[rows, first]).float().mean().item(), 3)
    model.train()
    return result


def main(source: str, steps: int, out: str, mixture: dict[str, float]) -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    torch.manual_seed(0)
    lr = float(os.environ.get("LR", "3e-4"))
    # the whole continuation is one phase 5 of `mixture`: verify and position targets on
    config = TrainConfig(
        steps=0,
        verify_steps=0,
        judge_steps=steps,
        judge_mixture=mixture,
        align_positions=True,
        align_weight=float(os.environ.get("ALIGN_W", "0.2")),
        position_hints=True,
    )
    processor = build_processor()
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32)
    model.to(os.environ.get("DEVICE", "cpu")).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    sets = held_out_sets()
    print(0, first_token_accuracy(model, processor, sets), flush=True)
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1, (step + 1) / 50)
        batch = sample_batch(config, step)
        accumulate_gradients(
            model, processor, batch, config.micro_batch_tokens, config.aux_layer, config.aux_weight
        )
        if config.align_weight > 0:
            rng = random.Random(f"toy-continue-pilot/align/{step}")
            (config.align_weight * alignment_loss(model, processor, rng, 32, True)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 250 == 0:
            seconds = round(time.time() - start)
            print(step + 1, seconds, first_token_accuracy(model, processor, sets), flush=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)  # so `headvec toyworld eval OUT` loads it


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]))
