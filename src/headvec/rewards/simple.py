"""Reference reward models that need no model: floors every benchmark table should show.

``baseline:length`` (:class:`LengthBaseline`, a scorer) prefers the longer response, which exposes
length bias in a benchmark; ``baseline:first`` (:class:`FirstShownBaseline`, a judge) always prefers the
response shown first, a pure position-bias probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headvec.rewards.protocol import BaseJudge, Comparison, Preference


class LengthBaseline:
    """Reward = number of whitespace-separated words."""

    def rewards(self, prompts: Sequence[str], responses: Sequence[str], images: Any = None) -> list[float]:
        return [float(len(response.split())) for response in responses]


class FirstShownBaseline(BaseJudge):
    """Always prefers ``a``, whatever the responses say."""

    def compare_batch(self, comparisons: Sequence[Comparison]) -> list[Preference]:
        return [Preference(choice="a") for _ in comparisons]


BASELINES = {"length": LengthBaseline, "first": FirstShownBaseline}
