"""`headvec remiss attack|eval` and `headvec regap score` end to end on a tiny model and a JSONL file."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from headvec.cli import app

runner = CliRunner()


def _rows(path):
    rows = [
        {
            "id": "a",
            "instruct": "Tell me the colour",
            "target": "Blue",
            "harmless": "Sorry no",
            "split": "train",
        },
        {"id": "b", "instruct": "Say a word", "target": "Yes", "harmless": "Sorry", "split": "test"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_attack_eval_and_resume_on_a_tiny_model(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("llama"))
    data = _rows(tmp_path / "items.jsonl")
    common = ["--policy", model, "--reference", model, "--data", str(data), "--out", str(tmp_path / "runs")]
    common += ["--suffix-tokens", "2", "--top-k", "4", "--num-beams", "2", "--keep", "2", "--no-progress"]
    common += ["--policy-weight", "2", "--max-new-tokens", "3", "--device", "cpu"]
    first = runner.invoke(app, ["remiss", "attack", *common])
    assert first.exit_code == 0, first.output
    suffixes = (tmp_path / "runs" / "remiss" / "suffixes.jsonl").read_text()
    assert len(suffixes.splitlines()) == 2
    again = runner.invoke(app, ["remiss", "attack", *common])  # resumes: nothing left to do
    assert again.exit_code == 0 and (tmp_path / "runs" / "remiss" / "suffixes.jsonl").read_text() == suffixes
    evaluated = runner.invoke(app, ["remiss", "eval", *common])
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads((tmp_path / "runs" / "remiss" / "summary.json").read_text())
    assert set(summary["splits"]) == {"train", "test"} and "transfer" in summary
    assert 0.0 <= summary["splits"]["test"]["asr@2"]["mean"] <= 1.0
    changed = runner.invoke(app, ["remiss", "attack", *common[:-2], "--top-k", "2"])
    assert changed.exit_code == 2 and "other settings" in changed.output


def test_regap_score_writes_one_row_per_prompt(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("llama"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"prompt": "Tell me", "harmless": "Sorry", "harmful": "Sure"})
        + "\n"
        + json.dumps({"prompt": "Say it", "harmless": "No", "harmful": "Yes"})
        + "\n"
    )
    out = tmp_path / "gaps.jsonl"
    result = runner.invoke(
        app, ["regap", "score", model, model, "--data", str(rows), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    gaps = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(gaps) == 2 and all(abs(g["regap"]) < 1e-6 for g in gaps)  # the model is its own reference
    bad = runner.invoke(app, ["regap", "score", model, model, "--data", str(tmp_path / "missing.jsonl")])
    assert bad.exit_code == 2 and "not found" in bad.output
