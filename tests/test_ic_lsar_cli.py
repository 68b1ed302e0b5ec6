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


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.slow
def test_lsar_eval_on_your_own_files(tmp_path):
    from headvec.toyworld.tasks import make_caption

    fit = [{"text": i.answer, "language": lang} for lang in ("en", "xx") for i in make_caption(3, 10, lang)]
    english, other = make_caption(4, 12, "en"), make_caption(4, 12, "xx")
    parallel = [
        {"en": e.answer, "xx": x.answer, "label": str(len(e.scene.objects) > 2)}
        for e, x in zip(english, other, strict=True)
    ]
    args = ["lsar", "eval", "toy", "--layers", "2", "--device", "cpu", "--out", str(tmp_path / "out")]
    files = ["--fit-data", str(_write_jsonl(tmp_path / "fit.jsonl", fit))]
    files += ["--parallel-data", str(_write_jsonl(tmp_path / "parallel.jsonl", parallel))]
    result = CliRunner().invoke(app, [*args, *files])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["languages"] == ["en", "xx"] and results["n_parallel"] == 12
    assert results["probe_names"] == ["False", "True"]
    assert list(results["layers"]["2"]) == ["none", "demean", "lir+1", "lir+2", "lir+3", "lsar+1"]


def test_lsar_eval_bad_files_are_one_line(tmp_path):
    fit = _write_jsonl(tmp_path / "fit.jsonl", [{"text": "a", "language": "en"}, {"text": "b"}])
    parallel = _write_jsonl(tmp_path / "parallel.jsonl", [{"en": "a", "xx": "b"}, {"en": "c"}])
    base = ["lsar", "eval", "toy", "--device", "cpu", "--parallel-data", str(parallel)]
    result = CliRunner().invoke(app, [*base, "--fit-data", str(fit)])
    assert result.exit_code == 2 and "fit.jsonl line 2: needs string fields" in result.output
    good_fit = _write_jsonl(
        tmp_path / "fit2.jsonl", [{"text": "a", "language": "en"}, {"text": "b", "language": "xx"}]
    )
    result = CliRunner().invoke(app, [*base, "--fit-data", str(good_fit)])
    assert result.exit_code == 2 and "parallel.jsonl line 2: every row needs a text" in result.output
    only_one = CliRunner().invoke(app, base)
    assert only_one.exit_code == 2 and "give both --fit-data and --parallel-data" in only_one.output


@pytest.mark.slow
def test_ic_eval_on_your_own_questions(tmp_path):
    from headvec.toyworld.model import IMAGE_SIZE
    from headvec.toyworld.tasks import make_cot

    rows = []
    for k, item in enumerate(make_cot(2, 10, split="test")):
        if item.meta["qtype"] == "relation_yesno":
            item.image(IMAGE_SIZE).save(tmp_path / f"{k}.png")
            rows.append(
                {
                    "text": item.prompt,
                    "image": f"{k}.png",
                    "labels": ["yes", "no"],
                    "answer": item.meta["label"],
                }
            )
    data = _write_jsonl(tmp_path / "questions.jsonl", rows)
    args = ["ic", "eval", "toy", "--data", str(data), "--trigger", "so the answer is", "--paths", "2"]
    args += [
        "--permutations",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
        "--cache",
        str(tmp_path / "c"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]["questions"]
    assert run["n_questions"] == len(rows) == 2


def test_ic_eval_bad_questions_are_one_line(tmp_path):
    data = _write_jsonl(
        tmp_path / "q.jsonl", [{"text": "is it ?", "labels": ["yes", "no"], "answer": "maybe"}]
    )
    result = CliRunner().invoke(app, ["ic", "eval", "toy", "--data", str(data), "--device", "cpu"])
    assert (
        result.exit_code == 2 and "q.jsonl line 1: answer 'maybe' is not one of the labels" in result.output
    )
    data = _write_jsonl(
        tmp_path / "q2.jsonl", [{"text": "is it ?", "labels": ["yes", "frobnicate"], "answer": "yes"}]
    )
    result = CliRunner().invoke(
        app,
        [
            "ic",
            "eval",
            "toy",
            "--data",
            str(data),
            "--paths",
            "1",
            "--device",
            "cpu",
            "--cache",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2 and "'frobnicate' is not a single token" in result.output
