"""Internal consistency: vote over reasoning paths weighted by layer agreement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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
    user_errors,
)
from headvec.errors import HeadvecError

app = typer.Typer(
    help="Internal consistency: vote over reasoning paths weighted by layer agreement.",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    """Internal consistency: vote over reasoning paths weighted by layer agreement."""


METHOD_NAMES = {
    "self_consistency_stated": "self-consistency (stated answers)",
    "self_consistency": "self-consistency (plain vote, lens answers)",
    "confidence": "confidence-weighted vote",
    "internal_consistency": "IC-weighted vote",
}


def toy_questions(loaded: Any, n: int, seed: int, language: str, split: str = "test") -> tuple[list, str]:
    """The toy world's chain-of-thought questions whose answer is one word (counts, yes/no relations),
    with the answer trigger in ``language``; ``what is left of X`` (a multi-word answer) is left out."""
    from headvec.methods.consistency import ICQuestion
    from headvec.toyworld.language import LANGUAGES, NUMBERS, lexicon, translate
    from headvec.toyworld.model import IMAGE_SIZE
    from headvec.toyworld.tasks import FINAL, make_cot

    if language not in LANGUAGES:
        raise HeadvecError(f"unknown toy-world language {language!r}; choose one of {', '.join(LANGUAGES)}")
    words = lexicon(language)
    counts, yes_no = tuple(words[w] for w in NUMBERS), (words["yes"], words["no"])
    questions = []
    for item in make_cot(seed, n, language, split=split):
        qtype = item.meta["qtype"]
        if qtype == "relation":
            continue
        questions.append(
            ICQuestion(
                prompt=loaded.build_prompt(item.prompt, [item.image(IMAGE_SIZE)]),
                labels=yes_no if qtype == "relation_yesno" else counts,
                gold=words[item.meta["label"]],
                kind=qtype,
            )
        )
    return questions, translate(FINAL, language)


def file_questions(loaded: Any, path: Path) -> list:
    """Your own questions: JSONL rows ``{"text", "labels": [...], "answer", "image"?, "kind"?}``; each
    text is wrapped in the model's chat template, and ``answer`` must be one of ``labels``."""
    from headvec.data import iter_jsonl
    from headvec.errors import DataError
    from headvec.methods.consistency import ICQuestion

    questions = []
    for number, row in iter_jsonl(path):
        text, labels, answer = row.get("text"), row.get("labels"), row.get("answer")
        if not isinstance(text, str) or not isinstance(answer, str):
            raise DataError(f"{path} line {number}: needs string fields 'text' and 'answer'")
        if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
            raise DataError(f"{path} line {number}: 'labels' must be a list of two or more strings")
        if answer not in labels:
            raise DataError(f"{path} line {number}: answer {answer!r} is not one of the labels {labels}")
        image = row.get("image")
        if image is not None:
            image = Path(image) if Path(image).is_absolute() else path.parent / image
        prompt = loaded.build_prompt(text, [image] if image is not None else [])
        questions.append(ICQuestion(prompt, tuple(labels), answer, str(row.get("kind", ""))))
    if not questions:
        raise DataError(f"{path} holds no rows")
    return questions


