"""The shared timing helper: interleaved repetitions, medians and same-run ratios."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Timings:
    """Seconds per repetition for each variant, collected round by round (index i = round i)."""

    seconds: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def round_ratios(self, numerator: str, denominator: str) -> list[float]:
        """``numerator`` time over ``denominator`` time within each round (the two ran back to back)."""
        return [a / b for a, b in zip(self.seconds[numerator], self.seconds[denominator], strict=True)]

    def ratio(self, numerator: str, denominator: str) -> float:
        """The median of the per-round ratios.

        Pairing within a round cancels the slow phases of a shared machine that last longer than a
        round; the median then drops the rounds that a phase change cut through.
        """
        return statistics.median(self.round_ratios(numerator, denominator))

    def quartiles(self, numerator: str, denominator: str) -> tuple[float, float]:
        """The middle half of the per-round ratios (25th and 75th percentiles)."""
        ratios = self.round_ratios(numerator, denominator)
        if len(ratios) < 2:
            return ratios[0], ratios[0]
        low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
        return low, high

    def to_dict(self) -> dict[str, list[float]]:
        return self.seconds


@dataclass
class QuietGate:
    """Before a round, wait a bounded time until other processes leave the CPUs alone.

    On a shared machine another process on one of the cores slows a multi-threaded forward several
    times over. Waiting for a quiet moment (this process is idle while it checks) keeps most rounds
    clean; ``busy_rounds`` counts the rounds that started busy anyway, once the wait ran out.
    """

    threshold: float = 20.0  # percent of all CPUs busy, as seen between rounds
    max_wait: float = 5.0  # seconds per round
    budget: float = 45.0  # seconds of waiting in all
    waited: float = 0.0
    busy_rounds: int = 0
    rounds: int = 0

    def __call__(self) -> None:
        start = time.perf_counter()
        self.rounds += 1
        while psutil.cpu_percent(interval=0.2) > self.threshold:
            spent = time.perf_counter() - start
            if spent > self.max_wait or self.waited + spent > self.budget:
                self.busy_rounds += 1
                break
        self.waited += time.perf_counter() - start

    def to_dict(self) -> dict[str, float]:
        return {"rounds": self.rounds, "busy_rounds": self.busy_rounds, "waited_s": self.waited}


def time_interleaved(
    variants: Mapping[str, Callable[[], object]],
    reps: int,
    warmup: int = 1,
    before_round: Callable[[], None] | None = None,
) -> Timings:
    """Run every variant once per round, ``reps`` rounds after ``warmup`` untimed ones.

    Interleaving (rather than all repetitions of one variant, then the next) spreads slow phases of a
    shared machine over all variants alike; the start of the order rotates each round so that no
    variant always runs first or last. ``before_round`` (e.g. a :class:`QuietGate`) runs before each
    timed round, outside the timings.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(reps):
        if before_round is not None:
            before_round()
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            start = time.perf_counter()
            variants[name]()
            seconds[name].append(time.perf_counter() - start)
    return Timings(seconds)
