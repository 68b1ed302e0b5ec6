"""Benchmark scores from per-item results: the official formulas, plus what they leave out.

Per-sample outcome (:func:`headvec.rewards.runner.sample_outcome`, original frame): ``agree`` (picked
the human-preferred response), ``reject``,
``tie`` or ``unparsed``. Items are decided by majority over their first k samples as in VL-RewardBench's
``cal.py``: agree / reject / unparsed when more than half say so, else ``other``.

Headline (strict) accuracies count every item, so unparseable judgements (and ties, and split votes) are
scored as wrong. The ``official_*`` numbers beside them apply each benchmark's own rule to the items that
are neither agree nor reject (:data:`OFFICIAL_UNPARSED_RULE`): RewardBench credits them 0.5
(``run_generative.py``), Multimodal RewardBench flips a coin (``2_get_accuracy.py``; here seeded per item,
so reruns agree), VL-RewardBench leaves them out of the denominator (``cal.py``, which also reads any
``Answer N`` other than the rejected one as agreement). Overall accuracy is weighted by category size;
macro is the mean over categories. RewardBench uses its own weighting (per-subset accuracy, sections
weighted by the official example counts, Prior Sets the unweighted mean of its four subsets, score = the
mean of the sections with Prior Sets at half weight). 95% CIs are seeded percentile
bootstraps over items (stratified by category for overall and macro).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from headvec.harness.prompts import vlrb_answer_number
from headvec.harness.schema import (
    REWARDBENCH_EXAMPLE_COUNTS,
    REWARDBENCH_PRIOR_SECTION,
    REWARDBENCH_PRIOR_SUBSETS,
    REWARDBENCH_SECTIONS,
)
from headvec.stats import bootstrap_ci

K_VALUES = (1, 3, 5, 7, 9)
N_RESAMPLES = 2000


def item_decision(outcomes: Sequence[str]) -> str:
    """Majority vote over samples, as cal.py: agree / reject / unparsed if > half, else other."""
    counts = Counter(outcomes)
    half = len(outcomes) / 2
    for label in ("agree", "reject", "unparsed"):
        if counts[label] > half:
            return label
    return "other"


def decisions(records: Sequence[dict], k: int | None = None) -> list[str]:
    """Each record's decision over its first ``k`` samples (all when None)."""
    return [item_decision([s["outcome"] for s in r["samples"][:k]]) for r in records]


# What each benchmark's official scorer does with an item that is neither agree nor reject.
OFFICIAL_UNPARSED_RULE = {"rewardbench": "half", "multimodal-rewardbench": "coin", "vlrewardbench": "drop"}


def official_sample_outcome(benchmark: str, sample: dict) -> str:
    """A sample's outcome as the official scorer reads it: VL-RewardBench's ``cal.py`` counts any
    ``Answer N`` that is not the rejected answer (``Answer 3`` included) as agreement."""
    outcome = sample["outcome"]
    raw = sample.get("raw")
    if benchmark == "vlrewardbench" and outcome == "unparsed" and raw and vlrb_answer_number(raw) is not None:
        return "agree"
    return outcome


def official_credit(benchmark: str, decision: str, uid: str, seed: int = 0) -> float | None:
    """An item's credit under its benchmark's official rule; None = left out of the denominator."""
    if decision == "agree":
        return 1.0
    if decision == "reject":
        return 0.0
    rule = OFFICIAL_UNPARSED_RULE.get(benchmark, "drop")
    if rule == "half":
        return 0.5
    if rule == "coin":  # string-seeded per item, so the number does not depend on item order
        return 1.0 if random.Random(f"headvec-coin/{seed}/{uid}").random() < 0.5 else 0.0
    return None


def official_credits(
    benchmark: str, records: Sequence[dict], k: int | None = None, seed: int = 0
) -> list[float | None]:
    """Each record's official credit over its first ``k`` samples."""
    return [
        official_credit(
            benchmark,
            item_decision([official_sample_outcome(benchmark, s) for s in r["samples"][:k]]),
            r["uid"],
            seed,
        )
        for r in records
    ]


def _mean_of_known(values: Sequence[float | None]) -> float:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else float("nan")


