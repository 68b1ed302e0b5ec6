"""headvec benchmarks: ``make bench`` runs this and writes docs/benchmarks.md.

Every measurement runs in a fresh subprocess (``_speed.py`` per model, ``_memory.py`` per memory run).
Speed results are ratios of medians of interleaved repetitions taken in one process, so they hold on a
shared, noisy machine; absolute times are shown only to give the scale of that one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from _timing import QuietGate, Timings

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"

GATE = QuietGate()  # the defaults the speed workers use, for the report

MODEL_LABELS = {"minilm": "MiniLM-L6 (real, BertModel)", "llama": "Llama ~110M (random init)"}
LIBRARY_LABELS = {"nnsight": "nnsight", "transformerlens": "TransformerLens (hook_z)"}


@dataclass(frozen=True)
class Plan:
    """How much work the run does: ``make bench`` uses the defaults; ``--quick`` is a smoke test."""

    reps: dict[str, int]
    warmup: dict[str, int]
    prompts: int
    small_prompts: int
    batch_size: int = 64


FULL = Plan(
    reps={"minilm": 15, "llama": 6}, warmup={"minilm": 2, "llama": 1}, prompts=10_000, small_prompts=1_000
)
QUICK = Plan(
    reps={"minilm": 2, "llama": 1}, warmup={"minilm": 1, "llama": 0}, prompts=1_000, small_prompts=200
)


# ------------------------------------------------------------------------------------- running
def worker_env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
    }


def run_worker(script: str, args: list[str], scratch: Path) -> dict[str, Any]:
    """Run ``bench/<script>`` in a fresh Python process and return the JSON it wrote."""
    out = scratch / f"{script}-{len(list(scratch.iterdir()))}.json"
    command = [sys.executable, str(BENCH / script), *args, "--json", str(out)]
    print(f"$ {shlex.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=worker_env(), cwd=ROOT)
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(out.read_text())


def run_speed(model: str, plan: Plan, scratch: Path) -> dict[str, Any]:
    reps, warmup = str(plan.reps[model]), str(plan.warmup[model])
    return run_worker("_speed.py", ["--model", model, "--reps", reps, "--warmup", warmup], scratch)


def run_memory(mode: str, n: int, plan: Plan, scratch: Path) -> dict[str, Any]:
    cache = scratch / f"cache-{mode}-{n}"
    args = ["--mode", mode, "--n", str(n), "--batch-size", str(plan.batch_size), "--out", str(cache)]
    result = run_worker("_memory.py", args, scratch)
    if mode == "extract":
        result["cache_bytes"] = sum(f.stat().st_size for f in cache.iterdir() if f.is_file())
        result["cache_files"] = sum(1 for _ in cache.iterdir())
        result["cache_rows"] = cached_rows(cache)
    return result


def cached_rows(cache: Path) -> int:
    """Rows in a finished cache, read back through headvec's own loader."""
    from headvec.cache import load_activations

    tensors, _ = load_activations(cache)
    return int(tensors["heads"].shape[0])


# ------------------------------------------------------------------------------------ machine
def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_facts() -> dict[str, str]:
    import psutil
    import torch

    return {
        "CPU": f"{cpu_model()}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable); "
        f"torch threads set to {len(os.sched_getaffinity(0))}",
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "OS / Python": f"{platform.platform()} / Python {platform.python_version()}",
        "Packages": ", ".join(
            f"{name} {package_version(name)}"
            for name in ("torch", "transformers", "headvec", "nnsight", "transformer-lens")
        ),
        "torch build": f"{torch.__version__}, {torch.get_num_interop_threads()} inter-op threads",
    }


# ---------------------------------------------------------------------------------- rendering
def paired(comparison: dict[str, Any]) -> Timings:
    return Timings(comparison["seconds"])


def result_of(comparison: dict[str, Any]) -> tuple[float, float, float]:
    """Median of the per-round ratios numerator / denominator, and its middle half."""
    t, num, den = paired(comparison), comparison["numerator"], comparison["denominator"]
    return (t.ratio(num, den), *t.quartiles(num, den))


def iqr(low: float, high: float) -> str:
    return f"{low:.3f}–{high:.3f}"


