"""Small statistics helpers shared by the evaluations: seeded bootstrap intervals, chance floors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap ``level`` interval (seeded, so reproducible).

    A 2-D ``[draws, items]`` array (several draws scored on the same items) is resampled on two levels,
    items and then draws, because draws that share items are not independent values: flattening them
    would make the interval too narrow.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if data.ndim == 1:
        means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    elif data.ndim == 2:
        n_draws, n_items = data.shape
        items = rng.integers(0, n_items, size=(n_resamples, n_items))
        draws = rng.integers(0, n_draws, size=(n_resamples, n_draws))
        means = np.array([data[d][:, i].mean() for d, i in zip(draws, items, strict=True)])
    else:
        raise ValueError(f"bootstrap_ci takes 1-D values or a 2-D [draws, items] array, not {data.ndim}-D")
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(data.mean()), float(low), float(high)


def majority_rate(labels: Sequence[str]) -> float:
    """Accuracy of always answering the most frequent label: the floor for an imbalanced task."""
    if not labels:
        return float("nan")
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / len(labels)
