"""The candidate toy-model recipe with positions (docs/toyworld.md, "The shipped model").

    python scripts/train_toy_candidate.py runs/toy-candidate [threads]

Resumable like `headvec toyworld train` (kill it, rerun the same command). Once a model trained this
way meets the targets and is shipped, these settings become the `TrainConfig` defaults.

This candidate is the shipped recipe (whose verify and judge phases form the existence and judge
verdicts) with one change: the image tokens learn where they are (stage 1 with row and column words,
kept on at weight 0.2, and the relation questions' position hints). Its phases are shortened by 1,400
main steps so that the kept stage-1 loss fits the 120-minute budget. The two retrains that also
changed the mixture (relations dense, side by side or in sequence) formed no verdict at all (the trial
table), so this one isolates the position machinery.
"""

from __future__ import annotations

import sys

import torch

from headvec.toyworld.train import TrainConfig, train

RECIPE = dict(
    steps=6600,
    align_steps=2000,
    align_positions=True,
    align_weight=0.2,  # 1.0 dominated the clipped update (colour 0.70 after phase 1)
    position_hints=True,
)

if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    print(train(sys.argv[1], TrainConfig(**RECIPE)))
