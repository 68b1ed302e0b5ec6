"""Resumable attack and evaluation runs, and their metrics (keyword ASR@k, ReGap, perplexity, AUROC).

A run directory holds ``run.json`` (settings and the models' identities: a rerun with other settings is
refused) and one JSONL per stage, appended and flushed one instruction at a time, so a run killed with
``kill -9`` loses at most the instruction it was working on; rerunning the same command resumes.

- ``suffixes.jsonl``: per instruction, the kept suffixes (best first);
- ``eval.jsonl``: per (instruction, suffix): the policy's greedy response, jailbroken (no refusal
  keyword in it), answered (the harmful target is in it), ReGap, and the suffix's perplexity under the
  prompter. Rank ``-1`` is the bare instruction (ReGap before).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headvec.errors import DataError, HeadvecError
from headvec.stats import bootstrap_ci

RUN_FILE = "run.json"
SUFFIXES_FILE = "suffixes.jsonl"
EVAL_FILE = "eval.jsonl"


# ---------------------------------------------------------------------------------------------- files


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete rows of a JSONL file; a torn last line (a killed writer) is dropped, damage elsewhere
    is a one-line error naming the line."""
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number >= len(lines) - 1:  # the last line, cut by a kill: drop it, it is redone
                break
            raise DataError(f"{path}:{number}: not valid JSON; delete the file to start over") from None
    return rows


def repair_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read ``path`` and rewrite it without a torn last line, so appends start on a clean line."""
    rows = read_jsonl(path)
    if path.is_file():
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def check_run(out_dir: Path, record: dict[str, Any]) -> None:
    """Write ``run.json``, or check that the existing one records the same run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(record)):
            changed = sorted(
                k for k in set(old) | set(record) if old.get(k) != json.loads(json.dumps(record.get(k)))
            )
            raise HeadvecError(
                f"{out_dir} holds a run with other settings ({', '.join(changed)} differ); use another "
                "--out or delete it"
            )
        return
    path.write_text(json.dumps(record, indent=1))


def run_items(
    items: Sequence[Any],
    path: Path,
    work: Callable[[Any], dict[str, Any] | list[dict[str, Any]]],
    *,
    key: Callable[[dict[str, Any]], str] = lambda row: row["id"],
    item_key: Callable[[Any], str] = lambda item: item.id,
    progress: bool = True,
    desc: str = "",
) -> list[dict[str, Any]]:
    """Apply ``work`` to each item not done yet in ``path`` (resuming), appending its rows as they come."""
    from tqdm.auto import tqdm

    done_rows = repair_jsonl(path)
    done = {key(r) for r in done_rows}
    todo = [it for it in items if item_key(it) not in done]
    for item in tqdm(todo, desc=desc, disable=not progress):
        rows = work(item)
        for row in rows if isinstance(rows, list) else [rows]:
            append_jsonl(path, row)
            done_rows.append(row)
    wanted = {item_key(it) for it in items}
    return [r for r in done_rows if key(r) in wanted]


# ---------------------------------------------------------------------------------------------- metrics


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney); NaN without both classes."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def auroc_ci(
    scores: Sequence[float],
    labels: Sequence[bool],
    groups: Sequence[str],
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """AUROC and a 95 % percentile bootstrap interval resampling groups (instructions), since the
    suffixes of one instruction are not independent. Resamples that lack a class are skipped."""
    s, y, g = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool), np.asarray(groups)
    point = auroc(s, y)
    names = sorted(set(g.tolist()))
    index = {name: np.flatnonzero(g == name) for name in names}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        pick = np.concatenate([index[names[i]] for i in rng.integers(0, len(names), len(names))])
        value = auroc(s[pick], y[pick])
        if not np.isnan(value):
            values.append(value)
    if not values:
        return point, float("nan"), float("nan")
    low, high = np.quantile(values, [0.025, 0.975])
    return point, float(low), float(high)


def ci(values: Iterable[float]) -> dict[str, float]:
    mean, low, high = bootstrap_ci(list(values))
    return {"mean": mean, "low": low, "high": high}


def summarize(eval_rows: Sequence[dict[str, Any]], ks: Sequence[int] = (1, 10)) -> dict[str, Any]:
    """Per-instruction metrics of one method's evaluated suffixes, with bootstrap CIs over instructions:
    ASR@k (some of the first k suffixes jailbreaks), answered@k (gives the harmful target), ReGap
    before (bare instruction) and after (the first suffix), perplexity of the first suffix."""
    by_id: dict[str, dict[int, dict[str, Any]]] = {}
    for row in eval_rows:
        by_id.setdefault(row["id"], {})[row["rank"]] = row
    ids = sorted(by_id)
    if not ids:
        raise DataError("no evaluated suffixes to summarize; run the evaluation first")
    out: dict[str, Any] = {"n_instructions": len(ids)}
    for k in ks:
        ranks = [[by_id[i][r] for r in sorted(by_id[i]) if 0 <= r < k] for i in ids]
        out[f"asr@{k}"] = ci(float(any(r["jailbroken"] for r in rows)) for rows in ranks)
        out[f"answered@{k}"] = ci(float(any(r["answered"] for r in rows)) for rows in ranks)
    bare = [by_id[i].get(-1) for i in ids]
    out["refusal_rate_bare"] = ci(float(not r["jailbroken"]) for r in bare if r is not None)
    out["regap_before"] = ci(r["regap"] for r in bare if r is not None)
    first = [by_id[i].get(0) for i in ids]
    out["regap_after"] = ci(r["regap"] for r in first if r is not None)
    out["perplexity"] = ci(r["perplexity"] for r in first if r is not None)
    suffixed = [r for r in eval_rows if r["rank"] >= 0]
    if suffixed:
        # ReGap of a suffixed prompt as a detector of success: low gap -> jailbroken
        out["regap_auroc"] = dict(
            zip(
                ("mean", "low", "high"),
                auroc_ci(
                    [-r["regap"] for r in suffixed],
                    [r["jailbroken"] for r in suffixed],
                    [r["id"] for r in suffixed],
                ),
                strict=True,
            )
        )
    return out
