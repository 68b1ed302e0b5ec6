"""`make demo`: which attention heads of the shipped toy vision-language model know the answer?

Runs on the toy model that ships with headvec (a LLaVA-architecture model trained on the toy world, so
no download): asks the colour of a named object in held-out images, captures every head's output at the
last prompt token, scores each head by leave-one-out nearest-centroid accuracy on a few labelled shots,
classifies with the best heads (Sparse Attention Vectors), compares with the model's own answers, and
writes a table, a JSON file and a layers x heads heat map to ``runs/demo/``. ``--model minilm`` runs the
same on the real all-MiniLM-L6-v2 with sentence topics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from headvec import HeadEngine, load
from headvec._optional import require


def save_heat_map(accuracy: torch.Tensor, path: Path, title: str) -> None:
    matplotlib = require("matplotlib", extra="plot", feature="the demo's heat map")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    image = axes.imshow(accuracy.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="leave-one-out accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(out_dir: str = "runs/demo", model: str = "toy", shots: int = 10) -> dict:
    """Find the heads that know the answer and classify with them (SAV), on the shipped toy model.

    The toy model answers questions about its images; the demo asks the colour of a named object, scores
    every head by leave-one-out nearest-centroid accuracy on ``shots`` examples per class, and compares a
    Sparse Attention Vector classifier with the model's own answers and a probe, on held-out scenes.
    With ``model="minilm"`` it classifies sentence topics instead.
    """
    from transformers.utils import logging

    from headvec.evaluation.classification import draw_shots
    from headvec.evaluation.classification_tasks import build_task
    from headvec.methods.sav import SparseAttentionVectors, head_scores

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.manual_seed(0)
    console = Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    loaded = load(model, device="cpu")
    arch = loaded.arch
    task = build_task("toy-color" if model == "toy" else "topics", seed=0)
    console.print(
        f"[bold]model[/] {model} ({type(loaded.model).__name__}): {arch.n_layers} layers x {arch.n_heads} "
        f"heads x head_dim {arch.head_dim}; heads read at {arch.hook_path(0)} (input)\n"
        f"[bold]task[/] {task.name}: {len(task.classes)} classes ({', '.join(task.classes)}), "
        f"{shots} shots per class, {len(task.test)} held-out test items"
    )
    indices = draw_shots(task.pool_labels, shots, seed=0)
    train = [task.pool[i] for i in indices]
    labels = [task.pool_labels[i] for i in indices]
    sav = SparseAttentionVectors(loaded, n_heads="auto", chat=task.chat)
    started = time.perf_counter()
    features = sav.features(train)
    sav.fit_features(features, labels)
    test_features = sav.features(task.test)
    seconds = time.perf_counter() - started
    prediction, _ = sav.votes_from_features(test_features)
    sav_accuracy = sum(
        sav.classes_[p] == y for p, y in zip(prediction.tolist(), task.test_labels, strict=True)
    )
    sav_accuracy /= len(task.test)

    y = torch.tensor([sav.classes_.index(label) for label in labels])
    flat = features.reshape(len(y), -1, arch.head_dim)
    accuracy = head_scores(flat, y, len(sav.classes_), "leave_one_out")[0].reshape(
        arch.n_layers, arch.n_heads
    )

    generated = None
    if not arch.is_encoder:
        prompts = [loaded.build_prompt(item.text, item.images) for item in task.test]
        answers = HeadEngine(loaded).generate(prompts, max_new_tokens=3, batch_size=32)
        generated = sum(a.strip() == y for a, y in zip(answers, task.test_labels, strict=True)) / len(answers)

    chance = 1 / len(task.classes)
    table = Table(title=f"best heads ({shots} shots/class, leave-one-out accuracy; chance {chance:.2f})")
    for column in ("layer", "head", "accuracy", "votes in SAV"):
        table.add_column(column)
    chosen = {tuple(pair) for pair in sav.heads_.tolist()}
    best = []
    for index in accuracy.flatten().argsort(descending=True, stable=True)[:8].tolist():
        layer, head = divmod(index, arch.n_heads)
        best.append({"layer": layer, "head": head, "accuracy": round(float(accuracy[layer, head]), 4)})
        table.add_row(
            str(layer), str(head), f"{accuracy[layer, head]:.3f}", "yes" if (layer, head) in chosen else ""
        )
    console.print(table)
    console.print(
        f"held-out accuracy: SAV ({sav.n_heads_} heads) {sav_accuracy:.3f}"
        + (f"; the model's own generated answer {generated:.3f}" if generated is not None else "")
        + f"; chance {chance:.3f}  (captured {len(train) + len(task.test)} prompts in {seconds:.1f} s)"
    )
    results = {
        "model": model,
        "task": task.name,
        "classes": task.classes,
        "shots_per_class": shots,
        "n_test": len(task.test),
        "chance": chance,
        "sav_heads": sav.heads_.tolist(),
        "sav_accuracy": round(sav_accuracy, 4),
        "generated_answer_accuracy": None if generated is None else round(generated, 4),
        "capture_seconds": round(seconds, 3),
        "best_heads": best,
        "head_accuracy": accuracy.tolist(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    markdown = [
        f"# headvec demo: {model}, {task.name}, {shots} shots/class",
        "",
        f"SAV ({sav.n_heads_} heads): {sav_accuracy:.3f}; "
        + (f"generated answer: {generated:.3f}; " if generated is not None else "")
        + f"chance: {chance:.3f} ({len(task.test)} held-out items)",
        "",
        "| layer | head | leave-one-out accuracy |",
        "|---|---|---|",
    ]
    markdown += [f"| {b['layer']} | {b['head']} | {b['accuracy']:.3f} |" for b in best]
    (out / "results.md").write_text("\n".join(markdown) + "\n")
    save_heat_map(accuracy, out / "head_accuracy.png", f"{model} heads: {task.name} ({shots} shots/class)")
    console.print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'head_accuracy.png'}")
    return results


if __name__ == "__main__":
    import typer

    typer.run(main)
