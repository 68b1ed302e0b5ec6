"""``headvec rm``: fit activation reward models and compare them with judge baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from headvec.cli.common import DEFAULT_DEVICE, DeviceOpt, ModelArg, RemoteOpt, console, user_errors

app = typer.Typer(
    help="Activation reward models: few-shot reward models by steering heads.", no_args_is_help=True
)

FormatOpt = Annotated[str, typer.Option(help="Verdict format: 'generic' (criterion question) or 'toy'.")]
CriterionOpt = Annotated[str, typer.Option(help="The criterion, for the generic format.")]
StepsOpt = Annotated[int, typer.Option(min=0, help="REINFORCE steps of the head search.")]


def _format(name: str, criterion: str):
    from headvec.errors import HeadvecError
    from headvec.rewards.activation import TOY_FORMAT, VerdictFormat

    if name == "toy":
        return TOY_FORMAT
    if name == "generic":
        return VerdictFormat(criterion=criterion)
    raise HeadvecError(f"unknown --format {name!r}; use 'generic' or 'toy'")


@app.command("fit")
@user_errors
def fit(
    model: ModelArg,
    data: Annotated[
        Path, typer.Argument(help="JSONL: {prompt, response, verdict[, image]} or preference pairs.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Directory for the fitted reward model.")],
    format: FormatOpt = "generic",
    criterion: CriterionOpt = "the answer is correct",
    steps: StepsOpt = 600,
    n_prompts: Annotated[int, typer.Option(min=1, help="Few-shot prompts the means average over.")] = 100,
    n_shots: Annotated[int, typer.Option(min=0, help="Labelled verdicts per mean prompt.")] = 4,
    seed: int = 0,
    device: DeviceOpt = DEFAULT_DEVICE,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """Fit an activation reward model on labelled verdicts and save it (safetensors + JSON)."""
    from headvec.models import load
    from headvec.rewards.activation import ActivationRewardModel
    from headvec.rewards.pairs import read_judgements

    judgements = read_judgements(data)
    loaded = load(model, device=device, trust_remote_code=trust_remote_code)
    rm = ActivationRewardModel(
        loaded,
        _format(format, criterion),
        steps=steps,
        n_prompts=n_prompts,
        n_shots=n_shots,
        seed=seed,
        progress=True,
    )
    rm.fit(judgements)
    rm.save_pretrained(out)
    console.print(f"fitted on {len(judgements)} verdicts; {len(rm.heads_)} steering heads -> {out}")


@app.command("score")
@user_errors
def score(
    reward_model: Annotated[Path, typer.Argument(help="Directory written by `headvec rm fit`.")],
    pairs: Annotated[Path, typer.Argument(help="Preference pairs JSONL (PreferenceHack form).")],
    out: Annotated[
        Path, typer.Option("--out", help="Results directory (resumed if it holds a partial run).")
    ],
) -> None:
    """Pairwise accuracy of a saved reward model on preference pairs, per split, with 95% CIs."""
    from headvec.rewards.loading import load_reward_model
    from headvec.rewards.pairs import read_preference_pairs
    from headvec.rewards.runner import evaluate_pairs

    results = evaluate_pairs(load_reward_model(reward_model), read_preference_pairs(pairs), out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    for split, summary in results.items():
        console.print(
            f"{split}: {summary['accuracy']:.3f} [{summary['ci_low']:.2f}, {summary['ci_high']:.2f}] "
            f"(n={summary['n']}, ties {summary['ties']})"
        )


@app.command("eval")
@user_errors
def evaluate(
    model: ModelArg = "toy",
    out: Annotated[Path, typer.Option("--out", help="Results directory.")] = Path("runs/rm"),
    fit_pairs: Annotated[
        Path | None, typer.Option(help="Pairs to fit on (default: toy-world train pairs).")
    ] = None,
    test_pairs: Annotated[
        Path | None, typer.Option(help="Pairs to test on (default: toy-world test pairs).")
    ] = None,
    n_fit: Annotated[int, typer.Option(help="Training pairs per criterion (two verdicts each).")] = 40,
    n_test: Annotated[int, typer.Option(help="Toy-world test pairs in all (split over 4 categories).")] = 400,
    format: FormatOpt = "toy",
    criterion: CriterionOpt = "the answer is correct",
    steps: StepsOpt = 600,
    n_prompts: Annotated[int, typer.Option(min=1)] = 100,
    methods: Annotated[str, typer.Option(help="Comma-separated subset of the methods.")] = "all",
    debias: Annotated[
        bool, typer.Option(help="Fit reward_hacking on half reward_hacking, half flipped training pairs.")
    ] = False,
    seed: int = 0,
    device: DeviceOpt = DEFAULT_DEVICE,
) -> None:
    """Activation RM vs zero-shot / in-context / token-probability / SAV / sampled-voting judges."""
    from headvec.errors import HeadvecError
    from headvec.evaluation.rewards import METHODS, compare_reward_models, results_markdown, save_plot
    from headvec.models import load
    from headvec.rewards.pairs import read_preference_pairs
    from headvec.toyworld.adapters import pairs_from_toy

    chosen = list(METHODS) if methods == "all" else [m.strip() for m in methods.split(",")]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise HeadvecError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    train = read_preference_pairs(fit_pairs) if fit_pairs else pairs_from_toy(None, seed, 20 * n_fit, "train")
    test = read_preference_pairs(test_pairs) if test_pairs else pairs_from_toy(None, seed + 1, n_test, "test")
    splits = sorted({p.category for p in test})
    criteria = [s for s in splits if s != "flipped"]
    fit = {c: [p for p in train if p.category == c][:n_fit] for c in criteria}
    if debias and "reward_hacking" in fit:  # bias on the wrong answer in half the pairs, on the right in half
        hacked = [p for p in train if p.category == "reward_hacking"][: n_fit // 2]
        flipped = [p for p in train if p.category == "flipped"][: n_fit - len(hacked)]
        fit["reward_hacking"] = [x for pair in zip(hacked, flipped, strict=False) for x in pair]
    tests = {s: [p for p in test if p.category == s] for s in splits}
    controls = {"reward_hacking": "flipped"} if {"reward_hacking", "flipped"} <= set(splits) else {}
    loaded = load(model, device=device)
    results = compare_reward_models(
        loaded,
        _format(format, criterion),
        fit,
        tests,
        controls,
        chosen,
        rm_params={"steps": steps, "n_prompts": n_prompts},
        out_dir=out,
        seed=seed,
    )
    table = results_markdown(results)
    (out / "results.md").write_text(table)
    save_plot(results, out / "pairwise_accuracy.png")
    console.print(table)
    console.print(f"results, per-pair logs and plot -> {out}")
