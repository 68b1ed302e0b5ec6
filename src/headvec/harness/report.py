"""Markdown and HTML reports of a run folder: per-category bars with 95% CIs, the official numbers beside
the strict ones, unparsed counts, accuracy by k, and position-bias statistics."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from headvec.errors import HeadvecError
from headvec.harness.metrics import benchmark_metrics
from headvec.rewards.runner import MANIFEST_NAME, RESULTS_NAME, ResultsFile, read_manifest


def load_run(out: str | Path) -> tuple[dict[str, Any], list[dict]]:
    """The manifest and the finished records of a run folder."""
    out = Path(out)
    if not (out / MANIFEST_NAME).is_file():
        raise HeadvecError(
            f"{out} is not a benchmark run (no {MANIFEST_NAME}); run: headvec bench run ... --out {out}"
        )
    manifest = read_manifest(out / MANIFEST_NAME)
    records = list(ResultsFile(out / RESULTS_NAME).load().values())
    if not records:
        raise HeadvecError(
            f"{out} has no finished items yet; run or resume: headvec bench run ... --out {out}"
        )
    return manifest, records


OFFICIAL_RULE_TEXT = {
    "drop": "VL-RewardBench's cal.py, which leaves those items out",
    "half": "RewardBench's rule, which credits each of those items 0.5",
    "coin": "Multimodal RewardBench's rule, a coin flip (seeded per item) for each of those items",
}


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def bar_chart_png(metrics: dict[str, Any]) -> bytes:
    """Per-category accuracy bars with 95% CI whiskers, plus overall and macro."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = metrics["categories"]
    names = [*cats, "overall", "macro"]
    values = [cats[c]["accuracy"] for c in cats] + [metrics["overall_accuracy"], metrics["macro_accuracy"]]
    cis = [cats[c]["ci95"] for c in cats] + [metrics["overall_ci95"], metrics["macro_ci95"]]
    lower = [max(0.0, v - ci[0]) for v, ci in zip(values, cis, strict=True)]
    upper = [max(0.0, ci[1] - v) for v, ci in zip(values, cis, strict=True)]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.2), dpi=100)
    colors = ["#4C72B0"] * len(cats) + ["#55A868", "#C44E52"]
    ax.bar(
        names,
        [100 * v for v in values],
        yerr=[[100 * x for x in lower], [100 * x for x in upper]],
        color=colors,
        capsize=4,
    )
    ax.axhline(50, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy % (95% CI)")
    ax.set_title(f"{metrics['benchmark']}: n={metrics['n']}, k={metrics['k']}")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def markdown_report(manifest: dict[str, Any], metrics: dict[str, Any]) -> str:
    lines = [
        f"# {manifest['benchmark']} with `{manifest['rm']}`",
        "",
        f"n = {metrics['n']} items, k = {metrics['k']} samples per item, seed = {manifest['seed']}, "
        f"judge options = `{json.dumps(manifest.get('options', {}))}`",
        "",
        "Accuracy counts every item (unparseable judgements, ties and split votes are wrong); "
        f"`official` follows {OFFICIAL_RULE_TEXT[metrics.get('official_rule', 'drop')]}.",
        "",
        "| category | n | accuracy % | 95% CI | official % | agree | reject | unparsed | other |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in metrics["categories"].items():
        lines.append(
            f"| {name} | {c['n']} | {_pct(c['accuracy'])} | {_ci(c['ci95'])} "
            f"| {_pct(c['official_accuracy'])} "
            f"| {c['agree']} | {c['reject']} | {c['unparsed']} | {c['other']} |"
        )
    lines += [
        f"| **overall** | {metrics['n']} | **{_pct(metrics['overall_accuracy'])}** "
        f"| {_ci(metrics['overall_ci95'])} | {_pct(metrics['official_overall_accuracy'])} | | "
        f"| {metrics['unparsed_items']} | {metrics['other_items']} |",
        f"| **macro** | | **{_pct(metrics['macro_accuracy'])}** | {_ci(metrics['macro_ci95'])} "
        f"| {_pct(metrics['official_macro_accuracy'])} | | | | |",
        "",
    ]
    if "rewardbench" in metrics:
        rb = metrics["rewardbench"]
        lines += [
            f"RewardBench score: **{_pct(rb['score'])}** {_ci(rb['score_ci95'])} (strict, unparsed "
            f"wrong: {_pct(rb.get('strict_score'))}); sections: "
            + ", ".join(f"{k} {_pct(v)}" for k, v in rb["sections"].items()),
            "",
        ]
    if len(metrics["by_k"]) > 1:
        lines += [
            "| k | overall % | macro % | official overall % | unparsed items |",
            "|---|---|---|---|---|",
        ]
        for k, m in metrics["by_k"].items():
            lines.append(
                f"| {k} | {_pct(m['overall_accuracy'])} | {_pct(m['macro_accuracy'])} "
                f"| {_pct(m['official_overall_accuracy'])} | {m['unparsed_items']} |"
            )
        lines.append("")
    pb = metrics["position_bias"]
    lines += [
        "Position bias (all samples): "
        f"first-shown response picked {_pct(pb['first_pick_rate'])}% {_ci(pb['first_pick_rate_ci95'])} "
        f"of {pb['parsed_ab']} parsed verdicts; accuracy when the preferred response is shown first "
        f"{_pct(pb['accuracy_preferred_first'])}% vs second {_pct(pb['accuracy_preferred_second'])}%; "
        f"verdict flips with the order on {_pct(pb['flip_rate'])}% of {pb['flip_rate_n']} items "
        "judged both ways.",
        "",
        f"Unparseable samples: {metrics['unparsed_samples']}; tied samples: {metrics['tie_samples']}.",
        "",
    ]
    return "\n".join(lines)


def markdown_to_html(markdown: str) -> str:
    """Just enough markdown (headings, pipe tables, paragraphs) for this report, escaped."""
    parts: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *body = [r for r in table if not set("".join(r)) <= set("-")]
            parts.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
                + "</table>"
            )
            table.clear()

    for line in markdown.splitlines():
        text = html.escape(line).replace("**", "")
        if line.startswith("|"):
            table.append([cell.strip() for cell in text.strip("|").split("|")])
            continue
        flush()
        if line.startswith("# "):
            parts.append(f"<h1>{text[2:]}</h1>")
        elif line.strip():
            parts.append(f"<p>{text}</p>")
    flush()
    return "\n".join(parts)


def write_report(out: str | Path, seed: int = 0) -> dict[str, Any]:
    """Compute the metrics of a run folder and write metrics.json, report.md, report.html, categories.png."""
    out = Path(out)
    manifest, records = load_run(out)
    metrics = benchmark_metrics(manifest["benchmark"], records, seed=seed)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    markdown = markdown_report(manifest, metrics)
    (out / "report.md").write_text(markdown + "\n![per-category accuracy](categories.png)\n")
    png = bar_chart_png(metrics)
    (out / "categories.png").write_bytes(png)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>headvec bench report</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>"
        f"{markdown_to_html(markdown)}"
        f"<img alt='per-category accuracy' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        "</body></html>\n"
    )
    (out / "report.html").write_text(page)
    return metrics