def _by_category(records: Sequence[dict], key: str = "category") -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[record[key]].append(index)
    return dict(sorted(groups.items()))


def _stratified_ci(
    correct: np.ndarray,
    groups: dict[str, list[int]],
    statistic: Callable[[dict[str, float]], float],
    seed: int,
) -> tuple[float, float]:
    """Percentile CI of ``statistic(per-group accuracy)`` resampling items within each group."""
    rng = np.random.default_rng(seed)
    values = np.empty(N_RESAMPLES)
    arrays = {name: correct[idx] for name, idx in groups.items()}
    draws = {name: rng.integers(0, len(a), size=(N_RESAMPLES, len(a))) for name, a in arrays.items()}
    for i in range(N_RESAMPLES):
        values[i] = statistic({name: float(a[draws[name][i]].mean()) for name, a in arrays.items()})
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def _ci(values: np.ndarray, seed: int) -> list[float]:
    _, low, high = bootstrap_ci(values, n_resamples=N_RESAMPLES, seed=seed)
    return [low, high]


def pairwise_metrics(
    records: Sequence[dict], k: int | None = None, seed: int = 0, benchmark: str = "vlrewardbench"
) -> dict[str, Any]:
    """VL-RewardBench style scores (every benchmark's per-category view), the official column by
    ``benchmark``'s own rule for unparsed items."""
    decided = decisions(records, k)
    credits = official_credits(benchmark, records, k, seed)
    correct = np.array([d == "agree" for d in decided], dtype=float)
    groups = _by_category(records)
    categories: dict[str, dict[str, Any]] = {}
    for name, idx in groups.items():
        counts = Counter(decided[i] for i in idx)
        agree, reject = counts["agree"], counts["reject"]
        categories[name] = {
            "n": len(idx),
            "agree": agree,
            "reject": reject,
            "unparsed": counts["unparsed"],
            "other": counts["other"],
            "accuracy": agree / len(idx),
            "ci95": _ci(correct[idx], seed),
            "official_accuracy": _mean_of_known([credits[i] for i in idx]),
        }
    total_agree = sum(c["agree"] for c in categories.values())
    accs = [c["accuracy"] for c in categories.values()]
    official = [c["official_accuracy"] for c in categories.values()]
    return {
        "n": len(records),
        "k": k if k is not None else max((len(r["samples"]) for r in records), default=0),
        "overall_accuracy": total_agree / len(records) if records else float("nan"),
        "overall_ci95": list(_stratified_ci(correct, groups, _weighted(groups), seed)),
        "macro_accuracy": float(np.mean(accs)) if accs else float("nan"),
        "macro_ci95": list(
            _stratified_ci(correct, groups, lambda acc: float(np.mean(list(acc.values()))), seed)
        ),
        "official_rule": OFFICIAL_UNPARSED_RULE.get(benchmark, "drop"),
        "official_overall_accuracy": _mean_of_known(credits),
        "official_macro_accuracy": _mean_of_known([v for v in official if v == v]),
        "unparsed_items": sum(c["unparsed"] for c in categories.values()),
        "other_items": sum(c["other"] for c in categories.values()),
        "categories": categories,
    }


def _weighted(groups: dict[str, list[int]]) -> Callable[[dict[str, float]], float]:
    sizes = {name: len(idx) for name, idx in groups.items()}
    total = sum(sizes.values())
    return lambda acc: sum(acc[name] * sizes[name] for name in acc) / total


