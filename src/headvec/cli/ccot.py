"""``headvec ccot``: compositional chain-of-thought (scene graph, then answer) against its baselines."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from headvec.cli.common import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DeviceOpt,
    DtypeOpt,
    RemoteOpt,
    ThreadsOpt,
    console,
    load_model,
    user_errors,
)

HELP = "Compositional chain-of-thought: a scene graph, then the answer."
app = typer.Typer(help=HELP, no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Compositional chain-of-thought: a scene graph, then the answer."""


def _read_items(path: Path) -> list:
    """JSONL rows ``{"question", "image", "answer", "options"?, "qtype"?, "graph"?}``; image paths are
    relative to the file and must exist."""
    import json

    from pydantic import BaseModel

    from headvec.data import read_rows
    from headvec.errors import DataError
    from headvec.methods.ccot import VQAItem

    class Row(BaseModel):
        question: str
        image: str
        answer: str | None = None
        options: list[str] = []
        qtype: str = ""
        graph: str | dict | None = None

    items = []
    for number, row in enumerate(read_rows(path, Row), start=1):
        image = Path(row.image) if Path(row.image).is_absolute() else path.parent / row.image
        if not image.is_file():
            raise DataError(f"{path} row {number}: image file not found: {image}; fix the path")
        graph = json.dumps(row.graph) if isinstance(row.graph, dict) else row.graph
        items.append(VQAItem(row.question, str(image), row.answer, tuple(row.options), row.qtype, graph))
    return items


@app.command("eval")
@user_errors
def evaluate(
    model: Annotated[
        str | None, typer.Argument(help="Hub id, local directory or alias (toy); omit with --endpoint.")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1).")
    ] = None,
    endpoint_model: Annotated[str, typer.Option(help="Model name sent to the endpoint.")] = "default",
    api_key: Annotated[
        str | None, typer.Option(help="API key for the endpoint.", envvar="OPENAI_API_KEY")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="JSONL of questions (question, image, answer, options, qtype, graph); "
            "default: held-out toy-world questions."
        ),
    ] = None,
    n: Annotated[int, typer.Option(min=1, help="Toy-world questions (the nine types balanced).")] = 270,
    seed: int = 0,
    methods: Annotated[
        str, typer.Option(help="Comma-separated: direct, cot, ccot, ccot_answer, ccot_gold.")
    ] = "direct,cot,ccot,ccot_gold",
    prompts: Annotated[
        str,
        typer.Option(
            help="auto (toyworld for the toy model, else official), official, toyworld, toyworld-question."
        ),
    ] = "auto",
    graph_tokens: Annotated[int, typer.Option(min=1, help="Cap on the scene graph (official: 256).")] = 256,
    answer_tokens: Annotated[int, typer.Option(min=1, help="Cap on an answer.")] = 64,
    cot_tokens: Annotated[int, typer.Option(min=1, help="Cap on a zero-shot chain of thought.")] = 256,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    work: Annotated[Path, typer.Option(help="Records of every answer (a rerun resumes).")] = Path(
        "runs/ccot"
    ),
    out: Annotated[Path, typer.Option(help="Directory for results.json and accuracy.png.")] = Path(
        "docs/ccot"
    ),
    report: Annotated[Path, typer.Option(help="Markdown page whose results block is (re)written.")] = Path(
        "docs/ccot.md"
    ),
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 0,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """CCoT vs direct answer vs zero-shot CoT per question type, with scene-graph validity and quality."""
    from headvec.errors import HeadvecError
    from headvec.evaluation.ccot import endpoint_generator, run_methods, summarize, toy_items, write_report
    from headvec.methods.ccot import METHODS, CompositionalCoT, LocalGenerator, get_prompts

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise HeadvecError(f"unknown method(s) {unknown or methods!r}; use some of {', '.join(METHODS)}")
    if (model is None) == (endpoint is None):
        raise HeadvecError("give a MODEL to load or --endpoint URL (one of the two)")
    if prompts == "auto":
        prompts = "toyworld" if model == "toy" else "official"
    wording = get_prompts(prompts)
    if data is None:
        items, questions = toy_items(n, seed)
    else:
        items, questions = _read_items(data), None
    if endpoint is not None:
        generator = endpoint_generator(endpoint, endpoint_model, api_key=api_key)
        name = f"{endpoint_model} at {endpoint}"
    else:
        loaded = load_model(
            model, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
        )
        generator = LocalGenerator(loaded, batch_size=batch_size)
        name = model
    ccot = CompositionalCoT(
        generator,
        wording,
        graph_max_new_tokens=graph_tokens,
        answer_max_new_tokens=answer_tokens,
        cot_max_new_tokens=cot_tokens,
    )
    setup = {
        "model": name,
        "prompts": wording.name,
        "data": str(data) if data else f"toy world, test split, n={n}, seed={seed}",
        "graph_tokens": graph_tokens,
        "answer_tokens": answer_tokens,
        "cot_tokens": cot_tokens,
        "decoding": "greedy",
    }
    # the weights too, so a retrained model never resumes another model's records
    config = {**setup, "weights": loaded.identity["weights_fingerprint"] if endpoint is None else None}
    records = run_methods(ccot, items, chosen, work, questions=questions, config=config)
    summary = summarize(records)
    command = (
        "headvec ccot " + " ".join(shlex.quote(arg) for arg in sys.argv[sys.argv.index("eval") :])
        if "eval" in sys.argv
        else "headvec ccot eval"
    )
    page = write_report(summary, out, report, command=command, setup=setup)
    for method, cells in summary["accuracy"].items():
        console.print(
            f"{method:12s} accuracy {cells['all']['mean']:.3f} "
            f"[{cells['all']['low']:.3f}, {cells['all']['high']:.3f}]"
        )
    console.print(f"records -> {work}; results and plot -> {out}; report -> {page}")
