"""``headvec mtv``: Multimodal Task Vectors (fit, run, eval)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from headvec.cli.common import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DeviceOpt,
    DtypeOpt,
    ModelArg,
    RemoteOpt,
    ThreadsOpt,
    console,
    load_model,
    parse_ints,
    user_errors,
)
from headvec.errors import HeadvecError

app = typer.Typer(help="Multimodal Task Vectors: many-shot ICL compressed into heads.", no_args_is_help=True)

TOY_TASK = "toy-icl"
TaskOpt = Annotated[
    str,
    typer.Option(
        "--task",
        help=f"'{TOY_TASK}' (the toy world's in-context tasks) or a JSONL file of episodes "
        "(format: docs/guide/mtv.md).",
    ),
]
IclTaskOpt = Annotated[
    str, typer.Option(help="With --task toy-icl: color, shape, size or count (fit) / comma list (eval).")
]
NPromptsOpt = Annotated[int, typer.Option(min=1, help="T: many-shot prompts averaged for the means.")]
NShotsOpt = Annotated[int, typer.Option(min=0, help="N: shots per mean-activation prompt.")]
StepsOpt = Annotated[int, typer.Option(min=0, help="REINFORCE steps.")]
SamplesOpt = Annotated[int, typer.Option(min=2, help="Head masks sampled per REINFORCE step.")]
LrOpt = Annotated[float, typer.Option(help="Adam learning rate of the head logits.")]
ModeOpt = Annotated[str, typer.Option(help="replace (the paper) or add the means.")]
SeedOpt = Annotated[int, typer.Option(help="Seeds every random choice (shots, masks, items).")]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]


def _toy_episodes(icl_task: str, n: int, split: str, seed: int, language: str, shots: int = 4):
    from headvec.evaluation.mtv import toy_icl_episodes

    return toy_icl_episodes(icl_task, n, split, seed, language, shots)


@app.command()
@user_errors
def fit(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", help="Directory for the task vector and its plots.")],
    task: TaskOpt = TOY_TASK,
    icl_task: IclTaskOpt = "color",
    n_train: Annotated[int, typer.Option(help="Toy training episodes (5 answered examples each).")] = 60,
    language: Annotated[str, typer.Option(help="Toy-world language: en or xx.")] = "en",
    n_prompts: NPromptsOpt = 100,
    n_shots: NShotsOpt = 4,
    steps: StepsOpt = 600,
    samples_per_step: SamplesOpt = 32,
    lr: LrOpt = 0.1,
    mode: ModeOpt = "replace",
    inference_shots: Annotated[int, typer.Option(min=0, help="Shots kept in the prompt at inference.")] = 0,
    chat: Annotated[bool, typer.Option(help="Use the model's chat template.")] = True,
    seed: SeedOpt = 0,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    trust_remote_code: RemoteOpt = False,
    threads: ThreadsOpt = 0,
    progress: ProgressOpt = True,
) -> None:
    """Fit a task vector on MODEL and save it (safetensors + JSON) with its loss curve and head map."""
    import time

    from headvec.evaluation.mtv import fit_summary, plot_head_maps, plot_loss_curves
    from headvec.methods.mtv import MultimodalTaskVector, read_episodes_jsonl

    loaded = load_model(
        model, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
    )
    if task == TOY_TASK:
        episodes = _toy_episodes(icl_task, n_train, "train", seed, language)
        name = f"toy {icl_task}"
    else:
        episodes = read_episodes_jsonl(task)
        name = Path(task).stem
    mtv = MultimodalTaskVector(
        loaded,
        n_prompts=n_prompts,
        n_shots=n_shots,
        steps=steps,
        samples_per_step=samples_per_step,
        lr=lr,
        mode=mode,  # type: ignore[arg-type]
        inference_shots=inference_shots,
        chat=chat,
        seed=seed,
        progress=progress,
    )
    start = time.perf_counter()
    mtv.fit(episodes)
    seconds = time.perf_counter() - start
    mtv.save_pretrained(out)
    fits = {name: fit_summary(mtv)}
    plot_loss_curves(fits, out / "loss_curve.png")
    plot_head_maps(fits, out / "head_map.png")
    curve = mtv.loss_curve_
    tenth = max(1, len(curve) // 10)
    trend = (
        f"; sampled-mask loss {sum(curve[:tenth]) / tenth:.3f} -> {sum(curve[-tenth:]) / tenth:.3f}"
        if curve
        else ""
    )
    console.print(
        f"fitted on {mtv.n_examples_} examples in {seconds:.0f} s: {len(mtv.heads_)} of "
        f"{loaded.arch.n_layers * loaded.arch.n_heads} heads{trend} -> {out}"
    )


@app.command()
@user_errors
def run(
    directory: Annotated[Path, typer.Argument(help="A task vector saved by `headvec mtv fit`.")],
    data: Annotated[
        Path | None, typer.Option(help="JSONL of episodes or single turns to answer (docs/guide/mtv.md).")
    ] = None,
    text: Annotated[str | None, typer.Option(help="One query text (instead of --data).")] = None,
    image: Annotated[list[Path] | None, typer.Option(help="Image(s) for --text.")] = None,
    model: Annotated[
        str | None, typer.Option(help="The model (default: the one the vector was fitted on).")
    ] = None,
    shots: Annotated[int | None, typer.Option(help="Shots of each episode kept in the prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 10,
    out: Annotated[Path | None, typer.Option(help="Write the answers as JSONL here.")] = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    trust_remote_code: RemoteOpt = False,
    threads: ThreadsOpt = 0,
) -> None:
    """Answer queries with the task vector written into its heads (at every decoding step)."""
    from headvec.methods.artifacts import fitted_model_name
    from headvec.methods.mtv import IclEpisode, MultimodalTaskVector, answers_match, read_episodes_jsonl
    from headvec.models import Example

    if (data is None) == (text is None):
        raise HeadvecError("give either --data FILE.jsonl or --text (with optional --image)")
    name = model or fitted_model_name(directory)
    loaded = load_model(
        name, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
    )
    mtv = MultimodalTaskVector.from_pretrained(directory, loaded, max_new_tokens=max_new_tokens)
    if data is not None:
        episodes = read_episodes_jsonl(data)
    else:
        episodes = [IclEpisode((), Example(text or "", [str(p) for p in image or []], None))]
    answers = mtv.generate(episodes, n_shots=shots)
    rows = [
        {"query": e.query.text, "answer": a, **({"target": e.query.answer} if e.query.answer else {})}
        for e, a in zip(episodes, answers, strict=True)
    ]
    if out is not None:
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = Table(title=f"MTV answers ({len(mtv.heads_)} heads, {mtv.mode})")
    for column in ("query", "answer", "target"):
        table.add_column(column)
    for row in rows[:20]:
        table.add_row(row["query"], row["answer"], row.get("target", ""))
    console.print(table)
    scored = [r for r in rows if "target" in r]
    if scored:
        hits = sum(answers_match([r["answer"] for r in scored], [r["target"] for r in scored]))
        console.print(f"exact match: {hits}/{len(scored)} = {hits / len(scored):.3f}")


@app.command("eval")
@user_errors
def evaluate(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", help="Directory for results.md/json and the plots.")],
    task: TaskOpt = TOY_TASK,
    test: Annotated[
        Path | None, typer.Option(help="With a JSONL --task: the test episodes (grouped by 'task').")
    ] = None,
    icl_tasks: IclTaskOpt = "color,shape,size,count",
    n_train: Annotated[int, typer.Option(help="Toy training episodes per task.")] = 60,
    n_test: Annotated[int, typer.Option(help="Toy test episodes per task.")] = 50,
    language: Annotated[str, typer.Option(help="Toy-world language: en or xx.")] = "en",
    match: Annotated[
        str, typer.Option(help="Answer match: exact (first line) or first-word (the optimised token).")
    ] = "exact",
    icl_shots: Annotated[str, typer.Option(help="Plain ICL baselines (shots in the prompt).")] = (
        "0,1,2,4,8,16,24"
    ),
    scaling: Annotated[str, typer.Option(help="T values of the scaling sweep (x n_shots shots).")] = (
        "1,5,25,100"
    ),
    reuse_heads: Annotated[
        bool, typer.Option(help="Scaling: keep the full fit's heads, only recompute the means.")
    ] = False,
    n_prompts: NPromptsOpt = 100,
    n_shots: NShotsOpt = 4,
    steps: StepsOpt = 600,
    samples_per_step: SamplesOpt = 32,
    lr: LrOpt = 0.1,
    mode: ModeOpt = "replace",
    seed: SeedOpt = 0,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    trust_remote_code: RemoteOpt = False,
    threads: ThreadsOpt = 0,
    progress: ProgressOpt = True,
) -> None:
    """Zero-shot vs k-shot ICL vs MTV vs MTV + 1-shot with bootstrap CIs, scaling and cost per query."""
    from headvec.evaluation.mtv import (
        ToyIclConfig,
        evaluate_mtv,
        evaluate_toy_icl,
        group_by_task,
        render_markdown,
        write_report,
    )
    from headvec.methods.mtv import read_episodes_jsonl

    loaded = load_model(
        model, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
    )
    config = ToyIclConfig(
        tasks=tuple(t.strip() for t in icl_tasks.split(",") if t.strip()),
        language=language,
        n_train=n_train,
        n_test=n_test,
        icl_shots=tuple(parse_ints(icl_shots, "icl-shots") or [0, 4]),
        scaling_prompts=tuple(parse_ints(scaling, "scaling") or [n_prompts]),
        refit_heads_for_scaling=not reuse_heads,
        seed=seed,
        match=match.replace("-", "_"),
        mtv={
            "n_prompts": n_prompts,
            "n_shots": n_shots,
            "steps": steps,
            "samples_per_step": samples_per_step,
            "lr": lr,
            "mode": mode,
            "seed": seed,
        },
    )
    if task == TOY_TASK:
        results = evaluate_toy_icl(loaded, config, progress=progress)
    else:
        if test is None:
            raise HeadvecError("a JSONL --task needs --test FILE.jsonl with held-out episodes")
        train_groups, test_groups = (
            group_by_task(read_episodes_jsonl(task)),
            group_by_task(read_episodes_jsonl(test)),
        )
        missing = sorted(set(test_groups) - set(train_groups))
        if missing:
            raise HeadvecError(f"test tasks {missing} have no training episodes in {task}; add them")
        datasets = {name: (train_groups[name], test_groups[name]) for name in test_groups}
        results = evaluate_mtv(loaded, datasets, config, progress=progress)
    command = "headvec " + shlex.join(sys.argv[1:])
    written = write_report(results, out, command)
    console.print(render_markdown(results, command))
    console.print(f"wrote {', '.join(p.name for p in written)} -> {out}")
