"""The candidate toy-model recipe with spatial relations (docs/toyworld.md, "The shipped model").

    python scripts/train_toy_candidate.py runs/toy-candidate [threads]

Resumable like `headvec toyworld train` (kill it, rerun the same command). Once a model trained this
way meets the targets and is shipped, these settings become the `TrainConfig` defaults.
"""

from __future__ import annotations

import sys

import torch

from headvec.toyworld.train import TrainConfig, train

RECIPE = dict(
    steps=7400,
    attribute_fraction=0.108,  # 800 steps of English colour / shape / size questions
    binding_fraction=0.3,  # all VQA, relations dense, to step 2,220
    align_steps=2000,
    align_positions=True,
    align_weight=0.2,  # 1.0 dominated the clipped update (colour 0.70 after phase 1)
    position_hints=True,
    binding_mixture={"vqa": 0.45, "relation_vqa": 0.35, "icl": 0.05, "caption": 0.05, "scene_graph": 0.1},
    mixture={
        "vqa": 0.2,
        "relation_vqa": 0.15,
        "relation_judge": 0.05,
        "judge": 0.3,
        "icl": 0.1,
        "cot": 0.08,
        "caption": 0.03,
        "scene_graph": 0.09,
    },
    verify_mixture={
        "vqa": 0.12,
        "yes_no_vqa": 0.08,
        "relation_vqa": 0.25,
        "relation_judge": 0.25,
        "judge": 0.15,
        "icl": 0.05,
        "cot": 0.05,
        "caption": 0.02,
        "scene_graph": 0.03,
    },
    judge_mixture={
        "vqa": 0.12,
        "yes_no_vqa": 0.08,
        "relation_vqa": 0.08,
        "relation_judge": 0.15,
        "judge": 0.4,
        "icl": 0.05,
        "cot": 0.06,
        "caption": 0.02,
        "scene_graph": 0.04,
    },
)

if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    print(train(sys.argv[1], TrainConfig(**RECIPE)))
