"""Activation reward model vs every judge baseline, on the same model, verdict format and pairs.

For each criterion (a preference split) the methods that learn from examples (activation RM, in-context
judge, SAV voting) get the same ``n_fit_pairs`` training pairs of that split, each pair giving two
labelled verdicts (chosen: yes, rejected: no); zero-shot, token-probability and sampled-voting judges
use none. Every method is then scored on the split's held-out pairs, and the reward-hacking models also
on the flipped control (the same bias on the right answer).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from headvec.models import LoadedModel
from headvec.rewards.activation import ActivationRewardModel, VerdictFormat
from headvec.rewards.baselines import (
    GeneratedVerdictJudge,
    InContextJudge,
    SampledVotingJudge,
    SavVerdictJudge,
    TokenProbabilityJudge,
    ZeroShotJudge,
)
from headvec.rewards.pairs import PreferencePair, judgements_from_pairs
from headvec.rewards.runner import evaluate_pairs

METHODS = ("activation_rm", "zero_shot", "icl_judge", "token_probability", "sav_voting", "sampled_voting")
LABELS = {
    "activation_rm": "activation RM",
    "zero_shot": "zero-shot judge",
    "icl_judge": "in-context judge (4 shots)",
    "token_probability": "token probability P(yes)",
    "sav_voting": "SAV head voting",
    "sampled_voting": "sampled-judgement voting (5)",
}


def build_method(name: str, loaded: LoadedModel, fmt: VerdictFormat, rm_params: dict[str, Any], seed: int):
    factories: dict[str, Callable[[], Any]] = {
        "activation_rm": lambda: ActivationRewardModel(loaded, fmt, seed=seed, **rm_params),
        "zero_shot": lambda: ZeroShotJudge(loaded, fmt),
        "icl_judge": lambda: InContextJudge(loaded, fmt, k=4, seed=seed),
        "token_probability": lambda: TokenProbabilityJudge(loaded, fmt),
        "sav_voting": lambda: SavVerdictJudge(loaded, fmt, n_heads=20),
        "sampled_voting": lambda: SampledVotingJudge(loaded, fmt, n_samples=5, seed=seed),
    }
    return factories[name]()


def compare_reward_models(
    loaded: LoadedModel,
    fmt: VerdictFormat,
    fit_pairs: dict[str, Sequence[PreferencePair]],
    test_pairs: dict[str, Sequence[PreferencePair]],
    controls: dict[str, str] | None = None,
    methods: Sequence[str] = METHODS,
    rm_params: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """``{criterion: {method: {split: accuracy summary}}}``; ``controls`` maps a criterion to an extra
    test split scored with the same fitted models (``{"reward_hacking": "flipped"}``)."""
    controls = controls or {}
    rm_params = rm_params or {}
    results: dict[str, Any] = {"by_criterion": {}, "fit_seconds": {}, "n_fit_pairs": {}}
    for criterion, train in fit_pairs.items():
        judgements = judgements_from_pairs(train)
        results["n_fit_pairs"][criterion] = len(train)
        per_method: dict[str, Any] = {}
        for name in methods:
            model = build_method(name, loaded, fmt, rm_params, seed)
            started = time.perf_counter()
            model.fit(judgements)
            results["fit_seconds"].setdefault(criterion, {})[name] = round(time.perf_counter() - started, 2)
            scored: dict[str, Any] = {}
            for split in [criterion, *([controls[criterion]] if criterion in controls else [])]:
                where = None if out_dir is None else Path(out_dir) / criterion / name / split
                summary = evaluate_pairs(model, test_pairs[split], where, seed=seed, progress=progress)
                scored[split] = summary["overall"]
            if isinstance(model, GeneratedVerdictJudge):
                scored["unparsed_verdicts"] = model.unparsed_
            if name == "activation_rm":
                scored["heads"] = model.heads_
            per_method[name] = scored
        results["by_criterion"][criterion] = per_method
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _cell(summary: dict[str, Any]) -> str:
    return f"{summary['accuracy']:.3f} [{summary['ci_low']:.2f}, {summary['ci_high']:.2f}]"


def results_markdown(results: dict[str, Any]) -> str:
    """One row per method; one column per (criterion, test split)."""
    columns = [
        (criterion, split)
        for criterion, methods in results["by_criterion"].items()
        for split in next(iter(methods.values()))
        if split not in ("unparsed_verdicts", "heads")
    ]
    header = " | ".join(f"{split}" + (f" (fit on {c})" if split != c else "") for c, split in columns)
    lines = [f"| method | {header} |", "|---" * (len(columns) + 1) + "|"]
    methods = next(iter(results["by_criterion"].values()))
    for name in methods:
        cells = [_cell(results["by_criterion"][c][name][split]) for c, split in columns]
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_plot(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: accuracy per method and split, with the bootstrap CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = [
        (criterion, split)
        for criterion, methods in results["by_criterion"].items()
        for split in next(iter(methods.values()))
        if split not in ("unparsed_verdicts", "heads")
    ]
    methods = list(next(iter(results["by_criterion"].values())))
    fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 3, 3.8))
    width = 0.8 / len(methods)
    for m, name in enumerate(methods):
        summaries = [results["by_criterion"][c][name][split] for c, split in columns]
        acc = np.array([s["accuracy"] for s in summaries])
        err = np.array([[a - s["ci_low"], s["ci_high"] - a] for a, s in zip(acc, summaries, strict=True)]).T
        x = np.arange(len(columns)) + m * width
        ax.bar(x, acc, width, yerr=err, capsize=2, label=LABELS.get(name, name))
    ax.axhline(0.5, color="black", lw=0.6, ls="--")
    ax.set_xticks(np.arange(len(columns)) + 0.4 - width / 2, [split for _, split in columns])
    ax.set_ylabel("pairwise accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
