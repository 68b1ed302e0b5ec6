"""Saving and loading fitted estimators: safetensors for tensors, JSON for everything else.

Every artifact is a directory holding ``headvec_config.json`` and ``headvec_tensors.safetensors``. The
JSON carries ``format_version`` (:data:`FORMAT_VERSION`), the artifact's ``kind``, and under one key,
:data:`MODEL_KEY` (``"fitted_on"``), the identity of the model it was fitted on (architecture, head
geometry and a fingerprint of the attention-output weights), so applying it to another model is a
one-line error instead of silently wrong numbers. Nothing is pickled.

Format history: version 0 (no ``format_version``) stored SAV's model identity under ``"model"`` and
everything else's under ``"fitted_on"``; :func:`load_artifact` migrates it on reading. A version newer
than this headvec reads is a one-line error that says to upgrade.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from headvec.errors import HeadvecError
from headvec.models import MODEL_KEY, LoadedModel

CONFIG_NAME = "headvec_config.json"
TENSORS_NAME = "headvec_tensors.safetensors"
FORMAT_VERSION = 1


def save_artifact(
    directory: str | os.PathLike,
    kind: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    *,
    fitted_on: LoadedModel | dict[str, Any] | None = None,
) -> Path:
    """Write ``config`` (JSON, with ``kind`` and ``format_version``) and ``tensors`` (safetensors).

    The model identity goes under :data:`MODEL_KEY`: pass it as ``fitted_on`` (a LoadedModel or its
    ``identity``), or put it in ``config`` under that key yourself.
    """
    body: dict[str, Any] = {"format_version": FORMAT_VERSION, "kind": kind}
    body |= {k: v for k, v in config.items() if k not in body}
    if fitted_on is not None:
        body[MODEL_KEY] = fitted_on.identity if isinstance(fitted_on, LoadedModel) else dict(fitted_on)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / TENSORS_NAME))
    (out / CONFIG_NAME).write_text(json.dumps(body, indent=2))
    return out


def _migrate(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """Bring an artifact's JSON to :data:`FORMAT_VERSION`, or say in one line why it cannot be read."""
    version = config.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise HeadvecError(
            f"{path / CONFIG_NAME} has an unknown format_version {version!r} (this headvec reads 0 to "
            f"{FORMAT_VERSION}); fit and save the artifact again"
        )
    if version > FORMAT_VERSION:
        raise HeadvecError(
            f"{path} is a format-{version} artifact but this headvec reads formats up to {FORMAT_VERSION}; "
            "upgrade headvec (pip install -U headvec) or fit it again with this version"
        )
    if version == 0:
        config = dict(config)
        legacy = config.pop("model", None)
        if MODEL_KEY not in config and isinstance(legacy, dict):
            config[MODEL_KEY] = legacy  # SAV wrote its identity under "model"
        elif legacy is not None:
            config["model"] = legacy
        config["format_version"] = FORMAT_VERSION
    return config


def read_artifact_config(directory: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """The artifact's JSON at the current format (migrated if older); checks ``kind`` when given."""
    path = Path(directory)
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise HeadvecError(f"{path} is not a headvec artifact (no {CONFIG_NAME}); fit and save one first")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise HeadvecError(
            f"{config_path} is not valid JSON ({exc}); fit and save the artifact again"
        ) from None
    config = _migrate(config, path)
    if kind is not None and config.get("kind") != kind:
        raise HeadvecError(f"{path} holds a {config.get('kind')!r} artifact, not a {kind!r} one")
    return config


def load_artifact(directory: str | os.PathLike, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read what :func:`save_artifact` wrote (older formats migrated), checking that it is a ``kind``."""
    path = Path(directory)
    config = read_artifact_config(path, kind)
    if not (path / TENSORS_NAME).is_file():
        raise HeadvecError(f"{path} has no {TENSORS_NAME}; the artifact is incomplete, save it again")
    return config, load_file(str(path / TENSORS_NAME))


def fitted_model_name(directory: str | os.PathLike) -> str:
    """The name or path of the model an artifact was fitted on (to load it when no model is given)."""
    fitted_on = read_artifact_config(directory).get(MODEL_KEY)
    if not isinstance(fitted_on, dict) or "name_or_path" not in fitted_on:
        raise HeadvecError(f"{directory} does not record the model it was fitted on; pass the model")
    return str(fitted_on["name_or_path"])


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
