"""SAV worker: share of ``fit`` time spent scoring heads, at 20 shots x 10 classes (real MiniLM).

``fit`` = capture every head of 200 prompts + score all heads + keep the best; the head scoring is
timed on its own in the same rounds, and a per-head Python loop is timed once for contrast.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from headvec import load
from headvec.methods.sav import SparseAttentionVectors, head_scores, rank_heads

WORDS = [
    "river",
    "stone",
    "light",
    "garden",
    "window",
    "paper",
    "music",
    "bread",
    "winter",
    "engine",
    "silver",
    "forest",
    "letter",
]


def prompts(n_classes: int, shots: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for c in range(n_classes):
        for _ in range(shots):
            texts.append(f"topic {c}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))))
            labels.append(f"class{c}")
    return texts, labels


def per_head_loop(flat: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out scoring one head at a time (vectorised over examples only), for contrast."""
    out = torch.zeros(flat.shape[1])
    for head in range(flat.shape[1]):
        out[head] = head_scores(flat[:, head : head + 1], y, k)[0][0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load("minilm", device="cpu")
    texts, labels = prompts(10, 20)
    sav = SparseAttentionVectors(loaded, n_heads=20, chat=False, batch_size=32)
    features = sav.features(texts)
    arch = loaded.arch
    flat = features.reshape(len(texts), arch.n_layers * arch.n_heads, arch.head_dim).float()
    y = torch.tensor([int(label[5:]) for label in labels])
    fit_s, score_s = [], []
    for _ in range(args.reps):
        start = time.perf_counter()
        SparseAttentionVectors(loaded, n_heads=20, chat=False, batch_size=32).fit(texts, labels)
        fit_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        accuracy, margin = head_scores(flat, y, 10)
        rank_heads(accuracy, margin)
        score_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    looped = per_head_loop(flat, y, 10)
    loop_s = time.perf_counter() - start
    assert torch.allclose(looped, head_scores(flat, y, 10)[0])
    result = {
        "model": "minilm",
        "examples": len(texts),
        "classes": 10,
        "heads": arch.n_layers * arch.n_heads,
        "fit_s": fit_s,
        "score_s": score_s,
        "share": statistics.median(s / f for s, f in zip(score_s, fit_s, strict=True)),
        "loop_s": loop_s,
        "loop_ratio": loop_s / statistics.median(score_s),
    }
    args.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()


def render_section(result: dict) -> list[str]:
    fit = statistics.median(result["fit_s"])
    score = statistics.median(result["score_s"])
    return [
        f"## SAV: head scoring inside `fit` (MiniLM, {result['classes']} classes x "
        f"{result['examples'] // result['classes']} shots, {result['heads']} heads)",
        "",
        "| measurement | result |",
        "|---|---|",
        f"| head scoring (all heads, one einsum) / whole `fit` (capture + scoring), median of per-round "
        f"ratios | {result['share'] * 100:.2f} % ({score * 1000:.1f} ms of {fit:.2f} s) |",
        f"| per-head Python loop / vectorised scoring (same numbers, checked equal) | "
        f"{result['loop_ratio']:.1f}× slower |",
    ]
