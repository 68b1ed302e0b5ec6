"""The shared timing helper: interleaved repetitions, medians and same-run ratios."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Timings:
    """Seconds per repetition for each variant, collected round by round (index i = round i)."""

    seconds: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median time of ``numerator`` over median time of ``denominator`` (same run, same rounds)."""
        return self.median(numerator) / self.median(denominator)

    def round_ratios(self, numerator: str, denominator: str) -> list[float]:
        """The same ratio within each round: its spread shows how noisy the machine was."""
        return [a / b for a, b in zip(self.seconds[numerator], self.seconds[denominator], strict=True)]

    def to_dict(self) -> dict[str, list[float]]:
        return self.seconds


def time_interleaved(
    variants: Mapping[str, Callable[[], object]], reps: int, warmup: int = 1
) -> Timings:
    """Run every variant once per round, ``reps`` rounds after ``warmup`` untimed ones.

    Interleaving (rather than all repetitions of one variant, then the next) spreads slow phases of a
    shared machine over all variants alike; the start of the order rotates each round so that no
    variant always runs first (right after the garbage collection) or last.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(reps):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            start = time.perf_counter()
            variants[name]()
            seconds[name].append(time.perf_counter() - start)
    return Timings(seconds)
