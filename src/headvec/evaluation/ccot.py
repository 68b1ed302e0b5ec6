"""CCoT vs direct answer vs zero-shot CoT, per question type, with the scene-graph quality beside them.

On the toy world (held-out, test-split scenes), every item has its true scene graph, so each generated
graph is scored (object / attribute / relation precision and recall), the ``ccot_gold`` control answers
with the true graph in the context (how well the answer step reads a perfect graph), and each generated
graph is also *read by rule* (:func:`~headvec.methods.ccot.answer_from_graph`): the accuracy a perfect
answer step would reach from the model's own graph. Together they say whether a difference comes from
the graph or from the step that reads it.

Records are appended to ``records.jsonl`` chunk by chunk, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from headvec._optional import require
from headvec.errors import DataError, HeadvecError
from headvec.methods.ccot import (
    GRAPH_METHODS,
    CompositionalCoT,
    EndpointGenerator,
    VQAItem,
    check_items,
    is_correct,
)
from headvec.stats import bootstrap_ci
from headvec.toyworld.graphs import KINDS, answer_from_graph, graph_quality

GROUPS = ("attribute", "counting", "existence", "relation")
METHOD_LABELS = {
    "direct": "direct answer",
    "cot": "zero-shot CoT",
    "ccot": "CCoT",
    "ccot_answer": "CCoT, answer-conditioned",
    "ccot_gold": "CCoT step 2 with the true graph (control)",
}


def endpoint_generator(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 3,
    concurrency: int = 8,
) -> EndpointGenerator:
    """CCoT over an OpenAI-compatible endpoint, through :class:`~headvec.rewards.judges.OpenAIJudge`'s
    client (one user message per call, the image with it; temperature 0)."""
    from headvec.rewards.judges import OpenAIJudge, PairwiseTemplate

    plain = PairwiseTemplate("ccot", build=lambda prompt, a, b: prompt, parse=lambda output: None)
    client = OpenAIJudge(
        base_url,
        model,
        plain,
        api_key=api_key,
        timeout=timeout,
        max_retries=max_retries,
        concurrency=concurrency,
        temperature=0.0,
        top_p=1.0,
    )
    return EndpointGenerator(client)


def toy_items(n: int, seed: int = 0, image_size: int | None = None) -> tuple[list[VQAItem], list[Any]]:
    """``n`` held-out toy-world questions (the nine types balanced) as items, with their Questions."""
    from headvec.toyworld.evaluate import VQA_GROUPS
    from headvec.toyworld.scenes import render
    from headvec.toyworld.tasks import QTYPES, ask_many, scene_graph

    if image_size is None:
        from headvec.toyworld.model import IMAGE_SIZE

        image_size = IMAGE_SIZE
    questions = ask_many(random.Random(seed), n, QTYPES, split="test")
    items = [
        VQAItem(
            question=q.question,
            image=render(q.scene, image_size),
            answer=q.answer,
            qtype=q.qtype,
            graph_truth=scene_graph(q.scene),
            meta={"group": VQA_GROUPS[q.qtype]},
        )
        for q in questions
    ]
    return items, questions


def _group(item: VQAItem) -> str:
    return item.meta.get("group") or item.qtype or "all"


def run_methods(
    ccot: CompositionalCoT,
    items: Sequence[VQAItem],
    methods: Sequence[str],
    out_dir: Path,
    *,
    questions: Sequence[Any] | None = None,
    config: dict[str, Any] | None = None,
    chunk_size: int = 50,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every method on every item, appending records to ``out_dir/records.jsonl`` per chunk.

    A rerun with the same ``config`` skips what is on disk; a different config is refused (one line)
    rather than mixing two runs' records.
    """
    check_items(items)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path, records_path = out_dir / "config.json", out_dir / "records.jsonl"
    config = dict(config or {})
    if config_path.is_file() and records_path.is_file():
        stored = json.loads(config_path.read_text())
        if stored != config:
            changed = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            raise HeadvecError(
                f"{out_dir} holds a CCoT run with other settings ({', '.join(changed)}); "
                "use another --work directory or delete it"
            )
    config_path.write_text(json.dumps(config, indent=1))
    records = _read_records(records_path)
    done = {(r["method"], r["index"]) for r in records}
    plan = [
        (method, start)
        for method in methods
        for start in range(0, len(items), chunk_size)
        if any((method, i) not in done for i in range(start, min(start + chunk_size, len(items))))
    ]
    with records_path.open("a") as handle:
        for method, start in tqdm(plan, desc="ccot", disable=not progress):
            indices = [
                i for i in range(start, min(start + chunk_size, len(items))) if (method, i) not in done
            ]
            outputs = ccot.run([items[i] for i in indices], method)
            for i, output in zip(indices, outputs, strict=True):
                record = _record(i, items[i], output, questions[i] if questions is not None else None)
                handle.write(json.dumps(record) + "\n")
                records.append(record)
            handle.flush()
    wanted = set(methods)
    return sorted((r for r in records if r["method"] in wanted), key=lambda r: (r["method"], r["index"]))


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(
                f"{path} line {number} is not valid JSON (a run killed mid-write?); "
                "delete that line and rerun"
            ) from None
    return records


