"""The toy model's tokenizer, training data layout and resumable training loop."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from headvec.errors import HeadvecError
from headvec.toyworld import LANGUAGES, make_icl, make_judge, make_scene_graph, make_vqa, vocabulary
from headvec.toyworld.evaluate import detokenize_json
from headvec.toyworld.language import translate
from headvec.toyworld.model import build_processor
from headvec.toyworld.train import (
    COUNT_QTYPES,
    GENERATORS,
    Conversation,
    TrainConfig,
    accumulate_gradients,
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
    input_ids, labels, aux_labels = encode_conversation(processor.tokenizer, conversation)
    assert set(aux_labels) == {-100}  # in-context episodes get no auxiliary targets
    assert expected["input_ids"][0].tolist() == input_ids
    answers = [processor.tokenizer.decode([t]) for t in labels if t != -100]
    assert answers == [word for shot in [*episode.shots, episode.query] for word in (shot.answer, "</s>")]
    torch.testing.assert_close(collate(processor, [conversation])["pixel_values"], expected["pixel_values"])


@pytest.mark.parametrize("language", LANGUAGES)
def test_judge_items_ask_the_middle_layer_for_the_gold_answer_at_the_candidate(language):
    tokenizer = build_processor().tokenizer
    items = make_judge(random.Random(2), 60, language)
    assert {i.meta["label"] for i in items} == {"yes", "no"}
    for item in items:
        conversation = as_conversation(item)
        input_ids, labels, aux_labels = encode_conversation(tokenizer, conversation)
        targets = [(i, t) for i, t in enumerate(aux_labels) if t != -100]
        gold_ids = tokenizer(translate(item.meta["gold"], language), add_special_tokens=False)["input_ids"]
        candidate_ids = tokenizer(item.candidate, add_special_tokens=False)["input_ids"]
        assert [t for _, t in targets] == gold_ids  # the gold answer, not the candidate
        start = targets[0][0]
        assert input_ids[start : start + len(candidate_ids)] == candidate_ids  # at the candidate's place
        assert all(labels[i] == -100 for i, _ in targets)  # the main loss never sees them


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_verify_phase_asks_for_the_verdict_right_after_the_candidate(language):
    tokenizer = build_processor().tokenizer

    def token(text: str) -> int:
        return tokenizer(text, add_special_tokens=False)["input_ids"][0]

    for item in make_judge(random.Random(4), 20, language):
        candidate = tokenizer(item.candidate, add_special_tokens=False)["input_ids"]
        gold = tokenizer(translate(item.meta["gold"], language), add_special_tokens=False)["input_ids"]
        plain_ids, plain_labels, _ = encode_conversation(tokenizer, as_conversation(item))
        verified = as_conversation(item, verify=True)
        input_ids, labels, aux = encode_conversation(tokenizer, verified)
        assert input_ids == plain_ids
        extra = [i for i, (a, b) in enumerate(zip(plain_labels, labels, strict=True)) if a != b]
        assert len(extra) == 1  # one extra target, the verdict, where the candidate ends
        assert labels[extra[0]] == token(item.answer)
        start = extra[0] - len(candidate)
        assert input_ids[start : extra[0]] == candidate
        # the gold answer is predicted *from* the candidate's own tokens (targets one to the right)
        shared = min(len(gold), len(candidate))
        assert [(i, t) for i, t in enumerate(aux) if t != -100] == list(
            zip(range(start + 1, start + 1 + shared), gold[:shared], strict=True)
        )


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_verify_phase_asks_yes_no_questions_for_their_intermediate_fact(language):
    tokenizer = build_processor().tokenizer
    question_mark = tokenizer("?", add_special_tokens=False)["input_ids"][0]
    items = make_vqa(random.Random(5), 24, language, qtypes=("exist", "relation_yesno"))
    assert {"yes", "no"} == {i.meta["label"] for i in items}
    for item in items:
        conversation = as_conversation(item, verify=True)
        input_ids, _, aux = encode_conversation(tokenizer, conversation)
        targets = [(i, t) for i, t in enumerate(aux) if t != -100]
        if "hint" not in item.meta:  # an existence question whose object is absent: nothing to look up
            assert item.meta["qtype"] == "exist" and item.meta["label"] == "no"
            assert targets == []
            continue
        hint = tokenizer(translate(item.meta["hint"], language), add_special_tokens=False)["input_ids"]
        assert targets == [(len(input_ids) - 1 - input_ids[::-1].index(question_mark), hint[0])]


def test_vqa_answers_are_auxiliary_targets_too():
    tokenizer = build_processor().tokenizer
    item = make_vqa(random.Random(0), 1, "yy")[0]
    _, labels, aux_labels = encode_conversation(tokenizer, as_conversation(item))
    answer = tokenizer(item.answer, add_special_tokens=False)["input_ids"]
    assert [t for t in aux_labels if t != -100] == answer
    assert [t for t in labels if t != -100] == [*answer, tokenizer.eos_token_id]


def test_the_auxiliary_loss_reaches_the_lower_layers_only_through_its_targets():
    """With aux_layer=1 the auxiliary loss changes the gradient of layer 0 but not of the last layer."""
    from headvec.toyworld.model import build_config, build_model

    processor = build_processor()
    conversations = [as_conversation(i) for i in make_judge(random.Random(1), 4)]

    def grads(aux_weight: float) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(build_config(processor.tokenizer, 32, 2, 2))
        accumulate_gradients(model, processor, conversations, 4096, aux_layer=1, aux_weight=aux_weight)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, with_aux = grads(0.0), grads(1.0)
    first = "model.language_model.layers.0.self_attn.o_proj.weight"
    last = "model.language_model.layers.1.self_attn.o_proj.weight"
    assert not torch.allclose(plain[first], with_aux[first])
    torch.testing.assert_close(plain[last], with_aux[last])


def test_batches_depend_only_on_seed_and_step():
    config = TrainConfig(batch_size=6)
    first, again = sample_batch(config, 7), sample_batch(config, 7)
    assert [c.turns for c in first] == [c.turns for c in again]
    assert [c.turns for c in first] != [c.turns for c in sample_batch(config, 8)]


def test_training_stream_covers_every_question_type_and_in_context_task():
    """Regression: asking a generator for one item at a time always gave its first question type."""
    from headvec.toyworld.tasks import QTYPES
    from headvec.toyworld.train import CHUNK_STEPS, _chunk_items

    config = TrainConfig()
    items = _chunk_items(config, int(0.5 * config.steps) // CHUNK_STEPS)  # in the full mixture
    assert len(items) == CHUNK_STEPS * config.batch_size
    assert {i.meta["qtype"] for i in items if i.task == "vqa"} == set(QTYPES)
    assert {i.icl_task for i in items if i.task == "icl"} == {"color", "shape", "size", "count"}
    assert {i.language for i in items} == set(LANGUAGES)


def test_training_starts_with_dense_english_attribute_questions():
    from headvec.toyworld.train import _chunk_items

    items = _chunk_items(TrainConfig(), 0)
    assert {(i.task, i.meta["qtype"]) for i in items} == {("vqa", q) for q in ("color", "shape", "size")}
    assert {i.language for i in items} == {"en"}


def test_the_verify_phase_restarts_the_learning_rate_and_turns_the_hints_on():
    from headvec.toyworld.train import _phase, learning_rate

    config = TrainConfig(
        steps=1000,
        verify_steps=500,
        judge_steps=300,
        final_steps=0,
        lr=1e-3,
        verify_lr=2e-4,
        judge_lr=3e-4,
        warmup_steps=20,
    )
    final = replace(config, final_steps=200, final_lr=5e-4)
    assert config.total_steps == 1800 and final.total_steps == 2000
    assert learning_rate(final, 1799) == pytest.approx(config.judge_lr * config.min_lr_ratio, rel=1e-2)
    assert learning_rate(final, 1800) < learning_rate(final, 1819) == pytest.approx(final.final_lr)
    assert learning_rate(final, 1999) == pytest.approx(final.final_lr * config.min_lr_ratio, rel=1e-2)
    assert _phase(final, 1799)[0] == config.judge_mixture and _phase(final, 1800)[0] == final.final_mixture
    assert learning_rate(config, 999) == pytest.approx(config.lr * config.min_lr_ratio, rel=1e-3)
    assert learning_rate(config, 1000) < learning_rate(config, 1019) == pytest.approx(config.verify_lr)
    assert learning_rate(config, 1499) == pytest.approx(config.verify_lr * config.min_lr_ratio, rel=1e-2)
    assert learning_rate(config, 1500) < learning_rate(config, 1519) == pytest.approx(config.judge_lr)
    assert learning_rate(config, 1799) == pytest.approx(config.judge_lr * config.min_lr_ratio, rel=1e-2)
    assert [_phase(config, s)[0] for s in (999, 1000, 1500)] == [
        config.mixture,
        config.verify_mixture,
        config.judge_mixture,
    ]
    judged = [c for c in sample_batch(config, 999) if c.candidate_hint]
    verified = [c for c in sample_batch(config, 1000) if c.candidate_hint]
    assert judged and verified
    assert {c.verdict for c in judged} == {None} and None not in {c.verdict for c in verified}


def test_relation_questions_name_each_operand_with_its_coordinate_on_the_asked_axis():
    from headvec.toyworld.scenes import Obj, Scene
    from headvec.toyworld.tasks import Question, position_hints

    circle, square = Obj("circle", "red", "small", 0, 0), Obj("square", "blue", "large", 0, 2)
    star = Obj("triangle", "green", "small", 2, 2)
    scene = Scene((circle, square, star))

    def ask(qtype, relation, focus):
        return Question(scene=scene, qtype=qtype, question="?", answer="?", focus=focus, relation=relation)

    assert position_hints(ask("relation_yesno", "left of", (0, 1))) == [
        ["the circle", "left"],
        ["the square", "right"],
    ]
    assert position_hints(ask("relation_yesno", "below", (2, 1))) == [
        ["the triangle", "bottom"],
        ["the square", "top"],
    ]
    # "what is left of the square": only the anchor is named in the question
    assert position_hints(ask("relation", "left of", (0, 1))) == [["the square", "right"]]
    assert position_hints(ask("color", None, (0,))) == []


def test_position_hints_are_read_where_both_the_name_and_the_relation_are_known():
    """``is X left of Y``: X's column is asked at ``of`` (at X the axis is still unknown), Y's at Y."""
    tokenizer = build_processor().tokenizer
    token_ids = tokenizer("left right center top bottom", add_special_tokens=False)["input_ids"]
    left, right, center, top, bottom = token_ids

    def predicted_at(
        text: str, hints: list[tuple[str, str]], relation: str, lookup: str | None = None
    ) -> list[tuple[str, int]]:
        conversation = Conversation(
            turns=[(1, text, "yes")], images=[], position_hints=hints, relation=relation, lookup_hint=lookup
        )
        input_ids, _, aux = encode_conversation(tokenizer, conversation)
        words = tokenizer.convert_ids_to_tokens(input_ids)
        return [(words[i - 1], t) for i, t in enumerate(aux) if t != -100]

    hints = [("the circle", "left"), ("the red square", "right")]
    assert predicted_at("is the circle left of the red square ?", hints, "left of") == [
        ("of", left),
        ("square", right),
    ]
    assert predicted_at("what is above the cross ?", [("the cross", "bottom")], "above") == [
        ("cross", bottom)
    ]
    # the verify phase's true relation, asked at the last word, moves on to the "?" when Y's hint has it
    assert predicted_at("is the circle left of the red square ?", hints, "left of", lookup="left")[1:] == [
        ("square", right),
        ("?", left),
    ]
    # two names read before the relation: the second hint moves on to the next token
    both_first = predicted_at(
        "the circle the cross above ?", [("the circle", "top"), ("the cross", "center")], "above"
    )
    assert both_first == [("above", top), ("?", center)]


def test_a_mixture_can_ask_for_counting_questions_or_position_items_alone():
    config = TrainConfig(steps=0, verify_steps=0, judge_steps=0, final_steps=50)
    counting = replace(config, final_mixture={"count_vqa": 1.0})
    assert {i.meta["qtype"] for i in GENERATORS["count_vqa"](0, 60, "xx", split="train")} == set(COUNT_QTYPES)
    texts = {turn[1] for c in sample_batch(counting, 0) if c.language == "en" for turn in c.turns}
    assert texts and all(t.startswith("how many") for t in texts)
    positions = sample_batch(replace(config, final_mixture={"positions": 1.0}), 0)
    assert "describe the scene ." in {c.turns[0][1] for c in positions if c.language == "en"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_relation_questions_carry_position_hints_only_when_asked(language):
    tokenizer = build_processor().tokenizer
    items = make_vqa(random.Random(2), 12, language, qtypes=("relation", "relation_yesno"))
    for item in items:
        plain = encode_conversation(tokenizer, as_conversation(item))[2]
        _, _, aux = encode_conversation(tokenizer, as_conversation(item, positions=True))
        added = sorted(t for i, t in enumerate(aux) if t != plain[i] and t != -100)
        expected = sorted(
            tokenizer(translate(word, language), add_special_tokens=False)["input_ids"][0]
            for _, word in item.meta["positions"]
        )
        assert added == expected
    config = TrainConfig(steps=100, attribute_fraction=0.0, binding_fraction=0.0, position_hints=True)
    assert any(c.position_hints for c in sample_batch(config, 0))
    assert not any(c.position_hints for c in sample_batch(replace(config, position_hints=False), 0))


def test_stage_one_targets_name_each_cell_and_optionally_where_it_is():
    from headvec.toyworld.scenes import Obj, Scene
    from headvec.toyworld.train import cell_targets

    tokenizer = build_processor().tokenizer
    scene = Scene((Obj("circle", "red", "small", 0, 1), Obj("square", "blue", "large", 2, 2)))
    plain, placed = cell_targets(tokenizer, [scene]), cell_targets(tokenizer, [scene], positions=True)
    assert plain.shape == (1, 9, 3) and placed.shape == (1, 9, 5)
    assert tokenizer.convert_ids_to_tokens(placed[0, 1].tolist()) == [
        "red",
        "circle",
        "small",
        "top",
        "center",
    ]
    assert tokenizer.convert_ids_to_tokens(placed[0, 8].tolist()) == [
        "blue",
        "square",
        "large",
        "bottom",
        "right",
    ]
    assert tokenizer.convert_ids_to_tokens(placed[0, 3].tolist()) == ["<pad>"] * 3 + ["middle", "left"]
    torch.testing.assert_close(plain, placed[..., :3])


def test_the_stream_is_vqa_heavy_first_and_judge_heavy_later():
    from headvec.toyworld.train import CHUNK_STEPS, _chunk_items

    config = TrainConfig(steps=20 * CHUNK_STEPS, attribute_fraction=0.0, binding_fraction=0.5)

    def share(items, task):
        return sum(i.task == task for i in items) / len(items)

    early, late = _chunk_items(config, 0), _chunk_items(config, 15)
    assert share(early, "vqa") > share(late, "vqa") + 0.1
    assert share(late, "judge") > share(early, "judge") + 0.1


TINY_RUN = dict(
    batch_size=4, hidden_size=32, n_layers=2, n_heads=2, aux_layer=1, align_steps=2, final_steps=0
)


WITHOUT_POSITIONS = dict(align_positions=False, align_weight=0.0, position_hints=False)


@pytest.mark.parametrize("options", [{}, WITHOUT_POSITIONS], ids=["shipped", "without-positions"])
def test_paused_and_resumed_training_equals_an_uninterrupted_run(tmp_path, options):
    config = TrainConfig(
        steps=4,
        verify_steps=2,
        judge_steps=1,
        checkpoint_every=10,
        **{**TINY_RUN, "final_steps": 1},
        **options,
    )
    whole = train(tmp_path / "whole", config, progress=False)
    assert train(tmp_path / "paused", config, until_step=2, progress=False) is None
    resumed = train(tmp_path / "paused", config, progress=False)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    log = json.loads((tmp_path / "whole" / "train_log.json").read_text())["log"]
    assert log[0]["step"] == 0 and log[-1]["step"] == 7


def test_a_resumed_run_logs_the_time_of_every_step_its_checkpoint_kept(tmp_path):
    """The checkpoint holds the run's time at its step, not only the last log row's (50 steps older)."""
    config = TrainConfig(steps=4, verify_steps=0, judge_steps=0, checkpoint_every=10, **TINY_RUN)
    train(tmp_path / "run", config, until_step=2, progress=False)
    state_file = tmp_path / "run" / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["seconds"] >= max(e["seconds"] for e in state["log"])
    state["seconds"] = 1000.0  # planted: the time the kept steps took, beyond every logged row
    state_file.write_text(json.dumps(state))
    train(tmp_path / "run", config, progress=False)
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())["log"]
    assert log[-1]["step"] == 3 and log[-1]["seconds"] >= 1000.0


def test_a_finished_run_can_be_extended_but_not_changed(tmp_path):
    small = dict(verify_steps=0, judge_steps=0, checkpoint_every=10, **TINY_RUN)
    train(tmp_path / "run", TrainConfig(steps=3, **small), progress=False)
    extended = train(tmp_path / "run", TrainConfig(steps=5, **small), progress=False)
    log = json.loads((extended.parent / "train_log.json").read_text())["log"]
    assert {"step": 3, "extended_from_steps": 3, "extended_to_steps": 5} in log
    assert log[-1]["step"] == 4
    with pytest.raises(HeadvecError, match="other settings"):
        train(tmp_path / "run", TrainConfig(steps=6, **{**small, "batch_size": 2}), progress=False)


def test_training_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    """kill -9 in the middle of a run, rerun the same command: the result equals an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    settings = dict(steps=12, verify_steps=0, judge_steps=0, checkpoint_every=2, **TINY_RUN)
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from headvec.toyworld.train import TrainConfig, train\n"
        f"train(sys.argv[1], TrainConfig(**{settings!r}), progress=False)\n"
    )
    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", script, str(killed)])
    state = killed / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if state.exists() and json.loads(state.read_text())["step"] >= 3:
            break
        time.sleep(0.05)
    assert child.poll() is None, "the run finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (killed / "model").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child: bit-equality needs the same reduction order
    try:
        resumed = train(killed, TrainConfig(**settings), progress=False)
        whole = train(tmp_path / "whole", TrainConfig(**settings), progress=False)
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_binding_diagnosis_reports_every_layer_and_head():
    from headvec.models import LoadedModel
    from headvec.toyworld.diagnose import binding_diagnosis
    from headvec.toyworld.model import build_config, build_model

    processor = build_processor()
    torch.manual_seed(0)
    model = build_model(build_config(processor.tokenizer, 32, 3, 2)).eval()
    attention_implementation = model.config._attn_implementation
    report = binding_diagnosis(LoadedModel.from_model(model, processor), n=48, batch_size=16)
    assert len(report["residual_probe_by_layer"]) == 3
    attention = torch.tensor(report["attention_to_cell"])
    assert attention.shape == (3, 2)
    assert ((attention > 0) & (attention < 1)).all()  # a real share of each head's attention
    assert sorted(report["accuracy_by_objects"]) == [1, 2, 3, 4]
    assert set(report["vision_probe"]) == {"color", "shape", "size", "row", "col"}
    assert model.config._attn_implementation == attention_implementation  # the eager switch is undone
