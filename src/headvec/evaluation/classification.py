"""Few-shot classification benchmark: SAV against generation and probe baselines on one model and split.

Every method sees the same model, the same labelled shots (``k`` per class, drawn with a seed) and the
same test items. Activations are captured once for the whole pool and test set; each shot count then
only re-fits on a subset, which keeps a sweep over 1..20 shots cheap.

Methods:
- ``sav`` (leave-one-out head scoring; leave-in at one shot, where leave-one-out is undefined) and
  ``sav_leave_in`` (the published scoring);
- ``zero_shot``: the model generates the label from the prompt alone (exact match);
- ``icl``: the same, with the shots as earlier chat turns (as many as fit in the context);
- ``probe_last_layer``: logistic regression on the last layer's output at the last token;
- ``probe_all_heads``: logistic regression on every head's output concatenated.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from headvec._optional import require
from headvec.engine import HeadEngine
from headvec.errors import DataError
from headvec.methods.sav import ClassifierInput, SparseAttentionVectors
from headvec.models import Example, LoadedModel
from headvec.stats import bootstrap_ci, majority_rate

DEFAULT_SHOTS = (1, 2, 5, 10, 20)
DEFAULT_HEAD_COUNTS = (1, 2, 5, 10, 20, 40, 80)


@dataclass
class ClassificationTask:
    """A labelled pool to draw shots from and a held-out test set, with the prompt template."""

    name: str
    pool: list[ClassifierInput]
    pool_labels: list[str]
    test: list[ClassifierInput]
    test_labels: list[str]
    template: str = "{text}"
    chat: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.pool_labels))


def draw_shots(labels: Sequence[str], per_class: int, seed: int) -> list[int]:
    """Indices of ``per_class`` pool items of every class, drawn with ``seed``, in a seeded order."""
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    chosen = []
    for label in sorted(by_class):
        if len(by_class[label]) < per_class:
            raise DataError(
                f"class {label!r} has {len(by_class[label])} pool items, fewer than {per_class} shots"
            )
        chosen += rng.sample(by_class[label], per_class)
    rng.shuffle(chosen)
    return chosen


def _normalise(text: str) -> str:
    return text.strip().strip(".").strip().lower()


def _accuracy_summary(hits: Sequence[bool] | Sequence[Sequence[bool]], seed: int) -> dict[str, float]:
    """Accuracy and its interval; ``[draws][items]`` hits get the two-level bootstrap."""
    mean, low, high = bootstrap_ci(np.asarray(hits, dtype=float), seed=seed)
    return {"accuracy": mean, "ci_low": low, "ci_high": high}


def _probe(train_x: np.ndarray, train_y: Sequence[str], test_x: np.ndarray, seed: int) -> list[str]:
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train_x, list(train_y))
    return list(probe.predict(test_x))


class _Generator:
    """Zero-shot and in-context generation of the label, capped by the context length."""

    def __init__(self, loaded: LoadedModel, task: ClassificationTask, batch_size: int) -> None:
        self.loaded, self.task, self.batch_size = loaded, task, batch_size
        self.engine = HeadEngine(loaded)
        self.max_tokens = max(
            len(loaded.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in task.classes
        )
        limit = getattr(loaded.arch, "max_positions", None)
        self.context = int(limit) if limit else None
        self._longest: ClassifierInput | None = None

    def prompt(self, item: ClassifierInput, shots: Sequence[int] = ()):
        task = self.task
        examples = [
            Example(task.template.format(text=task.pool[i].text), task.pool[i].images, task.pool_labels[i])
            for i in shots
        ]
        return self.loaded.build_prompt(task.template.format(text=item.text), item.images, examples=examples)

    def fitting_shots(self, shots: list[int]) -> list[int]:
        """The longest prefix of ``shots`` with which the longest test prompt still fits the context."""
        if self.context is None:
            return shots
        if self._longest is None:
            lengths = [self._length(self.prompt(item)) for item in self.task.test]
            self._longest = self.task.test[int(np.argmax(lengths))]
        kept = list(shots)
        while kept and self._length(self.prompt(self._longest, kept)) + self.max_tokens + 2 > self.context:
            kept = kept[: len(kept) * 3 // 4]
        return kept

    def _length(self, prompt) -> int:
        return self.loaded.token_count(prompt)

    def accuracy(self, shots: Sequence[int]) -> list[bool]:
        prompts = [self.prompt(item, shots) for item in self.task.test]
        answers = self.engine.generate(prompts, self.max_tokens + 1, batch_size=self.batch_size)
        return [_normalise(a) == _normalise(y) for a, y in zip(answers, self.task.test_labels, strict=True)]


def evaluate_classification(
    loaded: LoadedModel,
    task: ClassificationTask,
    shots: Sequence[int] = DEFAULT_SHOTS,
    n_heads: int = 20,
    head_counts: Sequence[int] = DEFAULT_HEAD_COUNTS,
    head_count_shots: int = 5,
    seed: int = 0,
    n_draws: int = 3,
    batch_size: int = 16,
    generation: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy (with bootstrap 95% CIs) of SAV and every baseline at each shot count.

    Each shot count is drawn ``n_draws`` times (seeded); accuracies pool the test items of all draws.
    """
    generation = (not loaded.arch.is_encoder) if generation is None else generation
    engine = HeadEngine(loaded)

    def capture(items: list[ClassifierInput]):
        prompts = [
            loaded.build_prompt(task.template.format(text=i.text), i.images, chat=task.chat) for i in items
        ]
        last = loaded.arch.n_layers - 1
        result = engine.capture(prompts, None, -1, batch_size=batch_size, residual=True, progress=progress)
        return result.heads.float(), result.residual[:, last].float()

    pool_heads, pool_last = capture(task.pool)
    test_heads, test_last = capture(task.test)
    test_labels = task.test_labels
    n_test = len(test_labels)
    results: dict[str, Any] = {
        "task": task.name,
        "model": loaded.name_or_path,
        "classes": task.classes,
        "n_test": n_test,
        "n_heads": n_heads,
        "seed": seed,
        "n_draws": n_draws,
        "majority": majority_rate(list(test_labels)),
        "template": task.template,
        "by_shots": {},
        "meta": task.meta,
    }
    generator = _Generator(loaded, task, batch_size) if generation else None
    if generator is not None:
        results["zero_shot"] = _accuracy_summary(generator.accuracy([]), seed)

    def sav_hits(indices: list[int], scoring: str, heads: int | str = n_heads) -> tuple[list[bool], Any]:
        model = SparseAttentionVectors(
            loaded, heads, task.template, scoring=scoring, chat=task.chat, batch_size=batch_size
        )
        model.fit_features(pool_heads[indices], [task.pool_labels[i] for i in indices])
        prediction, _ = model.votes_from_features(test_heads)
        names = [model.classes_[i] for i in prediction.tolist()]
        return [p == y for p, y in zip(names, test_labels, strict=True)], model

    for k in tqdm(list(shots), desc=f"{task.name}: shots", disable=not progress):
        hits: dict[str, list[list[bool]]] = {}  # method -> one list of test-item hits per draw
        in_prompt: list[int] = []
        auto_counts: list[int] = []
        for draw in range(n_draws):
            indices = draw_shots(task.pool_labels, k, seed + 1000 * draw + k)
            train_labels = [task.pool_labels[i] for i in indices]
            hits.setdefault("sav", []).append(sav_hits(indices, "leave_one_out" if k >= 2 else "leave_in")[0])
            hits.setdefault("sav_leave_in", []).append(sav_hits(indices, "leave_in")[0])
            auto_hits, auto_model = sav_hits(indices, "leave_one_out" if k >= 2 else "leave_in", "auto")
            hits.setdefault("sav_auto", []).append(auto_hits)
            auto_counts.append(auto_model.n_heads_)
            for name, train_x, test_x in (
                ("probe_last_layer", pool_last[indices], test_last),
                ("probe_all_heads", pool_heads[indices].flatten(1), test_heads.flatten(1)),
            ):
                predicted = _probe(train_x.numpy(), train_labels, test_x.numpy(), seed)
                hits.setdefault(name, []).append(
                    [p == y for p, y in zip(predicted, test_labels, strict=True)]
                )
            if generator is not None:
                used = generator.fitting_shots(indices)
                in_prompt.append(len(used))
                hits.setdefault("icl", []).append(list(generator.accuracy(used)))
        row = {name: _accuracy_summary(values, seed) for name, values in hits.items()}
        row["sav"]["scoring"] = "leave_one_out" if k >= 2 else "leave_in"
        row["sav_auto"]["heads_chosen"] = auto_counts
        if generator is not None:
            row["icl"]["shots_in_prompt"] = round(float(np.mean(in_prompt)), 1)
        results["by_shots"][str(k)] = row

    k = head_count_shots
    indices = draw_shots(task.pool_labels, k, seed + k)
    total = loaded.arch.n_layers * loaded.arch.n_heads
    results["by_heads"] = {
        str(h): _accuracy_summary(sav_hits(indices, "leave_one_out" if k >= 2 else "leave_in", h)[0], seed)
        for h in head_counts
        if h <= total
    }
    results["by_heads_shots"] = k
    k = max(shots)
    _, fitted = sav_hits(draw_shots(task.pool_labels, k, seed + k), "leave_one_out" if k >= 2 else "leave_in")
    results["selected_heads"] = fitted.heads_.tolist()
    results["head_accuracy"] = fitted.head_accuracy_.tolist()
    results["selected_heads_shots"] = k
    return results


