"""AI feedback (VLFeedback): response pools, annotation, preference pairs, the whole toy-world loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from headvec.cli.common import ThreadsOpt, console, set_threads, user_errors
from headvec.errors import HeadvecError

app = typer.Typer(
    help="AI feedback (VLFeedback): response pools, annotation, preference pairs, the whole toy-world loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OutArg = Annotated[Path, typer.Argument(help="Output directory (a rerun resumes what is there).")]
ImagesOpt = Annotated[
    Path | None,
    typer.Option(help="Directory or .zip the rows' img_path are relative to (default: the file's folder)."),
]


def _parse_generator(spec: str) -> tuple[str, str, str | float]:
    """``local:MODEL[@TEMPERATURE]`` -> (local, model, temperature); ``openai:MODEL@BASE_URL`` -> (openai,
    model, base_url); anything else is a one-line error (checked before any model loads)."""
    kind, _, rest = spec.partition(":")
    if kind == "local" and rest:
        model, _, temperature = rest.partition("@")
        try:
            return kind, model, float(temperature or 0)
        except ValueError:
            raise HeadvecError(f"--generator {spec!r}: temperature {temperature!r} is not a number") from None
    if kind == "openai" and "@" in rest:
        model, _, base_url = rest.partition("@")
        return kind, model, base_url
    raise HeadvecError(
        f"--generator {spec!r}: use local:MODEL[@TEMPERATURE] or openai:MODEL@BASE_URL (e.g. "
        "openai:gpt-4o@https://api.openai.com/v1)"
    )


def _generator(kind: str, model: str, option: str | float, seed: int) -> object:
    from headvec.feedback.pool import LocalGenerator, OpenAIGenerator

    if kind == "local":
        from headvec.models import load

        return LocalGenerator(load(model), f"{model}@{option:g}", temperature=float(option), seed=seed)
    return OpenAIGenerator(str(option), model, seed=seed)


@app.command()
@user_errors
def generate(
    out: OutArg,
    toy: Annotated[int, typer.Option(help="Toy-world instructions with the default toy pool (0: off).")] = 0,
    instructions: Annotated[
        Path | None, typer.Option(help="JSONL of {id, prompt, img_path} instructions (instead of --toy).")
    ] = None,
    generator: Annotated[
        list[str] | None,
        typer.Option(help="local:MODEL[@TEMPERATURE] or openai:MODEL@BASE_URL; repeat (at least 4)."),
    ] = None,
    images: ImagesOpt = None,
    k: Annotated[int, typer.Option(help="Responses per instruction.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the draw of generators and of sampling.")] = 0,
    threads: ThreadsOpt = 1,
) -> None:
    """Answer image instructions with a pool of generators, k per instruction -> OUT/pool.jsonl."""
    from headvec.data import iter_jsonl
    from headvec.feedback.pool import Instruction, build_pool

    set_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    if toy:
        from headvec.models import load
        from headvec.toyworld.feedback import toy_generators, toy_instructions

        items = toy_instructions(toy, seed, out)
        generators = toy_generators(load("toy", device="cpu"), seed=seed)
        root: Path = out
    elif instructions is not None:
        if not generator or len(generator) < k:
            raise HeadvecError(f"give at least {k} --generator options (one per response of an instruction)")
        items = []
        for number, obj in iter_jsonl(instructions):
            if "id" not in obj or "prompt" not in obj:
                raise HeadvecError(f"{instructions} line {number}: an instruction needs 'id' and 'prompt'")
            meta = {key: v for key, v in obj.items() if key not in ("id", "prompt", "img_path")}
            items.append(Instruction(str(obj["id"]), obj["prompt"], obj.get("img_path"), meta))
        parsed = [_parse_generator(spec) for spec in generator]
        generators = [_generator(*p, seed) for p in parsed]
        root = images or instructions.parent
    else:
        raise HeadvecError(
            "give --toy N (toy-world instructions) or --instructions FILE with --generator specs"
        )
    stats = build_pool(items, generators, out / "pool.jsonl", images=root, k=k, seed=seed)
    console.print(f"{stats.written} rows written, {stats.skipped} already there -> {out / 'pool.jsonl'}")


@app.command()
@user_errors
def annotate(
    source: Annotated[Path, typer.Argument(help="Pool JSONL (VLFeedback rows without annotations).")],
    out: Annotated[Path, typer.Argument(help="Annotated JSONL (appended; rows already there are skipped).")],
    annotator: Annotated[
        str, typer.Option(help="oracle (toy world), openai (official template), or rm.")
    ] = "oracle",
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint (annotator openai).")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model name at the endpoint.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="OPENAI_API_KEY", help="Endpoint API key.")] = None,
    rm: Annotated[str | None, typer.Option(help="Saved reward model directory (annotator rm).")] = None,
    images: ImagesOpt = None,
    threads: ThreadsOpt = 1,
) -> None:
    """Rate every response on helpfulness, ethics and visual faithfulness (1-5 + rationale)."""
    from headvec.feedback.annotate import OpenAIAnnotator, ScorerAnnotator, annotate_file

    set_threads(threads)
    if annotator == "oracle":
        from headvec.toyworld.feedback import OracleAnnotator

        chosen: object = OracleAnnotator()
    elif annotator == "openai":
        chosen = OpenAIAnnotator(base_url, judge_model, api_key=api_key)
    elif annotator == "rm":
        if not rm:
            raise HeadvecError("--annotator rm needs --rm DIRECTORY (a saved reward model)")
        from headvec.rewards.loading import load_reward_model

        chosen = ScorerAnnotator(load_reward_model(rm), Path(rm).name)
    else:
        raise HeadvecError(f"unknown --annotator {annotator!r}; use oracle, openai or rm")
    stats = annotate_file(source, out, chosen, images=images)  # type: ignore[arg-type]
    console.print(
        f"{stats.annotated} rows annotated ({stats.failures} failed to parse, kept), "
        f"{stats.skipped} already there -> {out}"
    )
    for example in stats.failure_examples[:3]:
        console.print(f"  unparsed: {example}", highlight=False)


@app.command()
@user_errors
def pairs(
    annotated: Annotated[Path, typer.Argument(help="Annotated JSONL (VLFeedback schema).")],
    out: Annotated[
        Path, typer.Argument(help="Directory for pairs.train.jsonl, pairs.test.jsonl, stats.json.")
    ],
    pairing: Annotated[
        str, typer.Option(help="official, longest, top-choice or random-labels.")
    ] = "official",
    test_size: Annotated[float, typer.Option(help="Held-out share (official: 0.005).")] = 0.005,
    seed: Annotated[int, typer.Option(help="Split seed (official: 42).")] = 42,
    images: ImagesOpt = None,
) -> None:
    """Preference pairs as the official code builds them (or a baseline), with the official hold-out."""
    from headvec.feedback.pairs import build_pairs, model_counts, split_pairs
    from headvec.feedback.schema import read_feedback

    built, stats = build_pairs(read_feedback(annotated), pairing)
    train, test = split_pairs(built, test_size=test_size, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, subset in (("train", train), ("test", test)):
        with (out / f"pairs.{name}.jsonl").open("w") as handle:
            handle.writelines(json.dumps(p.to_dict()) + "\n" for p in subset)
    summary = {
        "stats": stats.to_dict(),
        "train": len(train),
        "test": len(test),
        "models": model_counts(built),
        "image_root": str((images or annotated.parent).resolve()),  # where `headvec dpo train` finds images
    }
    (out / "stats.json").write_text(json.dumps(summary, indent=1))
    console.print(
        f"{stats.pairs} pairs from {stats.instructions} instructions ({stats.ties} ties, {stats.non_numeric} "
        f"non-numeric dropped): {len(train)} train, {len(test)} held out -> {out}"
    )


@app.command()
@user_errors
def run(
    out: OutArg,
    instructions: Annotated[
        int, typer.Option(help="Toy-world instructions (half captions, half VQA).")
    ] = 600,
    eval_items: Annotated[int, typer.Option(help="Held-out items per evaluation metric.")] = 200,
    seed: Annotated[int, typer.Option()] = 0,
    threads: ThreadsOpt = 1,
) -> None:
    """The whole default loop on the toy world: pool -> oracle annotation -> pairs -> DPO -> evaluation."""
    from headvec.toyworld.feedback import PipelineSize, run_pipeline

    set_threads(threads)
    report = run_pipeline(out, PipelineSize(instructions=instructions, eval_items=eval_items, seed=seed))
    before, after = report["before"], report["oracle"]["after"]
    for metric in ("chair_s", "chair_i", "vqa", "judge"):
        console.print(f"{metric}: {before[metric][0]:.3f} -> {after[metric][0]:.3f}")
    console.print(f"seconds per stage: {report['seconds']} -> {out / 'report.json'}")


@app.command()
@user_errors
def compare(
    out: OutArg,
    instructions: Annotated[
        int, typer.Option(help="Toy-world instructions (half captions, half VQA).")
    ] = 600,
    eval_items: Annotated[int, typer.Option(help="Held-out items per evaluation metric.")] = 200,
    conditions: Annotated[str, typer.Option(help="Comma-separated conditions (default: all).")] = "",
    seed: Annotated[int, typer.Option()] = 0,
    dpo_seed: Annotated[
        int, typer.Option(help="DPO seed (and the random-label coin); another seed writes CONDITION-seedN/.")
    ] = 0,
    threads: ThreadsOpt = 1,
) -> None:
    """Annotators and pairings compared under the same DPO settings on the toy world."""
    from headvec.toyworld.feedback import (
        CONDITIONS,
        PipelineSize,
        compare_annotators,
        comparison_table,
        control_table,
        plot_comparison,
        versus_control,
    )

    set_threads(threads)
    wanted = [c.strip() for c in conditions.split(",") if c.strip()] or list(CONDITIONS)
    size = PipelineSize(instructions=instructions, eval_items=eval_items, seed=seed, dpo_seed=dpo_seed)
    report = compare_annotators(out, size, wanted)
    for name, result in report["conditions"].items():
        change = result["change"]
        console.print(f"{name}: chair_i {change['chair_i'][0]:+.3f}, vqa {change['vqa'][0]:+.3f}")
    contrasts = versus_control(out, wanted, size)
    if contrasts:
        report["versus_random_labels"] = contrasts
        (out / f"{size.comparison_name}.json").write_text(json.dumps(report, indent=1))
    tables = comparison_table(report) + "\n\n" + control_table(contrasts) + "\n"
    (out / f"{size.comparison_name}.md").write_text(tables)
    plot_comparison(report, out / f"{size.comparison_name}.png")
    console.print(f"-> {out / size.comparison_name}.json, .md, .png")
