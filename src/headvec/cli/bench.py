"""Reward-model benchmarks: run any reward model or judge on VL-RewardBench, Multimodal RewardBench or
RewardBench (resumable, seeded, local or on Ray) and report (serve a judge model: `headvec serve chat`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headvec.cli.common import DEFAULT_DEVICE, DeviceOpt, console, set_threads, user_errors

app = typer.Typer(help=__doc__, no_args_is_help=True)


@app.command("run")
@user_errors
def run(
    benchmark: Annotated[str, typer.Argument(help="vlrewardbench, multimodal-rewardbench or rewardbench.")],
    rm: Annotated[
        str,
        typer.Option(
            "--rm",
            help="judge:MODEL, judge-score:MODEL, openai:URL:MODEL, artifact:DIR, baseline:NAME or "
            "python:module:factory.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder (rerun the same command to resume).")],
    data: Annotated[
        str | None,
        typer.Option(help="Local parquet/JSONL/JSON file or folder, or a hub id (default: the official id)."),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split (default: test / filtered).")] = None,
    prior_sets: Annotated[
        str | None,
        typer.Option(
            help="RewardBench only: also score its Prior Sets from this folder or hub id "
            "(allenai/preference-test-sets), for the official weighted score."
        ),
    ] = None,
    k: Annotated[
        int | None,
        typer.Option(
            help="Judge samples per item, majority-voted (default: 1; a judge on the official prompt: "
            "the benchmark's, VL-RewardBench 10).",
            min=1,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the per-sample answer order and sampling.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Only the first N items.", min=1)] = None,
    backend: Annotated[str, typer.Option(help="local or ray.")] = "local",
    workers: Annotated[int, typer.Option(help="Ray actors (local Ray cluster CPUs).", min=1)] = 1,
    ray_address: Annotated[
        str | None, typer.Option(help="Existing Ray cluster (default: start one).")
    ] = None,
    chunk_size: Annotated[
        int, typer.Option(help="Items per unit of work (and per local batch).", min=1)
    ] = 16,
    template: Annotated[
        str | None,
        typer.Option(
            help="Judge prompt: vlrewardbench, mtbench, rewardbench, toyworld or toyworld-xx/yy/zz "
            "(the toy world's other languages) (default: official)."
        ),
    ] = None,
    order: Annotated[
        str | None,
        typer.Option(help="Answer order: seeded, stored or both (default: the benchmark's official one)."),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Judge sampling temperature (0 = greedy; default: official).")
    ] = None,
    top_p: Annotated[float | None, typer.Option(help="Judge nucleus sampling (default: official).")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Judge output limit (default: official).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Local judge batch size.", min=1)] = 8,
    device: DeviceOpt = DEFAULT_DEVICE,
    timeout: Annotated[float, typer.Option(help="Endpoint request timeout, seconds.")] = 60.0,
    retries: Annotated[int, typer.Option(help="Endpoint retries per request.", min=0)] = 3,
    concurrency: Annotated[int, typer.Option(help="Endpoint requests in flight.", min=1)] = 8,
    threads: Annotated[int, typer.Option(help="torch CPU threads here (0 = torch default).")] = 1,
) -> None:
    """Evaluate a reward model on a benchmark into OUT (results.jsonl, metrics.json, report.md/html)."""

    from headvec.harness import DEFAULT_TEMPLATE, RunSettings, load_benchmark, run_benchmark, write_report
    from headvec.harness.runner import official_defaults
    from headvec.models import resolve_device
    from headvec.rewards.loading import RMOptions

    set_threads(threads)
    if template is not None and template.startswith("toyworld-"):  # the toy judge in another language
        from headvec.harness import TEMPLATES
        from headvec.toyworld.adapters import toy_judge_templates

        TEMPLATES.update(toy_judge_templates())
    items = load_benchmark(benchmark, data, split, prior_sets)
    # the official sampling defaults are for a generative judge on the benchmark's own prompt
    official_judge = rm.split(":", 1)[0] in ("judge", "openai") and template in (
        None,
        DEFAULT_TEMPLATE[benchmark],
    )
    official = official_defaults(
        benchmark,
        sampling=official_judge,
        k=k,
        order=order,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
    )
    if limit is not None:
        items = items[:limit]
    options = RMOptions(
        template=template or DEFAULT_TEMPLATE[benchmark],
        temperature=official["temperature"] if official["temperature"] is not None else 0.0,
        top_p=official["top_p"] if official["top_p"] is not None else 1.0,
        max_new_tokens=official["max_new_tokens"],
        batch_size=batch_size,
        device=resolve_device(device),  # the run records where it ran: "auto" resumes on the same device
        timeout=timeout,
        retries=retries,
        concurrency=concurrency,
    )
    settings = RunSettings(
        benchmark=benchmark,
        rm=rm,
        k=official["k"] or 1,
        seed=seed,
        source=data,
        split=split,
        prior_sets=prior_sets,
        limit=limit,
        options=options.to_dict(),
        order=official["order"],
    )

    def progress(done: int, total: int) -> None:
        console.print(f"{done}/{total} items", end="\r")

    run_benchmark(
        items,
        settings,
        out,
        backend=backend,
        workers=workers,
        chunk_size=chunk_size,
        ray_address=ray_address,
        progress=progress,
    )
    metrics = write_report(out)
    console.print(
        f"{benchmark}: overall {100 * metrics['overall_accuracy']:.1f}% "
        f"[{100 * metrics['overall_ci95'][0]:.1f}, {100 * metrics['overall_ci95'][1]:.1f}], "
        f"macro {100 * metrics['macro_accuracy']:.1f}%, unparsed items {metrics['unparsed_items']} "
        f"(n={metrics['n']}, k={metrics['k']}) -> {out}/report.md"
    )


@app.command("report")
@user_errors
def report(out: Annotated[Path, typer.Argument(help="A run folder written by 'headvec bench run'.")]) -> None:
    """(Re)write metrics.json, report.md and report.html of a run folder, finished or not."""
    from headvec.harness.report import write_report

    metrics = write_report(out)
    console.print(
        f"overall {100 * metrics['overall_accuracy']:.1f}%, macro {100 * metrics['macro_accuracy']:.1f}% "
        f"over {metrics['n']} items -> {out}/report.md, {out}/report.html"
    )