def _record(index: int, item: VQAItem, output: Any, question: Any | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "method": output.method,
        "index": index,
        "qtype": item.qtype,
        "group": _group(item),
        "question": item.question,
        "gold": item.answer,
        "output": output.output,
        "prediction": output.prediction,
        "correct": is_correct(output.prediction, item),
    }
    if output.first_answer is not None:
        record["first_answer"] = output.first_answer
    if output.graph is not None:
        record["graph"] = output.graph
        record["graph_valid"] = output.graph_valid
        if item.graph_truth is not None:
            score = graph_quality(output.graph, item.graph_truth)
            record["graph_score"] = {"tp": score.tp, "predicted": score.predicted, "gold": score.gold}
        if question is not None:
            read = answer_from_graph(question, output.graph)
            record["graph_answer"] = read
            record["graph_answer_correct"] = read is not None and read == item.answer
    return record


def _ci(values: Sequence[float]) -> dict[str, float]:
    mean, low, high = bootstrap_ci(list(values))
    return {"mean": round(mean, 4), "low": round(low, 4), "high": round(high, 4), "n": len(values)}


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per method and group; graph validity, quality and rule-read accuracy per graph method
    (all with 95% bootstrap intervals over items)."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_method[record["method"]].append(record)
    groups = sorted({r["group"] for r in records}, key=lambda g: (GROUPS.index(g) if g in GROUPS else 99, g))
    summary: dict[str, Any] = {"groups": groups, "accuracy": {}, "graphs": {}}
    order = [*METHOD_LABELS, *sorted(set(by_method) - set(METHOD_LABELS))]
    for method in [m for m in order if m in by_method]:
        rows = by_method[method]
        per_group = {g: _ci([float(r["correct"]) for r in rows if r["group"] == g]) for g in groups}
        per_group["all"] = _ci([float(r["correct"]) for r in rows])
        summary["accuracy"][method] = per_group
        if "graph" not in rows[0]:
            continue
        graphs: dict[str, Any] = {}
        if method in GRAPH_METHODS:
            graphs["valid_json"] = _ci([float(r["graph_valid"]) for r in rows])
        for scope in [*groups, "all"]:
            scoped = [r for r in rows if scope == "all" or r["group"] == scope]
            quality: dict[str, Any] = {}
            for kind in KINDS:
                scores = [r["graph_score"] for r in scoped if "graph_score" in r]
                precision = [s["tp"][kind] / s["predicted"][kind] for s in scores if s["predicted"][kind]]
                recall = [s["tp"][kind] / s["gold"][kind] for s in scores if s["gold"][kind]]
                if scores:
                    quality[kind] = {"precision": _ci(precision), "recall": _ci(recall)}
            if any("graph_answer_correct" in r for r in scoped):
                quality["read_by_rule"] = _ci([float(r["graph_answer_correct"]) for r in scoped])
            graphs[scope] = quality
        summary["graphs"][method] = graphs
    return summary


