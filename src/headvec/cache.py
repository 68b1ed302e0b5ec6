"""Stream a dataset through the engine and cache head activations on disk, resumably.

Layout of a cache directory: one ``shard-NNNNN.safetensors`` per batch (tensors ``heads`` and, if
asked, ``residual``) and ``index.json`` that records the model (its identity under ``"fitted_on"``, the
key artifacts use), the settings, a hash of the inputs and the finished shards. Shards and the index are
written to a temporary name and renamed, so a run killed at any point leaves only whole files; a rerun
skips the batches already on disk.

Format history: ``headvec-activations/1`` recorded the model under ``"model"``; such an index is read
(and resumed) as ``headvec-activations/2``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from headvec.engine import HeadEngine, Positions, iter_batches
from headvec.errors import HeadvecError
from headvec.models import MODEL_KEY, Prompt

INDEX_NAME = "index.json"
CACHE_FORMAT = "headvec-activations/2"
_OLD_FORMAT = "headvec-activations/1"  # the model identity under "model"


def _prompts_digest(prompts: Sequence[Prompt]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(prompt.text.encode())
        for image in prompt.images:
            digest.update(image.tobytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _read_index(path: Path) -> dict[str, Any]:
    """The index at ``path``, an older format migrated to :data:`CACHE_FORMAT`."""
    index = json.loads(path.read_text())
    if index.get("format") == _OLD_FORMAT:
        index[MODEL_KEY] = index.pop("model", None)
        index["format"] = CACHE_FORMAT
    return index


def _write_index(directory: Path, index: dict[str, Any]) -> None:
    _write_atomic(directory / INDEX_NAME, lambda p: p.write_text(json.dumps(index, indent=1, sort_keys=True)))


def extract_to_disk(
    engine: HeadEngine,
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    *,
    layers: Sequence[int] | None = None,
    positions: Positions = -1,
    batch_size: int = 8,
    residual: bool = False,
    progress: bool = True,
) -> Path:
    """Capture head outputs for every prompt into ``out_dir``; resume if it holds a matching partial run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "format": CACHE_FORMAT,
        MODEL_KEY: engine.loaded.identity,
        "layers": engine.resolve_layers(layers),
        "positions": positions if isinstance(positions, int) else list(positions),
        "batch_size": batch_size,
        "residual": residual,
        "n_rows": len(prompts),
        "inputs_sha256": _prompts_digest(prompts),
    }
    index_path = out / INDEX_NAME
    shards: list[dict[str, Any]] = []
    if index_path.exists():
        previous = _read_index(index_path)
        previous_settings = {key: previous.get(key) for key in settings}
        if previous_settings != settings:
            changed = sorted(key for key in settings if previous_settings[key] != settings[key])
            raise HeadvecError(
                f"{out} holds a cache made with other {', '.join(changed)}; use a new --out directory "
                "or delete it"
            )
        shards = [s for s in previous["shards"] if (out / s["file"]).is_file()]
    done = {shard["start"] for shard in shards}

    batches = list(iter_batches(prompts, batch_size))
    start = 0
    with tqdm(total=len(prompts), desc="extract", unit="row", disable=not progress) as bar:
        for number, batch in enumerate(batches):
            stop = start + len(batch)
            if start not in done:
                capture = engine.capture_batch(
                    engine.loaded.encode(batch), layers, positions, residual=residual
                )
                tensors = {"heads": capture.heads.contiguous()}
                if residual:
                    tensors["residual"] = capture.residual.contiguous()
                name = f"shard-{number:05d}.safetensors"
                _write_atomic(out / name, lambda p, t=tensors: save_file(t, str(p)))
                shards.append({"file": name, "start": start, "stop": stop})
                _write_index(out, {**settings, "shards": sorted(shards, key=lambda s: s["start"])})
            bar.update(len(batch))
            start = stop
    if not shards:  # an empty dataset still gets an index
        _write_index(out, {**settings, "shards": []})
    return out


def load_activations(cache_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a finished cache: concatenated tensors (rows in input order) and the index."""
    directory = Path(cache_dir)
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        raise HeadvecError(f"{directory} is not an activation cache (no {INDEX_NAME}); run headvec extract")
    index = _read_index(index_path)
    covered = sum(s["stop"] - s["start"] for s in index["shards"])
    if covered != index["n_rows"]:
        raise HeadvecError(
            f"{directory} is incomplete ({covered}/{index['n_rows']} rows); rerun the same extract to resume"
        )
    parts = [load_file(str(directory / s["file"])) for s in sorted(index["shards"], key=lambda s: s["start"])]
    tensors = {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else {}
    return tensors, index
