"""Streaming extraction to disk: same result as in-memory capture, and resumable after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from headvec import HeadEngine, HeadvecError, load
from headvec.cache import CACHE_FORMAT, extract_to_disk, load_activations
from headvec.cli import app
from headvec.methods.artifacts import MODEL_KEY


def write_rows(path: Path, n: int) -> Path:
    words = ["red", "blue", "square", "circle", "left", "of", "above", "the", "a", "small", "large"]
    lines = [
        json.dumps({"text": " ".join(words[(i * 7 + k) % len(words)] for k in range(3 + i % 5))})
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def extract_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["extract", str(model), str(data), "--out", str(out), "--device", "cpu", "--batch-size", "1"]


def extract_in_process(model: Path, data: Path, out: Path) -> None:
    result = CliRunner().invoke(app, extract_args(model, data, out))
    assert result.exit_code == 0, result.output


def test_cached_heads_equal_in_memory_capture(tmp_path, tiny_model_dir):
    loaded = load(tiny_model_dir("qwen2"), device="cpu")
    engine = HeadEngine(loaded)
    prompts = [loaded.build_prompt(f"question number {i} about shapes") for i in range(7)]
    extract_to_disk(
        engine, prompts, tmp_path / "cache", batch_size=3, positions=[0, -1], residual=True, progress=False
    )
    tensors, index = load_activations(tmp_path / "cache")
    expected = engine.capture(prompts, positions=[0, -1], batch_size=3, residual=True)
    torch.testing.assert_close(tensors["heads"], expected.heads)
    torch.testing.assert_close(tensors["residual"], expected.residual)
    assert index["n_rows"] == 7 and len(index["shards"]) == 3
    # the model identity sits under the key artifacts use
    assert index[MODEL_KEY]["weights_fingerprint"] == loaded.identity["weights_fingerprint"]
    assert "model" not in index


def test_a_cache_of_the_previous_format_is_read_and_resumed(tmp_path, tiny_model_dir):
    loaded = load(tiny_model_dir("qwen2"), device="cpu")
    engine = HeadEngine(loaded)
    prompts = [loaded.build_prompt(f"row {i}") for i in range(4)]
    extract_to_disk(engine, prompts, tmp_path, batch_size=2, progress=False)
    expected, _ = load_activations(tmp_path)
    # rewrite it as format 1 wrote it (identity under "model"), with its last batch not yet done
    index = json.loads((tmp_path / "index.json").read_text())
    index["format"], index["model"] = "headvec-activations/1", index.pop(MODEL_KEY)
    last = index["shards"].pop()
    (tmp_path / last["file"]).unlink()
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(HeadvecError, match="incomplete"):
        load_activations(tmp_path)

    extract_to_disk(engine, prompts, tmp_path, batch_size=2, progress=False)  # resumes, does not refuse
    tensors, index = load_activations(tmp_path)
    torch.testing.assert_close(tensors["heads"], expected["heads"])
    assert index["format"] == CACHE_FORMAT and "model" not in index
    assert index[MODEL_KEY] == loaded.identity


def test_cache_refuses_to_mix_runs(tmp_path, tiny_model_dir):
    loaded = load(tiny_model_dir("qwen2"), device="cpu")
    engine = HeadEngine(loaded)
    prompts = [loaded.build_prompt(f"row {i}") for i in range(4)]
    extract_to_disk(engine, prompts, tmp_path, batch_size=2, progress=False)
    with pytest.raises(HeadvecError, match="other layers"):
        extract_to_disk(engine, prompts, tmp_path, batch_size=2, layers=[0], progress=False)
    with pytest.raises(HeadvecError, match="other inputs_sha256"):
        extract_to_disk(engine, prompts[:3], tmp_path, batch_size=2, progress=False)


def test_extract_killed_mid_run_resumes_to_an_identical_cache(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    rows = 300
    data = write_rows(tmp_path / "rows.jsonl", rows)
    complete, resumed = tmp_path / "complete", tmp_path / "resumed"
    extract_in_process(model, data, complete)

    victim = subprocess.Popen(
        [sys.executable, "-m", "headvec.cli", *extract_args(model, data, resumed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    index_path = resumed / "index.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        if index_path.exists() and len(json.loads(index_path.read_text())["shards"]) >= 10:
            break
        time.sleep(0.002)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    partial = json.loads(index_path.read_text())["shards"]
    assert 10 <= len(partial) < rows, "the run was not interrupted mid-way"
    kept = {s["file"]: (resumed / s["file"]).stat().st_mtime_ns for s in partial}

    extract_in_process(model, data, resumed)

    # finished batches were not redone, and the end result is byte-identical to an uninterrupted run
    assert all((resumed / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())
    assert (resumed / "index.json").read_text() == (complete / "index.json").read_text()
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in complete.iterdir())
    for shard in complete.glob("shard-*.safetensors"):
        assert shard.read_bytes() == (resumed / shard.name).read_bytes(), shard.name


def test_length_sorted_shards_equal_the_ordered_cache_with_less_padding(tmp_path, tiny_model_dir):
    """--sort-window: shards of consecutive rows, batched by length inside; rows stay in order, the
    values equal the plain cache, fewer padded tokens are computed, and a damaged shard is recomputed."""
    loaded = load(tiny_model_dir("qwen2"), device="cpu")
    engine = HeadEngine(loaded)
    words = ["red", "blue", "square", "circle", "left", "of", "above", "the", "a", "small", "large"]
    prompts = [loaded.build_prompt(" ".join(words[: 1 + (i * 5) % 11])) for i in range(12)]
    processed: list[int] = []
    real = engine.capture_batch

    def counting(inputs, *args, **kwargs):
        processed.append(int(inputs["input_ids"].numel()))
        return real(inputs, *args, **kwargs)

    engine.capture_batch = counting  # type: ignore[method-assign]
    extract_to_disk(engine, prompts, tmp_path / "plain", batch_size=3, residual=True, progress=False)
    plain_tokens, processed[:] = sum(processed), []
    extract_to_disk(
        engine, prompts, tmp_path / "sorted", batch_size=3, residual=True, progress=False, sort_window=6
    )
    assert sum(processed) < plain_tokens
    plain, _ = load_activations(tmp_path / "plain")
    ordered, index = load_activations(tmp_path / "sorted")
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [(0, 6), (6, 12)]
    torch.testing.assert_close(ordered["heads"], plain["heads"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ordered["residual"], plain["residual"], atol=1e-5, rtol=1e-4)
    shard = tmp_path / "sorted" / index["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    extract_to_disk(
        engine, prompts, tmp_path / "sorted", batch_size=3, residual=True, progress=False, sort_window=6
    )
    healed, _ = load_activations(tmp_path / "sorted")
    torch.testing.assert_close(healed["heads"], ordered["heads"], atol=0, rtol=0)
    with pytest.raises(HeadvecError, match="sort_window"):  # a cache of one layout never mixes with another
        extract_to_disk(engine, prompts, tmp_path / "sorted", batch_size=3, residual=True, progress=False)


def test_extract_on_ray_writes_the_bytes_of_a_local_run(tmp_path, tiny_model_dir):
    """Two Ray actors, each with its own copy of the model, compute the shards: every file (shards and
    index.json) equals the local run's byte for byte; a resume on Ray recomputes only a lost shard."""
    pytest.importorskip("ray")
    import functools

    from headvec.cache import engine_loader

    model = tiny_model_dir("qwen2")
    engine = HeadEngine(load(model, device="cpu"))
    prompts = [
        engine.loaded.build_prompt(f"question number {i} about {'shapes ' * (i % 4)}") for i in range(9)
    ]
    extract_to_disk(engine, prompts, tmp_path / "local", batch_size=2, residual=True, progress=False)
    ray_run = functools.partial(
        extract_to_disk,
        engine,
        prompts,
        tmp_path / "ray",
        batch_size=2,
        residual=True,
        progress=False,
        backend="ray",
        workers=2,
        engine_factory=functools.partial(engine_loader, str(model), device="cpu"),
    )
    ray_run()
    local_files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert local_files == sorted(p.name for p in (tmp_path / "ray").iterdir())
    for name in local_files:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    (tmp_path / "ray" / "shard-00002.safetensors").unlink()
    ray_run()
    assert (tmp_path / "ray" / "shard-00002.safetensors").read_bytes() == (
        tmp_path / "local" / "shard-00002.safetensors"
    ).read_bytes()
