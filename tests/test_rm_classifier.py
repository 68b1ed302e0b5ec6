"""The Hugging Face sequence-classification adapter: scores, labels, templates, padding, loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

from headvec.errors import HeadvecError
from headvec.rewards import Scorer, as_judge
from headvec.rewards.classifier import SequenceClassifierRewardModel
from headvec.rewards.loading import load_reward_model


def _classifier_dir(
    tiny_model_dir, out: Path, num_labels: int = 1, chat_template: bool = True, pad: bool = True
) -> Path:
    """A tiny random-init LlamaForSequenceClassification with the tiny llama's offline tokenizer."""
    source = tiny_model_dir("llama")
    config = AutoConfig.from_pretrained(source)
    config.num_labels = num_labels
    if num_labels == 3:
        config.id2label = {0: "bad", 1: "ok", 2: "good"}
        config.label2id = {"bad": 0, "ok": 1, "good": 2}
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not chat_template:
        tokenizer.chat_template = None
    if not pad:
        tokenizer.pad_token = None
        config.pad_token_id = None
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not chat_template:
        for name in ("chat_template.jinja", "chat_template.json"):
            (out / name).unlink(missing_ok=True)
    return out


def test_scores_single_logit_batched_and_padded(tiny_model_dir, tmp_path):
    rm = SequenceClassifierRewardModel(_classifier_dir(tiny_model_dir, tmp_path / "rm"), batch_size=2)
    assert isinstance(rm, Scorer)
    prompts = ["What is the capital of France?", "How many legs does a spider have?", "Hi"]
    responses = ["Paris.", "A spider has eight legs, as every child learns at school.", "Hello there!"]
    batched = rm.rewards(prompts, responses)
    one_by_one = [rm.rewards([p], [r])[0] for p, r in zip(prompts, responses, strict=True)]
    assert len(batched) == 3
    assert batched == pytest.approx(one_by_one, abs=1e-4)  # padding does not change a score
    assert rm.render("q", "a") != "q\n\na"  # the chat template was used
    pref = as_judge(rm).compare(prompts[1], responses[1], "Six.")
    assert pref.scores == pytest.approx((batched[1], rm.rewards([prompts[1]], ["Six."])[0]))


def test_no_chat_template_and_no_pad_token(tiny_model_dir, tmp_path):
    rm = SequenceClassifierRewardModel(
        _classifier_dir(tiny_model_dir, tmp_path / "rm", chat_template=False, pad=False)
    )
    assert rm.render("q", "a") == "q\n\na"
    assert rm.tokenizer.pad_token is not None and rm.model.config.pad_token_id is not None
    scores = rm.rewards(["short", "a much longer prompt with many words"], ["x", "y"])
    assert all(isinstance(s, float) for s in scores)


def test_positive_label_by_name_and_index(tiny_model_dir, tmp_path):
    directory = _classifier_dir(tiny_model_dir, tmp_path / "rm", num_labels=3)
    with pytest.raises(HeadvecError, match="positive_label"):
        SequenceClassifierRewardModel(directory)
    by_name = SequenceClassifierRewardModel(directory, positive_label="good")
    by_index = SequenceClassifierRewardModel(directory, positive_label=2)
    assert by_name.label_index == by_index.label_index == 2
    assert by_name.rewards(["q"], ["a"]) == pytest.approx(by_index.rewards(["q"], ["a"]))
    with pytest.raises(HeadvecError, match="not a label"):
        SequenceClassifierRewardModel(directory, positive_label="great")


def test_refuses_images_and_loads_through_load_reward_model(tiny_model_dir, tmp_path):
    directory = _classifier_dir(tiny_model_dir, tmp_path / "rm")
    rm = load_reward_model(directory)
    assert isinstance(rm, SequenceClassifierRewardModel)
    with pytest.raises(HeadvecError, match="text-only"):
        rm.rewards(["q"], ["a"], ["picture.png"])
    with pytest.raises(HeadvecError, match="responses"):
        rm.rewards(["q", "q2"], ["a"])
    with pytest.raises(HeadvecError, match="sequence-classification"):
        SequenceClassifierRewardModel(tmp_path / "missing")
