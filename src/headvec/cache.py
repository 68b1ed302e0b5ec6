"""Stream a dataset through the engine and cache head activations on disk, resumably and verifiably.

Layout of a cache directory: one ``shard-NNNNN.safetensors`` per batch (tensors ``heads`` and, if
asked, ``residual``) and ``index.json`` that records the model (its identity under ``"fitted_on"``, the
key artifacts use), the settings, a hash of the inputs and the finished shards, each with its size in
bytes and its sha256. Shards and the index are written to a temporary name and renamed, so a run killed
at any point leaves only whole files; a rerun verifies the shards already on disk against the index,
skips the intact ones and recomputes (and reports) the damaged or missing ones. :func:`load_activations`
verifies every shard too, so a damaged cache is a one-line :class:`HeadvecError` naming the file, never
silently wrong numbers.

Format history: ``headvec-activations/1`` recorded the model under ``"model"``; ``headvec-activations/2``
recorded no sizes or checksums. Both are read (their shards checked as far as possible: they must parse
and hold the right rows) and a resume upgrades them to :data:`CACHE_FORMAT`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from tqdm.auto import tqdm

from headvec.engine import HeadEngine, Positions, iter_batches
from headvec.errors import HeadvecError
from headvec.models import MODEL_KEY, Prompt, load

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
CACHE_FORMAT = "headvec-activations/3"
_UNCHECKED_FORMATS = ("headvec-activations/1", "headvec-activations/2")  # shards without sha256 / bytes
_SHARD_NAME = re.compile(r"shard-\d{5,}\.safetensors")  # a plain file name: never a path out of the cache
_INDEX_FIX = "delete it and rerun the same headvec extract to recompute the cache"
_SHARD_FIX = "rerun the same headvec extract to recompute it"


def _prompts_digest(prompts: Sequence[Prompt]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(prompt.text.encode())
        for image in prompt.images:
            digest.update(image.tobytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _index_problem(index: Any) -> str | None:
    """What is structurally wrong with a parsed index (None if nothing): a damaged file must not crash."""
    if not isinstance(index, dict):
        return f"a JSON {type(index).__name__}, not an object"
    if "format" not in index:
        return "no format"
    if not _is_int(index.get("n_rows")) or index["n_rows"] < 0:
        return "no valid n_rows"
    if not isinstance(index.get("shards"), list):
        return "no list of shards"
    checked = index.get("format") == CACHE_FORMAT
    for number, shard in enumerate(index["shards"]):
        if not isinstance(shard, dict):
            return f"shard entry {number} is not an object"
        if not isinstance(shard.get("file"), str) or not _SHARD_NAME.fullmatch(shard["file"]):
            return f"shard entry {number} has no valid file name"
        start, stop = shard.get("start"), shard.get("stop")
        if not (_is_int(start) and _is_int(stop) and 0 <= start < stop <= index["n_rows"]):
            return f"shard entry {number} ({shard['file']}) has no valid start and stop"
        if checked and not (
            _is_int(shard.get("bytes"))
            and isinstance(shard.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", shard["sha256"])
        ):
            return f"shard entry {number} ({shard['file']}) has no valid bytes and sha256"
    return None


def _read_index(path: Path) -> dict[str, Any]:
    """The index at ``path``, an older format migrated; a damaged one is a one-line error."""
    try:
        index = json.loads(path.read_bytes().decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else "not valid JSON (truncated or overwritten?)"
        raise HeadvecError(f"{path} is damaged: {problem}; {_INDEX_FIX}") from None
    fmt = index.get("format") if isinstance(index, dict) else None
    if fmt is not None and fmt not in (CACHE_FORMAT, *_UNCHECKED_FORMATS):
        newer = isinstance(fmt, str) and fmt.startswith("headvec-activations/")
        raise HeadvecError(
            f"{path} has the unknown cache format {fmt!r} (this headvec reads {_UNCHECKED_FORMATS[0]} to "
            f"{CACHE_FORMAT}); "
            + ("upgrade headvec (pip install -U headvec) or " if newer else "")
            + _INDEX_FIX
        )
    problem = _index_problem(index)
    if problem:
        raise HeadvecError(f"{path} is damaged: {problem}; {_INDEX_FIX}")
    if fmt == "headvec-activations/1":
        index[MODEL_KEY] = index.pop("model", None)
    if fmt in _UNCHECKED_FORMATS:  # whatever such an index says of sizes or checksums was never checked
        index["shards"] = [
            {k: v for k, v in s.items() if k not in ("bytes", "sha256")} for s in index["shards"]
        ]
    return index


def _write_index(directory: Path, index: dict[str, Any]) -> None:
    _write_atomic(directory / INDEX_NAME, lambda p: p.write_text(json.dumps(index, indent=1, sort_keys=True)))


def _shard_problem(shard: dict[str, Any], data: bytes | None) -> str | None:
    """Why the bytes of a shard (None: the file is missing) do not match its index entry, or None."""
    if data is None:
        return "missing"
    if "sha256" not in shard:  # an older format: no checksum, so at least it must parse
        try:
            load_bytes(data)
        except (SafetensorError, ValueError) as exc:
            return f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        return None
    if len(data) != shard["bytes"]:
        kind = "truncated" if len(data) < shard["bytes"] else "too long"
        return f"{kind}: {len(data)} bytes, the index records {shard['bytes']}"
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        return "its sha256 does not match the index: bytes changed since it was written"
    return None


def _read_shard(directory: Path, shard: dict[str, Any]) -> bytes | None:
    """A shard's bytes, or None if it is missing (a file that exists but cannot be read is an error)."""
    path = directory / shard["file"]
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HeadvecError(
            f"{path} cannot be read ({exc.strerror}); fix its permissions or delete it"
        ) from None


