"""The toy world's side of the feedback loop: the CHAIR-style check, the oracle, the toy judge annotator,
and the feedback / dpo commands' one-line errors."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headvec.cli import app
from headvec.feedback import Annotator, Completion, FeedbackRow
from headvec.toyworld.feedback import (
    OracleAnnotator,
    ToyJudgeAnnotator,
    caption_check,
    mentions,
    oracle_ratings,
    toy_instructions,
)
from headvec.toyworld.scenes import Obj, Scene

SCENE = Scene((Obj("square", "red", "small", 0, 0), Obj("circle", "blue", "large", 0, 1)))
GOLD = "a small red square and a large blue circle ."


def test_mentions_read_shape_colour_and_size_words():
    assert mentions("a small red square , two circles and yellow") == [
        mentions("small red square")[0],
        mentions("circle")[0],
        mentions("yellow")[0],
    ]
    (m,) = mentions("a large red square")
    assert (m.shape, m.color, m.size) == ("square", "red", "large")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOLD, (2, 0, 0, 0, 1.0)),
        ("a large red square and a green triangle .", (2, 2, 1, 1, 0.0)),  # wrong size; no triangle at all
        ("a small blue square .", (1, 1, 0, 1, 0.0)),  # the square is there, but red
        ("yellow large large blue circle", (2, 1, 0, 1, 0.5)),  # a stray colour not in the image
        ("the square is at top left .", (1, 0, 0, 0, 0.0)),  # right, but names no colour or size
        ("", (0, 0, 0, 0, 0.0)),
    ],
)
def test_caption_check_counts_hallucinated_objects_and_attributes(text, expected):
    check = caption_check(text, SCENE)
    assert (
        check.mentions,
        check.hallucinated,
        check.object_errors,
        check.attribute_errors,
        check.recall,
    ) == expected


def _row(task: str, prompt: str, answer: str, responses: list[str], qtype: str | None = None) -> FeedbackRow:
    meta = {"task": task, "answer": answer, "scene": {"objects": [asdict(o) for o in SCENE.objects]}}
    if qtype:
        meta["qtype"] = qtype
    return FeedbackRow(
        id="t",
        prompt=prompt,
        models=list("abcd")[: len(responses)],
        completions=[Completion(model=m, response=r) for m, r in zip("abcd", responses, strict=False)],
        meta=meta,
    )


def test_oracle_rates_captions_from_the_scene_graph():
    row = _row(
        "caption",
        "describe the image .",
        GOLD,
        [GOLD, "a small red square and a large green circle .", "", "a small red square ."],
    )
    ratings = [
        (r["Helpfulness"].Rating, r["Visual Faithfulness"].Rating, r["Ethical Considerations"].Rating)
        for r in oracle_ratings(row)
    ]
    # gold: 5/5; half hallucinated (1 of 2) and half described: 3/3; nothing named: 1/1; right but half: 3/5
    assert ratings == [("5", "5", "5"), ("3", "3", "5"), ("1", "1", "5"), ("3", "5", "5")]


def test_oracle_rates_vqa_answers():
    row = _row(
        "vqa",
        "what color is the square ?",
        "red",
        ["red", "blue", "the red square is red and blue", ""],
        "color",
    )
    ratings = [(r["Helpfulness"].Rating, r["Visual Faithfulness"].Rating) for r in oracle_ratings(row)]
    assert ratings == [("5", "5"), ("2", "2"), ("1", "1"), ("2", "2")]
    yes_no = _row("vqa", "is there a red square ?", "yes", ["yes", "no"], "exist")
    assert [r["Visual Faithfulness"].Rating for r in oracle_ratings(yes_no)] == ["5", "1"]


def test_oracle_refuses_rows_without_a_scene():
    row = _row("vqa", "q", "a", ["a"])
    row.meta.pop("scene")
    with pytest.raises(Exception, match="no toy-world scene in meta"):
        oracle_ratings(row)


def test_every_annotator_has_the_one_interface():
    assert isinstance(OracleAnnotator(), Annotator)
    assert isinstance(ToyJudgeAnnotator(client=None), Annotator)


def test_toy_judge_maps_yes_no_to_ratings_and_keeps_an_unreadable_verdict():
    class Chat:
        def __init__(self, replies):
            self.replies = dict(replies)

        def chat(self, text, image, seed):
            return next(v for k, v in self.replies.items() if f"answer : {k} ." in text)

    rows = [_row("caption", "describe the image .", GOLD, ["good", "bad", "odd", "fine"])]
    judge = ToyJudgeAnnotator(
        Chat({"good": "yes", "bad": "no", "odd": "maybe", "fine": "yes"}), concurrency=2
    )
    (failed,) = judge.annotate(rows, [None])
    assert failed.ratings is None and "neither yes nor no" in failed.error and "maybe" in failed.raw
    judge = ToyJudgeAnnotator(Chat({"good": "yes", "bad": "no", "odd": "no", "fine": "yes"}))
    (ok,) = judge.annotate(rows, [None])
    assert [r["Helpfulness"].Rating for r in ok.ratings] == ["5", "1", "1", "5"]


def test_toy_instructions_are_half_captions_with_their_scene_and_image(tmp_path):
    items = toy_instructions(10, 0, tmp_path)
    assert sum(i.meta["task"] == "caption" for i in items) == 5
    assert all((tmp_path / i.img_path).is_file() for i in items)
    assert all(Scene.from_dict(i.meta["scene"]).split == "train" for i in items)
    assert [i.id for i in toy_instructions(10, 0, tmp_path)] == [i.id for i in items]


# ------------------------------------------------------------------------------------ command errors


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(code, output, *needles):
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    for needle in needles:
        assert needle in errors[0], errors[0]


FIXTURE = Path(__file__).parent / "fixtures" / "vlfeedback" / "vlfeedback_rows.jsonl"


def test_cli_bad_input_is_one_line(tmp_path):
    one_line_error(
        *run("feedback", "annotate", tmp_path / "nope.jsonl", tmp_path / "o.jsonl"), "data file not found"
    )
    one_line_error(
        *run("feedback", "annotate", FIXTURE, tmp_path / "o.jsonl", "--annotator", "gpt"),
        "unknown --annotator 'gpt'",
    )
    one_line_error(
        *run("feedback", "annotate", FIXTURE, tmp_path / "o.jsonl", "--annotator", "openai"), "--base-url"
    )
    one_line_error(
        *run("feedback", "pairs", FIXTURE, tmp_path / "p", "--pairing", "best"), "unknown pairing 'best'"
    )
    bad = json.loads(FIXTURE.read_text().splitlines()[0])
    bad["completions"][1]["annotations"]["Visual Faithfulness"]["Rating"] = "0"
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    one_line_error(
        *run("feedback", "pairs", tmp_path / "bad.jsonl", tmp_path / "p"), "rating 0 is outside 1-5"
    )
    one_line_error(*run("feedback", "generate", tmp_path / "g"), "give --toy N")
    one_line_error(
        *run(
            "feedback",
            "annotate",
            FIXTURE,
            tmp_path / "o.jsonl",
            "--annotator",
            "openai",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--judge-model",
            "m",
            "--images",
            tmp_path,
        ),
        "image 'svit/0001.jpg' not found",
    )
    instructions = tmp_path / "instructions.jsonl"
    instructions.write_text(json.dumps({"id": "a", "prompt": "describe the image ."}) + "\n")
    one_line_error(
        *run("feedback", "generate", tmp_path / "g", "--instructions", instructions), "at least 4 --generator"
    )
    specs = [
        x
        for spec in ("local:toy", "local:toy@0.7", "openai:m@http://127.0.0.1:9/v1", "vllm:m")
        for x in ("--generator", spec)
    ]
    one_line_error(
        *run("feedback", "generate", tmp_path / "g", "--instructions", instructions, *specs),
        "use local:MODEL",
    )
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    one_line_error(*run("dpo", "train", "toy", tmp_path / "pairs.jsonl", tmp_path / "d"), "needs 'rejected'")


def test_cli_pairs_writes_the_split_and_the_counts(tmp_path):
    code, output = run("feedback", "pairs", FIXTURE, tmp_path / "p")
    assert code == 0, output
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    assert stats["stats"]["pairs"] == 8 and stats["train"] + stats["test"] == 8 and stats["test"] == 1
    assert len((tmp_path / "p" / "pairs.train.jsonl").read_text().splitlines()) == 7


@pytest.mark.slow
def test_cli_loop_generate_annotate_pairs_train_eval(tmp_path):
    """Every command of the loop on a tiny toy pool, full fine-tuning for two steps; the result loads."""
    from headvec.models import load

    assert run("feedback", "generate", tmp_path / "fb", "--toy", "6")[0] == 0
    assert run("feedback", "annotate", tmp_path / "fb" / "pool.jsonl", tmp_path / "fb" / "ann.jsonl")[0] == 0
    code, output = run("feedback", "pairs", tmp_path / "fb" / "ann.jsonl", tmp_path / "fb" / "pairs")
    assert code == 0, output
    train = tmp_path / "fb" / "pairs" / "pairs.train.jsonl"
    args = ["--max-steps", "2", "--batch-size", "2", "--accumulation", "1", "--no-lora", "--lr", "1e-4"]
    code, output = run("dpo", "train", "toy", train, tmp_path / "dpo", *args)
    assert code == 0, output
    assert load(tmp_path / "dpo" / "model", device="cpu").is_multimodal
    code, output = run("dpo", "eval", tmp_path / "dpo" / "model", "--n", "4", "--out", tmp_path / "eval.json")
    assert code == 0, output
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert set(summary["metrics"]) >= {"chair_i", "vqa", "judge"}
