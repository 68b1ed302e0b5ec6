"""The reward-model benchmark harness: loaders, official prompts/parsers/metrics, resume, Ray, endpoints."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from headvec.errors import DataError, HeadvecError
from headvec.harness import (
    DEFAULT_TEMPLATE,
    RunSettings,
    get_template,
    load_benchmark,
    run_benchmark,
    write_report,
)
from headvec.harness.metrics import benchmark_metrics, item_decision
from headvec.harness.prompts import (
    MRB_JUDGE_PROMPT,
    RB_SYSTEM_PROMPT,
    RB_USER_TEMPLATE,
    TEMPLATES,
    VLRB_JUDGE_PROMPT,
    VLRB_VERDICT,
    parse_mrb_verdict,
    parse_vlrb_verdict,
)
from headvec.rewards.best_of_n import best_of_n
from headvec.rewards.judges import OpenAIJudge
from headvec.rewards.loading import RMOptions, build_reward_model, register_artifact_loader
from headvec.rewards.protocol import BaseJudge, Preference
from headvec.rewards.runner import RESULTS_NAME, ResultsFile, sample_outcome, sample_plan
from headvec.rewards.simple import FirstShownBaseline, LengthBaseline

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# Hand-written fixture rows in each benchmark's official layout


def _png(path: Path, color: str = "red") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), color).save(path)


VLRB_ROWS = [  # (id, ranking, expected category, expected official source)
    ("RLAIF-V-Dataset_12", [0, 1], "hallucination", "rlaif-v"),
    ("RLHF-V-Dataset_3", [1, 0], "hallucination", "rlhf-v"),
    ("hallucination_pair-44", [0, 1], "hallucination", "povid"),  # POVID: hallucination, not general
    ("mathverse_1649", [1, 0], "reasoning", "reasoning_tasks"),
    ("mmmu_pro_7", [0, 1], "reasoning", "reasoning_tasks"),
    ("wildvision-battle_9", [1, 0], "general", "wildvision-battle"),
    ("VLFeedback-2", [0, 1], "general", "vlfeedback"),
    ("LRVInstruction-000123", [1, 0], "general", "vlfeedback"),
]


def _vlrb_row(item_id: str, ranking: list[int], image: str = "images/a.png") -> dict:
    good, bad = f"the good answer to {item_id}", f"a much longer but wrong answer to {item_id} here"
    response = [good, bad] if ranking == [0, 1] else [bad, good]
    return {
        "id": item_id,
        "query": f"<image>\nWhat is in picture {item_id}?",
        "image": image,
        "response": response,
        "human_ranking": ranking,
        "models": ["m1", "m2"],
        "query_source": "x",
        "meta": "",
        "ground_truth": "",
    }


@pytest.fixture
def vlrb_jsonl(tmp_path) -> Path:
    _png(tmp_path / "images" / "a.png")
    path = tmp_path / "vl.jsonl"
    path.write_text("".join(json.dumps(_vlrb_row(i, r)) + "\n" for i, r, _, _ in VLRB_ROWS))
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_vlrewardbench_jsonl_rows_parse_with_official_categories(vlrb_jsonl):
    items = load_benchmark("vlrewardbench", str(vlrb_jsonl))
    assert [(i.id, i.category, i.subset) for i in items] == [(a, c, s) for a, _, c, s in VLRB_ROWS]
    assert all(i.chosen.startswith("the good answer") for i in items)
    assert items[0].image().size == (16, 16)


def test_vlrewardbench_parquet_with_image_bytes_parses(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buffer, format="PNG")
    rows = [
        _vlrb_row(i, r) | {"image": {"bytes": buffer.getvalue(), "path": None}} for i, r, _, _ in VLRB_ROWS
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    items = load_benchmark("vlrewardbench", str(tmp_path))  # a folder: finds the parquet
    assert len(items) == len(VLRB_ROWS) and items[2].category == "hallucination"
    assert items[0].image().size == (8, 8)


def test_multimodal_rewardbench_json_parses_with_official_subcategories(tmp_path):
    _png(tmp_path / "images" / "nocaps" / "1.jpg")
    rows = [
        {
            "ID": "nocaps_1",
            "Text": "Describe.",
            "Image": "images/nocaps/1.jpg",
            "Output1": "x",
            "Output2": "y",
            "Better": "Output2",
            "Category": "open_generation/correctness_task",
        },
        {
            "ID": "pairs_3",
            "Text": "Who?",
            "Image": "images/nocaps/1.jpg",
            "Output1": "a",
            "Output2": "b",
            "Better": "Output1",
            "Category": "safety",
        },
        {
            "ID": "hateful_4",
            "Text": "Ok?",
            "Image": "images/nocaps/1.jpg",
            "Output1": "c",
            "Output2": "d",
            "Better": "Output1",
            "Category": "safety",
        },
        {
            "ID": "mathvista_5",
            "Text": "2+2?",
            "Image": "images/nocaps/1.jpg",
            "Output1": "4",
            "Output2": "5",
            "Better": "Output1",
            "Category": "reasoning",
        },
        {
            "ID": "EMMA-Coding_6",
            "Text": "code?",
            "Image": "images/nocaps/1.jpg",
            "Output1": "e",
            "Output2": "f",
            "Better": "Output2",
            "Category": "reasoning",
        },
    ]
    (tmp_path / "all_data.json").write_text(json.dumps(rows))
    items = load_benchmark("multimodal-rewardbench", str(tmp_path))
    assert [i.category for i in items] == [
        "open_generation/correctness_task",
        "safety/bias",
        "safety/toxicity",
        "reasoning/math",
        "reasoning/coding",
    ]
    assert [i.better for i in items] == [1, 0, 0, 0, 1]
    records = run_benchmark(items, RunSettings("multimodal-rewardbench", "baseline:length"), tmp_path / "run")
    assert len(records) == 5


def test_rewardbench_rows_parse_and_score_with_official_section_weights(tmp_path):
    rows = [
        {
            "id": 1,
            "prompt": "hi",
            "chosen": "hello there friend",
            "rejected": "go",
            "subset": "alpacaeval-easy",
            "chosen_model": "a",
            "rejected_model": "b",
        },
        {"id": 2, "prompt": "hi", "chosen": "no", "rejected": "yes indeed sure", "subset": "mt-bench-med"},
        {"id": 3, "prompt": "q", "chosen": "a b c", "rejected": "a", "subset": "math-prm"},
        {"id": 4, "prompt": "q", "chosen": "a", "rejected": "a b c", "subset": "hep-go"},
    ]
    items = load_benchmark("rewardbench", str(_write_jsonl(tmp_path / "rb.jsonl", rows)))
    assert [i.category for i in items] == ["Chat", "Chat", "Reasoning", "Reasoning"]
    run_benchmark(items, RunSettings("rewardbench", "baseline:length"), tmp_path / "run")
    metrics = write_report(tmp_path / "run")
    rb = metrics["rewardbench"]
    # Chat: (1 * 100 + 0 * 40) / 140; Reasoning: (1 * 984 + 0 * 164) / (984 + 164); score = their mean
    assert rb["sections"]["Chat"] == pytest.approx(100 / 140)
    assert rb["sections"]["Reasoning"] == pytest.approx(984 / 1148)
    assert rb["score"] == pytest.approx((100 / 140 + 984 / 1148) / 2)


@pytest.mark.parametrize(
    ("row_change", "message"),
    [
        ({"response": ["only one"]}, "row 2: field 'response'"),
        ({"human_ranking": [0, 0]}, "row 2: field 'human_ranking'"),
        ({"query": None}, "row 2: field 'query'"),
        ({"image": "images/missing.png"}, "row 2: image file not found"),
    ],
)
def test_bad_vlrewardbench_rows_name_file_row_and_field(tmp_path, row_change, message):
    _png(tmp_path / "images" / "a.png")
    rows = [_vlrb_row("RLHF_1", [0, 1]), _vlrb_row("RLHF_2", [0, 1]) | row_change]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message) as info:
        load_benchmark("vlrewardbench", str(path))
    assert str(path) in str(info.value)


def test_bad_rows_in_other_benchmarks_and_missing_files(tmp_path):
    (tmp_path / "all_data.json").write_text(
        json.dumps(
            [
                {
                    "ID": "x",
                    "Text": "t",
                    "Image": "i.png",
                    "Output1": "a",
                    "Output2": "b",
                    "Better": "A",
                    "Category": "vqa",
                }
            ]
        )
    )
    with pytest.raises(DataError, match="row 1: field 'Better'"):
        load_benchmark("multimodal-rewardbench", str(tmp_path / "all_data.json"))
    path = _write_jsonl(
        tmp_path / "rb.jsonl", [{"id": 1, "prompt": "p", "chosen": "a", "rejected": "b", "subset": "made-up"}]
    )
    with pytest.raises(DataError, match="unknown RewardBench subset 'made-up'"):
        load_benchmark("rewardbench", str(path))
    with pytest.raises(DataError, match=r"data file not found|data not found"):
        load_benchmark("vlrewardbench", str(tmp_path / "nope" / "x.jsonl"))
    with pytest.raises(DataError, match="cannot load hub dataset"):  # HF_HUB_OFFLINE=1 in tests
        load_benchmark("vlrewardbench", "someone/not-downloaded")


# ------------------------------------------------------------------------------------------------
# Official prompt, parser and metrics


def test_official_judge_prompts_and_parsers():
    text = get_template("vlrewardbench").requests("<image>\nWhat?", "one", "two")[0]
    assert text.startswith(" You are a highly capable multimodal AI assistant")
    assert "Question: What?\n\nAnswer 1: one\n\nAnswer 2: two\n\n" in text and "<image>" not in text
    assert text == VLRB_JUDGE_PROMPT.format(query="What?", answer_1="one", answer_2="two")
    assert parse_vlrb_verdict("blah\n**Overall Judgment:** Answer 2 is better.") == 2
    assert parse_vlrb_verdict("Therefore, Answer 1 is slightly better") == 1
    assert parse_vlrb_verdict("overall judgment: answer 1 is the better one") == 1
    assert parse_vlrb_verdict("Overall, Answer 1 wins") is None
    assert parse_vlrb_verdict("I like both") is None
    mrb = get_template("mtbench").requests("Q", "x", "y")[0]
    assert mrb == MRB_JUDGE_PROMPT.format(question="Q", answer_a="x", answer_b="y")
    assert "[User Question]\nQ\n\n[The Start of Assistant A's Answer]\nx\n" in mrb and "\\n" not in mrb
    assert parse_mrb_verdict("Final verdict: [[B]]") == "B" and parse_mrb_verdict("A is better") is None
    toy = get_template("toyworld")
    assert toy.requests("how many red objects ?", "two .", "three")[0] == (
        "question : how many red objects ? answer : two . is the answer correct ?"
    )
    assert [toy.verdict(o) for o in (["yes", "no"], ["no", "yes"], ["yes", "yes"], ["maybe", "no"])] == [
        "a",
        "b",
        "tie",
        None,
    ]


OFFICIAL = Path(__file__).parent / "fixtures" / "official_prompts"  # upstream strings, see SOURCES.md


def test_prompts_equal_the_pinned_upstream_strings():
    def pinned(name: str) -> str:
        return (OFFICIAL / name).read_text(encoding="utf-8")

    assert pinned("mrb_judge_prompt.txt") == MRB_JUDGE_PROMPT  # real newlines, as the script sends them
    assert pinned("vlrb_judge_prompt.txt") == VLRB_JUDGE_PROMPT
    assert VLRB_VERDICT.pattern == pinned("vlrb_verdict_pattern.txt")
    assert pinned("rb_system_prompt.txt") == RB_SYSTEM_PROMPT
    assert pinned("rb_user_template.txt") == RB_USER_TEMPLATE
    rb = get_template("rewardbench")
    assert rb.system == RB_SYSTEM_PROMPT  # RewardBench's instructions go in the system message
    assert rb.requests("Q", "x", "y") == [RB_USER_TEMPLATE.format(question="Q", answer_a="x", answer_b="y")]
    assert get_template("mtbench").system is None and get_template("vlrewardbench").system is None
    assert DEFAULT_TEMPLATE == {
        "vlrewardbench": "vlrewardbench",
        "multimodal-rewardbench": "mtbench",
        "rewardbench": "rewardbench",
    }


def test_judges_send_the_templates_system_message():
    from types import SimpleNamespace

    from headvec.rewards.judges import LocalJudge

    sent: list[list[dict]] = []

    def create(**kwargs):
        sent.append(kwargs["messages"])
        message = SimpleNamespace(content="[[B]]")
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])

    for name in ("rewardbench", "mtbench"):
        judge = OpenAIJudge("http://127.0.0.1:9/v1", "m", get_template(name), max_retries=0)
        judge.client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
        assert judge.compare("Q", "x", "y").choice == "b"
    rb_messages, mrb_messages = sent
    assert rb_messages[0] == {"role": "system", "content": RB_SYSTEM_PROMPT}
    assert rb_messages[1]["content"][0]["text"].startswith("[User Question]\nQ")
    assert [m["role"] for m in mrb_messages] == ["user"]  # Multimodal RewardBench: one user message

    seen: dict = {}
    local = LocalJudge.__new__(LocalJudge)  # just the prompt building, no model
    local.template = get_template("rewardbench")
    local.loaded = SimpleNamespace(
        is_multimodal=False, build_prompt=lambda text, images, system=None: seen.update(system=system)
    )
    local._prompt("text", None)
    assert seen["system"] == RB_SYSTEM_PROMPT


def _record(uid: str, category: str, outcomes: list[tuple[bool, str | None]], better: int = 0) -> dict:
    samples = [{"swap": s, "choice": c, "outcome": sample_outcome(better, s, c)} for s, c in outcomes]
    return {"uid": uid, "category": category, "subset": category, "better": better, "samples": samples}


def test_sample_outcomes_and_majority_vote_follow_cal_py():
    assert sample_outcome(0, False, "a") == "agree" and sample_outcome(0, True, "a") == "reject"
    assert sample_outcome(1, True, "a") == "agree" and sample_outcome(1, False, None) == "unparsed"
    assert item_decision(["agree", "agree", "reject"]) == "agree"
    assert item_decision(["agree", "reject"]) == "other"
    assert item_decision(["unparsed", "unparsed", "agree"]) == "unparsed"


def test_metrics_equal_the_official_formulas_by_hand():
    a, r, u = (False, "a"), (False, "b"), (False, None)  # better=0, no swap: a agrees, b rejects
    records = (
        [_record(f"g{i}", "general", [a]) for i in range(2)]
        + [_record("g2", "general", [r]), _record("g3", "general", [u])]
        + [_record(f"h{i}", "hallucination", [a]) for i in range(5)]
        + [_record(f"h{i + 5}", "hallucination", [r]) for i in range(3)]
        + [_record(f"r{i}", "reasoning", [a]) for i in range(1)]
        + [_record(f"r{i + 1}", "reasoning", [r]) for i in range(1)]
    )
    m = benchmark_metrics("vlrewardbench", records)
    cats = m["categories"]
    # official cal.py: agree / (agree + reject), unparsed left out
    assert cats["general"]["official_accuracy"] == pytest.approx(2 / 3)
    assert cats["hallucination"]["official_accuracy"] == pytest.approx(5 / 8)
    assert m["official_overall_accuracy"] == pytest.approx((2 + 5 + 1) / (3 + 8 + 2))
    assert m["official_macro_accuracy"] == pytest.approx((2 / 3 + 5 / 8 + 1 / 2) / 3)
    # headvec's headline: unparsed counted wrong; overall weighted by category size
    assert cats["general"]["accuracy"] == pytest.approx(2 / 4) and cats["general"]["unparsed"] == 1
    assert m["overall_accuracy"] == pytest.approx(8 / 14)
    weighted = sum(c["accuracy"] * c["n"] for c in cats.values()) / 14
    assert m["overall_accuracy"] == pytest.approx(weighted)
    assert m["macro_accuracy"] == pytest.approx((2 / 4 + 5 / 8 + 1 / 2) / 3)
    assert m["unparsed_items"] == 1
    for c in cats.values():
        assert c["ci95"][0] <= c["accuracy"] <= c["ci95"][1]
    assert m["overall_ci95"][0] <= m["overall_accuracy"] <= m["overall_ci95"][1]


def test_official_column_applies_each_benchmarks_rule_for_unparsed_items():
    a, r, u, t = (False, "a"), (False, "b"), (False, None), (False, "tie")
    records = (
        [_record(f"c1-a{i}", "c1", [a]) for i in range(4)]
        + [_record(f"c1-r{i}", "c1", [r]) for i in range(2)]
        + [_record(f"c1-u{i}", "c1", [u]) for i in (1, 2, 3)]  # seed-0 coins for these three: 0, 0, 0
        + [_record("c2-a0", "c2", [a]), _record("c2-r0", "c2", [r]), _record("c2-t0", "c2", [t])]  # coin: 1
    )
    by_benchmark = {b: benchmark_metrics(b, records) for b in ("vlrewardbench", "rewardbench")}
    by_benchmark["multimodal-rewardbench"] = benchmark_metrics("multimodal-rewardbench", records)
    expected = {  # (c1, c2, overall) by hand
        "vlrewardbench": (4 / 6, 1 / 2, 5 / 8),  # dropped from the denominator
        "rewardbench": (5.5 / 9, 1.5 / 3, 7 / 12),  # credited 0.5
        "multimodal-rewardbench": (4 / 9, 2 / 3, 6 / 12),  # seeded coin flips
    }
    for benchmark, (c1, c2, overall) in expected.items():
        m = by_benchmark[benchmark]
        assert m["categories"]["c1"]["official_accuracy"] == pytest.approx(c1), benchmark
        assert m["categories"]["c2"]["official_accuracy"] == pytest.approx(c2), benchmark
        assert m["official_overall_accuracy"] == pytest.approx(overall), benchmark
        assert m["official_macro_accuracy"] == pytest.approx((c1 + c2) / 2), benchmark
        assert m["by_k"]["1"]["official_overall_accuracy"] == pytest.approx(overall), benchmark
        # strict accuracy beside it: everything not agreed is wrong, whatever the benchmark
        assert m["overall_accuracy"] == pytest.approx(5 / 12), benchmark
        assert m["categories"]["c1"]["accuracy"] == pytest.approx(4 / 9), benchmark
    assert (
        benchmark_metrics("multimodal-rewardbench", records[::-1]) == by_benchmark["multimodal-rewardbench"]
    )


def test_rewardbench_score_credits_half_and_keeps_the_strict_score():
    a, u = (False, "a"), (False, None)
    records = [
        {**_record("x0", "Chat", [a]), "subset": "alpacaeval-easy"},
        {**_record("x1", "Chat", [u]), "subset": "alpacaeval-easy"},
    ]
    rb = benchmark_metrics("rewardbench", records)["rewardbench"]
    assert rb["score"] == pytest.approx(0.75) and rb["sections"]["Chat"] == pytest.approx(0.75)
    assert rb["strict_score"] == pytest.approx(0.5)


def test_vlrewardbench_official_column_counts_other_answer_numbers_as_agreement():
    def judged(uid: str, raw: str, better: int = 0) -> dict:
        choice = {1: "a", 2: "b"}.get(parse_vlrb_verdict(raw) or 0)
        sample = {
            "swap": False,
            "choice": choice,
            "outcome": sample_outcome(better, False, choice),
            "raw": raw,
        }
        return {
            "uid": uid,
            "category": "general",
            "subset": "vlfeedback",
            "better": better,
            "samples": [sample],
        }

    records = [
        judged("a", "Overall Judgment: Answer 1 is better."),
        judged("b", "Overall Judgment: Answer 2 is better."),
        judged("c", "Overall Judgment: Answer 3 is better."),  # cal.py: not the rejected answer -> agree
        judged("d", "I cannot decide."),
    ]
    assert [r["samples"][0]["outcome"] for r in records] == ["agree", "reject", "unparsed", "unparsed"]
    m = benchmark_metrics("vlrewardbench", records)
    assert m["official_overall_accuracy"] == pytest.approx(2 / 3)  # a, c agree; b rejects; d dropped
    assert m["overall_accuracy"] == pytest.approx(1 / 4) and m["unparsed_items"] == 2


def test_majority_vote_over_k_and_position_bias():
    # preferred response shown first when swap is False (better=0); a judge that always says "a"
    always_a = [_record(f"x{i}", "general", [(False, "a"), (True, "a"), (False, "a")]) for i in range(4)]
    m = benchmark_metrics("vlrewardbench", always_a)
    assert m["by_k"]["1"]["overall_accuracy"] == 1.0 and m["by_k"]["3"]["overall_accuracy"] == 1.0
    pb = m["position_bias"]
    assert pb["first_pick_rate"] == 1.0
    assert pb["accuracy_preferred_first"] == 1.0 and pb["accuracy_preferred_second"] == 0.0
    assert pb["flip_rate"] == 1.0


def test_sample_plan_is_seeded_and_balanced():
    plans = [sample_plan(0, f"u{i}", j) for i in range(200) for j in range(3)]
    assert plans == [sample_plan(0, f"u{i}", j) for i in range(200) for j in range(3)]
    assert 0.4 < sum(swap for swap, _ in plans) / len(plans) < 0.6
    assert plans != [sample_plan(1, f"u{i}", j) for i in range(200) for j in range(3)]


# ------------------------------------------------------------------------------------------------
# Runs: resume, kill -9, Ray, reports


def test_score_based_rm_scores_and_report_files(vlrb_jsonl, tmp_path):
    items = load_benchmark("vlrewardbench", str(vlrb_jsonl))
    out = tmp_path / "run"
    run_benchmark(items, RunSettings("vlrewardbench", "baseline:length", k=3, seed=5), out)
    metrics = write_report(out)
    assert metrics["overall_accuracy"] == 0.0  # the wrong answers are the longer ones
    assert metrics["official_overall_accuracy"] == 0.0 and metrics["unparsed_items"] == 0
    assert {"report.md", "report.html", "metrics.json", "categories.png"} <= {p.name for p in out.iterdir()}
    assert "| hallucination | 3 | 0.0 |" in (out / "report.md").read_text()
    assert "<table>" in (out / "report.html").read_text()
    with pytest.raises(HeadvecError, match="different k"):
        run_benchmark(items, RunSettings("vlrewardbench", "baseline:length", k=1, seed=5), out)


def test_partial_last_line_is_cut_and_rerun_duplicates_nothing(vlrb_jsonl, tmp_path):
    items = load_benchmark("vlrewardbench", str(vlrb_jsonl))
    settings = RunSettings("vlrewardbench", "baseline:length")
    out = tmp_path / "run"
    run_benchmark(items[:3], settings, out)
    path = out / RESULTS_NAME
    with path.open("a") as handle:
        handle.write('{"uid": "half-writ')  # what kill -9 in the middle of a write leaves
    records = run_benchmark(items, settings, out)
    uids = [json.loads(line)["uid"] for line in path.read_text().splitlines()]
    assert len(uids) == len(set(uids)) == len(items) == len(records)


def test_answer_order_follows_each_benchmarks_protocol_with_swapping_as_an_option(vlrb_jsonl, tmp_path):
    items = load_benchmark("vlrewardbench", str(vlrb_jsonl))

    def swaps(benchmark: str, out: str, order: str | None = None) -> list[list[bool]]:
        settings = RunSettings(benchmark, "baseline:length", k=3, order=order)
        records = run_benchmark(items, settings, tmp_path / out)
        return [[s["swap"] for s in records[i.uid]["samples"]] for i in items]

    # Multimodal RewardBench's script never swaps; VL-RewardBench and RewardBench shuffle each sample
    assert swaps("multimodal-rewardbench", "mrb") == [[False] * 3] * len(items)
    assert json.loads((tmp_path / "mrb" / "run.json").read_text())["order"] == "stored"
    vl = [swap for sample in swaps("vlrewardbench", "vl") for swap in sample]
    assert any(vl) and not all(vl)
    # position-bias diagnostics: both orders on request
    assert swaps("multimodal-rewardbench", "both", order="both") == [[False, True, False]] * len(items)
    with pytest.raises(HeadvecError, match="unknown answer order 'sideways'"):
        swaps("multimodal-rewardbench", "bad", order="sideways")


def test_official_sampling_defaults_apply_unless_set(vlrb_jsonl, tmp_path):
    from typer.testing import CliRunner

    from headvec.cli import app
    from headvec.harness.runner import official_defaults

    unset = {"k": None, "order": None, "temperature": None, "top_p": None, "max_new_tokens": None}
    assert official_defaults("vlrewardbench", **unset) == {
        "k": 10,
        "order": "seeded",
        "temperature": 0.2,
        "top_p": 0.2,
        "max_new_tokens": 2048,
    }
    mrb = official_defaults("multimodal-rewardbench", **unset)
    assert mrb["max_new_tokens"] == 1024 and mrb["order"] == "stored" and mrb["k"] == 1
    assert official_defaults("rewardbench", **unset)["max_new_tokens"] == 2048
    assert official_defaults("vlrewardbench", **{**unset, "temperature": 0.0, "k": 2})["temperature"] == 0.0
    assert TEMPLATES["vlrewardbench"].default_max_new_tokens == 2048  # verbose judges reach their verdict
    assert TEMPLATES["mtbench"].default_max_new_tokens == 1024

    assert official_defaults("vlrewardbench", sampling=False, **unset) == {**unset, "order": "seeded"}

    def manifest_of(rm: str, name: str, *extra: str) -> dict:
        """run.json of a CLI run (a dead endpoint fails after writing it, which is all this needs)."""
        args = ["bench", "run", "vlrewardbench", "--rm", rm, "--data", str(vlrb_jsonl), "--device", "cpu"]
        out = tmp_path / name
        CliRunner().invoke(app, [*args, "--out", str(out), "--retries", "0", "--timeout", "2", *extra])
        return json.loads((out / "run.json").read_text())

    dead = "openai:http://127.0.0.1:9/v1:m"
    manifest = manifest_of(dead, "default")
    assert manifest["k"] == 10 and manifest["options"]["template"] == "vlrewardbench"
    assert manifest["options"]["temperature"] == 0.2 and manifest["options"]["top_p"] == 0.2
    assert manifest["options"]["max_new_tokens"] == 2048
    given = ["--k", "2", "--temperature", "0", "--top-p", "0.9", "--max-new-tokens", "64"]
    manifest = manifest_of(dead, "given", *given)
    assert manifest["k"] == 2 and manifest["options"]["temperature"] == 0.0
    assert manifest["options"]["top_p"] == 0.9 and manifest["options"]["max_new_tokens"] == 64
    # a scorer, or a judge on another prompt, keeps headvec's defaults: one greedy sample
    for name, rm, extra in (("scorer", "baseline:length", ()), ("toy", dead, ("--template", "toyworld"))):
        manifest = manifest_of(rm, name, *extra)
        assert manifest["k"] == 1 and manifest["options"]["temperature"] == 0.0, name
        assert manifest["options"]["max_new_tokens"] is None, name


def test_damaged_run_files_give_one_line_errors_naming_file_and_line(vlrb_jsonl, tmp_path):
    from typer.testing import CliRunner

    from headvec.cli import app

    items = load_benchmark("vlrewardbench", str(vlrb_jsonl))
    settings = RunSettings("vlrewardbench", "baseline:length")
    out = tmp_path / "run"
    run_benchmark(items[:3], settings, out)
    manifest, results = out / "run.json", out / RESULTS_NAME
    good_manifest, good_results = manifest.read_text(), results.read_text()

    manifest.write_text(good_manifest[: len(good_manifest) // 2])  # truncated run.json
    for call in (lambda: write_report(out), lambda: run_benchmark(items, settings, out)):
        with pytest.raises(HeadvecError, match=r"run\.json is damaged .*delete it and rerun") as info:
            call()
        assert "\n" not in str(info.value)
    report = CliRunner().invoke(app, ["bench", "report", str(out)])
    assert report.exit_code == 2 and "run.json is damaged" in report.output
    assert "Traceback" not in report.output
    manifest.write_text(good_manifest)

    lines = good_results.splitlines(keepends=True)
    results.write_text(lines[0] + "{}\n" + "".join(lines[1:]))  # an empty record in the middle
    for call in (lambda: write_report(out), lambda: run_benchmark(items, settings, out)):
        with pytest.raises(DataError, match=r"results\.jsonl line 2 is not a finished-pair record"):
            call()
    results.write_text(lines[0] + '{"uid": 3}\n' + "".join(lines[1:]))  # valid JSON, not a record
    with pytest.raises(DataError, match=r"results\.jsonl line 2 "):
        write_report(out)

    # a torn last record that still ends in a newline: dropped, and its pair redone on resume
    results.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2] + "\n")
    records = run_benchmark(items, settings, out)
    uids = [json.loads(line)["uid"] for line in results.read_text().splitlines()]
    assert len(uids) == len(set(uids)) == len(items) == len(records)
    assert write_report(out)["n"] == len(items)


SLOW_RM = """
import time
from headvec.rewards.simple import LengthBaseline

