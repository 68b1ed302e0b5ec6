"""Reference reward models that need no model: floors every benchmark table should show.

``baseline:length`` prefers the longer response, which exposes length bias in a benchmark (on the toy
world it wins every ``flipped`` pair whose bias is length and loses the matching ``reward_hacking`` ones);
``baseline:first`` always prefers the response shown first, a pure position-bias probe.
"""

from __future__ import annotations

from collections.abc import Sequence

from headvec.errors import HeadvecError
from headvec.harness.registry import RMOptions, register_rm_loader
from headvec.rewards.protocol import Preference, ScoreBasedComparison


class LengthBaseline(ScoreBasedComparison):
    """Reward = number of whitespace-separated words."""

    def score(self, prompts: Sequence[str], responses: Sequence[str], images=None) -> list[float]:
        return [float(len(response.split())) for response in responses]


class FirstShownBaseline:
    """Always prefers ``a``, whatever the responses say."""

    def score(self, prompts: Sequence[str], responses: Sequence[str], images=None) -> list[float]:
        raise HeadvecError("baseline:first only compares; it has no score")

    def compare(self, prompt: str, a: str, b: str, image=None) -> Preference:
        return Preference(choice="a")


BASELINES = {"length": LengthBaseline, "first": FirstShownBaseline}


def _baseline(name: str, options: RMOptions):
    if name not in BASELINES:
        raise HeadvecError(f"--rm baseline:{name}: unknown baseline; use one of {', '.join(BASELINES)}")
    return BASELINES[name]()


register_rm_loader("baseline", _baseline)
