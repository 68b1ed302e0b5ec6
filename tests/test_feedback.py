"""VLFeedback rows, the official template and its parser, pair building, annotators, pools and resuming."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from headvec.errors import DataError, HeadvecError
from headvec.feedback import (
    ALL_IN_ONE_TEMPLATE,
    ASPECTS,
    AnnotationParseError,
    AspectAnnotation,
    Completion,
    FeedbackRow,
    ImageStore,
    Instruction,
    OpenAIAnnotator,
    ScorerAnnotator,
    annotate_file,
    build_annotation_prompt,
    build_pool,
    draw_generators,
    load_as_dataset,
    longest_as_best,
    official_pairs,
    parse_all_in_one,
    random_labels,
    read_feedback,
    split_pairs,
    top_choice_as_best,
)
from headvec.feedback.annotate import Annotation
from headvec.feedback.schema import append_rows, done_ids

FIXTURE = Path(__file__).parent / "fixtures" / "vlfeedback" / "vlfeedback_rows.jsonl"


def reply(ratings: list[list[str]]) -> str:
    """A judge reply in the template's output format; ``ratings[aspect][text]``."""
    headings = [
        "Helpfulness Assessment ",
        "Ethical Considerations Assessment",
        "Visual Faithfulness Assessment ",
    ]
    parts = []
    for heading, values in zip(headings, ratings, strict=True):
        parts.append(f"#### {heading}")
        for i, value in enumerate(values, start=1):
            parts += [f"##### Output for Text {i}", f"Rating: {value}", f"Rationale: reason {i}"]
        parts.append("")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------ schema, loading


def test_fixture_rows_in_the_official_schema_load_with_headvec_and_datasets():
    rows = read_feedback(FIXTURE)
    assert [r.id for r in rows] == ["svit-0001", "llava-0002"]
    assert rows[0].completions[2].annotations["Visual Faithfulness"].Rating == "1"
    assert rows[1].completions[1].annotations["Helpfulness"].Rating == "N/A"
    dataset = load_as_dataset(FIXTURE)
    assert dataset.num_rows == 2
    assert dataset[0]["completions"][0]["annotations"]["Helpfulness"]["Rating"] == "5"
    assert dataset[0]["models"] == rows[0].models


def test_rows_headvec_writes_load_with_datasets(tmp_path):
    path = tmp_path / "out.jsonl"
    append_rows(path, read_feedback(FIXTURE))
    dataset = load_as_dataset(path)
    assert dataset.num_rows == 2 and set(dataset.column_names) >= {
        "id",
        "prompt",
        "models",
        "completions",
        "img_path",
    }


def test_a_malformed_row_is_one_line_naming_the_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = FIXTURE.read_text().splitlines()[0]
    bad = json.loads(good)
    del bad["completions"][0]["response"]
    path.write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"line 2: field 'completions.0.response'") as exc:
        read_feedback(path)
    assert "\n" not in str(exc.value)


def test_images_open_from_a_directory_or_the_official_zip_and_a_missing_one_is_one_line(tmp_path):
    (tmp_path / "svit").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "svit" / "0001.jpg")
    assert ImageStore(tmp_path).open("svit/0001.jpg").size == (8, 8)
    archive = tmp_path / "merged_images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(tmp_path / "svit" / "0001.jpg", "svit/0001.jpg")
    assert ImageStore(archive).open("svit/0001.jpg").size == (8, 8)
    with pytest.raises(DataError, match=r"row 'llava-0002': image 'llava/0002.jpg' not found") as exc:
        ImageStore(archive).open("llava/0002.jpg", "llava-0002")
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------- template and parser


def test_the_template_is_the_official_one_verbatim():
    # sha256 of annotation_template.py's all_in_one_template (vlf-silkie/VLFeedback)
    digest = hashlib.sha256(ALL_IN_ONE_TEMPLATE.encode()).hexdigest()
    assert len(ALL_IN_ONE_TEMPLATE) == 5315
    assert digest == "14a476578cbc9db2e929ebb846244ae4fd89be59a4a2269456143ef1c576586b"
    assert ALL_IN_ONE_TEMPLATE.startswith("# Assessment Guidelines\n## Helpfulness Assessment\n")
    assert ALL_IN_ONE_TEMPLATE.endswith("- <text 4> [[text_4_placeholder]]\n\n### Output\n")
    prompt = build_annotation_prompt("what is here ?", ["t1", "t2", "t3", "t4"])
    assert "Instruction: what is here ?\n" in prompt and "- <text 3> t3\n" in prompt and "[[" not in prompt


def test_parser_reads_every_rating_and_rationale():
    ratings = [["5", "4", "2", "1"], ["5", "5", "5", "3"], ["4", "3", "1", "2"]]
    parsed = parse_all_in_one(reply(ratings))
    assert [[parsed[t][a].Rating for t in range(4)] for a in ASPECTS] == ratings
    assert parsed[2]["Helpfulness"].Rationale == "reason 3"


