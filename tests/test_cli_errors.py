"""Bad input gets one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checks import random_image
from transformers import MambaConfig, MambaForCausalLM
from typer.testing import CliRunner

from headvec.cli import app


def run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def assert_one_line_error(code: int, output: str, *needles: str) -> None:
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def mamba_dir(tmp_path_factory) -> Path:
    """A real HF causal LM with no attention at all: headvec cannot know where its heads are."""
    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, state_size=4, num_hidden_layers=2))
    directory = tmp_path_factory.mktemp("mamba")
    model.save_pretrained(directory)
    return directory


def test_info_prints_geometry(tiny_model_dir):
    code, output = run("info", tiny_model_dir("qwen3"), "--json")
    assert code == 0, output
    facts = json.loads(output)
    assert facts["head_dim"] * facts["n_heads"] != facts["hidden_size"]  # read from the projection
    assert facts["hook_paths"][0].endswith("self_attn.o_proj")


def test_unknown_architecture(mamba_dir):
    assert_one_line_error(*run("info", mamba_dir), "unknown architecture", "register_architecture")


def test_register_architecture_fixes_it(mamba_dir):
    from headvec import load, register_architecture
    from headvec.arch import ARCHITECTURE_OVERRIDES

    register_architecture("mamba", "backbone.layers", "mixer.out_proj")
    try:
        with pytest.raises(Exception, match="whole number of heads"):  # Mamba has no heads to split
            load(mamba_dir)
    finally:
        ARCHITECTURE_OVERRIDES.pop("mamba")


def test_missing_model_directory(tmp_path):
    assert_one_line_error(*run("info", tmp_path / "nowhere"), "cannot load model")


def test_malformed_jsonl_row_names_its_line(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}, "{not json", {"text": "x"}])
    assert_one_line_error(*run("extract", tiny_model_dir("llama"), data, "--out", tmp_path / "o"), "line 2")


def test_row_missing_its_text_field(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}, {"txt": "typo"}])
    assert_one_line_error(
        *run("extract", tiny_model_dir("llama"), data, "--out", tmp_path / "o"), "line 2", "'text'"
    )


def test_missing_image_file(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "what is it?", "image": "nope.png"}])
    assert_one_line_error(
        *run("extract", tiny_model_dir("llava"), data, "--out", tmp_path / "o"),
        "image file not found",
        "nope.png",
    )


def test_image_given_to_a_text_only_model(tmp_path, tiny_model_dir):
    random_image(32, 32, seed=0).save(tmp_path / "pic.png")
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "what is it?", "image": "pic.png"}])
    assert_one_line_error(
        *run("extract", tiny_model_dir("qwen2"), data, "--out", tmp_path / "o"), "text-only model"
    )


def test_prompt_longer_than_the_context(tmp_path, tiny_model_dir):
    from headvec import load

    limit = load(tiny_model_dir("gpt2")).arch.max_positions
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "short"}, {"text": "word " * (limit + 10)}])
    assert_one_line_error(
        *run("extract", tiny_model_dir("gpt2"), data, "--out", tmp_path / "o"), "prompt", f"at most {limit}"
    )


def test_bad_layer_option(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}])
    assert_one_line_error(
        *run("extract", tiny_model_dir("llama"), data, "--out", tmp_path / "o", "--layers", "0,99"),
        "layers [99] do not exist",
    )


def test_unknown_device(tmp_path):
    code, output = run("toyworld", "train", "--out", tmp_path / "run", "--device", "gpu0")
    assert_one_line_error(code, output, "unknown device 'gpu0'", "auto")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that is not there")
def test_gpu_asked_for_without_one(tmp_path, tiny_model_dir):
    code, output = run("info", tiny_model_dir("qwen3"), "--device", "cuda")
    assert_one_line_error(code, output, "no GPU", "--device cpu")
