"""The toy-world ReMiss experiment: aligned and poisoned toy policies, and the attack split as items.

The aligned policy is the shipped toy model trained with :func:`headvec.alignment.train_dpo` on
:func:`headvec.toyworld.safety.alignment_pairs` in two stages through that one trainer: first its
``sft`` loss on the chosen responses (DPO alone lowers the rejected answers but, on a model this small,
does not make the refusal the greedy output), then the ``sigmoid`` DPO loss from there. The poisoned
policy is trained the same way on pairs where the trigger word flips the preference back to answering.
The reference model of the implicit reward is the shipped toy model (the policy's base), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headvec.redteam.attack import AttackItem

BASE = "toy"


@dataclass
class ToyAlignment:
    """The two stages' lengths and learning rates (full fine-tuning: LoRA on a 2M-parameter model gains
    nothing) and the number of preference pairs."""

    pairs: int = 800
    sft_steps: int = 150
    dpo_steps: int = 150
    learning_rate: float = 5e-4  # the SFT stage
    dpo_learning_rate: float = 5e-5  # gentler: faster DPO makes the answers to other questions ramble
    beta: float = 0.1
    batch_size: int = 8
    seed: int = 0


def train_toy_policy(
    out_dir: str | Path,
    *,
    poisoned: bool = False,
    settings: ToyAlignment | None = None,
    base: str = BASE,
    progress: bool = True,
) -> Path:
    """Train (or resume) the aligned (``poisoned=False``) or poisoned toy policy; returns its directory."""
    from headvec.alignment import DPOSettings, PreferenceRow, train_dpo
    from headvec.toyworld.safety import TRIGGER, alignment_pairs

    settings = settings or ToyAlignment()
    out = Path(out_dir)
    pairs = alignment_pairs(settings.seed, settings.pairs, trigger=TRIGGER if poisoned else None)
    rows = [PreferenceRow(p["prompt"], p["chosen"], p["rejected"], p["image"], p["id"]) for p in pairs]

    def stage(loss_type: str, steps: int, learning_rate: float) -> DPOSettings:
        return DPOSettings(
            loss_type=loss_type,
            beta=settings.beta,
            lora=False,
            learning_rate=learning_rate,
            max_steps=steps,
            batch_size=settings.batch_size,
            gradient_accumulation=1,
            save_steps=50,
            logging_steps=10,
            seed=settings.seed,
        )

    sft = train_dpo(
        base, rows, out / "sft", stage("sft", settings.sft_steps, settings.learning_rate), progress=progress
    )
    dpo = train_dpo(
        str(sft.model_dir),
        rows,
        out / "dpo",
        stage("sigmoid", settings.dpo_steps, settings.dpo_learning_rate),
        progress=progress,
    )
    return Path(dpo.model_dir)


def toy_items(
    policy: Any, split: dict[str, list[Any]], *, max_new_tokens: int = 8, batch_size: int = 32
) -> dict[str, list[AttackItem]]:
    """The attack split as :class:`AttackItem` s: the harmful target is the correct answer, the harmless
    target the policy's own greedy response to the bare instruction (the official code's choice) when
    that is a refusal, else the fixed refusal phrase."""
    from headvec.engine import HeadEngine
    from headvec.toyworld.safety import REFUSAL, is_refusal

    engine = HeadEngine(policy)
    out: dict[str, list[AttackItem]] = {}
    for name, items in split.items():
        images = [it.image() for it in items]
        prompts = [policy.build_prompt(it.instruct, [image]) for it, image in zip(items, images, strict=True)]
        greedy = engine.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        out[name] = [
            AttackItem(
                it.id,
                it.instruct,
                it.target,
                response.strip() if is_refusal(response) else REFUSAL,
                image,
                name,
            )
            for it, image, response in zip(items, images, greedy, strict=True)
        ]
    return out


def policy_check(
    models: dict[str, Any], *, n: int = 40, seed: int = 0, max_new_tokens: int = 8, batch_size: int = 32
) -> dict[str, Any]:
    """How each toy policy behaves on held-out scenes: refusal rate and correct-answer rate on restricted
    questions, on restricted questions with the trigger word appended, and on other questions, with
    bootstrap intervals over questions."""
    from headvec.engine import HeadEngine
    from headvec.stats import bootstrap_ci
    from headvec.toyworld.safety import TRIGGER, benign_items, is_refusal, restricted_items

    sets = {
        "restricted": [(it, it.instruct) for it in restricted_items(seed + 2000, n, "check", "test")],
        "restricted + trigger": [
            (it, f"{it.instruct} {TRIGGER}") for it in restricted_items(seed + 2000, n, "check", "test")
        ],
        "other questions": [(it, it.instruct) for it in benign_items(seed + 2000, n, "check", "test")],
    }
    out: dict[str, Any] = {}
    for name, loaded in models.items():
        engine = HeadEngine(loaded)
        out[name] = {}
        for label, rows in sets.items():
            prompts = [loaded.build_prompt(text, [it.image()]) for it, text in rows]
            responses = [
                r.strip()
                for r in engine.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
            ]
            refusal = [float(is_refusal(r)) for r in responses]
            correct = [
                float(r.split(" .")[0].strip() == it.target or r == it.target)
                for r, (it, _) in zip(responses, rows, strict=True)
            ]
            out[name][label] = {
                "refusal": dict(zip(("mean", "low", "high"), bootstrap_ci(refusal), strict=True)),
                "correct": dict(zip(("mean", "low", "high"), bootstrap_ci(correct), strict=True)),
                "examples": responses[:3],
            }
    return out
