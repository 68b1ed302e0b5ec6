"""Load any saved headvec reward model from its directory (and plug it into the benchmark harness)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from headvec.errors import HeadvecError
from headvec.methods.artifacts import CONFIG_NAME
from headvec.models import LoadedModel
from headvec.rewards.protocol import RewardModel


def load_reward_model(directory: str | os.PathLike, model: LoadedModel | str | None = None) -> RewardModel:
    """An activation RM artifact, or a Hugging Face sequence-classification reward model directory."""
    path = Path(directory)
    config_path = path / CONFIG_NAME
    if config_path.is_file():
        kind = json.loads(config_path.read_text()).get("kind")
        if kind == "activation_reward_model":
            from headvec.rewards.activation import ActivationRewardModel

            return ActivationRewardModel.from_pretrained(path, model)
        raise HeadvecError(f"{path} holds a {kind!r} artifact, which is not a reward model")
    if (path / "config.json").is_file():
        from headvec.rewards.classifier import SequenceClassifierRewardModel

        return SequenceClassifierRewardModel(str(path))
    raise HeadvecError(
        f"{path} is neither a headvec reward model ({CONFIG_NAME}) nor a Hugging Face model (config.json); "
        "fit one with `headvec rm fit` first"
    )


def _harness_loader(path: Path, config: dict[str, Any], options: Any) -> RewardModel:
    return load_reward_model(path)


def register_with_harness() -> None:
    from headvec.harness.registry import register_artifact_loader

    register_artifact_loader("activation_reward_model", _harness_loader)


register_with_harness()
