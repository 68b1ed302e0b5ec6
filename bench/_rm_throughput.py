"""Reward-model worker: scored pairs per second, activation RM vs the sampled and in-context judges.

All three score the same toy-world preference pairs on the shipped toy model, in interleaved rounds;
the result is the median over rounds of each judge's time over the activation RM's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from headvec import load
from headvec.rewards.activation import TOY_FORMAT, ActivationRewardModel
from headvec.rewards.baselines import InContextJudge, SampledVotingJudge
from headvec.rewards.pairs import judgements_from_pairs
from headvec.toyworld.adapters import pairs_from_toy


def score_pairs(rm, pairs) -> None:
    prompts = [p.prompt for p in pairs for _ in (0, 1)]
    responses = [r for p in pairs for r in (p.chosen, p.rejected)]
    rm.rewards(prompts, responses, [p.image() for p in pairs for _ in (0, 1)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load("toy", device="cpu")
    fit_pairs = pairs_from_toy("reward_hacking", 0, 160, "train")
    pairs = pairs_from_toy(None, 1, args.pairs, "test")
    judgements = judgements_from_pairs(fit_pairs)
    activation = ActivationRewardModel(loaded, TOY_FORMAT, steps=50, n_prompts=40, batch_size=32).fit(
        judgements
    )
    judges = {
        "activation_rm": activation,
        "sampled_voting_5": SampledVotingJudge(loaded, TOY_FORMAT, n_samples=5, batch_size=32),
        "icl_judge_4": InContextJudge(loaded, TOY_FORMAT, k=4, batch_size=32).fit(judgements),
    }
    seconds: dict[str, list[float]] = {name: [] for name in judges}
    for _ in range(args.reps):
        for name, judge in judges.items():
            start = time.perf_counter()
            score_pairs(judge, pairs)
            seconds[name].append(time.perf_counter() - start)
    rm = seconds["activation_rm"]
    result = {
        "pairs": len(pairs),
        "seconds": seconds,
        "pairs_per_s": {name: len(pairs) / statistics.median(s) for name, s in seconds.items()},
        "speedup": {
            name: statistics.median(a / b for a, b in zip(s, rm, strict=True))
            for name, s in seconds.items()
            if name != "activation_rm"
        },
    }
    args.json.write_text(json.dumps(result))


def render_section(result: dict) -> list[str]:
    lines = [
        f"## Reward models: scored pairs per second (toy model, {result['pairs']} toy-world pairs, batch 32)",
        "",
        "| scorer | pairs/s (this run) | activation RM speed-up (median of per-round ratios) |",
        "|---|---:|---:|",
    ]
    for name, rate in result["pairs_per_s"].items():
        speedup = result["speedup"].get(name)
        cell = "—" if speedup is None else f"{speedup:.1f}×"
        lines.append(f"| {name} | {rate:.1f} | {cell} |")
    return lines


if __name__ == "__main__":
    main()
