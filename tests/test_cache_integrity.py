"""A damaged activation cache is detected, never trusted: resume recomputes, loading refuses in one line."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from headvec import HeadEngine, HeadvecError, load
from headvec.cache import CACHE_FORMAT, INDEX_NAME, extract_to_disk, load_activations
from headvec.cli import app

SHARD = "shard-00001.safetensors"  # the middle one of three


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite(path: Path) -> None:
    """Float32 max (3.4e38) over the last 16 bytes: the file still parses, the values are wrong."""
    data = bytearray(path.read_bytes())
    data[-16:] = b"\xff\xff\x7f\x7f" * 4
    path.write_bytes(bytes(data))


def _append(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 8)


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, r"is damaged \(truncated"),
    "overwritten": (_overwrite, r"is damaged \(its sha256 does not match the index"),
    "too long": (_append, r"is damaged \(too long"),
    "deleted": (Path.unlink, r"is missing"),
}


@pytest.fixture
def cached(tmp_path, tiny_model_dir):
    """An engine, its prompts and an undamaged cache of them: three shards of two rows."""
    loaded = load(tiny_model_dir("qwen2"), device="cpu")
    engine = HeadEngine(loaded)
    prompts = [loaded.build_prompt(f"row {i} about a red square") for i in range(6)]
    out = tmp_path / "cache"
    extract_to_disk(engine, prompts, out, batch_size=2, residual=True, progress=False)
    expected, _ = load_activations(out)
    return engine, prompts, out, expected


def _one_line_error(match: str, call: Callable[[], object]) -> str:
    with pytest.raises(HeadvecError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_shard_is_refused_on_load_and_recomputed_on_resume(cached, caplog, damage):
    engine, prompts, out, expected = cached
    index_before = (out / INDEX_NAME).read_text()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*") if p.name != SHARD}
    damage_file, match = DAMAGE[damage]
    damage_file(out / SHARD)

    message = _one_line_error(match, lambda: load_activations(out))
    assert SHARD in message and "rerun the same headvec extract" in message

    with caplog.at_level(logging.WARNING, logger="headvec.cache"):
        extract_to_disk(engine, prompts, out, batch_size=2, residual=True, progress=False)
    assert f"recomputing 1 damaged or missing shard(s): {SHARD}" in caplog.text
    # only the damaged shard was redone, and the cache is again exactly the undamaged one
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*") if p.name != SHARD} == kept
    assert (out / INDEX_NAME).read_text() == index_before
    tensors, _ = load_activations(out)
    assert tensors.keys() == expected.keys()
    for key in expected:
        assert torch.equal(tensors[key], expected[key]), key


def test_the_index_records_size_and_sha256_of_every_shard(cached):
    _, _, out, _ = cached
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["format"] == CACHE_FORMAT == "headvec-activations/3"
    for shard in index["shards"]:
        data = (out / shard["file"]).read_bytes()
        assert shard["bytes"] == len(data)
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()


def _rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"text": f"row {i} of the blue circle"}) + "\n" for i in range(n)))
    return path


def _extract(model: Path, data: Path, out: Path):
    args = ["extract", str(model), str(data), "--out", str(out), "--device", "cpu", "--batch-size", "2"]
    return CliRunner().invoke(app, args)


def test_cli_resume_recomputes_a_truncated_shard(tmp_path, tiny_model_dir):
    model, data = tiny_model_dir("llama"), _rows(tmp_path / "rows.jsonl", 6)
    complete, damaged = tmp_path / "complete", tmp_path / "damaged"
    for out in (complete, damaged):
        assert _extract(model, data, out).exit_code == 0
    _truncate(damaged / SHARD)

    result = _extract(model, data, damaged)
    assert result.exit_code == 0, result.output
    for shard in complete.glob("shard-*.safetensors"):
        assert shard.read_bytes() == (damaged / shard.name).read_bytes(), shard.name
    assert (damaged / INDEX_NAME).read_text() == (complete / INDEX_NAME).read_text()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("truncated", r"index\.json is damaged: not valid JSON"),
        (b"\xff\xfe\x00garbage", r"index\.json is damaged: not valid JSON"),
        ("[]", r"index\.json is damaged: a JSON list, not an object"),
        ("{}", r"index\.json is damaged: no format"),
        ('{"format": "headvec-activations/99"}', r"unknown cache format .*upgrade headvec"),
        ('{"format": 3}', r"unknown cache format 3"),
    ],
)
def test_a_damaged_index_is_a_one_line_error_and_exit_code_2(tmp_path, tiny_model_dir, content, match):
    model, data, out = tiny_model_dir("llama"), _rows(tmp_path / "rows.jsonl", 4), tmp_path / "cache"
    assert _extract(model, data, out).exit_code == 0
    index_path = out / INDEX_NAME
    if content == "truncated":
        content = index_path.read_text()[: index_path.stat().st_size // 2]
    index_path.write_bytes(content if isinstance(content, bytes) else content.encode())

    message = _one_line_error(match, lambda: load_activations(out))
    assert str(index_path) in message
    result = _extract(model, data, out)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "index.json" in result.output and "Traceback" not in result.output

    # the fix the message names works
    assert "delete it and rerun the same headvec extract" in message or "upgrade" in message
    index_path.unlink()
    assert _extract(model, data, out).exit_code == 0
    load_activations(out)


def _duplicate_first_shard(index: dict) -> None:
    """Rows still add up to n_rows, but two entries cover rows 0-1 and none covers rows 2-3."""
    index["shards"][1] = dict(index["shards"][0])


@pytest.mark.parametrize(
    ("edit", "match", "resume_match"),
    [
        (lambda i: i["shards"][0].update(file="../../elsewhere.safetensors"), "no valid file name", None),
        (lambda i: i["shards"][0].update(stop=99), "no valid start and stop", None),
        (lambda i: i["shards"][0].pop("sha256"), "no valid bytes and sha256", None),
        (lambda i: i["shards"].__setitem__(0, "shard"), "is not an object", None),
        (lambda i: i.update(n_rows="six"), "no valid n_rows", None),
        (lambda i: i.update(shards={}), "no list of shards", None),
        (_duplicate_first_shard, "overlap or leave gaps", "does not match the batches"),
    ],
)
def test_an_index_with_wrong_entries_is_a_one_line_error(cached, edit, match, resume_match):
    engine, prompts, out, _ = cached
    index = json.loads((out / INDEX_NAME).read_text())
    edit(index)
    (out / INDEX_NAME).write_text(json.dumps(index))
    message = _one_line_error(match, lambda: load_activations(out))
    assert str(out / INDEX_NAME) in message
    resume = lambda: extract_to_disk(engine, prompts, out, batch_size=2, residual=True, progress=False)  # noqa: E731
    assert str(out / INDEX_NAME) in _one_line_error(resume_match or match, resume)


def test_a_cache_without_checksums_is_read_and_resume_records_them(cached, tmp_path):
    """Format 2 recorded no sizes or checksums: still readable, and a resume upgrades it in place."""
    engine, prompts, out, expected = cached
    current = (out / INDEX_NAME).read_text()
    index = json.loads(current)
    index["format"] = "headvec-activations/2"
    for shard in index["shards"]:
        del shard["bytes"], shard["sha256"]
    (out / INDEX_NAME).write_text(json.dumps(index))
    tensors, loaded_index = load_activations(out)
    assert torch.equal(tensors["heads"], expected["heads"])
    assert loaded_index["format"] == "headvec-activations/2"

    old = tmp_path / "old"
    shutil.copytree(out, old)
    _truncate(old / SHARD)  # without a checksum, a shard must at least parse
    _one_line_error(rf"{SHARD} is damaged \(unreadable", lambda: load_activations(old))

    for directory in (out, old):
        extract_to_disk(engine, prompts, directory, batch_size=2, residual=True, progress=False)
        assert (directory / INDEX_NAME).read_text() == current
        assert torch.equal(load_activations(directory)[0]["residual"], expected["residual"])


def test_an_empty_dataset_still_loads(tmp_path, tiny_model_dir):
    engine = HeadEngine(load(tiny_model_dir("qwen2"), device="cpu"))
    extract_to_disk(engine, [], tmp_path, progress=False)
    assert load_activations(tmp_path)[0] == {}
