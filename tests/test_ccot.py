"""Compositional chain-of-thought (issue 15, part 1): graph parsing and scoring on hand-made graphs with
hand-computed numbers, invalid graphs kept and counted, one-line errors, every tiny VLM, an endpoint."""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from headvec.errors import DataError, HeadvecError
from headvec.evaluation.ccot import RESULTS_END, RESULTS_START, run_methods, summarize
from headvec.methods.ccot import (
    OFFICIAL_GRAPH_PROMPT,
    OFFICIAL_PROMPTS,
    CompositionalCoT,
    VQAItem,
    parse_answer,
    parse_graph,
)
from headvec.testing import TEXT_ONLY, TINY_ARCHITECTURES
from headvec.toyworld.graphs import answer_from_graph, graph_facts, graph_quality
from headvec.toyworld.scenes import Obj, Scene
from headvec.toyworld.tasks import QTYPES, Question, ask_many, scene_graph

TINY_VLMS = [name for name in TINY_ARCHITECTURES if name not in TEXT_ONLY]

# red square top-left, blue circle top-right, green triangle middle-left:
# the square is left of the circle and above the triangle; circle and triangle are diagonal (no relation)
SCENE = Scene(
    (
        Obj("square", "red", "small", 0, 0),
        Obj("circle", "blue", "large", 0, 2),
        Obj("triangle", "green", "small", 1, 0),
    )
)
PREDICTED = {
    "objects": [
        {"id": 0, "shape": "square", "color": "red", "size": "small"},
        {"id": 1, "shape": "circle", "color": "blue", "size": "small"},  # wrong size
        {"id": 2, "shape": "cross", "color": "yellow"},  # hallucinated, no size
    ],
    "relations": [
        {"subject": 1, "relation": "right of", "object": 0},  # = the square left of the circle: right
        {"subject": 0, "relation": "below", "object": 2},  # = the cross above the square: wrong
        {"subject": 1, "relation": "above", "object": 0},  # wrong
    ],
}


def test_graph_quality_on_a_hand_made_graph():
    score = graph_quality(PREDICTED, scene_graph(SCENE))
    # objects {square, circle, cross} vs {square, circle, triangle}
    assert score.tp["objects"] == 2 and score.precision("objects") == pytest.approx(2 / 3)
    assert score.recall("objects") == pytest.approx(2 / 3)
    # attributes: square red/small, circle blue right; circle small wrong; cross yellow hallucinated
    assert (score.tp["attributes"], score.predicted["attributes"], score.gold["attributes"]) == (3, 5, 6)
    assert score.precision("attributes") == pytest.approx(3 / 5) and score.recall("attributes") == 0.5
    # relations: "circle right of square" is "square left of circle" (canonical direction)
    assert (score.tp["relations"], score.predicted["relations"], score.gold["relations"]) == (1, 3, 2)
    assert score.precision("relations") == pytest.approx(1 / 3) and score.recall("relations") == 0.5


def test_the_true_graph_scores_one_and_reads_every_answer():
    questions = ask_many(random.Random(5), 90, QTYPES, split="test")
    for q in questions:
        truth = scene_graph(q.scene)
        score = graph_quality(truth, truth)
        assert all(score.tp[k] == score.gold[k] == score.predicted[k] for k in score.tp)
        assert answer_from_graph(q, truth) == q.answer, (q.question, q.answer)


def test_answers_read_off_a_hand_made_graph():
    def ask(qtype: str, question: str, focus: tuple, relation: str | None = None, about=None) -> str | None:
        q = Question(
            scene=SCENE,
            qtype=qtype,
            question=question,
            answer="?",
            focus=focus,
            relation=relation,
            about=about,
        )
        return answer_from_graph(q, PREDICTED)

    assert ask("relation", "what is left of the circle ?", (0, 1), "left of") == "the red square"
    assert ask("relation_yesno", "is the circle above the square ?", (1, 0), "above") == "yes"  # its error
    assert ask("relation_yesno", "is the square above the triangle ?", (0, 2), "above") is None  # no triangle
    assert ask("size", "what size is the circle ?", (1,)) == "small"  # the graph's (wrong) size
    assert ask("count", "how many objects are there ?", ()) == "three"
    assert ask("count_color", "how many yellow objects are there ?", (), about="yellow") == "one"
    assert ask("exist", "is there a green triangle ?", (2,)) == "no"


