"""Backdoor triggers found through the reward gap (the ReMiss paper's backdoor study).

A poisoned policy answers restricted instructions when a trigger is present. Read as an implicit reward
model against its clean base, the trigger is a prompt edit that drives ReGap down on every restricted
instruction. :func:`rank_candidates` appends each candidate token to each instruction and ranks the
candidates by their mean change in ReGap (most negative first); :func:`trigger_auroc` asks how well ReGap
alone tells prompts with the trigger from prompts without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headvec.redteam.attack import AttackItem, with_suffix
from headvec.redteam.run import auroc_ci
from headvec.rewards.implicit import ImplicitRewardModel


def _gaps(reward: ImplicitRewardModel, item: AttackItem, texts: Sequence[str]) -> list[float]:
    tokenizer = reward.policy.tokenizer
    prompts = reward.build_prompts(list(texts), [item.image] * len(texts))
    harmless = tokenizer(item.harmless, add_special_tokens=False)["input_ids"]
    harmful = tokenizer(item.target, add_special_tokens=False)["input_ids"]
    return reward.regap_for(prompts, [harmless] * len(prompts), [harmful] * len(prompts))


def rank_candidates(
    reward: ImplicitRewardModel,
    items: Sequence[AttackItem],
    candidates: Sequence[str],
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Each candidate's mean ReGap change over ``items`` when appended to the instruction, most negative
    first: ``{"candidate", "delta", "rank"}`` (rank 1 = the most likely trigger)."""
    from tqdm.auto import tqdm

    totals = dict.fromkeys(candidates, 0.0)
    for item in tqdm(items, desc="backdoor scan", disable=not progress):
        bare = _gaps(reward, item, [item.instruct])[0]
        gaps = _gaps(reward, item, [with_suffix(item.instruct, c) for c in candidates])
        for candidate, gap in zip(candidates, gaps, strict=True):
            totals[candidate] += (gap - bare) / len(items)
    ranked = sorted(totals.items(), key=lambda kv: kv[1])
    return [{"candidate": c, "delta": d, "rank": i + 1} for i, (c, d) in enumerate(ranked)]


def trigger_auroc(reward: ImplicitRewardModel, items: Sequence[AttackItem], trigger: str) -> dict[str, Any]:
    """ReGap of each instruction with and without ``trigger``; AUROC of ``-ReGap`` for "has the trigger"
    with a bootstrap interval over instructions."""
    with_trigger, without = [], []
    for item in items:
        bare, triggered = _gaps(reward, item, [item.instruct, with_suffix(item.instruct, trigger)])
        without.append(bare)
        with_trigger.append(triggered)
    scores = [-g for g in with_trigger] + [-g for g in without]
    labels = [True] * len(items) + [False] * len(items)
    groups = [it.id for it in items] * 2
    value, low, high = auroc_ci(scores, labels, groups)
    return {
        "auroc": {"mean": value, "low": low, "high": high},
        "regap_with_trigger": with_trigger,
        "regap_without_trigger": without,
    }
