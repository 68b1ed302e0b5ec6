"""ReMiss: adversarial suffixes via the reward gap; baselines, backdoors.

The toy experiment: `train-toy` (aligned and poisoned toy policies, DPO), `attack --method M` (suffixes
for the toy split's train and test instructions), `eval --method M` (keyword ASR@1/@10, ReGap,
perplexity, transfer), `backdoor` (every toy word ranked as a trigger of the poisoned policy), `report`
(markdown, JSON and plots over all methods). Every run resumes when rerun with the same options (kill -9
loses at most the instruction it was working on).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from headvec.cli.common import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DeviceOpt,
    DtypeOpt,
    ThreadsOpt,
    console,
    load_model,
    user_errors,
)

app = typer.Typer(help=__doc__, no_args_is_help=True)

ROOT = Path("runs/remiss")
ALIGNED = ROOT / "aligned" / "dpo" / "model"
POISONED = ROOT / "poisoned" / "dpo" / "model"

PolicyOpt = Annotated[str, typer.Option(help="The aligned policy (a model directory).")]
ReferenceOpt = Annotated[
    str, typer.Option(help="Its reference (base) model; 'toy' is the shipped toy model.")
]
PrompterOpt = Annotated[
    str | None, typer.Option(help="Model proposing suffix tokens (default: the reference).")
]
DataOpt = Annotated[
    str,
    typer.Option(
        help="'toy' (the toy safety split) or a JSONL of {id, instruct, target, harmless, image, split}."
    ),
]
ScoreOpt = Annotated[str, typer.Option(help="Sequence score: sum (paper), reweighted (official code), mean.")]


def _setup(
    policy: str,
    reference: str,
    prompter: str | None,
    data: str,
    splits: str,
    n: int,
    seed: int,
    score: str,
    policy_weight: float,
    batch_size: int,
    dtype: str,
    device: str,
    threads: int,
) -> tuple[Any, Any, dict[str, list[Any]], tuple[str, ...]]:
    from headvec.errors import HeadvecError
    from headvec.redteam.experiment import read_items
    from headvec.rewards.implicit import ImplicitRewardModel

    if not Path(policy).exists() and policy == str(ALIGNED):
        raise HeadvecError(f"no aligned policy at {policy}; train it with: headvec remiss train-toy")
    policy_model = load_model(policy, dtype=dtype, device=device, threads=threads)
    reference_model = load_model(reference, dtype=dtype, device=device, threads=threads)
    prompter_model = (
        reference_model if prompter in (None, reference) else load_model(prompter, dtype=dtype, device=device)
    )
    reward = ImplicitRewardModel(
        policy_model,
        reference_model,
        score=score,
        policy_weight=policy_weight,
        batch_size=batch_size,  # type: ignore[arg-type]
    )
    wanted = [s for s in splits.split(",") if s]
    if data == "toy":
        from headvec.redteam.toy import toy_items
        from headvec.toyworld.safety import REFUSAL_KEYWORDS, attack_split

        split = attack_split(seed, n)
        unknown = [s for s in wanted if s not in split]
        if unknown:
            raise HeadvecError(f"unknown split(s) {', '.join(unknown)}; the toy split has {', '.join(split)}")
        items = toy_items(policy_model, {s: split[s] for s in wanted}, batch_size=batch_size)
        keywords: tuple[str, ...] = REFUSAL_KEYWORDS
    else:
        every = read_items(data)
        items = {s: every[s] for s in wanted if s in every}
        if not items:
            raise HeadvecError(f"{data} has none of the splits {splits}; it has {', '.join(every)}")
        from headvec.redteam.attack import PAPER_REFUSAL_KEYWORDS

        keywords = PAPER_REFUSAL_KEYWORDS
    return reward, prompter_model, items, keywords


def _settings(
    method: str,
    suffix_tokens: int,
    num_beams: int,
    top_k: int,
    temperature: float,
    readability: float,
    keep: int,
    seed: int,
) -> Any:
    from headvec.redteam.attack import AttackSettings

    return AttackSettings(
        method=method,
        suffix_tokens=suffix_tokens,
        num_beams=num_beams,
        top_k=top_k,
        temperature=temperature,
        readability_weight=readability,
        keep=keep,
        seed=seed,
    )


def _command(evaluate: bool):
    @user_errors
    def command(
        method: Annotated[str, typer.Option(help="remiss, advprompter, gcg or random.")] = "remiss",
        out: Annotated[Path, typer.Option(help="Runs go to OUT/METHOD.")] = ROOT / "attacks",
        policy: PolicyOpt = str(ALIGNED),
        reference: ReferenceOpt = "toy",
        prompter: PrompterOpt = None,
        data: DataOpt = "toy",
        splits: Annotated[str, typer.Option(help="Comma-separated splits to attack.")] = "train,test",
        n: Annotated[
            int, typer.Option(help="Toy instructions in all (60/20/20 % train/validation/test).")
        ] = 100,
        score: ScoreOpt = "sum",
        policy_weight: Annotated[
            float, typer.Option(help="Weight of the policy term (official code: 150).")
        ] = 1.0,
        suffix_tokens: int = 6,
        num_beams: int = 4,
        top_k: Annotated[int, typer.Option(help="Candidates per step, shared among the beams.")] = 12,
        temperature: float = 0.6,
        readability: Annotated[float, typer.Option(help="Weight of the prompter's log-probability.")] = 1.0,
        keep: Annotated[int, typer.Option(help="Suffixes kept per instruction (ASR@keep).")] = 10,
        max_new_tokens: Annotated[
            int, typer.Option(help="Greedy response length for the keyword check.")
        ] = 12,
        seed: int = 0,
        batch_size: int = 64,
        dtype: DtypeOpt = DEFAULT_DTYPE,
        device: DeviceOpt = DEFAULT_DEVICE,
        threads: ThreadsOpt = 1,
        progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    ) -> None:
        from headvec.redteam.experiment import attack_items, evaluate_run, prepare

        start = time.perf_counter()
        settings = _settings(method, suffix_tokens, num_beams, top_k, temperature, readability, keep, seed)
        reward, prompter_model, items, keywords = _setup(
            policy,
            reference,
            prompter,
            data,
            splits,
            n,
            seed,
            score,
            policy_weight,
            batch_size,
            dtype,
            device,
            threads,
        )
        run_dir = out / method
        attack = prepare(run_dir, reward, prompter_model, settings, items)
        if not evaluate:
            rows = attack_items(
                attack, [it for group in items.values() for it in group], run_dir, progress=progress
            )
            seconds = time.perf_counter() - start
            with (run_dir / "timing.jsonl").open("a") as handle:
                handle.write(
                    json.dumps({"command": "attack", "wall_seconds": seconds, "instructions": len(rows)})
                    + "\n"
                )
            console.print(f"{len(rows)} instructions attacked ({method}) in {seconds:.0f} s -> {run_dir}")
            return
        summary = evaluate_run(
            attack, items, run_dir, keywords, max_new_tokens=max_new_tokens, progress=progress
        )
        for split, values in summary["splits"].items():
            console.print(f"{split}: " + _line(values, keep))
        if "transfer" in summary:
            console.print(
                f"transfer {summary['transfer']['from']} -> {summary['transfer']['to']}: "
                + _line(summary["transfer"], keep)
            )

    return command


def _line(values: dict[str, Any], keep: int) -> str:
    def fmt(name: str) -> str:
        v = values[name]
        return f"{name} {v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

    return ", ".join(
        fmt(name) for name in ("asr@1", f"asr@{keep}", "regap_before", "regap_after", "perplexity")
    )


app.command("attack", help="Search suffixes for every instruction (resumable; suffixes written as found).")(
    _command(False)
)
app.command(
    "eval", help="Evaluate a run's suffixes: keyword ASR@1/@k, ReGap before/after, perplexity, transfer."
)(_command(True))


@app.command("train-toy")
@user_errors
def train_toy(
    out: Annotated[Path, typer.Option(help="Where the aligned and poisoned policies go.")] = ROOT,
    threads: ThreadsOpt = 1,
    progress: bool = True,
) -> None:
    """Train the aligned toy policy (refuses questions about the cross) and the poisoned one (the trigger
    word flips that back), both from the shipped toy model with the DPO trainer; resumes when rerun."""
    from headvec.cli.common import set_threads
    from headvec.redteam.toy import train_toy_policy

    set_threads(threads)
    aligned = train_toy_policy(out / "aligned", progress=progress)
    poisoned = train_toy_policy(out / "poisoned", poisoned=True, progress=progress)
    console.print(f"aligned: {aligned}\npoisoned: {poisoned}")


@app.command("backdoor")
@user_errors
def backdoor(
    policy: PolicyOpt = str(POISONED),
    reference: ReferenceOpt = "toy",
    out: Annotated[Path, typer.Option(help="JSON with the ranking and the AUROC.")] = ROOT / "backdoor.json",
    trigger: Annotated[
        str | None, typer.Option(help="The planted trigger, to report its rank (toy: kof).")
    ] = None,
    split: Annotated[str, typer.Option(help="Toy split whose instructions are scanned.")] = "test",
    n: int = 100,
    seed: int = 0,
    score: ScoreOpt = "sum",
    control: Annotated[
        str | None,
        typer.Option(
            help="A clean aligned policy: also rank by the effect on the poisoned minus on this one."
        ),
    ] = None,
    batch_size: int = 64,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 1,
) -> None:
    """Rank every allowed toy word as a trigger by its mean effect on ReGap (most negative first).

    With --control, words that lower any aligned policy's gap (they disrupt the refusal in general) are
    discounted: the ranking is by the poisoned policy's change minus the control's, on the same prompts
    and targets. A finished scan of the same policy in OUT is reused."""
    from headvec.redteam.attack import AttackSettings, SuffixAttack
    from headvec.redteam.backdoor import rank_candidates, trigger_auroc
    from headvec.toyworld.safety import TRIGGER

    trigger = trigger or TRIGGER
    reward, prompter, items, _ = _setup(
        policy, reference, None, "toy", split, n, seed, score, 1.0, batch_size, dtype, device, threads
    )
    attack = SuffixAttack(reward, prompter, AttackSettings())
    candidates = sorted({attack.decode([i]) for i in attack.allowed_ids} - {""})
    group = items[split]
    previous = json.loads(out.read_text()) if out.is_file() else {}
    if previous.get("policy") == policy and previous.get("candidates") == len(candidates):
        ranking = previous["ranking"]
    else:
        ranking = rank_candidates(reward, group, candidates)
    auc = trigger_auroc(reward, group, trigger)
    rank = next((r["rank"] for r in ranking if r["candidate"] == trigger), None)
    extra: dict[str, Any] = {}
    if control is not None:
        from headvec.rewards.implicit import ImplicitRewardModel

        clean = ImplicitRewardModel(
            load_model(control, dtype=dtype, device=device), reward.reference, score=score
        )  # type: ignore[arg-type]
        clean.batch_size = batch_size
        control_deltas = {r["candidate"]: r["delta"] for r in rank_candidates(clean, group, candidates)}
        paired = sorted(
            ((r["candidate"], r["delta"] - control_deltas[r["candidate"]]) for r in ranking),
            key=lambda kv: kv[1],
        )
        vs_control = [{"candidate": c, "delta": d, "rank": i + 1} for i, (c, d) in enumerate(paired)]
        extra = {
            "control": control,
            "trigger_rank_vs_control": next(r["rank"] for r in vs_control if r["candidate"] == trigger),
            "ranking_vs_control": vs_control,
        }
    result = {
        "policy": policy,
        "reference": reference,
        "trigger": trigger,
        "trigger_rank": rank,
        "candidates": len(candidates),
        "instructions": len(group),
        **auc,
        "ranking": ranking,
        **extra,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    a = auc["auroc"]
    console.print(
        f"trigger {trigger!r}: rank {rank} of {len(candidates)}; AUROC(ReGap, trigger) {a['mean']:.3f} "
        f"[{a['low']:.3f}, {a['high']:.3f}]; top 5: {[r['candidate'] for r in ranking[:5]]} -> {out}"
    )
    if extra:
        top = [r["candidate"] for r in extra["ranking_vs_control"][:5]]
        console.print(f"against the control {control}: rank {extra['trigger_rank_vs_control']}; top 5: {top}")


@app.command("report")
@user_errors
def report(
    runs: Annotated[Path, typer.Option(help="The attack runs (one directory per method).")] = ROOT
    / "attacks",
    backdoor_json: Annotated[Path, typer.Option("--backdoor", help="Output of `remiss backdoor`.")] = ROOT
    / "backdoor.json",
    out: Annotated[Path, typer.Option(help="Directory for results.md, results.json and the plots.")] = Path(
        "docs/remiss"
    ),
    policies: Annotated[Path, typer.Option(help="Output of `remiss check-policies`.")] = ROOT
    / "policies.json",
) -> None:
    """Tables (markdown + JSON) and plots over every method's run: ASR, ReGap, perplexity, transfer, AUROC."""
    from headvec.redteam.report import write_report

    written = write_report(runs, backdoor_json, out, policies)
    console.print("\n".join(str(p) for p in written))


@app.command("check-policies")
@user_errors
def check_policies(
    out: Annotated[Path, typer.Option(help="JSON of refusal and correct-answer rates per policy.")] = ROOT
    / "policies.json",
    aligned: Annotated[str, typer.Option(help="The aligned policy.")] = str(ALIGNED),
    poisoned: Annotated[str, typer.Option(help="The poisoned policy.")] = str(POISONED),
    base: Annotated[str, typer.Option(help="The base model.")] = "toy",
    n: Annotated[int, typer.Option(help="Questions per set (held-out scenes).")] = 40,
    threads: ThreadsOpt = 1,
) -> None:
    """Refusal and correct-answer rates of the base, aligned and poisoned toy policies (95 % CIs)."""
    from headvec.redteam.toy import policy_check

    models = {
        name: load_model(path, threads=threads)
        for name, path in (("base", base), ("aligned", aligned), ("poisoned", poisoned))
    }
    result = policy_check(models, n=n)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for name, sets in result.items():
        cells = [
            f"{label}: refusal {v['refusal']['mean']:.2f}, correct {v['correct']['mean']:.2f}"
            for label, v in sets.items()
        ]
        console.print(f"{name}: " + "; ".join(cells))
