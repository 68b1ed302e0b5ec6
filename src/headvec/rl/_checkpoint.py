"""Resumable training state: model + optimiser tensors in safetensors, everything else in JSON.

A run writes ``state.safetensors`` (model weights, optimiser moments, the torch generator) and
``state.json`` (step, optimiser hyper-parameters, numpy generator, logs) atomically; reloading both
continues the run exactly where it stopped, so a killed and rerun job gives the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def save_state(
    directory: Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generator: torch.Generator,
    rng: np.random.Generator,
    extra: dict[str, Any],
) -> None:
    tensors: dict[str, torch.Tensor] = {"generator": generator.get_state()}
    groups: dict[str, Any] = {}
    for name, module in modules.items():
        tensors.update({f"{name}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()})
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        groups[name] = state["param_groups"]
        for index, entries in state["state"].items():
            for key, value in entries.items():
                tensors[f"opt:{name}.{index}.{key}"] = torch.as_tensor(value).detach().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "state.tmp.safetensors"))
    meta = {"optimizer_groups": groups, "numpy_rng": rng.bit_generator.state, **extra}
    (directory / "state.tmp.json").write_text(json.dumps(meta, default=_jsonable))
    (directory / "state.tmp.safetensors").replace(directory / "state.safetensors")
    (directory / "state.tmp.json").replace(directory / "state.json")


def load_state(
    directory: Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generator: torch.Generator,
    rng: np.random.Generator,
) -> dict[str, Any] | None:
    """Restore a saved run into the given objects; returns its JSON (None if there is nothing saved)."""
    if not (directory / "state.json").exists():
        return None
    tensors = load_file(str(directory / "state.safetensors"))
    meta = json.loads((directory / "state.json").read_text())
    generator.set_state(tensors["generator"])
    rng.bit_generator.state = meta["numpy_rng"]
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    for name, optimizer in optimizers.items():
        state: dict[int, dict[str, torch.Tensor]] = {}
        prefix = f"opt:{name}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, entry = key[len(prefix) :].split(".", 1)
                state.setdefault(int(index), {})[entry] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"][name]})
    return meta


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