def _checksum(data: bytes) -> dict[str, Any]:
    """What the index records of a shard's bytes, to tell a damaged shard from an intact one."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


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
    sort_window: int = 0,
    backend: str = "local",
    workers: int = 1,
    engine_factory: Callable[[], HeadEngine] | None = None,
    ray_address: str | None = None,
) -> Path:
    """Capture head outputs for every prompt into ``out_dir``; resume if it holds a matching partial run.

    With ``sort_window`` > 0 a shard holds that many consecutive prompts, captured in batches of similar
    length (less padding) and stored in the given order; 0 stores one shard per batch, in order.
    ``backend="ray"`` computes the missing shards on ``workers`` Ray actors, each holding the model that
    ``engine_factory()`` loads (e.g. ``functools.partial(engine_loader, "path/to/model")``); the files
    are byte for byte those of a local run.

    On resume every recorded shard is verified (size and sha256); damaged or missing ones are logged as
    a warning and recomputed, so a damaged cache heals instead of being trusted.
    """
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
    if sort_window > 0:  # recorded only when used, so caches made without it resume unchanged
        settings["sort_window"] = sort_window
        batches = [list(prompts[i : i + sort_window]) for i in range(0, len(prompts), sort_window)]
    else:
        batches = list(iter_batches(prompts, batch_size))
    names: dict[int, tuple[str, int]] = {}  # start row -> (shard file, stop row)
    start = 0
    for number, batch in enumerate(batches):
        names[start] = (f"shard-{number:05d}.safetensors", start + len(batch))
        start += len(batch)

    index_path = out / INDEX_NAME
    shards: dict[int, dict[str, Any]] = {}
    upgraded = False
    if index_path.exists():
        previous = _read_index(index_path)
        keys = (settings.keys() | ({"sort_window"} & previous.keys())) - {"format"}
        previous_settings = {key: previous.get(key) for key in keys}
        wanted = {key: settings.get(key) for key in keys}
        if previous_settings != wanted:
            changed = sorted(key for key in wanted if previous_settings[key] != wanted[key])
            raise HeadvecError(
                f"{out} holds a cache made with other {', '.join(changed)}; use a new --out directory "
                "or delete it"
            )
        damaged = []
        for shard in previous["shards"]:
            if names.get(shard["start"]) != (shard["file"], shard["stop"]) or shard["start"] in shards:
                raise HeadvecError(
                    f"{index_path} is damaged: shard entry {shard['file']} does not match the batches; "
                    f"{_INDEX_FIX}"
                )
            data = _read_shard(out, shard)
            problem = _shard_problem(shard, data)
            if problem:
                damaged.append(f"{shard['file']} ({problem})")
                continue
            if "sha256" not in shard:  # an older format's shard that parses: record its checksum now
                shard = {**shard, **_checksum(data)}  # type: ignore[arg-type]
                upgraded = True
            shards[shard["start"]] = shard
        if damaged:
            logger.warning(
                "%s: recomputing %d damaged or missing shard(s): %s", out, len(damaged), "; ".join(damaged)
            )
        upgraded = upgraded or previous.get("format") != CACHE_FORMAT

    def write_index() -> None:
        _write_index(out, {**settings, "shards": [shards[s] for s in sorted(shards)]})

    if upgraded:
        write_index()
    options = {
        "layers": layers,
        "positions": positions,
        "batch_size": batch_size,
        "residual": residual,
        "sort_window": sort_window,
    }
    todo, start = [], 0
    for batch in batches:
        if start not in shards:
            todo.append((start, batch))
        start = names[start][1]
    with tqdm(total=len(prompts), desc="extract", unit="row", disable=not progress) as bar:
        bar.update(sum(shard["stop"] - shard["start"] for shard in shards.values()))

        def store(task: tuple[int, list[Prompt]], data: bytes) -> None:
            first, batch = task
            name, stop = names[first]
            _write_atomic(out / name, lambda p: p.write_bytes(data))
            shards[first] = {"file": name, "start": first, "stop": stop, **_checksum(data)}
            write_index()
            bar.update(len(batch))

        if backend == "ray":
            if engine_factory is None:
                raise HeadvecError("the ray backend loads the model in each worker: pass engine_factory=")
            from headvec.parallel import run_on_actors

            worker = functools.partial(_ShardWorker, engine_factory, settings[MODEL_KEY], options)
            run_on_actors(worker, todo, store, workers=workers, address=ray_address)
        elif backend == "local":
            for task in todo:
                store(task, _shard_bytes(engine, task[1], **options))
        else:
            raise HeadvecError(f"unknown backend {backend!r}; use local or ray")
    if not index_path.exists():  # an empty dataset still gets an index
        write_index()
    return out


def _shard_bytes(
    engine: HeadEngine,
    batch: list[Prompt],
    layers: Sequence[int] | None,
    positions: Positions,
    batch_size: int,
    residual: bool,
    sort_window: int,
) -> bytes:
    """One shard's safetensors bytes (the same bytes in any process, for the same model and rows)."""
    if sort_window > 0:
        capture = engine.capture(
            batch, layers, positions, batch_size=batch_size, residual=residual, sort_window=len(batch)
        )
    else:
        capture = engine.capture_batch(engine.loaded.encode(batch), layers, positions, residual=residual)
    tensors = {"heads": capture.heads.contiguous()}
    if residual:
        tensors["residual"] = capture.residual.contiguous()
    return save_bytes(tensors)