METHOD_LABELS = {
    "sav": "SAV",
    "sav_leave_in": "SAV (leave-in scoring)",
    "sav_auto": "SAV (head count by LOO)",
    "probe_last_layer": "probe: last layer",
    "probe_all_heads": "probe: all heads",
    "icl": "in-context generation",
    "zero_shot": "zero-shot generation",
}


def _cell(summary: dict[str, float] | None) -> str:
    if summary is None:
        return "n/a"
    return f"{summary['accuracy']:.3f} [{summary['ci_low']:.2f}, {summary['ci_high']:.2f}]"


def results_markdown(results: dict[str, Any]) -> str:
    """A table: rows = shots per class, columns = methods, cells = accuracy [95% CI]."""
    methods = [m for m in METHOD_LABELS if m != "zero_shot"]
    present = [m for m in methods if any(m in row for row in results["by_shots"].values())]
    lines = [
        f"### {results['task']} ({results['model']}, {results['n_test']} test items, "
        f"classes: {', '.join(results['classes'])})",
        "",
    ]
    if "majority" in results:
        lines += [
            f"chance: {1 / len(results['classes']):.3f} (uniform), "
            f"{results['majority']:.3f} (always the majority class)",
            "",
        ]
    if "zero_shot" in results:
        lines += [f"zero-shot generation: {_cell(results['zero_shot'])}", ""]
    lines += [
        "| shots/class | " + " | ".join(METHOD_LABELS[m] for m in present) + " |",
        "|---" * (len(present) + 1) + "|",
    ]
    for k, row in results["by_shots"].items():
        cells = []
        for m in present:
            cell = _cell(row.get(m))
            if m == "icl" and m in row:
                cell += f" ({row[m]['shots_in_prompt']} shots fit)"
            if m == "sav_auto" and m in row:
                cell += f" (k={'/'.join(map(str, row[m]['heads_chosen']))})"
            cells.append(cell)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", f"SAV accuracy vs number of heads ({results['by_heads_shots']} shots/class):", ""]
    lines += [
        "| heads | " + " | ".join(results["by_heads"]) + " |",
        "|---" * (len(results["by_heads"]) + 1) + "|",
    ]
    lines.append(
        "| accuracy | " + " | ".join(f"{v['accuracy']:.3f}" for v in results["by_heads"].values()) + " |"
    )
    return "\n".join(lines) + "\n"


