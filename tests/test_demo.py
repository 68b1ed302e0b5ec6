"""The demo's head scoring is the plain leave-one-out nearest-centroid rule, vectorised."""

from __future__ import annotations

import torch

from headvec.demo import leave_one_out_head_accuracy, main


def naive_accuracy(heads: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    n, n_layers, n_heads, _ = heads.shape
    accuracy = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            correct = 0
            for i in range(n):
                keep = torch.arange(n) != i
                centroids = torch.stack(
                    [heads[keep & (labels == c), layer, head].mean(0) for c in range(int(labels.max()) + 1)]
                )
                sims = torch.nn.functional.cosine_similarity(heads[i, layer, head][None], centroids, dim=-1)
                correct += int(sims.argmax() == labels[i])
            accuracy[layer, head] = correct / n
    return accuracy


def test_vectorised_scoring_equals_the_naive_loop():
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    heads = torch.randn(10, 3, 4, 5, generator=generator) + labels[:, None, None, None] * 0.7
    torch.testing.assert_close(leave_one_out_head_accuracy(heads, labels), naive_accuracy(heads, labels))


def test_demo_finds_topic_heads_in_real_minilm(tmp_path):
    results = main(str(tmp_path))
    assert results["best_heads"][0]["accuracy"] > results["chance"] + 0.3
    assert (tmp_path / "head_accuracy.png").stat().st_size > 1000