def summary_rows(speed: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for model, result in speed.items():
        comparisons, label = result["comparisons"], MODEL_LABELS[model]
        value, low, high = result_of(comparisons["overhead"])
        rows.append(
            f"| 1. capture overhead: all-layer last-token capture (`stop_early=False`) / bare forward "
            f"| {label} | {value:.3f}× ({(value - 1) * 100:+.1f} %) | {iqr(low, high)} |"
        )
        value, low, high = result_of(comparisons["early_exit"])
        rows.append(
            f"| 2. early exit: bare forward / capture of layer {result['early_layer']} only "
            f"| {label} | {value:.2f}× faster | {iqr(low, high)} |"
        )
        for key, info in result["libraries"].items():
            name = LIBRARY_LABELS[key]
            if key not in comparisons:
                rows.append(f"| 3. {name} / headvec | {label} | not measured: {info['status']} | |")
                continue
            value, low, high = result_of(comparisons[key])
            rows.append(
                f"| 3. {name} capture / headvec capture (both full forward) | {label} "
                f"| headvec {value:.2f}× faster | {iqr(low, high)} |"
            )
    return rows


VARIANT_LABELS = {
    "bare": "bare `model(**inputs)` under `torch.no_grad()`",
    "headvec_all": "headvec `capture_batch(layers=None, positions=-1, stop_early=False)`",
    "headvec_early": "headvec `capture_batch(layers=[n_layers // 2 - 1])` (stops there)",
    "nnsight": "nnsight `NNsight(copy).trace(...)`, o_proj `.input[:, -1].save()` per layer",
    "headvec_all_default": "headvec `capture_batch(layers=None, positions=-1)` (default `stop_early=True`)",
    "headvec_all_mlm": "headvec, all layers, `stop_early=False`, on the BertForMaskedLM",
    "transformerlens": "TransformerLens `TransformerBridge.run_with_hooks`, `hook_z[:, -1]` per layer",
}


def detail_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"**{MODEL_LABELS[result['model']]}**: `{result['model_class']}`, "
        f"{result['parameters'] / 1e6:.1f} M parameters, {result['n_layers']} layers × {result['n_heads']} "
        f"heads × {result['head_dim']}, attention `{result['attn_implementation']}`; input "
        f"{result['batch'][0]} × {result['batch'][1]} random token ids, full mask. Each pair: "
        f"{result['warmup']} warm-up + {result['reps']} timed rounds.",
        "",
        "| numerator (A) | denominator (B) | median A/B | per-round A/B, sorted "
        "| median s A / B (this run only) | rounds started busy |",
        "|---|---|---:|---|---|---:|",
    ]
    for comparison in result["comparisons"].values():
        t, num, den = paired(comparison), comparison["numerator"], comparison["denominator"]
        rounds = ", ".join(f"{r:.3f}" for r in sorted(t.round_ratios(num, den)))
        lines.append(
            f"| {VARIANT_LABELS[num]} | {VARIANT_LABELS[den]} | {t.ratio(num, den):.3f} | {rounds} "
            f"| {t.median(num):.3f} / {t.median(den):.3f} | {comparison['busy_rounds']} |"
        )
    waiting = result["waiting"]
    lines += [
        "",
        "Before each round the worker waited for other processes to leave the CPUs "
        f"(< {GATE.threshold:.0f} % busy; at most {GATE.max_wait:.0f} s a round, {GATE.budget:.0f} s "
        f"in all): {waiting['waited_s']:.0f} s spent waiting; {waiting['busy_rounds']} of "
        f"{waiting['rounds']} rounds started busy anyway.",
    ]
    return lines


def profile_section(profiled: dict[str, Any], top: int = 6) -> list[str]:
    """The ops only the capture runs (its hooks' work), from ``profile_capture.py``."""
    ops = profiled["ops"]
    added = sum(ms for _, ms, _ in ops)
    lines = [
        f"### What the hooks add ({MODEL_LABELS[profiled['model']]}, torch profiler, "
        f"{profiled['calls']} captures vs {profiled['calls']} bare forwards)",
        "",
        f"Ops that run more often in a capture than in a bare forward add {added:.2f} ms of self CPU time "
        f"per capture, against {profiled['bare_ms']:.0f} ms for the whole bare forward "
        f"({added / profiled['bare_ms'] * 100:.2f} %). Largest:",
        "",
        "| op | extra ms per capture | extra calls per capture |",
        "|---|---:|---:|",
    ]
    lines += [f"| `{op}` | {ms:.3f} | {count:.0f} |" for op, ms, count in ops[:top]]
    return lines


