"""`headvec ic eval` and `headvec lsar eval` end to end on the toy model: reports written, numbers sane."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from headvec.cli import app


@pytest.mark.slow
def test_ic_eval_writes_markdown_json_and_plot(tmp_path):
    out, cache = tmp_path / "ic", tmp_path / "cache"
    args = ["ic", "eval", "toy", "--n", "10", "--paths", "3", "--permutations", "3", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "votes.png"}
    run = json.loads((out / "results.json").read_text())["runs"]["en"]
    assert run["n_questions"] == 8  # the two "what is left of X" items (multi-word answers) are left out
    assert all(len(curve) == 3 for curve in run["curves"].values())
    # a rerun resumes from the cached paths: the same paths, the same numbers
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ic2"), "--cache", str(cache)])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "ic2" / "results.json").read_text())["runs"]["en"] == run


@pytest.mark.slow
def test_lsar_eval_writes_markdown_json_and_plot(tmp_path):
    out = tmp_path / "lsar"
    args = ["lsar", "eval", "toy", "--layers", "1,4", "--n-fit", "20", "--n-eval", "24", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "rank.png"}
    results = json.loads((out / "results.json").read_text())
    assert set(results["layers"]) == {"1", "4"} and results["one_language_max_change"] == 0.0
    assert set(results["layers"]["4"]) == {
        "none",
        "demean",
        "lir+1",
        "lir+2",
        "lir+3",
        "lsar+1",
        "lsar+2",
        "lsar+3",
    }


def test_lsar_eval_bad_layer_and_language_are_one_line(tmp_path):
    bad_layer = CliRunner().invoke(app, ["lsar", "eval", "toy", "--layers", "12", "--device", "cpu"])
    assert bad_layer.exit_code == 2 and "layer 12 does not exist" in bad_layer.output
    bad_language = CliRunner().invoke(app, ["lsar", "eval", "toy", "--languages", "xx,qq", "--device", "cpu"])
    assert bad_language.exit_code == 2 and "--languages must include en" in bad_language.output