def test_parser_keeps_a_non_numeric_rating_and_refuses_one_outside_1_to_5():
    parsed = parse_all_in_one(reply([["5", "N/A", "2", "1"], ["5"] * 4, ["4"] * 4]))
    assert parsed[1]["Helpfulness"].Rating == "N/A"
    with pytest.raises(AnnotationParseError, match=r"rating '7' for text 2 is outside 1-5"):
        parse_all_in_one(reply([["5", "7", "2", "1"], ["5"] * 4, ["4"] * 4]))
    with pytest.raises(AnnotationParseError, match=r"outside 1-5"):
        parse_all_in_one(reply([["5", "0", "2", "1"], ["5"] * 4, ["4"] * 4]))


def test_parser_refuses_a_reply_without_the_blocks():
    with pytest.raises(AnnotationParseError, match="no '#### Helpfulness Assessment' section"):
        parse_all_in_one("Text 1 is the best. Rating: 5")
    partial = reply([["5", "4", "2", "1"], ["5"] * 4, ["4"] * 4]).replace(
        "##### Output for Text 4", "#### Text four"
    )
    with pytest.raises(AnnotationParseError, match="Output for Text 4"):
        parse_all_in_one(partial)


# ----------------------------------------------------------------------------------------------- pairs


def test_official_pairs_hand_computed_on_the_fixture():
    pairs, stats = official_pairs(read_feedback(FIXTURE))
    # row 1 means 5, 4.33, 2.67, 4.33: (1,3) tie; row 2 means 3.67, N/A, 2.33, 4.0
    assert {p.id for p in pairs} == {
        "svit-0001-0-1",
        "svit-0001-0-2",
        "svit-0001-0-3",
        "svit-0001-1-2",
        "svit-0001-3-2",
        "llava-0002-0-2",
        "llava-0002-3-0",
        "llava-0002-3-2",
    }
    assert stats.to_dict() == {
        "instructions": 2,
        "candidate_pairs": 12,
        "pairs": 8,
        "ties": 1,
        "non_numeric": 3,
        "unannotated_rows": 0,
    }
    first = next(p for p in pairs if p.id == "svit-0001-3-2")
    assert first.chosen == "An umbrella, it is raining." and first.rejected == "A baseball bat."
    assert first.chosen_score == pytest.approx(13 / 3) and first.rejected_score == pytest.approx(8 / 3)


def test_the_baselines_longest_and_top_choice():
    rows = read_feedback(FIXTURE)
    longest, _ = longest_as_best(rows)
    assert sorted(p.id for p in longest) == [
        "llava-0002-3-0",
        "llava-0002-3-1",
        "llava-0002-3-2",
        "svit-0001-0-1",
        "svit-0001-0-2",
        "svit-0001-0-3",
    ]
    top, stats = top_choice_as_best(rows)
    assert sorted(p.id for p in top) == ["svit-0001-0-1", "svit-0001-0-2", "svit-0001-0-3"]
    assert stats.non_numeric == 3  # row 2 has an N/A rating: no top choice


def test_random_labels_swap_about_half_seeded_and_keep_ids_consistent():
    pairs, _ = official_pairs(read_feedback(FIXTURE) * 50)
    flipped = random_labels(pairs, seed=3)
    assert random_labels(pairs, seed=3) == flipped
    swapped = [a != b for a, b in zip(pairs, flipped, strict=True)]
    assert 0.35 < sum(swapped) / len(swapped) < 0.65
    for a, b in zip(pairs, flipped, strict=True):
        if a != b:
            assert (b.chosen, b.rejected) == (a.rejected, a.chosen)
            row, i, j = a.id.rsplit("-", 2)
            assert b.id == f"{row}-{j}-{i}"


def test_rating_outside_1_to_5_in_a_file_is_a_one_line_error(tmp_path):
    row = read_feedback(FIXTURE)[0]
    row.completions[0].annotations["Helpfulness"] = AspectAnnotation(Rating="9", Rationale="")
    with pytest.raises(DataError, match=r"row 'svit-0001' response 1 Helpfulness: rating 9 is outside 1-5"):
        official_pairs([row])


def test_split_is_datasets_train_test_split_with_seed_42():
    import datasets

    pairs, _ = official_pairs(read_feedback(FIXTURE) * 100)
    train, test = split_pairs(pairs)
    expected = datasets.Dataset.from_dict({"i": list(range(len(pairs)))}).train_test_split(
        test_size=0.005, seed=42
    )
    assert len(test) == len(expected["test"]) == 4  # ceil(0.005 * 800)
    assert [p.id for p in test] == [pairs[i].id for i in expected["test"]["i"]]
    assert len(train) + len(test) == len(pairs)


