"""LSAR: language-agnostic embeddings, a language subspace removed."""

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
    parse_ints,
    user_errors,
)
from headvec.errors import HeadvecError

app = typer.Typer(
    help="LSAR: language-agnostic embeddings, a language subspace removed.",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    """LSAR: language-agnostic embeddings, a language subspace removed."""


def toy_corpora(n_fit: int, n_eval: int, seed: int, languages: list[str]) -> dict[str, Any]:
    """Toy-world text: monolingual fit sets (train-split captions and questions, drawn separately per
    language, so not parallel) and parallel held-out captions (test split, duplicates dropped), with
    one 0/1 probe label per color: is an object of that color in the scene?"""
    import numpy as np

    from headvec.toyworld.language import LANGUAGES
    from headvec.toyworld.scenes import COLORS
    from headvec.toyworld.tasks import make_caption, make_vqa

    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown or "en" not in languages:
        raise HeadvecError(
            f"--languages must include en and come from {', '.join(LANGUAGES)}; got {languages}"
        )
    fit_texts, fit_languages = [], []
    for k, lang in enumerate(languages):
        captions = make_caption(seed * 100 + 10 + k, n_fit - n_fit // 2, lang, split="train")
        questions = make_vqa(seed * 100 + 50 + k, n_fit // 2, lang, split="train")
        fit_texts += [item.answer for item in captions] + [item.prompt for item in questions]
        fit_languages += [lang] * n_fit
    parallel_items = {lang: make_caption(seed, n_eval, lang, split="test") for lang in languages}
    seen: set[str] = set()
    keep = []
    for i, item in enumerate(parallel_items["en"]):
        if item.answer not in seen:
            seen.add(item.answer)
            keep.append(i)
    parallel = {lang: [parallel_items[lang][i].answer for i in keep] for lang in languages}
    scenes = [parallel_items["en"][i].scene for i in keep]
    labels = np.array([[any(o.color == c for o in s.objects) for c in COLORS] for s in scenes], dtype=int)
    return {
        "fit_texts": fit_texts,
        "fit_languages": fit_languages,
        "parallel": parallel,
        "probe_labels": labels,
        "probe_names": list(COLORS),
        "probe_description": "one logistic regression per color: is an object of that color in the scene?",
        "pivot": "en",
        "n_fit": n_fit,
    }


def file_corpora(fit_path: Path, parallel_path: Path, pivot: str) -> dict[str, Any]:
    """Your own text: FIT rows ``{"text", "language"}`` (monolingual, any number per language) and
    PARALLEL rows ``{"<language>": text, ...}`` with the same languages in every row, optionally with a
    ``"label"`` (a probe per label value, one-vs-rest, trained on the pivot language)."""
    import numpy as np

    from headvec.data import iter_jsonl
    from headvec.errors import DataError

    fit_texts, fit_languages = [], []
    for number, row in iter_jsonl(fit_path):
        text, language = row.get("text"), row.get("language")
        if not isinstance(text, str) or not isinstance(language, str):
            raise DataError(f"{fit_path} line {number}: needs string fields 'text' and 'language'")
        fit_texts.append(text)
        fit_languages.append(language)
    rows = list(iter_jsonl(parallel_path))
    if not fit_texts or not rows:
        raise DataError(f"{fit_path if not fit_texts else parallel_path} holds no rows")
    languages = sorted(k for k in rows[0][1] if k != "label")
    parallel: dict[str, list[str]] = {lang: [] for lang in languages}
    labels: list[str] = []
    for number, row in rows:
        keys = sorted(k for k in row if k != "label")
        if keys != languages or not all(isinstance(row[k], str) for k in keys):
            raise DataError(
                f"{parallel_path} line {number}: every row needs a text for each of {languages} (got {keys})"
            )
        for lang in languages:
            parallel[lang].append(row[lang])
        if "label" in row:
            labels.append(str(row["label"]))
    if pivot not in languages:
        raise DataError(f"the pivot language {pivot!r} is not among the parallel languages {languages}")
    missing = sorted(set(languages) - set(fit_languages))
    if missing:
        raise DataError(f"{fit_path} has no rows for {missing}; every parallel language needs fit text")
    if labels and len(labels) != len(rows):
        raise DataError(f"{parallel_path}: some rows have a 'label' and some do not; give all or none")
    names = sorted(set(labels))
    probe = np.array([[label == name for name in names] for label in labels], dtype=int) if labels else None
    return {
        "fit_texts": fit_texts,
        "fit_languages": fit_languages,
        "parallel": parallel,
        "probe_labels": probe,
        "probe_names": names,
        "probe_description": "one logistic regression per label value (one-vs-rest)",
        "pivot": pivot,
        "n_fit": round(len(fit_texts) / len(set(fit_languages))),
    }


def _fmt(ci: Any) -> str:
    return "n/a" if ci is None else f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


def _plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = results["layers"][str(results["main_layer"])]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for ax, key, sub, title in (
        (axes[0], "retrieval", "mean", "retrieval top-1, en <-> others (mean)"),
        (axes[1], "probe", "mean_other", "probe trained on en, accuracy on others"),
    ):
        if not main["none"][key]:
            ax.set_visible(False)
            continue
        for method, style in (("lsar", "o-"), ("lir", "s--")):
            ranks = [0] + [row["removed"] for row in main.values() if row["method"] == method]
            values = [main["none"][key][sub]] + [
                row[key][sub] for row in main.values() if row["method"] == method
            ]
            mean = [v[0] for v in values]
            err = [[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]]
            ax.errorbar(ranks, mean, yerr=err, fmt=style, capsize=3, label=method.upper())
        demean = main["demean"][key][sub]
        ax.axhline(demean[0], color="gray", linestyle=":", label="demean")
        ax.set_xlabel("removed rank r (0 = none)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['model']}, layer {results['main_layer']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "rank.png", dpi=120)
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path, command: str) -> Path:
    """results.json, rank.png (accuracy vs removed rank) and results.md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    _plot(results, out)
    pivot = results["pivot"]
    others = [lang for lang in results["languages"] if lang != pivot]
    main_layer = str(results["main_layer"])
    main = results["layers"][main_layer]
    lines = [
        f"Command: `{command}`",
        "",
        f"{results['n_parallel']} parallel held-out sentences per language (retrieval chance "
        f"{1 / results['n_parallel']:.4f}); fit sets of {results['n_fit']} monolingual sentences per "
        "language; "
        f"layer {main_layer}. Mean [95% bootstrap CI over sentences].",
        "",
        f"Retrieval top-1 (cosine, mean of {pivot}->X and X->{pivot}):",
        "",
        "| method | " + " | ".join(others) + " | mean |",
        "|---|" + "---|" * (len(others) + 1),
    ]
    for name, row in main.items():
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(row["retrieval"][lang]) for lang in others)
            + f" | {_fmt(row['retrieval']['mean'])} |"
        )
    if main["none"]["probe"]:
        lines += [
            "",
            f"Zero-shot probe transfer ({results['probe_description']}; {', '.join(results['probe_names'])}; "
            f"trained on {pivot}, half the sentences; tested on the other half; majority-class rate "
            f"{results['probe_majority']:.3f}):",
            "",
            f"| method | {pivot} (trained on) | " + " | ".join(others) + " | mean of others |",
            "|---|---|" + "---|" * (len(others) + 1),
        ]
        for name, row in main.items():
            probe = row["probe"]
            lines.append(
                f"| {name} | {_fmt(probe[pivot])} | "
                + " | ".join(_fmt(probe[lang]) for lang in others)
                + f" | {_fmt(probe['mean_other'])} |"
            )
    if len(results["layers"]) > 1:
        names = list(main)
        lines += ["", "Mean retrieval top-1 by layer:", "", "| layer | " + " | ".join(names) + " |"]
        lines.append("|---|" + "---|" * len(names))
        for layer, rows in results["layers"].items():
            lines.append(
                f"| {layer} | " + " | ".join(f"{rows[n]['retrieval']['mean'][0]:.3f}" for n in names) + " |"
            )
        if main["none"]["probe"]:
            lines += ["", "Mean probe transfer to the other languages by layer:", ""]
            lines += ["| layer | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            for layer, rows in results["layers"].items():
                cells = " | ".join(f"{rows[n]['probe']['mean_other'][0]:.3f}" for n in names)
                lines.append(f"| {layer} | {cells} |")
    lines += [
        "",
        f"LSAR fitted on {pivot} alone (one language: no language subspace): max |transform(x) - x| = "
        f"{results['one_language_max_change']:.3g} (a no-op, with a warning).",
    ]
    report = out / "results.md"
    report.write_text("\n".join(lines) + "\n")
    return report


@app.command("eval")
@user_errors
def evaluate(
    model: ModelArg = "toy",
    out: Annotated[
        Path, typer.Option("--out", help="Directory for results.json, rank.png, results.md.")
    ] = Path("docs/lsar/toy"),
    layers: Annotated[str, typer.Option(help="Layers to evaluate, comma-separated, or 'all'.")] = "all",
    layer: Annotated[
        int | None, typer.Option(help="The layer of the plot and the main tables (default: middle).")
    ] = None,
    languages: Annotated[str, typer.Option(help="Toy-world languages (must include en).")] = "en,xx,yy,zz",
    n_fit: Annotated[
        int, typer.Option(help="Monolingual sentences per language for the means.", min=2)
    ] = 300,
    n_eval: Annotated[
        int, typer.Option(help="Parallel held-out captions drawn (duplicates dropped).", min=4)
    ] = 400,
    seed: Annotated[int, typer.Option()] = 7,
    fit_data: Annotated[
        Path | None,
        typer.Option(help='Your own monolingual JSONL, rows {"text", "language"} (with --parallel-data).'),
    ] = None,
    parallel_data: Annotated[
        Path | None,
        typer.Option(help='Your own parallel JSONL, rows {"en": ..., "de": ..., "label"?: ...}.'),
    ] = None,
    pivot: Annotated[str, typer.Option(help="The language every other is retrieved against.")] = "en",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    device: DeviceOpt = DEFAULT_DEVICE,
    threads: ThreadsOpt = 0,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """LSAR vs none / demean / LIR: retrieval between the pivot (English) and each other language, and
    zero-shot transfer of probes trained on the pivot, as a function of the removed rank. The toy world's
    languages by default; --fit-data and --parallel-data for your own text."""
    import warnings

    import numpy as np

    from headvec.methods.lsar import LSAR, evaluate_alignment, sentence_embeddings

    loaded = load_model(
        model, dtype=dtype, device=device, threads=threads, trust_remote_code=trust_remote_code
    )
    n_layers = loaded.arch.n_layers
    chosen = parse_ints(layers, "layers") or list(range(n_layers))
    main_layer = n_layers // 2 if layer is None else layer
    if main_layer not in chosen:
        chosen.append(main_layer)
    if (fit_data is None) != (parallel_data is None):
        raise HeadvecError("give both --fit-data and --parallel-data, or neither (the toy world's text)")
    if fit_data is not None and parallel_data is not None:
        data = file_corpora(fit_data, parallel_data, pivot)
        langs = list(data["parallel"])
    else:
        langs = [lang.strip() for lang in languages.split(",") if lang.strip()]
        data = toy_corpora(n_fit, n_eval, seed, langs)
    fit = sentence_embeddings(loaded, data["fit_texts"], chosen, batch_size=batch_size, progress=True)
    parallel = {
        lang: sentence_embeddings(loaded, texts, chosen, batch_size=batch_size, progress=True)
        for lang, texts in data["parallel"].items()
    }
    labels = data["probe_labels"]
    pivot = data["pivot"]
    n_parallel = len(data["parallel"][pivot])
    train = np.arange(n_parallel) < n_parallel // 2
    results_by_layer = {}
    for k, value in enumerate(chosen):
        results_by_layer[str(value % n_layers)] = evaluate_alignment(
            fit[:, k],
            data["fit_languages"],
            {lang: e[:, k] for lang, e in parallel.items()},
            pivot=pivot,
            probe_labels=labels,
            probe_train=train if labels is not None else None,
        )
    english = fit[:, chosen.index(main_layer)][np.array(data["fit_languages"]) == pivot]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        noop = LSAR().fit(english, [pivot] * len(english))
    test = ~train
    majority = (
        float(
            np.mean([max(labels[test, t].mean(), 1 - labels[test, t].mean()) for t in range(labels.shape[1])])
        )
        if labels is not None
        else None
    )
    results = {
        "model": model,
        "languages": langs,
        "pivot": pivot,
        "n_fit": data["n_fit"],
        "n_parallel": n_parallel,
        "main_layer": main_layer % n_layers,
        "probe_names": data["probe_names"],
        "probe_description": data["probe_description"],
        "probe_majority": majority,
        "one_language_max_change": float(np.abs(noop.transform(english) - english).max()),
        "layers": results_by_layer,
    }
    source = (
        f"--fit-data {fit_data} --parallel-data {parallel_data} --pivot {pivot}"
        if fit_data is not None
        else f"--languages {languages} --n-fit {n_fit} --n-eval {n_eval} --seed {seed}"
    )
    command = f"headvec lsar eval {model} --layers {layers} {source} --out {out}" + (
        f" --layer {layer}" if layer is not None else ""
    )
    report = write_report(results, out, command)
    console.print(report.read_text())
