"""Training a model on preference data: DPO (Silkie's recipe) through TRL.

    from headvec.alignment import DPOSettings, PreferenceRow, train_dpo
    result = train_dpo("toy", rows, "runs/dpo", DPOSettings(max_steps=100, learning_rate=5e-4))
    load(result.model_dir)   # the merged model, plain transformers too

Nothing here is imported by ``import headvec``; torch, TRL and peft load inside the functions.
"""

from headvec.alignment.dpo import (
    LANGUAGE_MODEL_PROJECTIONS,
    DPOResult,
    DPOSettings,
    ImplicitRewards,
    PreferenceRow,
    implicit_rewards,
    sequence_logprobs,
    train_dpo,
)

__all__ = [
    "LANGUAGE_MODEL_PROJECTIONS",
    "DPOResult",
    "DPOSettings",
    "ImplicitRewards",
    "PreferenceRow",
    "implicit_rewards",
    "sequence_logprobs",
    "train_dpo",
]