# ------------------------------------------------------------------------------------------ annotators


class FakeChat:
    """An OpenAI-compatible client stand-in: a fixed reply per call, counting calls per instruction."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def chat(self, text, image, seed):
        self.calls.append(text.split("Instruction: ")[-1].split("\n")[0])
        return self.replies.pop(0)


def _pool_file(tmp_path, n=3) -> Path:
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    rows = [
        FeedbackRow(
            id=f"r{i}",
            prompt=f"instruction {i}",
            models=["a", "b", "c", "d"],
            completions=[Completion(model=m, response=f"{m} says {i}") for m in "abcd"],
            img_path="img.png",
        )
        for i in range(n)
    ]
    path = tmp_path / "pool.jsonl"
    append_rows(path, rows)
    return path


def test_openai_annotator_keeps_and_counts_a_reply_that_does_not_parse(tmp_path):
    pool = _pool_file(tmp_path)
    good = reply([["5", "4", "2", "1"], ["5"] * 4, ["4", "4", "1", "1"]])
    chat = FakeChat([good, "I think text 2 is best.", good])
    out = tmp_path / "annotated.jsonl"
    stats = annotate_file(pool, out, OpenAIAnnotator(client=chat, concurrency=1), progress=False)
    assert (stats.annotated, stats.failures) == (3, 1)
    rows = read_feedback(out)
    assert len(rows) == 3  # the failure is written, not dropped
    failed = rows[1]
    assert failed.completions[0].annotations is None
    assert failed.model_extra["raw_annotation"] == "I think text 2 is best."
    assert "Helpfulness" in failed.model_extra["annotation_error"]
    _, pair_stats = official_pairs(rows)
    assert pair_stats.non_numeric == 6 and pair_stats.unannotated_rows == 1
    assert rows[0].completions[0].annotations["Helpfulness"].Rating == "5"


def test_annotate_resumes_without_annotating_a_row_twice(tmp_path):
    pool = _pool_file(tmp_path, n=5)
    out = tmp_path / "annotated.jsonl"
    good = reply([["5", "4", "2", "1"], ["5"] * 4, ["4"] * 4])

    class Crashing(FakeChat):
        def chat(self, text, image, seed):
            if len(self.calls) == 2:
                raise HeadvecError("endpoint down")
            return super().chat(text, image, seed)

    first = Crashing([good] * 5)
    with pytest.raises(HeadvecError, match="endpoint down"):
        annotate_file(pool, out, OpenAIAnnotator(client=first, concurrency=1), batch_rows=1, progress=False)
    assert done_ids(out) == {"r0", "r1"}
    second = FakeChat([good] * 5)
    stats = annotate_file(
        pool, out, OpenAIAnnotator(client=second, concurrency=1), batch_rows=1, progress=False
    )
    assert (stats.skipped, stats.annotated) == (2, 3)
    assert second.calls == ["instruction 2", "instruction 3", "instruction 4"]
    assert sorted(r.id for r in read_feedback(out)) == ["r0", "r1", "r2", "r3", "r4"]


def test_a_torn_last_line_from_a_kill_is_dropped_and_redone(tmp_path):
    pool = _pool_file(tmp_path, n=2)
    out = tmp_path / "annotated.jsonl"
    out.write_text(pool.read_text().splitlines()[0] + "\n" + '{"id": "r1", "prom')
    assert done_ids(out) == {"r0"}
    assert out.read_text().count("\n") == 1


def test_scorer_annotator_turns_rewards_into_ratings_in_order(tmp_path):
    class LengthRM:
        def rewards(self, prompts, responses, images=None):
            return [float(len(r)) for r in responses]

    row = FeedbackRow(
        id="x",
        prompt="p",
        models=list("abcd"),
        completions=[
            Completion(model=m, response="y" * k) for m, k in zip("abcd", (1, 3, 5, 3), strict=True)
        ],
    )
    (annotation,) = ScorerAnnotator(LengthRM()).annotate([row], [None])
    ratings = [float(r["Visual Faithfulness"].Rating) for r in annotation.ratings]
    assert ratings == [1.0, 3.0, 5.0, 3.0]
    assert all(r["Ethical Considerations"].Rating == "5" for r in annotation.ratings)
    with pytest.raises(HeadvecError, match="not a reward model"):
        ScorerAnnotator(object())


def test_an_annotator_rating_outside_1_to_5_is_refused(tmp_path):
    pool = _pool_file(tmp_path, n=1)

    class Broken:
        name = "broken"

        def annotate(self, rows, images):
            bad = {a: AspectAnnotation(Rating="6") for a in ASPECTS}
            return [Annotation([bad] * 4) for _ in rows]

    with pytest.raises(
        DataError, match=r"broken on row 'r0' response 1 Helpfulness: rating 6 is outside 1-5"
    ):
        annotate_file(pool, tmp_path / "out.jsonl", Broken(), progress=False)


def test_missing_image_stops_annotation_with_one_line(tmp_path):
    pool = _pool_file(tmp_path, n=1)
    (tmp_path / "img.png").unlink()
    with pytest.raises(DataError, match=r"row 'r0': image 'img.png' not found") as exc:
        annotate_file(pool, tmp_path / "out.jsonl", OpenAIAnnotator(client=FakeChat([])), progress=False)
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------------------ pool


class EchoGenerator:
    def __init__(self, name, fail_after=None):
        self.name, self.fail_after, self.seen = name, fail_after, []

    def generate(self, prompts, images, ids):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise RuntimeError("CUDA out of memory")
        self.seen += list(ids)
        return [f"{self.name}: {p}" for p in prompts]


def test_pool_draws_four_seeded_per_instruction_and_records_the_models(tmp_path):
    instructions = [Instruction(f"i{k}", f"q{k}", None) for k in range(6)]
    generators = [EchoGenerator(n) for n in ("g1", "g2", "g3", "g4", "g5")]
    build_pool(instructions, generators, tmp_path / "pool.jsonl", images=tmp_path, progress=False)
    rows = read_feedback(tmp_path / "pool.jsonl")
    assert [r.id for r in rows] == [f"i{k}" for k in range(6)]
    for row in rows:
        assert row.models == draw_generators(row.id, [g.name for g in generators], 4, seed=0)
        assert [c.response for c in row.completions] == [f"{m}: {row.prompt}" for m in row.models]
    assert len({tuple(r.models) for r in rows}) > 1  # the draw differs between instructions


def test_a_generator_failing_mid_run_resumes_without_redoing_an_instruction(tmp_path):
    instructions = [Instruction(f"i{k}", f"q{k}", None) for k in range(8)]
    out = tmp_path / "pool.jsonl"
    flaky = [EchoGenerator("g1"), EchoGenerator("g2"), EchoGenerator("g3"), EchoGenerator("g4", fail_after=2)]
    with pytest.raises(
        HeadvecError, match=r"generator 'g4' failed .*RuntimeError: CUDA out of memory.*rerun to resume"
    ):
        build_pool(instructions, flaky, out, images=tmp_path, chunk=2, progress=False)
    written = [r.id for r in read_feedback(out)]
    assert written == ["i0", "i1"]
    fresh = [EchoGenerator(n) for n in ("g1", "g2", "g3", "g4")]
    stats = build_pool(instructions, fresh, out, images=tmp_path, chunk=2, progress=False)
    assert (stats.skipped, stats.written) == (2, 6)
    assert [r.id for r in read_feedback(out)] == [f"i{k}" for k in range(8)]
    assert all(i not in fresh[0].seen for i in ("i0", "i1"))


def test_official_template_through_a_real_openai_compatible_http_endpoint(tmp_path):
    """The annotator's real path: OpenAIJudge's client -> HTTP -> an endpoint answering in the template's
    format (one reply with a rating of 7, which is kept as a failure and counted)."""
    import threading
    import time

    fastapi = pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from headvec.feedback.schema import ImageStore

    good = reply([["5", "4", "2", "1"], ["5"] * 4, ["4", "4", "1", "2"]])
    bad = reply([["5", "7", "2", "1"], ["5"] * 4, ["4"] * 4])
    seen: list[dict] = []
    app = fastapi.FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict) -> dict:
        seen.append(body)
        text = body["messages"][-1]["content"][0]["text"]
        content = bad if "Instruction: instruction 1\n" in text else good
        message = {"role": "assistant", "content": content}
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }

    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        pool = _pool_file(tmp_path, n=3)
        annotator = OpenAIAnnotator(f"http://127.0.0.1:{port}/v1", "judge-4v", concurrency=2)
        stats = annotate_file(pool, tmp_path / "ann.jsonl", annotator, progress=False)
    finally:
        server.should_exit = True
    assert (stats.annotated, stats.failures) == (3, 1)
    assert "rating '7' for text 2 is outside 1-5" in stats.failure_examples[0]
    rows = {r.id: r for r in read_feedback(tmp_path / "ann.jsonl")}
    assert rows["r0"].completions[3].annotations["Visual Faithfulness"].Rating == "2"
    assert (
        rows["r1"].completions[0].annotations is None
        and "Rating: 7" in rows["r1"].model_extra["raw_annotation"]
    )
    assert len(seen) == 3 and all(b["model"] == "judge-4v" for b in seen)
    content = seen[0]["messages"][-1]["content"]
    assert content[0]["text"].startswith("# Assessment Guidelines") and content[1]["type"] == "image_url"
    assert ImageStore(tmp_path).open("img.png").size == (8, 8)
