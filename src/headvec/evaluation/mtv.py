"""MTV on the toy world's in-context tasks: zero-shot vs k-shot ICL vs MTV (+ k-shot), scaling and cost.

Each toy in-context task (colour, shape, size, count) is defined only by its shots, so zero-shot the
model can only guess which attribute to name. One task vector is fitted per task on training episodes
and scored on held-out test episodes of that task; accuracies pool the four tasks (bootstrap CIs over
test items). The scaling sweep refits MTV with 1..100 prompts of 4 shots (4..400 shots in all, far more
than the context holds) and sets it against plain ICL with as many shots as fit in the context.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from headvec._optional import require
from headvec.engine import HeadEngine
from headvec.errors import DataError
from headvec.methods.mtv import (
    IclEpisode,
    MultimodalTaskVector,
    episode_prompt,
    normalize_answer,
    prompt_tokens,
)
from headvec.models import LoadedModel
from headvec.stats import bootstrap_ci


@dataclass
class ToyIclConfig:
    """Sizes of the toy evaluation (defaults: the published MTV recipe, 4 toy tasks x 50 test items)."""

    tasks: tuple[str, ...] = ("color", "shape", "size", "count")
    language: str = "en"
    n_train: int = 60  # training episodes per task (5 answered examples each: the shot pool)
    n_test: int = 50  # test episodes per task
    icl_shots: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 24)  # plain ICL baselines (as far as they fit)
    test_shots: int = 32  # shots drawn per test episode: fixed, so the test set never depends on icl_shots
    scaling_prompts: tuple[int, ...] = (1, 5, 25, 100)  # x n_shots compressed shots
    refit_heads_for_scaling: bool = True
    latency_queries: int = 20
    seed: int = 0
    match: str = "exact"  # or "first_word": see normalize_answer
    mtv: dict[str, Any] = field(default_factory=dict)  # MultimodalTaskVector parameters


def toy_icl_episodes(task: str, n: int, split: str, seed: int, language: str, shots: int) -> list[IclEpisode]:
    """``n`` toy episodes of one in-context task (drawn from the balanced four-task stream)."""
    from headvec.toyworld.adapters import icl_episode
    from headvec.toyworld.episodes import ICL_TASKS, make_icl
    from headvec.toyworld.export import derived_rng

    if task not in ICL_TASKS:
        raise DataError(f"unknown toy in-context task {task!r}; choose from {', '.join(ICL_TASKS)}")
    rng = derived_rng(seed, "mtv", task, split)
    episodes = make_icl(rng, n * len(ICL_TASKS), language, shots=shots, split=split)
    return [icl_episode(e) for e in episodes if e.icl_task == task][:n]


def _hits(answers: Sequence[str], episodes: Sequence[IclEpisode], match: str = "exact") -> list[bool]:
    return [
        normalize_answer(a, match) == normalize_answer(e.query.answer or "", match)
        for a, e in zip(answers, episodes, strict=True)
    ]


def majority_hits(episodes: Sequence[IclEpisode], match: str = "exact") -> list[bool]:
    """Per query: is its answer the task's most common one? (always answering that is the baseline a
    classifier must beat when the answers are imbalanced)"""
    answers = [normalize_answer(e.query.answer or "", match) for e in episodes]
    top = Counter(answers).most_common(1)[0][0] if answers else None
    return [a == top for a in answers]


def _summary(hits: Sequence[bool], seed: int) -> dict[str, Any]:
    mean, low, high = bootstrap_ci([float(h) for h in hits], seed=seed)
    return {"accuracy": mean, "ci_low": low, "ci_high": high, "n": len(hits)}


def _context_shots(loaded: LoadedModel, episode: IclEpisode) -> int:
    """How many shots of ``episode`` fit in the context along with its query (binary search: the
    prompt only grows with each shot)."""
    limit = loaded.arch.max_positions
    if limit is None:
        return len(episode.shots)
    low, high = 0, len(episode.shots)  # low always fits (or nothing does)
    while low < high:
        middle = (low + high + 1) // 2
        if prompt_tokens(loaded, [episode_prompt(loaded, episode, middle)])[0] <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def evaluate_toy_icl(
    loaded: LoadedModel, config: ToyIclConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Every condition on every toy in-context task (fresh seeded episodes; test scenes held out)."""
    config = config or ToyIclConfig()
    test_shots = max(config.test_shots, *config.icl_shots)
    datasets = {
        task: (
            toy_icl_episodes(task, config.n_train, "train", config.seed, config.language, 4),
            toy_icl_episodes(task, config.n_test, "test", config.seed, config.language, test_shots),
        )
        for task in config.tasks
    }
    return evaluate_mtv(loaded, datasets, config, progress)


