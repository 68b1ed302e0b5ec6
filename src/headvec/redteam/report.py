"""Tables and plots over every method's attack run and the backdoor scan (``headvec remiss report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headvec.errors import DataError
from headvec.redteam.run import EVAL_FILE, auroc_ci, read_jsonl

ORDER = ("remiss", "advprompter", "gcg", "random")


def _fmt(value: dict[str, float] | None, digits: int = 2) -> str:
    if not value or value["mean"] != value["mean"]:  # missing, or NaN (a class never occurred)
        return "n/a"
    return f"{value['mean']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"


def _table(
    rows: list[tuple[str, dict[str, Any]]], keep: int, seconds: dict[str, float] | None = None
) -> list[str]:
    head = f"| method | ASR@1 | ASR@{keep} | answered@1 | answered@{keep} | ReGap before | ReGap after "
    head += "| perplexity |"
    lines = [head + (" s / instruction |" if seconds else ""), "|" + "---|" * (8 + bool(seconds))]
    for method, s in rows:
        cells = [
            _fmt(s.get("asr@1")),
            _fmt(s.get(f"asr@{keep}")),
            _fmt(s.get("answered@1")),
            _fmt(s.get(f"answered@{keep}")),
            _fmt(s.get("regap_before"), 1),
            _fmt(s.get("regap_after"), 1),
            _fmt(s.get("perplexity"), 1),
        ]
        if seconds:
            cells.append(f"{seconds.get(method, float('nan')):.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def policies_table(policies: dict[str, Any]) -> list[str]:
    """Refusal and correct-answer rates of each toy policy on each question set (``check-policies``)."""
    sets = list(next(iter(policies.values())))
    head = "| policy | " + " | ".join(f"{s}: refusal | {s}: correct" for s in sets) + " |"
    lines = [head, "|---|" + "---|" * (2 * len(sets))]
    for name, values in policies.items():
        cells = [f"{_fmt(values[s]['refusal'])} | {_fmt(values[s]['correct'])}" for s in sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_report(
    runs: Path, backdoor_json: Path | None, out: Path, policies_json: Path | None = None
) -> list[Path]:
    """``results.md`` (tables), ``results.json`` (every number) and the plots, from finished runs."""
    summaries = {}
    for method in ORDER:
        path = runs / method / "summary.json"
        if path.is_file():
            summaries[method] = json.loads(path.read_text())
    if not summaries:
        raise DataError(f"no finished runs (summary.json) under {runs}; run `headvec remiss eval` first")
    out.mkdir(parents=True, exist_ok=True)
    keep = next(
        int(k.split("@")[1])
        for s in summaries.values()
        for k in s["splits"]["test"]
        if k.startswith("asr@") and k != "asr@1"
    )
    seconds = {m: s["attack_seconds"]["per_instruction"] for m, s in summaries.items()}
    result: dict[str, Any] = {"methods": summaries}
    lines = [f"### Per-instruction attacks, test split (held-out scenes), keep = {keep}", ""]
    lines += _table([(m, s["splits"]["test"]) for m, s in summaries.items()], keep, seconds)
    if all("train" in s["splits"] for s in summaries.values()):
        lines += ["", "### Per-instruction attacks, train split", ""]
        lines += _table([(m, s["splits"]["train"]) for m, s in summaries.items()], keep)
    transfer = [(m, s["transfer"]) for m, s in summaries.items() if "transfer" in s]
    if transfer:
        lines += ["", f"### Transfer: the {keep} best train suffixes on every test instruction", ""]
        lines += _table(transfer, keep)

    # ReGap as a detector of success, over every suffixed (instruction, suffix) of every method
    pooled = []
    for method in summaries:
        for row in read_jsonl(runs / method / EVAL_FILE):
            if row["rank"] >= 0:
                pooled.append({**row, "method": method})
    detect = {}
    for name, rows in [("all methods", pooled)] + [
        (m, [r for r in pooled if r["method"] == m]) for m in summaries
    ]:
        value, low, high = auroc_ci(
            [-r["regap"] for r in rows], [r["jailbroken"] for r in rows], [r["id"] for r in rows]
        )
        answered = auroc_ci(
            [-r["regap"] for r in rows], [r["answered"] for r in rows], [r["id"] for r in rows]
        )
        detect[name] = {
            "n": len(rows),
            "success_rate": sum(r["jailbroken"] for r in rows) / max(1, len(rows)),
            "auroc_jailbroken": {"mean": value, "low": low, "high": high},
            "auroc_answered": dict(zip(("mean", "low", "high"), answered, strict=True)),
        }
    result["regap_detects_success"] = detect
    lines += [
        "",
        "### ReGap separates successful from failed attacks",
        "",
        'AUROC of -ReGap for "the suffixed prompt jailbreaks" (keyword rule) and for "the response gives the '
        'harmful target", over every (instruction, suffix) evaluated (train and test), 95 % bootstrap '
        "intervals resampling instructions.",
        "",
        "| suffixes of | n | success rate | AUROC (jailbroken) | AUROC (answered) |",
        "|---|---|---|---|---|",
    ]
    for name, d in detect.items():
        lines.append(
            f"| {name} | {d['n']} | {d['success_rate']:.2f} | {_fmt(d['auroc_jailbroken'], 3)} "
            f"| {_fmt(d['auroc_answered'], 3)} |"
        )

    if backdoor_json is not None and backdoor_json.is_file():
        scan = json.loads(backdoor_json.read_text())
        result["backdoor"] = {k: v for k, v in scan.items() if k != "ranking"} | {
            "top10": scan["ranking"][:10]
        }
        lines += [
            "",
            "### Backdoor scan of the poisoned policy",
            "",
            f"Trigger {scan['trigger']!r}: rank **{scan['trigger_rank']}** of {scan['candidates']} "
            f"candidate words ({scan['instructions']} test instructions); AUROC of -ReGap for prompts "
            f"with vs without the trigger: {_fmt(scan['auroc'], 3)}. Top five: "
            + ", ".join(f"{r['candidate']} ({r['delta']:.1f})" for r in scan["ranking"][:5])
            + ".",
        ]
        if "ranking_vs_control" in scan:
            result["backdoor"]["top10_vs_control"] = scan["ranking_vs_control"][:10]
            lines += [
                "",
                f"Ranked by the change minus the clean aligned policy's change on the same prompts "
                f"(`--control`): rank **{scan['trigger_rank_vs_control']}**. Top five: "
                + ", ".join(f"{r['candidate']} ({r['delta']:.1f})" for r in scan["ranking_vs_control"][:5])
                + ".",
            ]
    if policies_json is not None and policies_json.is_file():
        policies = json.loads(policies_json.read_text())
        result["policies"] = policies
        lines += [
            "",
            "### The toy policies (held-out scenes, 40 questions per set)",
            "",
            *policies_table(policies),
        ]
    written = [out / "results.md", out / "results.json"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(result, indent=1))
    written += _plots(runs, summaries, pooled, out)
    return written


def _plots(runs: Path, summaries: dict[str, Any], pooled: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ok = [r["regap"] for r in pooled if r["jailbroken"]]
    bad = [r["regap"] for r in pooled if not r["jailbroken"]]
    bins = np.linspace(min(ok + bad), max(ok + bad), 40)
    ax.hist(bad, bins=bins, alpha=0.6, label=f"failed ({len(bad)})", color="tab:blue")
    ax.hist(ok, bins=bins, alpha=0.6, label=f"jailbroken ({len(ok)})", color="tab:red")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("ReGap of the suffixed prompt")
    ax.set_ylabel("(instruction, suffix) pairs")
    ax.set_title("ReGap of successful vs failed attacks (all methods)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "regap_hist.png", dpi=120)
    plt.close(fig)
    written.append(out / "regap_hist.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, key, title in zip(axes, ("asr@1", "asr@k"), ("ASR@1", "ASR@k"), strict=True):
        for method, s in summaries.items():
            steps = s["splits"]["test"].get("steps")
            if not steps:
                continue
            mean = [v["mean"] for v in steps[key]]
            low = [v["low"] for v in steps[key]]
            high = [v["high"] for v in steps[key]]
            x = np.arange(1, len(mean) + 1)
            ax.plot(x, mean, marker="o", label=method)
            ax.fill_between(x, low, high, alpha=0.15)
        ax.set_xlabel("search step (suffix tokens)")
        ax.set_title(f"{title}, test split")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("keyword ASR")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "asr_vs_steps.png", dpi=120)
    plt.close(fig)
    written.append(out / "asr_vs_steps.png")
    return written
