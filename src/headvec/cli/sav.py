"""``headvec sav``: fit, apply and evaluate Sparse Attention Vector classifiers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

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

app = typer.Typer(
    help="Sparse Attention Vectors: few-shot classifiers from a few heads.", no_args_is_help=True
)

TemplateOpt = Annotated[str, typer.Option(help="User message around each text; must contain {text}.")]
ChatOpt = Annotated[bool, typer.Option(help="Wrap prompts in the model's chat template.")]


def _inputs(rows) -> list:
    from headvec.methods.sav import ClassifierInput

    return [ClassifierInput(row.text, [row.image] if row.image else []) for row in rows]


def _head_count(text: str) -> int | str:
    from headvec.errors import HeadvecError

    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise HeadvecError(f"--n-heads must be a number or 'auto', got {text!r}") from None


@app.command("fit")
@user_errors
def fit(
    model: ModelArg,
    train: Annotated[Path, typer.Argument(help="JSONL rows: text, label, optional image path.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the fitted classifier.")],
    n_heads: Annotated[
        str, typer.Option(help="Heads that vote: a number, or 'auto' (chosen by LOO).")
    ] = "20",
    template: TemplateOpt = "{text}",
    scoring: Annotated[str, typer.Option(help="leave_one_out or leave_in (published).")] = "leave_one_out",
    chat: ChatOpt = True,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 0,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """Fit a SAV classifier on labelled rows and save it (safetensors + JSON)."""
    from headvec.data import LabelledRow, read_text_image_rows
    from headvec.methods.sav import SparseAttentionVectors

    rows = read_text_image_rows(train, LabelledRow)
    loaded = load_model(
        model, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
    )
    sav = SparseAttentionVectors(
        loaded,
        _head_count(n_heads),
        template,
        scoring=scoring,
        chat=chat,
        batch_size=batch_size,
        progress=True,
    )
    sav.fit(_inputs(rows), [row.label for row in rows])
    sav.save_pretrained(out)
    heads = ", ".join(f"L{layer}H{head}" for layer, head in sav.heads_.tolist()[:10])
    console.print(f"fitted on {len(rows)} rows, {len(sav.classes_)} classes; top heads: {heads} … -> {out}")


@app.command("predict")
@user_errors
def predict(
    classifier: Annotated[Path, typer.Argument(help="Directory written by `headvec sav fit`.")],
    data: Annotated[Path, typer.Argument(help="JSONL rows: text, optional image, optional label.")],
    out: Annotated[Path | None, typer.Option(help="Write predictions as JSONL here.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model to use (default: the one it was fitted on).")
    ] = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 0,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """Classify rows; prints accuracy when the rows carry labels."""
    from headvec.data import read_text_image_rows
    from headvec.methods.artifacts import fitted_model_name
    from headvec.methods.sav import SparseAttentionVectors, accuracy

    rows = read_text_image_rows(data)
    name = model or fitted_model_name(classifier)
    loaded = load_model(
        name, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
    )
    sav = SparseAttentionVectors.from_pretrained(classifier, loaded).set_params(progress=True)
    predicted, shares = sav.predict_votes(_inputs(rows))
    if out is not None:
        with out.open("w") as handle:
            for row, label, share in zip(rows, predicted, shares.tolist(), strict=True):
                votes = dict(zip(sav.classes_, share, strict=True))
                handle.write(json.dumps({"text": row.text, "prediction": label, "votes": votes}) + "\n")
    labels = [(row.model_extra or {}).get("label") for row in rows]
    if all(label is not None for label in labels):
        console.print(f"accuracy {accuracy(predicted, labels, sav.classes_):.3f} on {len(rows)} rows")
    else:
        for row, label in list(zip(rows, predicted, strict=True))[:20]:
            console.print(f"{label}\t{row.text[:80]}")
    if out is not None:
        console.print(f"predictions -> {out}")


@app.command("eval")
@user_errors
def evaluate(
    model: ModelArg,
    task: Annotated[
        str,
        typer.Option(
            help="Built-in tasks, comma-separated: toy-color, toy-shape, toy-count, toy-match, topics."
        ),
    ] = "",
    train: Annotated[Path | None, typer.Option(help="Labelled JSONL pool to draw shots from.")] = None,
    test: Annotated[Path | None, typer.Option(help="Labelled JSONL test set.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for results (markdown, JSON, plots).")] = Path(
        "runs/sav"
    ),
    shots: Annotated[str, typer.Option(help="Shots per class to sweep.")] = "1,2,5,10,20",
    n_heads: Annotated[int, typer.Option(min=1)] = 20,
    n_draws: Annotated[int, typer.Option(min=1, help="Seeded shot draws per shot count.")] = 3,
    template: TemplateOpt = "{text}",
    chat: ChatOpt = True,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 0,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """SAV vs zero-shot, in-context, and probe baselines at each shot count; tables and plots."""
    from headvec.data import LabelledRow, read_text_image_rows
    from headvec.errors import HeadvecError
    from headvec.evaluation.classification import ClassificationTask, evaluate_classification, write_report
    from headvec.evaluation.classification_tasks import build_task

    tasks: list[ClassificationTask] = [build_task(name, seed) for name in task.split(",") if name.strip()]
    if train is not None or test is not None:
        if train is None or test is None:
            raise HeadvecError("give both --train and --test (or a built-in --task)")
        pool_rows = read_text_image_rows(train, LabelledRow)
        test_rows = read_text_image_rows(test, LabelledRow)
        tasks.append(
            ClassificationTask(
                train.stem,
                _inputs(pool_rows),
                [r.label for r in pool_rows],
                _inputs(test_rows),
                [r.label for r in test_rows],
                template=template,
                chat=chat,
            )
        )
    if not tasks:
        raise HeadvecError("nothing to evaluate: give --task NAME or --train/--test files")
    loaded = load_model(
        model, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
    )
    shot_counts = parse_ints(shots, "shots") or [1, 2, 5, 10, 20]
    for spec in tasks:
        results = evaluate_classification(
            loaded, spec, shot_counts, n_heads=n_heads, seed=seed, n_draws=n_draws, batch_size=batch_size
        )
        report = write_report(results, out)
        console.print(report.read_text())
    console.print(f"results, tables and plots -> {out}")
