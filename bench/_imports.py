"""Import-time worker: what starting headvec costs, as ratios of fresh-interpreter wall times.

Every variant is a fresh ``python`` process (nothing cached in ``sys.modules``), run interleaved with the
others round by round, so each ratio compares runs made under the same machine load:

- ``from headvec import HeadEngine`` against ``import torch, transformers`` (the core should cost no
  more than its two big dependencies: it imports torch and nothing heavy of transformers);
- ``headvec --help`` against a bare interpreter and against torch + transformers (it imports neither).

It also times ``sklearn.base.clone`` of a fitted SAV classifier, which shares the model, against a
``copy.deepcopy`` of that model (what clone would do to a model parameter it did not share), and lists
which heavy packages each command pulls in (``-X importtime``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _timing import time_interleaved

PYTHON = sys.executable
HEADVEC = str(Path(PYTHON).with_name("headvec"))
VARIANTS = {
    "python": [PYTHON, "-c", "pass"],
    "torch_transformers": [PYTHON, "-c", "import torch, transformers"],
    "headengine": [PYTHON, "-c", "from headvec import HeadEngine"],
    "import_headvec": [PYTHON, "-c", "import headvec"],
    "help": [HEADVEC, "--help"],
}
LABELS = {
    "python": "`python -c pass` (interpreter start)",
    "torch_transformers": "`python -c 'import torch, transformers'`",
    "headengine": "`python -c 'from headvec import HeadEngine'`",
    "import_headvec": "`python -c 'import headvec'`",
    "help": "`headvec --help`",
}
HEAVY = ("torch", "transformers", "sklearn", "fastapi", "ray", "trl", "matplotlib", "openai")


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def heavy_modules(command: list[str]) -> list[str]:
    """The heavy top-level packages a command imports (from ``python -X importtime``)."""
    argv = [PYTHON, "-X", "importtime", *command[1:]] if command[0] == PYTHON else None
    if argv is None:  # the console script: run its entry point under -X importtime
        argv = [PYTHON, "-X", "importtime", "-c", "from headvec.cli import app; app(['--help'])"]
    stderr = subprocess.run(argv, capture_output=True, text=True).stderr
    names = {line.split("|")[-1].strip().split(".")[0] for line in stderr.splitlines() if "|" in line}
    return sorted(names & set(HEAVY))


def clone_timings(reps: int) -> dict[str, float]:
    from sklearn.base import clone

    from headvec import load
    from headvec.methods.sav import SparseAttentionVectors

    loaded = load("minilm", device="cpu")
    texts = ["the river ran", "a stone fell", "the river froze", "a stone rolled"]
    sav = SparseAttentionVectors(loaded, n_heads=4, chat=False).fit(texts, ["r", "s", "r", "s"])
    cloned, copied = [], []
    for _ in range(reps):
        start = time.perf_counter()
        twin = clone(sav)
        cloned.append(time.perf_counter() - start)
        start = time.perf_counter()
        copy.deepcopy(loaded)
        copied.append(time.perf_counter() - start)
    assert twin.get_params() == sav.get_params() and twin.model is loaded and not hasattr(twin, "heads_")
    return {"clone_s": statistics.median(cloned), "deepcopy_model_s": statistics.median(copied)}


def measure(reps: int) -> dict:
    timings = time_interleaved({name: lambda c=c: run(c) for name, c in VARIANTS.items()}, reps=reps)
    ratios = {
        "headengine_vs_torch_transformers": timings.ratio("headengine", "torch_transformers"),
        "help_vs_torch_transformers": timings.ratio("help", "torch_transformers"),
        "help_vs_python": timings.ratio("help", "python"),
        "import_headvec_vs_python": timings.ratio("import_headvec", "python"),
    }
    quartiles = {
        "headengine_vs_torch_transformers": timings.quartiles("headengine", "torch_transformers"),
        "help_vs_torch_transformers": timings.quartiles("help", "torch_transformers"),
    }
    return {
        "reps": reps,
        "seconds": timings.to_dict(),
        "median_s": {name: timings.median(name) for name in VARIANTS},
        "ratios": ratios,
        "quartiles": quartiles,
        "heavy": {name: heavy_modules(command) for name, command in VARIANTS.items() if name != "python"},
        "clone": clone_timings(reps),
    }


def render_section(result: dict) -> list[str]:
    median, ratios, quartiles = result["median_s"], result["ratios"], result["quartiles"]
    clone = result["clone"]
    help_s = median["help"]

    def row(name: str) -> str:
        heavy = ", ".join(result["heavy"].get(name, [])) or "none"
        return f"| {LABELS[name]} | {median[name]:.2f} | {heavy} |"

    low, high = quartiles["headengine_vs_torch_transformers"]
    return [
        "## Import and startup time",
        "",
        f"Each command runs in a fresh interpreter, interleaved with the others over {result['reps']} "
        "rounds; ratios are medians of per-round ratios (middle half in brackets).",
        "",
        "| command | median s (this run) | heavy packages it imports |",
        "|---|---:|---|",
        *(row(name) for name in LABELS),
        "",
        "| measurement | result |",
        "|---|---|",
        f"| `from headvec import HeadEngine` / `import torch, transformers` "
        f"| {ratios['headengine_vs_torch_transformers']:.2f}× ({low:.2f}–{high:.2f}) |",
        f"| `headvec --help` wall time (median) | {help_s:.2f} s; {ratios['help_vs_python']:.1f}× a bare "
        f"interpreter, {ratios['help_vs_torch_transformers']:.2f}× torch + transformers |",
        f"| `sklearn.base.clone` of a fitted SAV classifier on MiniLM (shares the model) | "
        f"{clone['clone_s'] * 1000:.2f} ms; a `copy.deepcopy` of the model alone takes "
        f"{clone['deepcopy_model_s'] * 1000:.1f} ms ({clone['deepcopy_model_s'] / clone['clone_s']:.0f}×) "
        "| | |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    args.json.write_text(json.dumps(measure(args.reps)))


if __name__ == "__main__":
    main()
