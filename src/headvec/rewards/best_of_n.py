"""Best-of-N: pick the best of N candidate responses with any scorer or judge.

A :class:`~headvec.rewards.protocol.Scorer` ranks all N with one ``rewards`` call. A judge runs a
knockout: the current best meets each next candidate, in an order shuffled with ``seed`` and with the
display order of each match drawn from it too, so a judge's position bias cannot favour one slot.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from headvec.errors import HeadvecError
from headvec.rewards.protocol import Comparison, Scorer, as_judge


@dataclass
class BestOfN:
    """The chosen candidate's index, the rewards (scorers) and the matches played (judges)."""

    index: int
    scores: list[float] | None = None
    matches: list[dict] = field(default_factory=list)


def best_of_n(
    rm: Any, prompt: str, candidates: Sequence[str], image: Any = None, *, seed: int = 0
) -> BestOfN:
    """Pick the best candidate for ``prompt`` (ties keep the earlier candidate)."""
    if not candidates:
        raise HeadvecError("best_of_n needs at least one candidate response")
    if isinstance(rm, Scorer):
        scores = [
            float(s)
            for s in rm.rewards([prompt] * len(candidates), list(candidates), [image] * len(candidates))
        ]
        return BestOfN(index=max(range(len(scores)), key=lambda i: (scores[i], -i)), scores=scores)
    judge = as_judge(rm)
    rng = random.Random(f"headvec-best-of-n/{seed}")
    order = list(range(len(candidates)))
    rng.shuffle(order)
    best, matches = order[0], []
    for challenger in order[1:]:
        swap = rng.random() < 0.5
        first, second = (challenger, best) if swap else (best, challenger)
        (pref,) = judge.compare_batch([Comparison(prompt, candidates[first], candidates[second], image)])
        winner = {"a": first, "b": second}.get(pref.choice or "", best)  # tie or unparsed: keep the best
        matches.append({"first": first, "second": second, "choice": pref.choice, "winner": winner})
        best = winner
    return BestOfN(index=best, matches=matches)


def best_of_n_accuracy(rm: Any, problems: Sequence[dict], *, seed: int = 0) -> float:
    """Share of problems (``prompt``, ``candidates``, ``correct``: indices of good answers, optional
    ``image``) where the picked candidate is a correct one: the benchmark's Best-of-N use case."""
    if not problems:
        raise HeadvecError("best_of_n_accuracy needs at least one problem")
    hits = 0
    for number, problem in enumerate(problems):
        picked = best_of_n(
            rm, problem["prompt"], problem["candidates"], problem.get("image"), seed=seed + number
        )
        hits += picked.index in set(problem["correct"])
    return hits / len(problems)