def group_by_task(episodes: Sequence[IclEpisode]) -> dict[str, list[IclEpisode]]:
    groups: dict[str, list[IclEpisode]] = {}
    for episode in episodes:
        groups.setdefault(episode.task or "all", []).append(episode)
    return groups


def evaluate_mtv(
    loaded: LoadedModel,
    datasets: dict[str, tuple[list[IclEpisode], list[IclEpisode]]],
    config: ToyIclConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Zero-shot, k-shot ICL (k as far as test shots and context allow), MTV and MTV + 1-shot per task
    (``{task: (train episodes, test episodes)}``), the scaling sweep and the cost per query."""
    config = config or ToyIclConfig()
    engine = HeadEngine(loaded)
    tasks = list(datasets)
    mtv_params = {"max_new_tokens": 3, "batch_size": 16, **config.mtv}
    n_shots = int(mtv_params.get("n_shots", 4))
    per_condition: dict[str, list[bool]] = {}
    per_task: dict[str, dict[str, Any]] = {}
    scaling_hits: dict[int, list[bool]] = {}
    fits: dict[str, Any] = {}
    cost: dict[str, Any] = {}
    started = time.perf_counter()
    bar = tqdm(tasks, desc="mtv eval", disable=not progress)
    for task in bar:
        train, test = datasets[task]
        if not train or not test:
            raise DataError(
                f"task {task!r} needs training and test episodes; got {len(train)} and {len(test)}"
            )
        # all test shots behind one query: more than fit, so the search finds the real limit
        probe = IclEpisode(tuple(shot for e in test for shot in e.shots)[:256], test[0].query)
        context_limit_shots = _context_shots(loaded, probe)
        context_fit = min(context_limit_shots, min(len(e.shots) for e in test))
        task_hits: dict[str, list[bool]] = {"majority": majority_hits(test, config.match)}
        for k in config.icl_shots:
            if k > context_fit:
                continue
            bar.set_postfix(task=task, condition=f"icl{k}")
            answers = engine.generate(
                [episode_prompt(loaded, e, k) for e in test], max_new_tokens=3, batch_size=16
            )
            task_hits[f"icl_{k}shot"] = _hits(answers, test, config.match)
        bar.set_postfix(task=task, condition="mtv fit")
        tic = time.perf_counter()
        mtv = MultimodalTaskVector(loaded, **mtv_params).fit(train)
        fit_seconds = time.perf_counter() - tic
        task_hits["mtv"] = mtv.correct(test, n_shots=0, match=config.match)
        if context_fit >= 1 and all(e.shots for e in train):
            # the paper's "MTV + 1-shot": heads searched on prompts in that format (same means)
            bar.set_postfix(task=task, condition="mtv+1 fit")
            one_shot = MultimodalTaskVector(loaded, **(mtv_params | {"search_shots": 1}))
            one_shot.means_ = mtv.means_
            one_shot.fit_heads(train)
            task_hits["mtv_1shot"] = one_shot.correct(test, n_shots=1, match=config.match)
            task_hits["mtv_1shot_zero_shot_heads"] = mtv.correct(test, n_shots=1, match=config.match)
        fits[task] = fit_summary(mtv) | {"fit_seconds": fit_seconds, "n_examples": mtv.n_examples_}
        scaling_hits.setdefault(mtv.n_prompts * n_shots, []).extend(task_hits["mtv"])
        for n_prompts in config.scaling_prompts:
            if n_prompts == mtv.n_prompts:
                continue
            bar.set_postfix(task=task, condition=f"mtv T={n_prompts}")
            scaled = MultimodalTaskVector(loaded, **(mtv_params | {"n_prompts": n_prompts}))
            if config.refit_heads_for_scaling:
                scaled.fit(train)
            else:  # reuse the heads of the full fit; only the means change
                scaled.fit_means(train)
                scaled.mask_ = mtv.mask_
            scaling_hits.setdefault(n_prompts * n_shots, []).extend(
                scaled.correct(test, n_shots=0, match=config.match)
            )
        for name, hits in task_hits.items():
            per_condition.setdefault(name, []).extend(hits)
        per_task[task] = {name: _summary(hits, config.seed) for name, hits in task_hits.items()}
        per_task[task]["context_fits_shots"] = context_limit_shots
        if task == tasks[0]:
            cost = _cost(loaded, mtv, test[: config.latency_queries], n_shots)
    conditions = {name: _summary(hits, config.seed) for name, hits in per_condition.items()}
    icl_ref = conditions.get(f"icl_{n_shots}shot", {}).get("accuracy", float("nan"))
    return {
        "model": loaded.name_or_path,
        "config": {**{k: v for k, v in config.__dict__.items() if k != "mtv"}, "mtv": mtv_params},
        "tasks": tasks,
        "n_train": {task: len(train) for task, (train, _) in datasets.items()},
        "n_test": {task: len(test) for task, (_, test) in datasets.items()},
        "conditions": conditions,
        "per_task": per_task,
        "recovery_vs_icl": conditions["mtv"]["accuracy"] / icl_ref if icl_ref else float("nan"),
        "scaling": {str(total): _summary(h, config.seed) for total, h in sorted(scaling_hits.items())},
        "context_limit_tokens": loaded.arch.max_positions,
        "fits": fits,
        "cost": cost,
        "seconds": time.perf_counter() - started,
    }


def fit_summary(mtv: MultimodalTaskVector) -> dict[str, Any]:
    """What the reports and plots show of one fit: heads, loss curve, final head probabilities."""
    theta = getattr(mtv, "theta_", None)
    return {
        "heads": mtv.heads_,
        "n_heads": len(mtv.heads_),
        "loss_curve": mtv.loss_curve_,
        "expected_heads": mtv.expected_heads_,
        "probabilities": torch.sigmoid(theta).tolist() if theta is not None else None,
    }


def _cost(loaded: LoadedModel, mtv: MultimodalTaskVector, queries: list[IclEpisode], n_shots: int) -> dict:
    """Prompt tokens and greedy-answer latency per query (batch 1), MTV vs ``n_shots``-shot ICL."""
    engine = mtv.engine_
    icl_prompts = [episode_prompt(loaded, q, n_shots) for q in queries]
    mtv_prompts = mtv.prompts(queries, 0)
    times: dict[str, list[float]] = {"mtv": [], "icl": []}
    for icl_prompt, mtv_prompt in zip(icl_prompts, mtv_prompts, strict=True):
        tic = time.perf_counter()
        engine.generate([icl_prompt], max_new_tokens=3, batch_size=1)
        times["icl"].append(time.perf_counter() - tic)
        tic = time.perf_counter()
        with engine.patch(mtv.patch()):
            engine.generate([mtv_prompt], max_new_tokens=3, batch_size=1)
        times["mtv"].append(time.perf_counter() - tic)
    tokens = {
        "mtv": prompt_tokens(loaded, mtv_prompts),
        "icl": prompt_tokens(loaded, icl_prompts),
    }
    mean = {k: sum(v) / len(v) for k, v in tokens.items()}
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {
        "icl_shots": n_shots,
        "prompt_tokens": mean,
        "latency_s": median,
        "token_ratio_icl_over_mtv": mean["icl"] / mean["mtv"],
        "latency_ratio_icl_over_mtv": median["icl"] / median["mtv"],
        "queries": len(queries),
    }


# ------------------------------------------------------------------------------------ reporting
LABELS = {
    "majority": "majority class (per task)",
    "mtv": "MTV (0 shots in the prompt)",
    "mtv_1shot": "MTV + 1-shot (heads searched 1-shot)",
    "mtv_1shot_zero_shot_heads": "MTV + 1-shot (zero-shot heads)",
}


def condition_label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    shots = name.removeprefix("icl_").removesuffix("shot")
    return "zero-shot" if shots == "0" else f"{shots}-shot ICL"


def render_markdown(results: dict[str, Any], command: str) -> str:
    """The results as the tables of docs/results/mtv.md."""
    cfg = results["config"]
    lines = [
        f"Command: `{command}`",
        "",
        f"Model `{results['model']}`; tasks {', '.join(results['tasks'])}; test episodes per task "
        f"{results['n_test']}, training episodes per task {results['n_train']}; MTV {cfg['mtv']}; run took "
        f"{results['seconds'] / 60:.1f} min.",
        "",
        "| condition | accuracy | 95 % CI | n |",
        "|---|---:|---|---:|",
    ]
    for name, s in results["conditions"].items():
        lines.append(
            f"| {condition_label(name)} | {s['accuracy']:.3f} | {s['ci_low']:.3f}–{s['ci_high']:.3f} "
            f"| {s['n']} |"
        )
    lines += [
        "",
        f"MTV / {cfg['mtv'].get('n_shots', 4)}-shot ICL accuracy: **{results['recovery_vs_icl']:.2f}**",
        "",
        "Per task (accuracy):",
        "",
        "| task | " + " | ".join(condition_label(n) for n in results["conditions"]) + " | heads chosen |",
        "|---|" + "---:|" * (len(results["conditions"]) + 1),
    ]
    for task, scores in results["per_task"].items():
        cells = [f"{scores[n]['accuracy']:.2f}" if n in scores else "—" for n in results["conditions"]]
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {results['fits'][task]['n_heads']} |")
    lines += [
        "",
        f"Scaling (MTV, zero shots in the prompt; context holds {results['context_limit_tokens']} tokens):",
        "",
        "| compressed shots | accuracy | 95 % CI |",
        "|---:|---:|---|",
    ]
    for total, s in results["scaling"].items():
        lines.append(f"| {total} | {s['accuracy']:.3f} | {s['ci_low']:.3f}–{s['ci_high']:.3f} |")
    cost = results["cost"]
    lines += [
        "",
        f"Cost per query ({cost['queries']} queries, batch 1, greedy, 3 new tokens):",
        "",
        "| | prompt tokens | median latency (ms) |",
        "|---|---:|---:|",
        f"| MTV | {cost['prompt_tokens']['mtv']:.1f} | {cost['latency_s']['mtv'] * 1000:.1f} |",
        f"| {cost['icl_shots']}-shot ICL | {cost['prompt_tokens']['icl']:.1f} "
        f"| {cost['latency_s']['icl'] * 1000:.1f} |",
        f"| ICL / MTV | {cost['token_ratio_icl_over_mtv']:.2f}× "
        f"| {cost['latency_ratio_icl_over_mtv']:.2f}× |",
    ]
    return "\n".join(lines) + "\n"


def plot_loss_curves(fits: dict[str, dict[str, Any]], path: Path) -> Path:
    matplotlib = require("matplotlib", feature="MTV plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, fit in fits.items():
        curve = torch.tensor(fit["loss_curve"])
        window = max(1, len(curve) // 30)
        smooth = torch.nn.functional.avg_pool1d(curve[None, None], window, 1).flatten()
        ax.plot(range(window - 1, len(curve)), smooth.tolist(), label=name)
    ax.set_xlabel("REINFORCE step")
    ax.set_ylabel("first-token CE (sampled masks)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_head_maps(fits: dict[str, dict[str, Any]], path: Path) -> Path:
    """Per task: the learnt probability of every (layer, head), chosen heads outlined."""
    matplotlib = require("matplotlib", feature="MTV plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(fits), figsize=(2.6 * len(fits) + 1, 3), squeeze=False, layout="constrained"
    )
    for ax, (name, fit) in zip(axes[0], fits.items(), strict=True):
        probs = torch.tensor(fit["probabilities"])
        image = ax.imshow(probs.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for layer, head in fit["heads"]:
            ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        ax.set_title(f"{name} ({fit['n_heads']} heads)")
        ax.set_xlabel("head")
    axes[0][0].set_ylabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="P(head chosen)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_scaling(results: dict[str, Any], path: Path) -> Path:
    matplotlib = require("matplotlib", feature="MTV plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    totals = [int(t) for t in results["scaling"]]
    acc = [results["scaling"][str(t)]["accuracy"] for t in totals]
    low = [results["scaling"][str(t)]["ci_low"] for t in totals]
    high = [results["scaling"][str(t)]["ci_high"] for t in totals]
    ax.plot(totals, acc, "o-", label="MTV (0 shots in prompt)")
    ax.fill_between(totals, low, high, alpha=0.2)
    icl = {
        int(n.removeprefix("icl_").removesuffix("shot")): s
        for n, s in results["conditions"].items()
        if n.startswith("icl_") and n != "icl_0shot"
    }
    if icl:
        ks = sorted(icl)
        ax.plot(ks, [icl[k]["accuracy"] for k in ks], "s--", label="ICL (shots in prompt)")
    zero = results["conditions"].get("icl_0shot")
    if zero:
        ax.axhline(zero["accuracy"], color="black", lw=0.8, label="zero-shot")
    majority = results["conditions"].get("majority")
    if majority:
        ax.axhline(majority["accuracy"], color="black", lw=0.9, ls="-.", label="majority class")
    fits = min(t["context_fits_shots"] for t in results["per_task"].values())
    ax.axvline(fits, color="grey", ls=":", label=f"context limit (~{fits} shots)")
    ax.set_xscale("log")
    ax.set_xlabel("shots (compressed for MTV, in context for ICL)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out: Path, command: str) -> list[Path]:
    """results.json, results.md and the three plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(render_markdown(results, command))
    return [
        out / "results.json",
        out / "results.md",
        plot_loss_curves(results["fits"], out / "loss_curve.png"),
        plot_head_maps(results["fits"], out / "head_map.png"),
        plot_scaling(results, out / "scaling.png"),
    ]
