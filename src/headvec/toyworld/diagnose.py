"""Where does a toy model bind an attribute to the object a question names?

Colour questions ("what color is the circle ?") need a lookup: find the image token of the named object
and read its colour. This module measures each step of that lookup on held-out scenes:

- ``vision_probe``: is each cell's colour / shape / size linearly readable from the projector's output
  for that image token? (If not, the vision side is the problem.) And its row and column: the decoder's
  rotary positions act on attention scores only and never enter the residual stream, so where an
  object is reaches the decoder only if its image token says so (spatial relations need it).
- ``residual_probe``: is the *asked* object's colour linearly readable from the residual stream at the
  answer position, after each decoder layer? The first layer where it is tells where the lookup forms.
- ``attention_to_cell``: the attention weight from the answer position to the asked object's image token,
  per layer and head (averaged over questions): which heads do the lookup.
- ``accuracy_by_objects``: the model's own colour choice, by the number of objects in the scene.
"""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from headvec.engine import HeadEngine
from headvec.models import LoadedModel
from headvec.toyworld.model import IMAGE_SIZE, IMAGE_TOKENS, PATCH_SIZE
from headvec.toyworld.scenes import COLORS, render
from headvec.toyworld.tasks import Question, ask


def _probe(features: np.ndarray, labels: np.ndarray, train: int) -> float:
    """Held-out accuracy of a logistic-regression probe fitted on the first ``train`` rows."""
    classifier = LogisticRegression(max_iter=2000).fit(features[:train], labels[:train])
    return round(float(classifier.score(features[train:], labels[train:])), 3)


def colour_questions(n: int, seed: int = 1) -> list[Question]:
    """``n`` held-out colour questions, scenes of 1-4 objects in equal shares."""
    rng = random.Random(f"toyworld-diagnose/{seed}")
    by_count: dict[int, list[Question]] = defaultdict(list)
    while sum(len(v) for v in by_count.values()) < n:
        q = ask(rng, "color", split="test")
        k = len(q.scene.objects)
        if len(by_count[k]) < -(-n // 4):
            by_count[k].append(q)
    questions = [q for k in sorted(by_count) for q in by_count[k]][:n]
    random.Random(seed).shuffle(questions)
    return questions


@torch.no_grad()
def binding_diagnosis(loaded: LoadedModel, n: int = 800, seed: int = 1, batch_size: int = 32) -> dict:
    """Vision probe, residual probe by layer, attention to the asked cell, accuracy by object count."""
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    questions = colour_questions(n, seed)
    images = [render(q.scene, IMAGE_SIZE) for q in questions]
    prompts = [loaded.build_prompt(q.question, [image]) for q, image in zip(questions, images, strict=True)]
    train = int(0.75 * n)

    # the model's own answers and the residual stream at the answer position
    engine = HeadEngine(loaded)
    capture = engine.capture(prompts, positions=-1, residual=True, logits=True, batch_size=batch_size)
    colour_ids = tokenizer.convert_tokens_to_ids(list(COLORS))
    chosen = capture.logits[:, colour_ids].argmax(-1)
    gold = np.array([q.answer for q in questions])
    right = np.array([COLORS[c] for c in chosen.tolist()]) == gold
    by_objects: dict[int, list[bool]] = defaultdict(list)
    for q, hit in zip(questions, right, strict=True):
        by_objects[len(q.scene.objects)].append(bool(hit))
    several = np.array([len(q.scene.objects) >= 3 for q in questions])
    residual = capture.residual.float().numpy()
    residual_probe = [
        _probe(residual[several][:, layer], gold[several], int(0.75 * several.sum()))
        for layer in range(residual.shape[1])
    ]

    # per image token: what the projector hands the decoder
    pixels = loaded.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    features = model.model.get_image_features(pixel_values=pixels.to(model.device)).pooler_output
    features = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
    side = IMAGE_SIZE // PATCH_SIZE
    cells, labels = [], defaultdict(list)
    for row, q in enumerate(questions):
        for obj in q.scene.objects:
            cells.append(features[row, obj.row * side + obj.col].float().numpy())
            for attribute in ("color", "shape", "size", "row", "col"):
                labels[attribute].append(getattr(obj, attribute))
    cell_features = np.stack(cells)
    vision_probe = {a: _probe(cell_features, np.array(v), int(0.75 * len(v))) for a, v in labels.items()}

    # attention from the answer position to the asked object's image token
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        totals = None
        for start in range(0, n, batch_size):
            chunk = prompts[start : start + batch_size]
            inputs = loaded.encode(chunk, padding_side="left").to(model.device)
            attentions = model(**inputs, output_attentions=True).attentions  # layers x [B, H, T, T]
            stacked = torch.stack([a[:, :, -1, :] for a in attentions], dim=1)  # [B, L, H, T]
            for row, q in enumerate(questions[start : start + batch_size]):
                image_positions = (inputs["input_ids"][row] == image_id).nonzero().flatten()
                obj = q.scene.objects[q.focus[0]]
                target = image_positions[:IMAGE_TOKENS][obj.row * side + obj.col]
                weight = stacked[row, :, :, target].float()
                totals = weight if totals is None else totals + weight
    finally:
        model.set_attn_implementation(previous)
    attention = (totals / n).numpy()
    return {
        "n_questions": n,
        "accuracy_by_objects": {k: round(float(np.mean(v)), 3) for k, v in sorted(by_objects.items())},
        "wrong_but_present": round(
            float(
                np.mean(
                    [
                        not hit and COLORS[c] in {o.color for o in q.scene.objects}
                        for q, hit, c in zip(questions, right, chosen.tolist(), strict=True)
                    ]
                )
            ),
            3,
        ),
        "vision_probe": vision_probe,
        "residual_probe_by_layer": residual_probe,
        "attention_to_cell": attention.round(3).tolist(),
        "attention_to_cell_max_by_layer": attention.max(axis=1).round(3).tolist(),
        "train_share": round(train / n, 2),
    }
