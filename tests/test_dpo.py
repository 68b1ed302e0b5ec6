"""DPO through TRL on the shipped toy model: the loss falls, the implicit reward margin rises, the merged
model loads, LoRA touches the decoder only, a killed run resumes, and the toy-world loop runs end to end."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from headvec.alignment import (
    LANGUAGE_MODEL_PROJECTIONS,
    DPOSettings,
    PreferenceRow,
    implicit_rewards,
    train_dpo,
)
from headvec.errors import HeadvecError

FAST = dict(
    learning_rate=5e-4,
    lora_r=16,
    lora_alpha=32,
    batch_size=4,
    gradient_accumulation=1,
    logging_steps=1,
    save_steps=4,
)


def hallucination_rows(n: int, seed: int = 0) -> list[PreferenceRow]:
    """Right captions chosen over captions naming something that is not in the scene."""
    from headvec.toyworld.preferences import make_preference

    prefs = [p for p in make_preference(seed, 4 * n, split="train") if p.category == "hallucination"][:n]
    return [PreferenceRow(p.query, p.chosen, p.rejected, p.image(), f"p{i}") for i, p in enumerate(prefs)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    rows = hallucination_rows(16)
    out = tmp_path_factory.mktemp("dpo")
    result = train_dpo("toy", rows, out, DPOSettings(max_steps=12, **FAST), progress=False)
    return rows, result


def test_dpo_loss_falls_and_the_implicit_reward_margin_rises(trained):
    from headvec.models import load

    rows, result = trained
    losses, margins = result.metric("loss"), result.metric("rewards/margins")
    assert len(losses) == 12
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1: log 2
    assert sum(losses[-3:]) / 3 < losses[0] - 0.1
    assert sum(margins[-3:]) / 3 > margins[0] + 0.2
    # the trained policy against the starting model on the training pairs (our own log-prob code)
    rewards = implicit_rewards(load(result.model_dir, device="cpu"), load("toy", device="cpu"), rows)
    assert sum(rewards.margins) / len(rows) > 0.2
    assert rewards.accuracy >= 0.9


def test_the_merged_model_loads_with_headvec_and_plain_transformers(trained):
    import torch
    from transformers import AutoModelForImageTextToText

    from headvec.models import load

    _, result = trained
    assert not any("lora" in p.name for p in result.model_dir.iterdir())
    plain = AutoModelForImageTextToText.from_pretrained(result.model_dir)
    assert not any("lora" in name for name, _ in plain.named_parameters())
    base = load("toy", device="cpu").model
    changed = [
        name
        for (name, p), (_, q) in zip(plain.named_parameters(), base.named_parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert changed and all("language_model" in name for name in changed)
    assert load(result.model_dir, device="cpu").is_multimodal


def test_lora_targets_the_decoder_projections_only():
    from headvec.models import load

    names = [n for n, _ in load("toy", device="cpu").model.named_modules()]
    hit = [n for n in names if re.fullmatch(LANGUAGE_MODEL_PROJECTIONS, n)]
    assert len(hit) == 8 * 7  # 8 decoder layers x q, k, v, o, gate, up, down
    assert not any("vision_tower" in n for n in hit)
    assert any(n.endswith("vision_tower.encoder.layers.0.self_attn.q_proj") for n in names)


def test_rerun_with_other_settings_into_the_same_directory_is_refused(trained, tmp_path):
    rows = hallucination_rows(4)
    train_dpo("toy", rows, tmp_path, DPOSettings(max_steps=1, **FAST), progress=False)
    with pytest.raises(HeadvecError, match="holds a DPO run with other settings"):
        train_dpo("toy", rows, tmp_path, DPOSettings(max_steps=2, **FAST), progress=False)
    with pytest.raises(HeadvecError, match="rows, rows_digest"):
        train_dpo("toy", rows[:3], tmp_path, DPOSettings(max_steps=1, **FAST), progress=False)


def test_a_row_without_its_image_is_one_line(tmp_path):
    rows = hallucination_rows(2)
    rows[1].image = None
    with pytest.raises(HeadvecError, match=r"preference row 1 \(p1\) has no image"):
        train_dpo("toy", rows, tmp_path / "run", DPOSettings(max_steps=1, **FAST), progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_settings_are_checked():
    with pytest.raises(HeadvecError, match="beta must be > 0"):
        DPOSettings(beta=0)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, sys, torch
        torch.set_num_threads(1)
        from transformers import TrainerCallback
        sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        from test_dpo import FAST, hallucination_rows
        from headvec.alignment import DPOSettings, train_dpo

        class Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 5:
                    os.kill(os.getpid(), signal.SIGKILL)

        train_dpo("toy", hallucination_rows(16), {str(tmp_path)!r}, DPOSettings(max_steps=6, **FAST),
                  progress=False, callbacks=[Kill()])
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert (tmp_path / "checkpoint-4").is_dir() and not (tmp_path / "model").exists()
    from transformers import TrainerCallback

    trained_steps = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            trained_steps.append(state.global_step)

    rows = hallucination_rows(16)
    result = train_dpo(
        "toy", rows, tmp_path, DPOSettings(max_steps=6, **FAST), progress=False, callbacks=[Count()]
    )
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-4")
    assert trained_steps == [5, 6]  # steps 1-4 came from the checkpoint, not retrained
    assert result.steps == 6 and [e["step"] for e in result.log_history if "loss" in e] == list(range(1, 7))
    assert (result.model_dir / "config.json").is_file()


def test_the_toy_world_loop_end_to_end_in_seconds(tmp_path):
    """Tiny pool -> oracle annotation -> official pairs -> a few DPO steps: the loss falls and the
    implicit reward margin on the training pairs rises."""
    import torch

    from headvec.feedback import annotate_file, build_pool, official_pairs, read_feedback
    from headvec.feedback.schema import ImageStore
    from headvec.models import load
    from headvec.toyworld.feedback import OracleAnnotator, preference_rows, toy_generators, toy_instructions

    torch.set_num_threads(1)
    base = load("toy", device="cpu")
    instructions = toy_instructions(12, 0, tmp_path)
    build_pool(instructions, toy_generators(base), tmp_path / "pool.jsonl", images=tmp_path, progress=False)
    stats = annotate_file(tmp_path / "pool.jsonl", tmp_path / "ann.jsonl", OracleAnnotator(), progress=False)
    assert stats.annotated == 12 and stats.failures == 0
    pairs, _ = official_pairs(read_feedback(tmp_path / "ann.jsonl"))
    assert len(pairs) >= 12
    rows = preference_rows(pairs[:24], ImageStore(tmp_path))
    result = train_dpo(base, rows, tmp_path / "dpo", DPOSettings(max_steps=12, **FAST), progress=False)
    losses, margins = result.metric("loss"), result.metric("rewards/margins")
    assert sum(losses[-3:]) / 3 < losses[0]
    assert sum(margins[-3:]) / 3 > margins[0]
    rewards = implicit_rewards(load(result.model_dir, device="cpu"), load("toy", device="cpu"), rows)
    assert sum(rewards.margins) / len(rows) > 0