def _fmt(ci: Any) -> str:
    mean, low, high = ci
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def write_report(results: dict[str, Any], out: Path, command: str) -> Path:
    """results.json, votes.png (accuracy vs number of votes) and results.md in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    runs = results["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False)
    for ax, (language, run) in zip(axes[0], runs.items(), strict=True):
        for method, curve in run["curves"].items():
            ax.plot(range(1, len(curve) + 1), curve, marker=".", label=METHOD_NAMES[method])
        ax.set_title(f"{results['model']}, {language}: {run['n_questions']} questions")
        ax.set_xlabel("votes (sampled paths)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "votes.png", dpi=120)
    plt.close(fig)
    lines = [
        f"Command: `{command}`",
        "",
        f"Accuracy with all {results['n_paths']} votes (mean over {results['n_permutations']} permutations; "
        "95% bootstrap CI over questions), and the AUROC of each weight for telling correct from incorrect "
        "paths (CI resamples questions).",
        "",
        "| language | questions | one path | one path, uncalibrated | one path, stated | SC, stated | "
        "SC | confidence | IC | AUROC IC | AUROC confidence |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for language, run in runs.items():
        at_n = run["at_n"]
        lines.append(
            f"| {language} | {run['n_questions']} | {_fmt(run['path_accuracy'])} | "
            f"{_fmt(run['raw_path_accuracy'])} | {_fmt(run['stated_path_accuracy'])} | "
            f"{_fmt(at_n['self_consistency_stated'])} | {_fmt(at_n['self_consistency'])} | "
            f"{_fmt(at_n['confidence'])} | {_fmt(at_n['internal_consistency'])} | {_fmt(run['auroc_ic'])} | "
            f"{_fmt(run['auroc_confidence'])} |"
        )
    lines += ["", "Per question type (accuracy with all votes):", ""]
    lines += [
        "| language | type | questions | one path | SC, stated | SC | confidence | IC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    n = results["n_paths"]
    for language, run in runs.items():
        for kind, row in run["per_kind"].items():
            lines.append(
                f"| {language} | {kind} | {row['questions']} | {row['path_accuracy']:.3f} | "
                f"{row[f'self_consistency_stated@{n}']:.3f} | "
                f"{row[f'self_consistency@{n}']:.3f} | {row[f'confidence@{n}']:.3f} | "
                f"{row[f'internal_consistency@{n}']:.3f} |"
            )
    lines += [
        "",
        "Share of paths where no label clears its quantile at the last layer (the calibrated argmax then "
        "falls to the first label, as torch.max does in the official code):",
        "",
    ]
    for language, run in runs.items():
        lines.append(f"- {language}: {run['no_label_above_quantile']:.3f}")
    lines += ["", "Share of paths whose calibrated argmax at each layer agrees with the last layer's:", ""]
    for language, run in runs.items():
        shares = ", ".join(f"{v:.2f}" for v in run["ic_by_layer_agreement"])
        lines.append(f"- {language}: {shares}")
    report = out / "results.md"
    report.write_text("\n".join(lines) + "\n")
    return report


@app.command("eval")
@user_errors
def evaluate(
    model: ModelArg = "toy",
    out: Annotated[
        Path, typer.Option("--out", help="Directory for results.json, votes.png, results.md.")
    ] = Path("docs/ic"),
    n: Annotated[
        int, typer.Option(help="Chain-of-thought items drawn (one-word answers are kept).", min=1)
    ] = 250,
    paths: Annotated[int, typer.Option("--paths", help="Sampled reasoning paths per question.", min=1)] = 20,
    languages: Annotated[str, typer.Option(help="Toy-world languages, comma-separated.")] = "en",
    data: Annotated[
        Path | None,
        typer.Option(help='Your own questions instead: JSONL rows {"text", "labels", "answer", "image"?}.'),
    ] = None,
    trigger: Annotated[
        str, typer.Option(help="With --data: the answer cue appended after each truncated path.")
    ] = "So the answer is",
    seed: Annotated[int, typer.Option(help="Seed of the held-out questions and of the sampling.")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 80,
    permutations: Annotated[
        int, typer.Option(help="Seeded orders of the paths to average over.", min=1)
    ] = 100,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    cache: Annotated[
        Path, typer.Option(help="Where the sampled paths are kept (a rerun resumes from them).")
    ] = Path("runs/ic"),
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 0,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """IC-weighted vote vs self-consistency vs confidence weighting on the toy world's held-out
    chain-of-thought questions (sampled paths are kept in CACHE so a rerun resumes)."""
    from headvec.methods.consistency import evaluate_internal_consistency

    loaded = load_model(
        model, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
    )
    runs = {}
    sources = [lang.strip() for lang in languages.split(",") if lang.strip()] if data is None else [data.stem]
    for language in sources:
        if data is None:
            questions, cue = toy_questions(loaded, n, seed, language)
        else:
            questions, cue = file_questions(loaded, data), trigger
        result = evaluate_internal_consistency(
            loaded,
            questions,
            trigger=cue,
            n_paths=paths,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            n_permutations=permutations,
            seed=seed,
            batch_size=batch_size,
            cache_dir=cache / f"{Path(model).name}-{language}-seed{seed}-n{n}-paths{paths}",
        )
        runs[language] = result.to_dict()
    results = {
        "model": model,
        "n_paths": paths,
        "n_permutations": permutations,
        "seed": seed,
        "temperature": temperature,
        "top_p": top_p,
        "runs": runs,
    }
    source = (
        f"--data {data} --trigger {trigger!r}" if data is not None else f"--n {n} --languages {languages}"
    )
    command = f"headvec ic eval {model} {source} --paths {paths} --seed {seed} --out {out}"
    command += f" --threads {threads}" if threads else ""
    report = write_report(results, out, command)
    console.print(report.read_text())