def rewardbench_scores(records: Sequence[dict], k: int | None = None, seed: int = 0) -> dict[str, Any]:
    """RewardBench's score: per-subset accuracy, sections weighted by the official example counts,
    score = mean of the sections present. ``score`` credits unparsed items 0.5 as the official
    ``run_generative.py`` does; ``strict_score`` counts them wrong."""
    decided = decisions(records, k)
    strict = np.array([d == "agree" for d in decided], dtype=float)
    correct = np.array(official_credits("rewardbench", records, k, seed), dtype=float)
    subsets = _by_category(records, key="subset")

    def sections_of(acc: dict[str, float]) -> dict[str, float]:
        out = {}
        for section, names in REWARDBENCH_SECTIONS.items():
            present = [s for s in names if s in acc]
            if present:
                weights = [REWARDBENCH_EXAMPLE_COUNTS[s] for s in present]
                out[section] = sum(acc[s] * w for s, w in zip(present, weights, strict=True)) / sum(weights)
        prior = [acc[s] for s in REWARDBENCH_PRIOR_SUBSETS if s in acc]
        if prior:  # unweighted over the subsets: their sizes differ by orders of magnitude
            out[REWARDBENCH_PRIOR_SECTION] = float(np.mean(prior))
        return out

    subset_acc = {name: float(correct[idx].mean()) for name, idx in subsets.items()}
    sections = sections_of(subset_acc)

    def score_of(acc: dict[str, float]) -> float:
        sections = sections_of(acc)
        if not sections:  # no RewardBench subset present
            return float("nan")
        weights = [1.0 if name == REWARDBENCH_PRIOR_SECTION else 2.0 for name in sections]
        return float(np.average(list(sections.values()), weights=weights))

    strict_acc = {name: float(strict[idx].mean()) for name, idx in subsets.items()}
    return {
        "score": score_of(subset_acc),
        "score_ci95": list(_stratified_ci(correct, subsets, score_of, seed)),
        "strict_score": score_of(strict_acc),
        "sections": sections,
        "subsets": {name: {"n": len(idx), "accuracy": subset_acc[name]} for name, idx in subsets.items()},
    }


def position_bias(records: Sequence[dict], seed: int = 0) -> dict[str, Any]:
    """How much the display order matters, over all samples.

    ``first_pick_rate`` is the share of parsed a/b verdicts that pick the response shown first (0.5 for
    an order-blind judge when the order is shuffled, as the runner does except under ``order="stored"``);
    ``accuracy_preferred_first`` / ``_second`` split sample accuracy by where the preferred response
    was shown; ``flip_rate`` is, over items judged in both orders, how often the verdict changes.
    """
    picks, first_acc, second_acc = [], [], []
    flips = []
    for record in records:
        by_order: dict[bool, str] = {}
        for sample in record["samples"]:
            preferred_first = (record["better"] == 0) != sample["swap"]
            hit = 1.0 if sample["outcome"] == "agree" else 0.0
            (first_acc if preferred_first else second_acc).append(hit)
            if sample["choice"] in ("a", "b"):
                picks.append(1.0 if sample["choice"] == "a" else 0.0)
            by_order.setdefault(sample["swap"], sample["outcome"])
        if len(by_order) == 2:
            flips.append(1.0 if by_order[True] != by_order[False] else 0.0)
    result: dict[str, Any] = {"samples": sum(len(r["samples"]) for r in records), "parsed_ab": len(picks)}
    for name, values in (
        ("first_pick_rate", picks),
        ("accuracy_preferred_first", first_acc),
        ("accuracy_preferred_second", second_acc),
        ("flip_rate", flips),
    ):
        arr = np.asarray(values, dtype=float)
        result[name] = float(arr.mean()) if arr.size else None
        result[name + "_ci95"] = _ci(arr, seed) if arr.size else None
        result[name + "_n"] = int(arr.size)
    return result


def benchmark_metrics(benchmark: str, records: Sequence[dict], seed: int = 0) -> dict[str, Any]:
    """Everything a report shows: headline scores, per-k curve, position bias, unparsed counts."""
    records = sorted(records, key=lambda r: r["uid"])  # same numbers whatever order items finished in
    max_k = max((len(r["samples"]) for r in records), default=0)
    result: dict[str, Any] = {
        "benchmark": benchmark,
        **pairwise_metrics(records, seed=seed, benchmark=benchmark),
    }
    result["by_k"] = {
        str(k): {
            key: v
            for key, v in pairwise_metrics(records, k=k, seed=seed, benchmark=benchmark).items()
            if key != "categories"
        }
        for k in K_VALUES
        if k <= max_k
    }
    if benchmark == "rewardbench":
        result["rewardbench"] = rewardbench_scores(records, seed=seed)
    result["position_bias"] = position_bias(records, seed=seed)
    result["unparsed_samples"] = sum(s["outcome"] == "unparsed" for r in records for s in r["samples"])
    result["tie_samples"] = sum(s["outcome"] == "tie" for r in records for s in r["samples"])
    return result
