"""Where a toy model's scene graphs and chain-of-thought answers go wrong (docs/toyworld.md).

    python scripts/toy_error_breakdown.py MODEL [N] [THREADS] > breakdown.json

On the first ``N`` (default 120) held-out English items of each task, as `headvec toyworld eval`
generates them: scene-graph exact match by object count, the object list and the relation list
checked apart (and relation triples missed or added); chain-of-thought final answers and whole chains
by question type (relation chains also against their step-by-step form, the `cot_steps` items); and
the training-only position items (every object's position listed, the object at a named cell), which
a model trained without them is not expected to answer.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import torch

from headvec.engine import HeadEngine
from headvec.models import load
from headvec.toyworld.evaluate import _answers, detokenize_json
from headvec.toyworld.export import derived_rng, generate
from headvec.toyworld.model import IMAGE_SIZE
from headvec.toyworld.tasks import POSITIONS_PROMPT, make_cot, make_positions, parse_final_answer


def breakdown(model: str, n: int) -> dict[str, dict[str, int]]:
    loaded = load(model, device="cpu")
    engine = HeadEngine(loaded)

    def answers(task: str, max_new_tokens: int):
        items = (
            make_positions(0, n, split="test") if task == "positions" else generate(task, 0, n, "test", "en")
        )
        prompts = [loaded.build_prompt(item.prompt, [item.image(IMAGE_SIZE)]) for item in items]
        return zip(items, _answers(engine, prompts, max_new_tokens, 32), strict=True)

    graphs: Counter = Counter()
    for item, answer in answers("scene_graph", 260):
        gold = json.loads(item.answer)
        graphs[f"objects_{len(gold['objects'])}"] += 1
        try:
            got = json.loads(detokenize_json(answer))
        except json.JSONDecodeError:
            got = None
        if not isinstance(got, dict):  # as `headvec toyworld eval` counts it: a JSON list is not a graph
            graphs["invalid"] += 1
            continue
        graphs[f"objects_{len(gold['objects'])}_exact"] += got == gold
        graphs["object_list_exact"] += got.get("objects") == gold["objects"]
        graphs["relation_list_exact"] += got.get("relations") == gold["relations"]
        wanted = {json.dumps(r) for r in gold["relations"]}
        said = {json.dumps(r) for r in got.get("relations", [])}
        graphs["relation_triples"] += len(wanted)
        graphs["relation_triples_missed"] += len(wanted - said)
        graphs["relation_triples_added"] += len(said - wanted)
    chains: Counter = Counter()
    # the same questions with the relation chains written as steps (the `cot_steps` training items)
    steps = make_cot(derived_rng(0, "cot", "test"), n, split="test", steps_for_relations=True)
    for (item, answer), stepwise in zip(answers("cot", 80), steps, strict=True):
        qtype = item.meta["qtype"]
        chains[qtype] += 1
        chains[f"{qtype}_final_answer"] += parse_final_answer(answer) == parse_final_answer(item.answer)
        chains[f"{qtype}_chain_exact"] += answer == item.answer
        if qtype.startswith("relation"):
            chains[f"{qtype}_step_chain_exact"] += answer == stepwise.answer
    positions: Counter = Counter()
    for item, answer in answers("positions", 60):
        kind = "listing" if item.prompt == POSITIONS_PROMPT else "lookup"
        positions[kind] += 1
        positions[f"{kind}_exact"] += answer == item.answer
    return {
        "scene_graph": dict(sorted(graphs.items())),
        "cot": dict(sorted(chains.items())),
        "positions": dict(sorted(positions.items())),
    }


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 120
    print(json.dumps({"model": sys.argv[1], "n": n, **breakdown(sys.argv[1], n)}, indent=1))
