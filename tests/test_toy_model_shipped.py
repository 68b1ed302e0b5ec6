"""The trained toy model that ships with headvec: plain transformers loads it and it reads images."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from headvec import HeadEngine, load
from headvec.models import resolve_model_path
from headvec.toyworld.export import derived_rng
from headvec.toyworld.scenes import render
from headvec.toyworld.tasks import ask_many, make_judge
from headvec.toyworld.train import TrainConfig

CHANCE_COUNT = 0.25  # one, two, three or four objects


def _answer(model, processor, image, question: str) -> str:
    """Greedy answer of plain transformers, through the processor's own chat template."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _plain_toy_model():
    path = resolve_model_path("toy")
    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def test_plain_transformers_loads_it_and_counts_objects_in_images():
    model, processor = _plain_toy_model()
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    questions = ask_many(derived_rng(7, "shipped-test", "test"), 48, ("count",), "test")
    hits = sum(_answer(model, processor, render(q.scene), q.question).strip() == q.answer for q in questions)
    # well above chance: the answer depends on the image, not only on the question
    assert hits / len(questions) >= 2 * CHANCE_COUNT, hits


def test_it_judges_answers_about_attributes_counts_and_existence():
    """The shipped model verifies a candidate answer (half of them wrong, from the same scene)."""
    items = make_judge(derived_rng(9, "shipped-test", "test"), 120, split="test")
    items = [i for i in items if i.meta["qtype"] in ("color", "shape", "count", "count_color", "exist")]
    assert len(items) >= 40 and {i.answer for i in items} == {"yes", "no"}
    model, processor = _plain_toy_model()
    hits = sum(_answer(model, processor, i.image(), i.prompt).strip() == i.answer for i in items)
    assert hits / len(items) >= 0.8, hits  # chance is 0.5; measured 0.89-1.00 by question type


def test_it_answers_spatial_relation_questions():
    """Open ("what is left of X ?") and yes/no relation questions need where two objects are."""
    questions = ask_many(derived_rng(10, "shipped-test", "test"), 48, ("relation", "relation_yesno"), "test")
    assert {q.qtype for q in questions} == {"relation", "relation_yesno"}
    model, processor = _plain_toy_model()
    hits = sum(_answer(model, processor, render(q.scene), q.question).strip() == q.answer for q in questions)
    assert hits / len(questions) >= 0.75, hits  # yes/no chance 0.5; measured 0.90 (en, n = 400)


def test_the_default_recipe_is_the_one_that_trained_the_shipped_weights():
    """`headvec toyworld train` rebuilds the shipped model: its log holds the settings and every step."""
    log = json.loads((Path(__file__).parents[1] / "docs/toyworld/train_log.json").read_text())
    assert log["config"] == json.loads(json.dumps(asdict(TrainConfig())))
    assert log["log"][-1]["step"] == TrainConfig().total_steps - 1


def test_the_toy_alias_loads_through_headvec_and_its_heads_can_be_captured():
    loaded = load("toy", device="cpu")
    text_config = loaded.model.config.text_config
    assert loaded.is_multimodal
    assert (loaded.arch.n_layers, loaded.arch.n_heads) == (
        text_config.num_hidden_layers,
        text_config.num_attention_heads,
    )
    question = ask_many(derived_rng(8, "shipped-test", "test"), 1, ("color",), "test")[0]
    prompt = loaded.build_prompt(question.question, [render(question.scene)])
    capture = HeadEngine(loaded).capture([prompt], positions=-1)
    assert capture.heads.shape == (1, loaded.arch.n_layers, loaded.arch.n_heads, loaded.arch.head_dim)
    assert torch.isfinite(capture.heads).all()