class _ShardWorker:
    """What each Ray actor holds: its own engine, checked to be the driver's model, computing shards."""

    def __init__(self, engine_factory: Callable[[], HeadEngine], identity: Any, options: dict) -> None:
        self.engine, self.options = engine_factory(), options
        if self.engine.loaded.identity != identity:
            raise HeadvecError("a Ray worker loaded another model than the cache's; give both the same model")

    def __call__(self, task: tuple[int, list[Prompt]]) -> bytes:
        return _shard_bytes(self.engine, task[1], **self.options)


def engine_loader(model: str, **load_options: Any) -> HeadEngine:
    """``HeadEngine(load(model, **load_options))``: with ``functools.partial``, a picklable
    ``engine_factory`` for the ray backend."""
    return HeadEngine(load(model, **load_options))


def load_activations(cache_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a finished cache: concatenated tensors (rows in input order) and the index.

    Every shard is checked against its recorded size and sha256 before use: a damaged file is a
    one-line :class:`HeadvecError` that names it, never a raw safetensors error or silently bad values.
    """
    directory = Path(cache_dir)
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        raise HeadvecError(f"{directory} is not an activation cache (no {INDEX_NAME}); run headvec extract")
    index = _read_index(index_path)
    shards = sorted(index["shards"], key=lambda s: s["start"])
    covered = sum(s["stop"] - s["start"] for s in shards)
    if covered != index["n_rows"]:
        raise HeadvecError(
            f"{directory} is incomplete ({covered}/{index['n_rows']} rows); rerun the same extract to resume"
        )
    if [s["start"] for s in shards] != [0, *(s["stop"] for s in shards)][: len(shards)]:
        raise HeadvecError(f"{index_path} is damaged: its shards overlap or leave gaps; {_INDEX_FIX}")
    keys = {"heads", "residual"} if index.get("residual") else {"heads"}
    parts = []
    for shard in shards:
        path = directory / shard["file"]
        data = _read_shard(directory, shard)
        problem = _shard_problem(shard, data)
        if problem is None:
            try:
                part = load_bytes(data)  # type: ignore[arg-type]
            except (SafetensorError, ValueError):
                problem = "unreadable"
            else:
                if set(part) != keys or any(
                    t.shape[0] != shard["stop"] - shard["start"] for t in part.values()
                ):
                    problem = f"it does not hold {shard['stop'] - shard['start']} rows of {sorted(keys)}"
        if problem:
            state = "missing" if problem == "missing" else f"damaged ({problem})"
            raise HeadvecError(f"{path} is {state}; {_SHARD_FIX}")
        parts.append(part)
    tensors = {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else {}
    return tensors, index
