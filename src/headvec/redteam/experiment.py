"""An attack experiment end to end: items, the resumable attack, its evaluation, transfer and the summary.

Layout of a run directory ``OUT/METHOD``: ``run.json`` (settings, models), ``suffixes.jsonl`` (kept
suffixes per instruction, train and test), ``eval.jsonl`` (each suffix on its own instruction),
``transfer.jsonl`` (the best train suffixes on every test instruction), ``summary.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headvec.errors import DataError
from headvec.models import LoadedModel
from headvec.redteam.attack import AttackItem, AttackSettings, SuffixAttack, evaluate_item, prefix_curve
from headvec.redteam.run import (
    EVAL_FILE,
    SUFFIXES_FILE,
    check_run,
    read_jsonl,
    run_items,
    summarize,
)
from headvec.rewards.implicit import ImplicitRewardModel

TRANSFER_FILE = "transfer.jsonl"
SUMMARY_FILE = "summary.json"
TIMING_FILE = "timing.jsonl"
STEPS_FILE = "steps.jsonl"


def read_items(path: str | Path) -> dict[str, list[AttackItem]]:
    """Attack items from JSONL rows ``{id, instruct, target, harmless, image?, split?}`` (image: a path)."""
    from headvec.data import iter_jsonl

    out: dict[str, list[AttackItem]] = {}
    for number, row in iter_jsonl(path):
        missing = [k for k in ("id", "instruct", "target", "harmless") if not isinstance(row.get(k), str)]
        if missing:
            raise DataError(f"{path} line {number}: missing text field(s) {', '.join(missing)}")
        split = row.get("split") or "test"
        out.setdefault(split, []).append(
            AttackItem(row["id"], row["instruct"], row["target"], row["harmless"], row.get("image"), split)
        )
    if not out:
        raise DataError(f"{path} holds no rows")
    return out


def attack_items(
    attack: SuffixAttack,
    items: Sequence[AttackItem],
    out_dir: Path,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Find suffixes for every item not yet in ``suffixes.jsonl`` (resumes), timing each."""

    def work(item: AttackItem) -> dict[str, Any]:
        start = time.perf_counter()
        found = attack.attack(item)
        return {
            "id": item.id,
            "split": item.split,
            "method": attack.settings.method,
            "seconds": time.perf_counter() - start,
            "suffixes": found,
        }

    return run_items(items, out_dir / SUFFIXES_FILE, work, progress=progress, desc=attack.settings.method)


def run_record(
    reward: ImplicitRewardModel,
    prompter: LoadedModel,
    settings: AttackSettings,
    items: dict[str, list[AttackItem]],
) -> dict[str, Any]:
    return {
        "settings": settings.to_dict(),
        "reward": {"score": reward.score, "policy_weight": reward.policy_weight, "chat": reward.chat},
        "policy": reward.policy.name_or_path,
        "reference": reward.reference.name_or_path,
        "prompter": prompter.name_or_path,
        "items": {split: [it.id for it in group] for split, group in items.items()},
    }


def evaluate_run(
    attack: SuffixAttack,
    items: dict[str, list[AttackItem]],
    out_dir: Path,
    refusal_keywords: Sequence[str],
    *,
    max_new_tokens: int = 12,
    transfer_from: str = "train",
    transfer_to: str = "test",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every instruction's own suffixes, then the ``keep`` best ``transfer_from`` suffixes (the
    lowest ReGap on their own instruction among those that jailbroke it, then the rest) on every
    ``transfer_to`` instruction; write ``summary.json`` and return it."""
    import json

    found = {row["id"]: row for row in read_jsonl(out_dir / SUFFIXES_FILE)}
    every = [it for group in items.values() for it in group]
    missing = [it.id for it in every if it.id not in found]
    if missing:
        raise DataError(
            f"{len(missing)} instructions have no suffixes yet in {out_dir}; run the attack first"
        )

    def own(item: AttackItem) -> list[dict[str, Any]]:
        suffixes = [s["ids"] for s in found[item.id]["suffixes"]]
        return [
            {**row, "split": item.split}
            for row in evaluate_item(attack, item, suffixes, refusal_keywords, max_new_tokens=max_new_tokens)
        ]

    rows = run_items(every, out_dir / EVAL_FILE, own, progress=progress, desc="evaluate")
    curves: list[dict[str, Any]] = []
    if attack.settings.method != "gcg":  # a GCG suffix's prefixes are not its earlier steps

        def steps(item: AttackItem) -> dict[str, Any]:
            suffixes = [s["ids"] for s in found[item.id]["suffixes"]]
            curve = prefix_curve(attack, item, suffixes, refusal_keywords, max_new_tokens=max_new_tokens)
            return {"id": item.id, "split": item.split, "jailbroken": curve}

        curves = run_items(
            items.get(transfer_to, []), out_dir / STEPS_FILE, steps, progress=progress, desc="steps"
        )
    summary: dict[str, Any] = {"method": attack.settings.method, "splits": {}}
    for split, group in items.items():
        ids = {it.id for it in group}
        summary["splits"][split] = summarize(
            [r for r in rows if r["id"] in ids], ks=(1, attack.settings.keep)
        )
        if attack.settings.method != "gcg" and split == transfer_to:  # the curve: held-out split only
            summary["splits"][split]["steps"] = steps_summary([c for c in curves if c["id"] in ids])
    seconds = [found[it.id]["seconds"] for it in every]
    summary["attack_seconds"] = {"total": sum(seconds), "per_instruction": sum(seconds) / len(seconds)}
    if transfer_from in items and transfer_to in items:
        source_ids = {it.id for it in items[transfer_from]}
        candidates = [r for r in rows if r["id"] in source_ids and r["rank"] >= 0]
        candidates.sort(key=lambda r: (not r["jailbroken"], r["regap"]))
        universal: list[str] = []
        for row in candidates:
            if row["suffix"] not in universal:
                universal.append(row["suffix"])
            if len(universal) == attack.settings.keep:
                break

        def transfer(item: AttackItem) -> list[dict[str, Any]]:
            ids = [attack.encode(s) for s in universal]
            return [
                {**row, "split": item.split}
                for row in evaluate_item(attack, item, ids, refusal_keywords, max_new_tokens=max_new_tokens)
            ]

        moved = run_items(
            items[transfer_to], out_dir / TRANSFER_FILE, transfer, progress=progress, desc="transfer"
        )
        summary["transfer"] = {"from": transfer_from, "to": transfer_to, "suffixes": universal}
        summary["transfer"] |= summarize(moved, ks=(1, attack.settings.keep))
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return summary


def steps_summary(curves: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """ASR@1 and ASR@k after each search step (suffix prefix length), with bootstrap CIs."""
    from headvec.redteam.run import ci

    length = min(len(row) for c in curves for row in c["jailbroken"])
    at1 = [ci(float(c["jailbroken"][0][t]) for c in curves) for t in range(length)]
    atk = [ci(float(any(row[t] for row in c["jailbroken"])) for c in curves) for t in range(length)]
    return {"asr@1": at1, "asr@k": atk}


def prepare(
    out_dir: Path,
    reward: ImplicitRewardModel,
    prompter: LoadedModel,
    settings: AttackSettings,
    items: dict[str, list[AttackItem]],
) -> SuffixAttack:
    """The attack for a run directory, after checking it holds this run (or nothing yet)."""
    check_run(out_dir, run_record(reward, prompter, settings, items))
    return SuffixAttack(reward, prompter, settings)
