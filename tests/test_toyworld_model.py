"""The toy model's tokenizer, training data layout and resumable training loop."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from headvec.errors import HeadvecError
from headvec.toyworld import make_icl, make_scene_graph, vocabulary
from headvec.toyworld.evaluate import detokenize_json
from headvec.toyworld.model import build_processor
from headvec.toyworld.train import (
    TrainConfig,
    as_conversation,
    collate,
    encode_conversation,
    sample_batch,
    train,
)


def test_tokenizer_covers_the_whole_vocabulary():
    tokenizer = build_processor().tokenizer
    ids = tokenizer(" ".join(vocabulary()), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(vocabulary()) and tokenizer.unk_token_id not in ids


def test_scene_graph_json_survives_tokenize_and_decode():
    tokenizer = build_processor().tokenizer
    for item in make_scene_graph(random.Random(0), 20, "xx"):
        decoded = tokenizer.decode(tokenizer(item.answer, add_special_tokens=False)["input_ids"])
        assert json.loads(detokenize_json(decoded)) == json.loads(item.answer)


def test_training_layout_equals_the_processor_chat_template():
    """What the model is trained on is token for token what build_prompt + the processor give at inference."""
    processor = build_processor()
    episode = make_icl(random.Random(3), 1, "xx")[0]
    conversation = as_conversation(episode)
    messages = []
    for n_images, text, answer in conversation.turns:
        messages.append(
            {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}
        )
        messages.append({"role": "assistant", "content": answer})
    text = processor.apply_chat_template(messages, tokenize=False)
    expected = processor(
        text=[text], images=[conversation.images], return_tensors="pt", add_special_tokens=False
    )
    input_ids, labels = encode_conversation(processor.tokenizer, conversation)
    assert expected["input_ids"][0].tolist() == input_ids
    answers = [processor.tokenizer.decode([t]) for t in labels if t != -100]
    assert answers == [word for shot in [*episode.shots, episode.query] for word in (shot.answer, "</s>")]
    torch.testing.assert_close(collate(processor, [conversation])["pixel_values"], expected["pixel_values"])


def test_batches_depend_only_on_seed_and_step():
    config = TrainConfig(batch_size=6)
    first, again = sample_batch(config, 7), sample_batch(config, 7)
    assert [c.turns for c in first] == [c.turns for c in again]
    assert [c.turns for c in first] != [c.turns for c in sample_batch(config, 8)]


def test_training_stream_covers_every_question_type_and_in_context_task():
    """Regression: asking a generator for one item at a time always gave its first question type."""
    from headvec.toyworld.tasks import QTYPES
    from headvec.toyworld.train import CHUNK_STEPS, _chunk_items

    items = _chunk_items(TrainConfig(), 0)
    assert len(items) == CHUNK_STEPS * TrainConfig().batch_size
    assert {i.meta["qtype"] for i in items if i.task == "vqa"} == set(QTYPES)
    assert {i.icl_task for i in items if i.task == "icl"} == {"color", "shape", "size", "count"}
    assert {i.language for i in items} == {"en", "xx"}


def test_paused_and_resumed_training_equals_an_uninterrupted_run(tmp_path):
    config = TrainConfig(
        steps=4, batch_size=4, hidden_size=32, n_layers=2, n_heads=2, checkpoint_every=10, align_steps=2
    )
    whole = train(tmp_path / "whole", config, progress=False)
    assert train(tmp_path / "paused", config, until_step=2, progress=False) is None
    resumed = train(tmp_path / "paused", config, progress=False)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    log = json.loads((tmp_path / "whole" / "train_log.json").read_text())["log"]
    assert log[0]["step"] == 0 and log[-1]["step"] == 3


def test_a_finished_run_can_be_extended_but_not_changed(tmp_path):
    small = dict(batch_size=4, hidden_size=32, n_layers=2, n_heads=2, checkpoint_every=10, align_steps=2)
    train(tmp_path / "run", TrainConfig(steps=3, **small), progress=False)
    extended = train(tmp_path / "run", TrainConfig(steps=5, **small), progress=False)
    log = json.loads((extended.parent / "train_log.json").read_text())["log"]
    assert {"step": 3, "extended_from_steps": 3, "extended_to_steps": 5} in log
    assert log[-1]["step"] == 4
    with pytest.raises(HeadvecError, match="other settings"):
        train(tmp_path / "run", TrainConfig(steps=6, **{**small, "batch_size": 2}), progress=False)