def test_parse_graph_reads_spaced_fenced_and_refuses_broken_json():
    spaced = '{ " objects " : [ { " id " : 0 , " shape " : " cross " } ] , " relations " : [ ] }'
    assert parse_graph(spaced) == {"objects": [{"id": 0, "shape": "cross"}], "relations": []}
    fenced = 'Here it is:\n```json\n{"objects": [{"name": "red square"}]}\n```'
    assert parse_graph(fenced) == {"objects": [{"name": "red square"}]}
    assert parse_graph('{"objects": [{"id": 0, "shape": "cro') is None  # cut off by the token cap
    assert parse_graph("a red square left of a blue circle") is None
    facts = graph_facts("not json")
    assert not facts.objects and not facts.relations
    # other schemas: names, attribute lists, [s, r, o] triples with names
    other = {
        "objects": [{"name": "square", "attributes": ["red", "small"]}, {"name": "circle", "color": "blue"}],
        "relationships": [["red square", "to the left of", "blue circle"]],
    }
    assert graph_quality(other, scene_graph(SCENE)).tp == {"objects": 2, "attributes": 3, "relations": 1}


def test_parse_answer():
    assert (
        parse_answer("the blue square is at top left . so the answer is the red square .") == "the red square"
    )
    assert parse_answer("Blue.") == "blue"
    assert parse_answer("First... so the answer is: two. Done") == "two"
    assert parse_answer("B", ("cat", "dog")) == "B"
    assert parse_answer("(A) a cat", ("cat", "dog")) == "A"
    assert parse_answer("dog", ("cat", "dog")) == "B"
    assert parse_answer("C", ("cat", "dog")) is None  # no option C
    assert parse_answer("  ") is None


class Scripted:
    """A generator that records each request and answers from a script (by call)."""

    def __init__(self, answers_per_call: list) -> None:
        self.calls: list[list[tuple[str, object]]] = []
        self.answers_per_call = answers_per_call

    def generate(self, requests, max_new_tokens):
        self.calls.append(list(requests))
        answer = self.answers_per_call[len(self.calls) - 1]
        return [answer(i) if callable(answer) else answer for i in range(len(requests))]


def _items(n: int = 4) -> list[VQAItem]:
    return [
        VQAItem("what color is the square ?", Image.new("RGB", (8, 8)), "red", graph_truth=scene_graph(SCENE))
        for _ in range(n)
    ]


def test_invalid_graph_is_kept_as_text_and_counted(tmp_path):
    graphs = lambda i: json.dumps(PREDICTED) if i % 2 else "objects: a red square, then"  # noqa: E731
    generator = Scripted([graphs, "red"])
    ccot = CompositionalCoT(generator, OFFICIAL_PROMPTS)
    outputs = ccot.run(_items(), "ccot")
    assert [o.graph_valid for o in outputs] == [False, True, False, True]
    step2 = [text for text, _ in generator.calls[1]]
    assert "Scene Graph: objects: a red square, then\n\n" in step2[0]  # kept verbatim, not dropped
    assert step2[0].endswith(
        "what color is the square ?\n" + "Answer the question using a single word or phrase."
    )
    step1 = generator.calls[0][0][0]
    assert step1 == "what color is the square ?" + OFFICIAL_GRAPH_PROMPT
    generator = Scripted([graphs, "red"])
    records = run_methods(CompositionalCoT(generator), _items(), ["ccot"], tmp_path, progress=False)
    summary = summarize(records)
    assert summary["graphs"]["ccot"]["valid_json"]["mean"] == 0.5
    # invalid graphs have no facts: recall 0 for them, precision only over the valid ones
    objects = summary["graphs"]["ccot"]["all"]["objects"]
    assert (
        objects["recall"]["mean"] == pytest.approx((2 / 3) / 2, abs=1e-4) and objects["precision"]["n"] == 2
    )


def test_answer_conditioned_variant_makes_three_calls_with_the_first_answer():
    generator = Scripted(["blue", '{"objects": []}', "red"])
    outputs = CompositionalCoT(generator, OFFICIAL_PROMPTS).run(_items(1), "ccot_answer")
    assert len(generator.calls) == 3
    assert "Answer: blue" in generator.calls[1][0][0] and "Original Answer: blue" in generator.calls[2][0][0]
    assert outputs[0].first_answer == "blue" and outputs[0].prediction == "red"


def test_missing_image_is_a_one_line_error(tmp_path):
    ccot = CompositionalCoT(Scripted(["x"]))
    with pytest.raises(DataError, match="image file not found") as error:
        ccot.run([VQAItem("q ?", tmp_path / "nope.png", "a")], "direct")
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="has no image"):
        ccot.run([VQAItem("q ?", None, "a")], "direct")
    with pytest.raises(DataError, match="ccot_gold needs the true scene graph"):
        ccot.run([VQAItem("q ?", Image.new("RGB", (4, 4)), "a")], "ccot_gold")


