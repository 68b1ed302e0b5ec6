"""An activation reward model drives one real TRL GRPOTrainer step (CPU, tiny random models)."""

from __future__ import annotations

import math

import pytest
import torch
from checks import TINY_RM_SETTINGS

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


def _fitted_activation_rm(tiny_model_dir):
    from headvec.models import load
    from headvec.rewards.activation import ActivationRewardModel, Judgement, VerdictFormat

    rm = ActivationRewardModel(load(str(tiny_model_dir("llama"))), VerdictFormat(), **TINY_RM_SETTINGS)
    facts = [
        ("What colour is the sky?", "Blue", "Green"),
        ("How many legs does a spider have?", "Eight", "Six"),
    ]
    judgements = [Judgement(q, right, True) for q, right, _ in facts]
    judgements += [Judgement(q, wrong, False) for q, _, wrong in facts]
    return rm.fit(judgements * 2)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_grpo_step_with_activation_reward(tiny_model_dir, tmp_path):
    rm = _fitted_activation_rm(tiny_model_dir)
    reward = rm.as_trl_reward_func()
    calls: list[tuple[list, list, dict]] = []

    def spy(prompts, completions, **columns):
        calls.append((list(prompts), list(completions), columns))
        return reward(prompts, completions, **columns)

    spy.__name__ = reward.__name__
    prompts = ["What colour is the sky?", "How many legs does a spider have?"] * 2
    dataset = datasets.Dataset.from_dict({"prompt": prompts})
    config = trl.GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        learning_rate=1e-4,
        beta=0.0,  # no reference model: one model less to load on CPU
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    torch.manual_seed(0)
    trainer = trl.GRPOTrainer(
        model=str(tiny_model_dir("llama")), reward_funcs=[spy], args=config, train_dataset=dataset
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()

    assert trainer.state.global_step == 1
    assert calls, "the reward function was never called"
    call_prompts, completions, _ = calls[0]
    assert len(completions) == len(call_prompts) == 2  # one prompt x num_generations
    assert all(isinstance(c, str) for c in completions)
    assert set(call_prompts) <= set(prompts)
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert logged, trainer.state.log_history
    assert math.isfinite(logged[0]["reward"]) and 0.0 <= logged[0]["reward"] <= 1.0
    key = f"rewards/{reward.__name__}/mean"
    assert key in logged[0] and math.isfinite(logged[0][key])
    assert math.isfinite(logged[0]["loss"])
    if logged[0]["reward_std"] > 1e-6:  # distinct rewards -> non-zero advantages -> the policy moved
        after = dict(trainer.model.named_parameters())
        assert any(not torch.equal(before[n], after[n].detach()) for n in before)