def save_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Accuracy vs shots, accuracy vs heads, and the head map of the selected heads (PNG)."""
    matplotlib = require("matplotlib", feature="SAV plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    name = results["task"]
    paths = []
    shots = [int(k) for k in results["by_shots"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, label in METHOD_LABELS.items():
        rows = [results["by_shots"][str(k)].get(method) for k in shots]
        if method == "zero_shot" and "zero_shot" in results:
            ax.axhline(results["zero_shot"]["accuracy"], color="grey", ls=":", label=label)
            continue
        if any(r is None for r in rows):
            continue
        acc = np.array([r["accuracy"] for r in rows])
        low = np.array([r["ci_low"] for r in rows])
        high = np.array([r["ci_high"] for r in rows])
        ax.plot(shots, acc, marker="o", label=label)
        ax.fill_between(shots, low, high, alpha=0.12)
    ax.axhline(1 / len(results["classes"]), color="black", lw=0.6, ls="--", label="chance (uniform)")
    if "majority" in results:
        ax.axhline(results["majority"], color="black", lw=0.9, ls="-.", label="majority class")
    ax.set_xscale("log")
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{name}: accuracy vs shots")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / f"{name}_accuracy_vs_shots.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    heads = [int(h) for h in results["by_heads"]]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(heads, [results["by_heads"][str(h)]["accuracy"] for h in heads], marker="o")
    ax.set_xscale("log")
    ax.set_xticks(heads, [str(h) for h in heads])
    ax.set_xlabel("heads voting")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{name}: SAV vs heads ({results['by_heads_shots']} shots/class)")
    fig.tight_layout()
    paths.append(out_dir / f"{name}_accuracy_vs_heads.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    accuracy = np.array(results["head_accuracy"])
    fig, ax = plt.subplots(
        figsize=(max(4, accuracy.shape[1] * 0.35 + 1.5), max(3, accuracy.shape[0] * 0.3 + 1))
    )
    image = ax.imshow(accuracy, cmap="viridis", aspect="auto")
    layers, head_ids = zip(*results["selected_heads"], strict=True)
    ax.scatter(head_ids, layers, marker="s", facecolors="none", edgecolors="red", s=40, label="selected")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{name}: head scores, selected heads ({results['selected_heads_shots']} shots/class)")
    fig.colorbar(image, ax=ax, label="training nearest-centroid accuracy")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    paths.append(out_dir / f"{name}_head_map.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """results.json (appended per task), a markdown table and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{results['task']}.json").write_text(json.dumps(results, indent=1))
    (out_dir / f"{results['task']}.md").write_text(results_markdown(results))
    save_plots(results, out_dir)
    return out_dir / f"{results['task']}.md"