class Slow(LengthBaseline):
    def rewards(self, prompts, responses, images=None):
        time.sleep(0.1)
        return super().rewards(prompts, responses, images)

def make(options):
    return Slow()
"""


def test_resume_after_kill_9_loses_and_duplicates_nothing(tmp_path):
    _png(tmp_path / "images" / "a.png")
    rows = [_vlrb_row(f"RLHF_{i}", [i % 2, 1 - i % 2]) for i in range(30)]
    data = _write_jsonl(tmp_path / "vl.jsonl", rows)
    (tmp_path / "slowrm.py").write_text(SLOW_RM)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "headvec.cli",
        "bench",
        "run",
        "vlrewardbench",
        "--rm",
        "python:slowrm:make",
        "--data",
        str(data),
        "--out",
        str(out),
        "--chunk-size",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / RESULTS_NAME
    deadline = time.time() + 60
    while time.time() < deadline and (not results.exists() or results.read_text().count("\n") < 4):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = results.read_bytes()
    finished = before[: before.rfind(b"\n") + 1]
    assert 4 <= finished.count(b"\n") < 30, proc.stderr.read().decode()[-2000:]
    from typer.testing import CliRunner

    from headvec.cli import app

    sys.path.insert(0, str(tmp_path))  # the same command again, in this process, resumes the run
    try:
        rerun = CliRunner().invoke(app, cmd[3:])
    finally:
        sys.path.remove(str(tmp_path))
    assert rerun.exit_code == 0, rerun.output
    after = results.read_bytes()
    assert after.startswith(finished)  # everything finished before the kill is kept as it was
    uids = [json.loads(line)["uid"] for line in after.decode().splitlines()]
    assert len(uids) == len(set(uids)) == 30
    assert json.loads((out / "metrics.json").read_text())["n"] == 30


def test_bench_run_records_the_resolved_device_so_the_default_resumes(vlrb_jsonl, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from headvec.cli import app

    out = tmp_path / "run"
    args = ["bench", "run", "vlrewardbench", "--rm", "baseline:length", "--data", str(vlrb_jsonl)]
    first = CliRunner().invoke(app, [*args, "--out", str(out), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    results = (out / RESULTS_NAME).read_bytes()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    again = CliRunner().invoke(app, [*args, "--out", str(out)])  # the default, auto, is cpu here
    assert again.exit_code == 0, again.output
    assert (out / RESULTS_NAME).read_bytes() == results  # resumed: nothing redone or duplicated
    assert json.loads((out / "run.json").read_text())["options"]["device"] == "cpu"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = CliRunner().invoke(app, [*args, "--out", str(out)])  # auto is cuda: another run
    assert on_gpu.exit_code == 2
    assert "different options" in on_gpu.output


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory) -> Path:
    from headvec.toyworld import export

    out = tmp_path_factory.mktemp("toyworld")
    export(out, 0, {"test": 12}, splits=("test",), tasks=("preference",), languages=("en",))
    return out / "vlrewardbench.test.en.jsonl"


def test_judge_end_to_end_on_toyworld_export_via_cli(tiny_model_dir, toy_export, tmp_path):
    from typer.testing import CliRunner

    from headvec.cli import app

    out = tmp_path / "run"
    args = [
        "bench",
        "run",
        "vlrewardbench",
        "--rm",
        f"judge:{tiny_model_dir('llava')}",
        "--data",
        str(toy_export),
        "--out",
        str(out),
        "--template",
        "toyworld",
        "--k",
        "3",
        "--limit",
        "8",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    records = ResultsFile(out / RESULTS_NAME).load()
    assert len(records) == 8
    categories = {r["category"] for r in records.values()}
    assert categories == {"hallucination", "reasoning", "reward_hacking", "flipped"}
    assert all(len(r["samples"]) == 3 and r["samples"][0]["raw"] is not None for r in records.values())
    metrics = json.loads((out / "metrics.json").read_text())
    decided = sum(
        c["agree"] + c["reject"] + c["unparsed"] + c["other"] for c in metrics["categories"].values()
    )
    assert decided == 8  # every item is counted, parseable or not
    report = CliRunner().invoke(app, ["bench", "report", str(out)])
    assert report.exit_code == 0 and "report.html" in report.output
    bad = CliRunner().invoke(app, ["bench", "report", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "not a benchmark run" in bad.output


def test_ray_backend_equals_local_backend(tiny_model_dir, toy_export, tmp_path):
    ray = pytest.importorskip("ray")
    items = load_benchmark("vlrewardbench", str(toy_export))[:8]
    settings = RunSettings(
        "vlrewardbench",
        f"judge:{tiny_model_dir('llava')}",
        k=2,
        seed=3,
        options=RMOptions(template="toyworld").to_dict(),
    )
    local = run_benchmark(items, settings, tmp_path / "local", chunk_size=4)
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
    )
    try:
        distributed = run_benchmark(items, settings, tmp_path / "ray", backend="ray", workers=1, chunk_size=4)
    finally:
        ray.shutdown()
    assert distributed == local
    assert json.dumps(write_report(tmp_path / "ray")) == json.dumps(write_report(tmp_path / "local"))


@pytest.mark.skipif(
    not (Path(__file__).parents[1] / "src/headvec/toyworld/weights/config.json").is_file(),
    reason="the trained toy model is not shipped yet",
)
def test_toy_model_judges_toyworld_preferences(toy_export, tmp_path):
    items = load_benchmark("vlrewardbench", str(toy_export))
    settings = RunSettings("vlrewardbench", "judge:toy", options=RMOptions(template="toyworld").to_dict())
    run_benchmark(items, settings, tmp_path / "run")
    metrics = write_report(tmp_path / "run")
    assert metrics["n"] == len(items)
    assert metrics["unparsed_samples"] < len(items)  # the toy model answers its own judge prompt in yes/no
    scored = RunSettings("vlrewardbench", "judge-score:toy", options=RMOptions(template="toyworld").to_dict())
    run_benchmark(items, scored, tmp_path / "score")
    score_metrics = write_report(tmp_path / "score")
    assert score_metrics["unparsed_samples"] == 0 and score_metrics["tie_samples"] < len(items)


# ------------------------------------------------------------------------------------------------
# Endpoint judges


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def chat_server(tiny_model_dir):
    """The headvec chat server on loopback, serving a tiny LLaVA; the first 2 requests fail with 503."""
    import uvicorn
    from fastapi.responses import JSONResponse

    from headvec.models import load
    from headvec.serving.chat import create_app

    app = create_app(load(tiny_model_dir("llava"), device="cpu"), "tiny", default_max_tokens=4)
    failures = {"left": 2, "seen": 0}

    @app.middleware("http")
    async def flaky(request, call_next):
        failures["seen"] += 1
        if request.url.path.endswith("/chat/completions") and failures["left"] > 0:
            failures["left"] -= 1
            return JSONResponse({"error": {"message": "busy", "code": 503}}, status_code=503)
        return await call_next(request)

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", failures
    server.should_exit = True
    thread.join(timeout=10)


def test_endpoint_judge_retries_then_runs_end_to_end(chat_server, vlrb_jsonl, tmp_path):
    url, failures = chat_server
    judge = OpenAIJudge(url, "tiny", get_template("toyworld"), max_retries=3, backoff=0.01, max_tokens=2)
    first = judge.compare("What?", "one", "two", Image.new("RGB", (16, 16), "red"))
    assert failures["left"] == 0 and judge.calls == 4  # two 503s retried, then both yes/no prompts answered
    assert first.raw is not None and first.choice is None  # a random tiny model does not say yes or no
    too_long = OpenAIJudge(url, "tiny", get_template("vlrewardbench"), max_retries=3, backoff=0.01)
    with pytest.raises(HeadvecError, match=r"refused .*HTTP 400"):  # not retried: the prompt is too long
        too_long.compare("What?", "one", "two", Image.new("RGB", (16, 16), "red"))
    assert too_long.calls == 1
    items = load_benchmark("vlrewardbench", str(vlrb_jsonl))[:3]
    options = RMOptions(template="toyworld", max_new_tokens=2, concurrency=2).to_dict()
    records = run_benchmark(
        items, RunSettings("vlrewardbench", f"openai:{url}:tiny", options=options), tmp_path / "run"
    )
    assert len(records) == 3 and all(r["samples"][0]["raw"] for r in records.values())
    with pytest.raises(HeadvecError, match="refused the request for model 'other'"):
        OpenAIJudge(url, "other", get_template("vlrewardbench"), max_retries=0).compare("q", "a", "b")


def test_dead_endpoint_retries_then_gives_a_clear_error(vlrb_jsonl, tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    judge = OpenAIJudge(url, "m", get_template("vlrewardbench"), max_retries=2, backoff=0.01, timeout=2)
    with pytest.raises(HeadvecError, match=r"failed 3 times .*check that the server is up"):
        judge.compare("q", "a", "b")
    assert judge.calls == 3
    items = load_benchmark("vlrewardbench", str(vlrb_jsonl))
    options = RMOptions(retries=1, timeout=2).to_dict()
    with pytest.raises(HeadvecError, match="failed 2 times"):
        run_benchmark(items, RunSettings("vlrewardbench", f"openai:{url}:m", options=options), tmp_path / "r")


# ------------------------------------------------------------------------------------------------
# Reward-model specs and Best-of-N


def test_rm_specs_and_pluggable_artifact_loaders(tmp_path):
    from headvec.methods.artifacts import save_artifact
    from headvec.rewards.loading import ARTIFACT_LOADERS

    assert isinstance(build_reward_model("baseline:length"), LengthBaseline)
    assert isinstance(build_reward_model("baseline:first"), FirstShownBaseline)
    for spec, message in [
        ("nonsense", "not PREFIX:VALUE"),
        ("magic:x", "unknown kind 'magic'"),
        ("openai:not-a-url", "must be openai:URL:MODEL"),
        ("artifact:" + str(tmp_path), "no headvec_config.json"),
    ]:
        with pytest.raises(HeadvecError, match=message):
            build_reward_model(spec)
    with pytest.raises(HeadvecError, match="unknown judge template 'vlrewardbench'"):
        build_reward_model("judge:toy")  # the published prompts are the harness's: pass TEMPLATES
    with pytest.raises(HeadvecError, match="pointwise"):
        build_reward_model("judge-score:toy", RMOptions(template="vlrewardbench"), TEMPLATES)
    save_artifact(tmp_path / "rm", "test-length-rm", {"note": "x"}, {"w": torch.zeros(1)})
    with pytest.raises(HeadvecError, match="not a reward model this registry knows"):
        build_reward_model(f"artifact:{tmp_path / 'rm'}")
    register_artifact_loader("test-length-rm", lambda path, model: LengthBaseline())
    try:
        assert isinstance(build_reward_model(f"artifact:{tmp_path / 'rm'}"), LengthBaseline)
    finally:
        del ARTIFACT_LOADERS["test-length-rm"]


def test_best_of_n_with_scores_and_with_a_comparing_judge():
    candidates = ["short", "a bit longer", "the longest answer of them all", "mid length one"]
    picked = best_of_n(LengthBaseline(), "q", candidates)
    assert picked.index == 2 and picked.scores == [1.0, 3.0, 6.0, 3.0]

    class PrefersLonger(BaseJudge):
        def compare_batch(self, comparisons):
            return [Preference(choice="a" if len(c.a) >= len(c.b) else "b") for c in comparisons]

    knockout = best_of_n(PrefersLonger(), "q", candidates, seed=1)
    assert knockout.index == 2 and len(knockout.matches) == 3
    first = best_of_n(FirstShownBaseline(), "q", candidates, seed=1)
    assert first.matches == best_of_n(FirstShownBaseline(), "q", candidates, seed=1).matches  # seeded
    assert all(match["winner"] == match["first"] for match in first.matches)  # the shown-first one wins


def test_the_toy_judge_reads_verdicts_in_the_rows_language(tmp_path):
    """`--template toyworld-xx` asks in xx and parses xx yes/no; the English template on the same rows
    gets some answers in xx that its parser cannot read."""
    from typer.testing import CliRunner

    from headvec.cli import app
    from headvec.toyworld import export

    export(tmp_path / "data", 0, {"test": 16}, splits=("test",), tasks=("preference",), languages=("xx",))
    data = tmp_path / "data" / "vlrewardbench.test.xx.jsonl"
    unparsed = {}
    for template in ("toyworld", "toyworld-xx"):
        out = tmp_path / template
        args = ["bench", "run", "vlrewardbench", "--rm", "judge:toy", "--data", str(data), "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--template", template, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        unparsed[template] = json.loads((out / "metrics.json").read_text())["unparsed_items"]
    # measured 1 of 16 unreadable with the row's template, 4 of 16 with the English one
    assert unparsed["toyworld-xx"] <= 2 and unparsed["toyworld-xx"] < unparsed["toyworld"]


def test_rewardbench_prior_sets_load_as_conversations_and_weigh_half_a_section(tmp_path):
    """The official leaderboard score: Prior Sets = unweighted mean of its subsets, then a weighted
    mean of the sections with weights 2, 2, 2, 2, 1 (analysis/get_benchmark_results.py)."""
    rb_rows = [
        {
            "id": 1,
            "prompt": "hi",
            "chosen": "hello there friend",
            "rejected": "go",
            "subset": "alpacaeval-easy",
        },
    ]
    prior = tmp_path / "prior"
    (prior / "data").mkdir(parents=True)
    conversation = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"}]
    _write_jsonl(
        prior / "shp.jsonl",
        [
            {
                "chosen": [*conversation[:1], {"role": "assistant", "content": "a long kind answer"}],
                "rejected": [*conversation[:1], {"role": "assistant", "content": "no"}],
            },
            {
                "chosen": [
                    *conversation,
                    {"role": "user", "content": "more"},
                    {"role": "assistant", "content": "x"},
                ],
                "rejected": [
                    *conversation,
                    {"role": "user", "content": "more"},
                    {"role": "assistant", "content": "x y z"},
                ],
            },
        ],
    )
    for name in ("anthropic_helpful", "anthropic_hhh", "summarize"):
        _write_jsonl(prior / f"{name}.jsonl", [{"prompt": "p", "chosen": "a b c d", "rejected": "a"}])
    items = load_benchmark("rewardbench", str(_write_jsonl(tmp_path / "rb.jsonl", rb_rows)), prior_sets=prior)
    shp = [i for i in items if i.subset == "shp"]
    assert shp[0].prompt == "first" and shp[0].responses == ("a long kind answer", "no")
    assert shp[1].prompt == "User: first\n\nAssistant: reply\n\nUser: more"
    assert {i.category for i in items} == {"Chat", "Prior Sets"}
    run_benchmark(items, RunSettings("rewardbench", "baseline:length"), tmp_path / "run")
    rb = write_report(tmp_path / "run")["rewardbench"]
    # length baseline: Chat 1.0; shp 0.5 (the long answer wins once), the other three 1.0 -> Prior 0.875
    assert rb["sections"]["Prior Sets"] == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert rb["score"] == pytest.approx((2 * 1.0 + 1 * 0.875) / 3)


def test_prior_sets_are_refused_for_other_benchmarks(tmp_path):
    with pytest.raises(DataError, match="RewardBench only"):
        load_benchmark("vlrewardbench", str(tmp_path / "x.jsonl"), prior_sets=tmp_path)


def test_a_run_is_not_resumed_with_other_model_weights(vlrb_jsonl, tmp_path):
    """Finished pairs judged by one model must not count for another (e.g. retrained toy weights)."""
    from types import SimpleNamespace

    from headvec.rewards.runner import run_pairs

    items = load_benchmark("vlrewardbench", str(vlrb_jsonl))

    def on_weights(fingerprint: str) -> LengthBaseline:
        rm = LengthBaseline()
        rm.loaded = SimpleNamespace(identity={"weights_fingerprint": fingerprint})
        return rm

    out = tmp_path / "run"
    first = run_pairs(items[:2], on_weights("aaaa"), out=out)
    assert json.loads((out / "run.json").read_text())["weights"] == "aaaa"
    assert run_pairs(items[:2], on_weights("aaaa"), out=out) == first  # the same weights resume
    with pytest.raises(HeadvecError, match="other model weights"):
        run_pairs(items[:2], on_weights("bbbb"), out=out)


def test_the_weights_are_found_through_the_scorer_a_judge_wraps():
    from types import SimpleNamespace

    from headvec.rewards.protocol import as_judge
    from headvec.rewards.runner import weights_of

    scorer = LengthBaseline()
    assert weights_of(as_judge(scorer)) is None  # nothing to fingerprint: a model-free baseline
    scorer.loaded_ = SimpleNamespace(identity={"weights_fingerprint": "cafe"})  # a fitted RM's model
    assert weights_of(as_judge(scorer)) == "cafe"