def test_a_rerun_resumes_and_other_settings_are_refused(tmp_path):
    generator = Scripted(["red"] * 4)
    ccot = CompositionalCoT(generator)
    run_methods(ccot, _items(), ["direct"], tmp_path, config={"a": 1}, chunk_size=2, progress=False)
    assert len(generator.calls) == 2
    records = run_methods(ccot, _items(), ["direct"], tmp_path, config={"a": 1}, progress=False)
    assert len(generator.calls) == 2 and len(records) == 4 and all(r["correct"] for r in records)
    with pytest.raises(HeadvecError, match="other settings"):
        run_methods(ccot, _items(), ["direct"], tmp_path, config={"a": 2}, progress=False)


@pytest.mark.parametrize("name", TINY_VLMS)
def test_every_method_runs_on_every_tiny_vlm(name, tiny_model_dir):
    from headvec.methods.ccot import LocalGenerator
    from headvec.models import load

    loaded = load(tiny_model_dir(name), device="cpu")
    ccot = CompositionalCoT(
        LocalGenerator(loaded, batch_size=2),
        OFFICIAL_PROMPTS,
        graph_max_new_tokens=6,
        answer_max_new_tokens=3,
        cot_max_new_tokens=4,
    )
    items = [
        VQAItem("What is red?", Image.new("RGB", (32, 32), "red"), "a", ("a cat", "a dog"), "x", "{}"),
        VQAItem("How many?", Image.new("RGB", (40, 24), "blue"), "two", (), "y", "{}"),
    ]
    for method in ("direct", "cot", "ccot", "ccot_answer", "ccot_gold"):
        outputs = ccot.run(items, method)
        assert len(outputs) == 2 and all(isinstance(o.output, str) for o in outputs)
        if method in ("ccot", "ccot_answer"):
            assert all(isinstance(o.graph, str) and o.graph_valid in (True, False) for o in outputs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_openai_compatible_endpoint_gives_the_local_answers(tiny_model_dir):
    """headvec serve chat over a tiny LLaVA: the endpoint path (OpenAIJudge's client) and the local
    path build the same chat-templated prompt, so greedy answers agree."""
    import uvicorn

    from headvec.evaluation.ccot import endpoint_generator
    from headvec.methods.ccot import LocalGenerator
    from headvec.models import load
    from headvec.serving.chat import create_app

    loaded = load(tiny_model_dir("llava"), device="cpu")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(loaded, "tiny", default_max_tokens=4), host="127.0.0.1", port=port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        items = _items(2)
        caps = {"graph_max_new_tokens": 6, "answer_max_new_tokens": 3}
        remote = CompositionalCoT(endpoint_generator(f"http://127.0.0.1:{port}/v1", "tiny"), **caps)
        local = CompositionalCoT(LocalGenerator(loaded), **caps)
        got, expected = remote.run(items, "ccot"), local.run(items, "ccot")
        assert [o.graph for o in got] == [o.graph for o in expected]
        assert [o.output for o in got] == [o.output for o in expected]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_cli_eval_on_the_toy_model_writes_the_report(tmp_path):
    from headvec.cli import app

    report = tmp_path / "ccot.md"
    report.write_text(f"# guide\n\nkept\n\n{RESULTS_START}\nold\n{RESULTS_END}\n\ntail\n")
    args = [
        "ccot",
        "eval",
        "toy",
        "--n",
        "9",
        "--methods",
        "direct,ccot",
        "--graph-tokens",
        "30",
        "--answer-tokens",
        "8",
        "--work",
        str(tmp_path / "w"),
        "--out",
        str(tmp_path / "o"),
        "--report",
        str(report),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = report.read_text()
    assert text.startswith("# guide\n\nkept") and text.rstrip().endswith("tail") and "old" not in text
    assert "| direct answer |" in text and "Valid JSON" in text
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["setup"]["prompts"] == "toyworld" and set(results["accuracy"]) == {"direct", "ccot"}
    assert (tmp_path / "o" / "accuracy.png").stat().st_size > 1000


def test_cli_bad_input_is_one_line(tmp_path):
    from headvec.cli import app

    rows = tmp_path / "q.jsonl"
    rows.write_text(json.dumps({"question": "q ?", "image": "missing.png", "answer": "a"}) + "\n")
    runner = CliRunner()
    result = runner.invoke(app, ["ccot", "eval", "--endpoint", "http://127.0.0.1:9/v1", "--data", str(rows)])
    assert result.exit_code == 2 and "image file not found" in result.output
    result = runner.invoke(app, ["ccot", "eval", "toy", "--methods", "direct,magic"])
    assert result.exit_code == 2 and "unknown method" in result.output
    result = runner.invoke(app, ["ccot", "eval"])
    assert result.exit_code == 2 and "MODEL" in result.output
