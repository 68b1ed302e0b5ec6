"""Saving and loading fitted estimators: safetensors for tensors, JSON for everything else.

Every artifact records the identity of the model it was fitted on (architecture, head geometry and a
fingerprint of the attention-output weights), so applying it to another model is a one-line error
instead of silently wrong numbers. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from headvec.errors import HeadvecError
from headvec.models import LoadedModel

CONFIG_NAME = "headvec_config.json"
TENSORS_NAME = "headvec_tensors.safetensors"


def save_artifact(
    directory: str | os.PathLike, kind: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> Path:
    """Write ``config`` (JSON, with ``kind``) and ``tensors`` (safetensors) into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / TENSORS_NAME))
    (out / CONFIG_NAME).write_text(json.dumps({"kind": kind, **config}, indent=2))
    return out


def load_artifact(directory: str | os.PathLike, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read what :func:`save_artifact` wrote, checking that it is a ``kind`` artifact."""
    path = Path(directory)
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise HeadvecError(f"{path} is not a headvec artifact (no {CONFIG_NAME}); fit and save one first")
    config = json.loads(config_path.read_text())
    if config.get("kind") != kind:
        raise HeadvecError(f"{path} holds a {config.get('kind')!r} artifact, not a {kind!r} one")
    return config, load_file(str(path / TENSORS_NAME))


def check_same_model(loaded: LoadedModel, fitted_on: dict[str, Any], what: str) -> None:
    """Refuse to apply an artifact to a model other than the one it was fitted on."""
    current = loaded.identity
    keys = ("model_type", "n_layers", "n_heads", "head_dim", "weights_fingerprint")
    different = [k for k in keys if fitted_on.get(k) != current.get(k)]
    if different:
        raise HeadvecError(
            f"this {what} was fitted on {fitted_on.get('name_or_path')!r} but the model given is "
            f"{current['name_or_path']!r} (different {', '.join(different)}); load it with the model it "
            "was fitted on, or fit it again"
        )