def plot_accuracy(summary: dict[str, Any], path: Path) -> Path:
    """Grouped bars: accuracy per question group (and all), one bar per method, 95% CI whiskers."""
    matplotlib = require("matplotlib", feature="CCoT plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scopes = [*summary["groups"], "all"]
    series = [(METHOD_LABELS.get(m, m), summary["accuracy"][m]) for m in summary["accuracy"]]
    ccot_graphs = summary["graphs"].get("ccot", {})
    if all("read_by_rule" in ccot_graphs.get(s, {}) for s in scopes):  # what the graphs themselves say
        read = {s: ccot_graphs[s]["read_by_rule"] for s in scopes}
        series.append(("CCoT graphs read by rule (no model in step 2)", read))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(scopes), 4.4))
    x = np.arange(len(scopes))
    for k, (label, per_scope) in enumerate(series):
        cells = [per_scope[s] for s in scopes]
        means = np.array([c["mean"] for c in cells])
        errors = np.array([[c["mean"] - c["low"] for c in cells], [c["high"] - c["mean"] for c in cells]])
        ax.bar(
            x + (k - (len(series) - 1) / 2) * width,
            means,
            width,
            yerr=errors,
            capsize=2,
            label=label,
            hatch="//" if "by rule" in label else None,
        )
    ax.set_xticks(x, scopes)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% CI)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cell(c: dict[str, float] | None) -> str:
    if not c or c["n"] == 0:
        return "–"
    return f"{c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"


def results_markdown(summary: dict[str, Any], plot_name: str | None = None) -> str:
    """The tables: accuracy per method and group; per graph method, validity, quality and reading."""
    scopes = [*summary["groups"], "all"]
    lines = ["| method | " + " | ".join(scopes) + " |", "|---" * (len(scopes) + 1) + "|"]
    for method, cells in summary["accuracy"].items():
        lines.append(
            f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(_cell(cells[s]) for s in scopes) + " |"
        )
    n = next(iter(summary["accuracy"].values()))["all"]["n"]
    lines += ["", f"Accuracy (exact match of the parsed answer), mean [95% bootstrap CI], {n} items."]
    if plot_name:
        lines += ["", f"![accuracy per question type]({plot_name})"]
    for method, graphs in summary["graphs"].items():
        lines += ["", f"**Scene graphs of {METHOD_LABELS.get(method, method)}**"]
        if "valid_json" in graphs:
            lines += ["", f"Valid JSON: {_cell(graphs['valid_json'])} (invalid graphs are kept as text)."]
        header = ["scope"] + [f"{kind} {m}" for kind in KINDS for m in ("P", "R")]
        has_rule = any("read_by_rule" in graphs.get(s, {}) for s in scopes)
        header += ["read by rule"] if has_rule else []
        lines += ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for scope in scopes:
            quality = graphs.get(scope, {})
            row = [scope] + [
                _cell(quality.get(kind, {}).get(m)) for kind in KINDS for m in ("precision", "recall")
            ]
            row += [_cell(quality.get("read_by_rule"))] if has_rule else []
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


RESULTS_START = "<!-- ccot results: written by `headvec ccot eval`, do not edit by hand -->"
RESULTS_END = "<!-- end of ccot results -->"


def write_report(
    summary: dict[str, Any], out_dir: Path, report: Path, *, command: str, setup: dict[str, Any]
) -> Path:
    """``out_dir/results.json`` + ``out_dir/accuracy.png`` and the results block of ``report``.

    Only the block between the two markers is replaced, so the page's hand-written guide stays; a page
    without the markers gets the block appended (a new page is just the block).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"setup": setup, **summary}, indent=1))
    plot = plot_accuracy(summary, out_dir / "accuracy.png")
    try:
        plot_name = plot.resolve().relative_to(report.resolve().parent).as_posix()
    except ValueError:
        plot_name = plot.resolve().as_posix()
    setup_line = ", ".join(f"{k} `{v}`" for k, v in setup.items())
    block = "\n".join(
        [
            RESULTS_START,
            "",
            "```bash",
            command,
            "```",
            "",
            f"Setup: {setup_line}.",
            "",
            results_markdown(summary, plot_name),
            RESULTS_END,
        ]
    )
    text = report.read_text() if report.is_file() else ""
    if RESULTS_START in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_START, 1)
        text = head + block + rest.split(RESULTS_END, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "# CCoT results\n\n") + block + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    return report