def check_rows(speed: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for model, result in speed.items():
        label, checks = MODEL_LABELS[model], result["checks"]
        rows.append(
            f"| {label} | early-exit heads vs full-forward heads (layer {result['early_layer']}) "
            f"| {checks['early_exit_max_abs_diff']:.2e} |"
        )
        for key, info in result["libraries"].items():
            if "max_abs_diff" in info:
                what = "hook_z" if key == "transformerlens" else "o_proj input"
                rows.append(
                    f"| {label} | {LIBRARY_LABELS[key]}: {what} vs headvec heads "
                    f"| {info['max_abs_diff']:.2e} |"
                )
        untouched = "yes" if checks["baseline_model_untouched"] else "**NO: the baseline is not clean**"
        rows.append(
            f"| {label} | the model of the bare/headvec timings has no hooks or patched forward "
            f"left after the libraries were set up | {untouched} |"
        )
    return rows


def library_notes(speed: dict[str, dict[str, Any]]) -> list[str]:
    """Each side's cost in bare forwards (derived: library/headvec × headvec/bare), which bounds the ratio,
    and the ratio headvec's default ``stop_early=True`` would give (derived the same way)."""
    lines = []
    for model, result in speed.items():
        comparisons = result["comparisons"]
        overhead = result_of(comparisons["overhead"])[0]
        saving = result_of(comparisons["stop_early"])[0]  # full capture / default capture
        parts = [f"headvec {overhead:.2f}"]
        defaults = []
        for key in result["libraries"]:
            if key not in comparisons:
                continue
            vs_headvec = result_of(comparisons[key])[0]
            if comparisons[key]["denominator"] == "headvec_all":
                parts.append(f"{LIBRARY_LABELS[key]} ≈ {vs_headvec * overhead:.2f}")
                defaults.append(f"{LIBRARY_LABELS[key]} ≈ {vs_headvec * saving:.2f}")
            else:
                parts.append(f"{LIBRARY_LABELS[key]} {vs_headvec:.2f}× headvec on the same MLM model")
        line = f"- {MODEL_LABELS[model]}: {'; '.join(parts)}."
        if defaults:
            line += (
                f" headvec's default (`stop_early=True`) is {saving:.2f}× faster than its full-forward "
                f"capture; library / headvec-default would be {', '.join(defaults)}."
            )
        lines.append(line)
    return lines


def memory_table(memory: list[dict[str, Any]]) -> list[str]:
    floor = next(m for m in memory if m["mode"] == "one-batch")["peak_rss_mib"]
    descriptions = {
        "one-batch": "load MiniLM, capture one batch",
        "extract": "`extract_to_disk` (streamed to safetensors shards)",
        "in-memory": "`HeadEngine.capture` (all rows kept in memory, for contrast)",
    }
    lines = [
        "| process | prompts | peak RSS (MiB) | Δ vs one batch (MiB) | RSS at ¼, ½, ¾, end of the capture "
        "(MiB) | cache on disk |",
        "|---|---:|---:|---:|---|---|",
    ]
    for m in memory:
        disk = ""
        if "cache_bytes" in m:
            disk = f"{m['cache_bytes'] / 2**20:.1f} MiB in {m['cache_files']} files ({m['cache_rows']} rows)"
        prompts = m["batch_size"] if m["mode"] == "one-batch" else m["rows"]
        quarters = "—" if m["mode"] == "one-batch" else ", ".join(f"{q:.0f}" for q in m["rss_quarters_mib"])
        lines.append(
            f"| {descriptions[m['mode']]} | {prompts:,} | {m['peak_rss_mib']:.0f} "
            f"| {m['peak_rss_mib'] - floor:+.0f} | {quarters} "
            f"| {disk} |"
        )
    return lines


def memory_row(memory: list[dict[str, Any]]) -> str:
    floor = next(m for m in memory if m["mode"] == "one-batch")["peak_rss_mib"]
    big = max((m for m in memory if m["mode"] == "extract"), key=lambda m: m["rows"])
    growth, held = big["peak_rss_mib"] - floor, big["cache_bytes"] / 2**20
    return (
        f"| 4. peak RSS of `extract_to_disk` on {big['rows']:,} prompts − peak RSS of one batch "
        f"| MiniLM-L6 | {growth:+.0f} MiB (activations: {held:.0f} MiB) | |"
    )


def render(
    speed: dict[str, dict[str, Any]],
    profiled: dict[str, Any],
    memory: list[dict[str, Any]],
    facts: dict[str, str],
    command: str,
    started: dt.datetime,
    seconds: float,
    loads: tuple[str, str],
    plan: Plan,
) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC (whole run: {seconds / 60:.1f} min)",
        "",
        *[f"- {key}: {value}" for key, value in facts.items()],
        f"- Load average (1/5/15 min) at start: {loads[0]}; at end: {loads[1]}. The machine may be "
        "shared; interleaved rounds give every variant the same conditions, and the per-round spread "
        "shows the noise.",
        "",
        "# headvec benchmarks",
        "",
        "Every speed result is a ratio measured within one process: the two sides run back to back in "
        "each round (alternating which goes first), and the result is the median of the per-round ratios; "
        "the middle-half column gives their 25th–75th percentiles. Absolute seconds are never compared "
        "across runs.",
        "",
        "## Summary",
        "",
        "| measurement | model | result | middle half of rounds |",
        "|---|---|---|---|",
        *summary_rows(speed),
        memory_row(memory),
        "",
        "## Speed in detail (batch 16 × 128 tokens)",
        "",
    ]
    for result in speed.values():
        lines += [*detail_table(result), ""]
    lines += [
        "Cost of each capture in bare forwards (libraries: derived as library/headvec × headvec/bare):",
        "",
        *library_notes(speed),
        "",
        "Library / headvec is the library's cost over headvec's, both in bare forwards: with headvec near "
        "one bare forward, a 2× ratio needs a library that is about 2× slower than the model itself.",
        "",
        *profile_section(profiled),
        "",
        "## Correctness checks (max abs difference)",
        "",
        "| model | check | value |",
        "|---|---|---|",
        *check_rows(speed),
        "",
        f"## Memory: last-token heads of {plan.prompts:,} short prompts (MiniLM-L6, batch {plan.batch_size})",
        "",
        "Each row is its own process; peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss`. Prompts have "
        f"6–14 words; the one-batch process builds all {plan.prompts:,} of them too but captures only "
        f"the first {plan.batch_size}.",
        "",
        *memory_table(memory),
        "",
        "## How the comparisons are set up",
        "",
        "- Bare forward and headvec run on the same model object; both pass `use_cache=False` where the "
        "model takes it (headvec does so itself), so the hooks are the only difference.",
        "- nnsight replaces `forward` on every module it wraps, and TransformerLens' bridge switches "
        "the model it wraps to eager attention, so each library wraps its own deep copy (same "
        "weights); the last check row confirms the baseline model stayed clean.",
        "- Libraries and headvec run a full forward (`stop_early=False`), a like-for-like capture; "
        "headvec's default (`stop_early=True`) would also skip what follows the last o_proj.",
        "- TransformerLens 4 no longer has `HookedTransformer`; its `TransformerBridge` wraps the HF model "
        "(offline through `hf_model=` and a local tokenizer) and forces eager attention. It bridges "
        "`BertForMaskedLM` but not the bare `BertModel` MiniLM ships as, so on MiniLM both TL and headvec "
        "are timed on a `BertForMaskedLM` carrying MiniLM's encoder weights and a seeded random MLM head.",
        "- The Llama model is built from a config with a fixed seed, saved with `save_pretrained` and "
        "loaded with `headvec.load(dir)`, with a word-level tokenizer built in the script (no hub).",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- methods
def run_methods(quick: bool, scratch: Path) -> dict[str, Any]:
    """The method workers: SAV head scoring, MTV search and cost, reward-model throughput and serving."""
    reps = "2" if quick else "5"
    return {
        "sav": run_worker("_sav.py", ["--reps", reps], scratch),
        "mtv": run_worker("_mtv.py", ["--reps", reps], scratch),
        "rm": run_worker("_rm_throughput.py", ["--reps", "2" if quick else "3"], scratch),
        "rm_server": run_worker(
            "_rm_server.py", ["--requests", "200" if quick else "1000", "--client", "both"], scratch
        ),
    }


def run_imports(quick: bool, scratch: Path) -> dict[str, Any]:
    """Import and startup times (fresh interpreters, interleaved) and the cost of cloning an estimator."""
    return run_worker("_imports.py", ["--reps", "3" if quick else "9"], scratch)


def render_imports(result: dict[str, Any]) -> str:
    from _imports import render_section

    return "\n".join(render_section(result)) + "\n"


def replace_section(text: str, section: str) -> str:
    """``text`` with the section of the same ``## `` heading replaced by ``section`` (appended if new)."""
    heading = section.splitlines()[0]
    lines = text.splitlines()
    if heading not in lines:
        return text.rstrip("\n") + "\n\n" + section
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join([*lines[:start], *section.rstrip("\n").splitlines(), "", *lines[end:]]).rstrip() + "\n"


def render_methods(methods: dict[str, Any]) -> str:
    """Markdown of every method section (the workers' render functions import torch: only now)."""
    return "\n\n".join(method_sections(methods)) + "\n"


def method_sections(methods: dict[str, Any]) -> list[str]:
    """Each method section's markdown, starting with its ``## `` heading."""
    from _mtv import render_section as mtv_section
    from _rm_server import render_rm_server
    from _rm_throughput import render_section as rm_section
    from _sav import render_section as sav_section

    parts = [
        sav_section(methods["sav"]),
        mtv_section(methods["mtv"]),
        rm_section(methods["rm"]),
        render_rm_server(methods["rm_server"]),
    ]
    return ["\n".join(lines) for lines in parts]


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few repetitions and prompts (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--only",
        choices=["all", "methods", "imports"],
        default="all",
        help="methods: only the SAV/MTV/RM sections; imports: only import times; replaced in --out",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    extra = sys.argv[1:]
    targets = {
        (): "make bench",
        ("--only", "methods"): "make bench-methods",
        ("--only", "imports"): "make bench-imports",
    }
    command = targets.get(tuple(extra), f".venv/bin/python bench/run.py {shlex.join(extra)}")
    started, start = dt.datetime.now(dt.UTC), time.perf_counter()
    load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())

    if args.only == "imports":
        with tempfile.TemporaryDirectory(prefix="headvec-bench-") as tmp:
            section = render_imports(run_imports(args.quick, Path(tmp)))
        old = args.out.read_text() if args.out.is_file() else ""
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(replace_section(old, section))
        print(section)
        print(f"updated the import-time section of {args.out}")
        return

    if args.only == "methods":  # the method sections are replaced in place, the rest of the report kept
        with tempfile.TemporaryDirectory(prefix="headvec-bench-") as tmp:
            sections = method_sections(run_methods(args.quick, Path(tmp)))
        text = args.out.read_text() if args.out.is_file() else "# headvec benchmarks\n"
        for section in sections:
            lines = section.splitlines()
            text = replace_section(text, "\n".join([lines[0], "", f"Command: `{command}`", *lines[1:]]))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print("\n\n".join(sections))
        print(f"updated the method sections of {args.out}")
        return

    with tempfile.TemporaryDirectory(prefix="headvec-bench-") as tmp:
        scratch = Path(tmp)
        speed = {model: run_speed(model, plan, scratch) for model in ("minilm", "llama")}
        profiled = run_worker("profile_capture.py", ["--model", "minilm", "--calls", "5"], scratch)
        memory = [
            run_memory("one-batch", plan.prompts, plan, scratch),
            run_memory("extract", plan.small_prompts, plan, scratch),
            run_memory("extract", plan.prompts, plan, scratch),
            run_memory("in-memory", plan.prompts, plan, scratch),
        ]
        methods = run_methods(args.quick, scratch)
        imports = run_imports(args.quick, scratch)
    load_end = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(
        speed,
        profiled,
        memory,
        machine_facts(),
        command,
        started,
        time.perf_counter() - start,
        (load_start, load_end),
        plan,
    )
    text += "\n" + render_methods(methods)
    text += "\n" + render_imports(imports)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
