"""Extraction of many variable-length prompts: headvec's extract against a straightforward nnsight loop.

The task (issue 13): last-token head outputs at the middle layer for N prompts of 5-120 words, written
to disk. The nnsight loop runs fixed-order batches of the same size through a full forward and saves the
o_proj input; headvec's ``extract_to_disk`` with ``sort_window`` batches by length (less padding) and
stops the forward after the asked layer. Both run on the same model, in rounds over slices of the
prompts, alternating which goes first; the ratio is the median of the per-round ratios, and the
activations of every slice are checked equal. Run with::

    .venv/bin/python bench/_extract.py --n 10000 --json /tmp/extract.json --markdown
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import SEED, use_all_cores, word_tokenizer
from _speed import nnsight_path
from _timing import Timings
from transformers import LlamaConfig, LlamaForCausalLM

from headvec import HeadEngine, load
from headvec.cache import extract_to_disk, load_activations
from headvec.engine import as_prompts

# A small Llama (4 layers x 256, 8 heads): the middle layer is layer 1, as in the trial.
CONFIG = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "intermediate_size": 688,
    "vocab_size": 8000,
    "max_position_embeddings": 256,
}


def prompts_of(n: int, seed: int = SEED) -> list[str]:
    """``n`` prompts of 5-120 words (uniform), over the model's word vocabulary, seeded."""
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(3, 8000)}" for _ in range(rng.randint(5, 120))) for _ in range(n)]


def nnsight_extract(wrapped: Any, loaded: Any, texts: list[str], layer: int, batch_size: int) -> dict:
    """The straightforward loop: batches in the given order, a full forward, the layer's o_proj input
    at each row's last real token."""
    path = nnsight_path(loaded.arch.hook_path(layer))
    rows, processed = [], 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            inputs = loaded.encode(as_prompts(texts[start : start + batch_size]))
            processed += int(inputs["input_ids"].numel())
            with wrapped.trace(**inputs, use_cache=False):
                saved = wrapped.get(path).input.save()
            last = inputs["attention_mask"].sum(dim=1) - 1
            picked = torch.as_tensor(saved)[torch.arange(len(last)), last]
            rows.append(picked.reshape(len(last), loaded.arch.n_heads, loaded.arch.head_dim))
    return {"heads": torch.cat(rows), "processed": processed}


def headvec_extract(engine: HeadEngine, texts: list[str], layer: int, batch_size: int, out: Path) -> dict:
    processed = 0
    real = engine.capture_batch

    def counting(inputs, *args, **kwargs):
        nonlocal processed
        processed += int(inputs["input_ids"].numel())
        return real(inputs, *args, **kwargs)

    engine.capture_batch = counting  # type: ignore[method-assign]
    try:
        extract_to_disk(
            engine, as_prompts(texts), out, layers=[layer], batch_size=batch_size, progress=False,
            sort_window=1024,
        )  # fmt: skip
    finally:
        engine.capture_batch = real  # type: ignore[method-assign]
    tensors, _ = load_activations(out)
    return {"heads": tensors["heads"][:, 0], "processed": processed}


def ray_vs_local(engine: HeadEngine, tmp: Path, texts: list[str], layer: int, batch_size: int) -> dict:
    """The same extraction on 2 Ray actors (cluster start included) and locally: seconds, same bytes?"""
    import functools

    from headvec.cache import engine_loader

    seconds, dirs = {}, {}
    for backend in ("local", "ray"):
        dirs[backend] = tmp / f"ray-vs-local-{backend}"
        started = time.perf_counter()
        extract_to_disk(
            engine, as_prompts(texts), dirs[backend], layers=[layer], batch_size=batch_size, progress=False,
            sort_window=1024, backend=backend, workers=2,
            engine_factory=functools.partial(engine_loader, str(tmp / "llama"), device="cpu"),
        )  # fmt: skip
        seconds[backend] = time.perf_counter() - started
    same = all((dirs["ray"] / f.name).read_bytes() == f.read_bytes() for f in sorted(dirs["local"].iterdir()))
    return {"n": len(texts), "seconds": seconds, "identical_files": same}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--ray-n", type=int, default=2000, help="prompts for the Ray vs local run (0: skip)")
    args = parser.parse_args()
    threads = use_all_cores()
    from nnsight import NNsight

    with tempfile.TemporaryDirectory(prefix="headvec-extract-") as tmp:
        torch.manual_seed(SEED)
        LlamaForCausalLM(LlamaConfig(**CONFIG)).save_pretrained(Path(tmp) / "llama")
        word_tokenizer(CONFIG["vocab_size"]).save_pretrained(Path(tmp) / "llama")
        loaded = load(Path(tmp) / "llama", device="cpu")
        engine = HeadEngine(loaded)
        wrapped = NNsight(copy.deepcopy(loaded.model))
        layer = loaded.arch.n_layers // 2 - 1
        texts = prompts_of(args.n)
        real_tokens = sum(
            int(m.sum()) for m in (loaded.encode(as_prompts([t]))["attention_mask"] for t in texts)
        )
        size = -(-len(texts) // args.rounds)
        seconds: dict[str, list[float]] = {"nnsight": [], "headvec": []}
        processed = {"nnsight": 0, "headvec": 0}
        max_diff = 0.0
        for number in range(args.rounds):
            part = texts[number * size : (number + 1) * size]
            results = {}
            order = ["nnsight", "headvec"] if number % 2 == 0 else ["headvec", "nnsight"]
            for name in order:
                started = time.perf_counter()
                if name == "nnsight":
                    results[name] = nnsight_extract(wrapped, loaded, part, layer, args.batch_size)
                else:
                    out = Path(tmp) / f"cache-{number}"
                    results[name] = headvec_extract(engine, part, layer, args.batch_size, out)
                seconds[name].append(time.perf_counter() - started)
                processed[name] += results[name]["processed"]
            diff = (results["nnsight"]["heads"] - results["headvec"]["heads"]).abs().max().item()
            max_diff = max(max_diff, diff)
        ray_result = (
            ray_vs_local(engine, Path(tmp), texts[: args.ray_n], layer, args.batch_size)
            if args.ray_n
            else None
        )
    timings = Timings(seconds)
    result = {
        "n": args.n,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "threads": threads,
        "layer": layer,
        "n_layers": CONFIG["num_hidden_layers"],
        "real_tokens": real_tokens,
        "processed_tokens": processed,
        "seconds": seconds,
        "speedup": timings.ratio("nnsight", "headvec"),
        "speedup_quartiles": timings.quartiles("nnsight", "headvec"),
        "max_abs_diff": max_diff,
        "ray": ray_result,
    }
    args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        print("\n".join(render_section(result)))


def render_section(result: dict[str, Any]) -> list[str]:
    waste = {k: v / result["real_tokens"] for k, v in result["processed_tokens"].items()}
    low, high = result["speedup_quartiles"]
    total = {k: sum(v) for k, v in result["seconds"].items()}
    return [
        f"## Extraction: {result['n']:,} prompts of 5-120 words, headvec vs an nnsight loop",
        "",
        f"Model: a seeded random Llama, {result['n_layers']} layers x 256 wide, 8 heads; last-token heads "
        f"of layer {result['layer']}; batch {result['batch_size']}; torch threads {result['threads']}; "
        f"{result['rounds']} rounds over slices of the prompts, alternating which runs first. Command: "
        "`.venv/bin/python bench/_extract.py --n 10000 --json out.json --markdown`.",
        "",
        "| measurement | result | middle half of rounds |",
        "|---|---|---|",
        f"| time, nnsight loop (fixed-order batches, full forward) / headvec `extract_to_disk` "
        f"(`sort_window=1024`, stops after layer {result['layer']}) | **{result['speedup']:.1f}×** "
        f"({total['nnsight']:.0f} s vs {total['headvec']:.0f} s) | {low:.1f}–{high:.1f} |",
        f"| padding waste (processed tokens / real tokens), nnsight loop / headvec | "
        f"{waste['nnsight']:.2f} / {waste['headvec']:.3f} | |",
        f"| largest difference between the two sets of activations | {result['max_abs_diff']:.1e} | |",
        *ray_rows(result.get("ray")),
    ]


def ray_rows(ray: dict[str, Any] | None) -> list[str]:
    if not ray:
        return []
    seconds = ray["seconds"]
    return [
        "",
        f"The same extraction of the first {ray['n']:,} prompts on 2 Ray actors (each with its own copy of "
        f"the model, one torch thread each, cluster start included) took {seconds['ray']:.0f} s against "
        f"{seconds['local']:.0f} s locally ({seconds['local'] / seconds['ray']:.2f}x), and wrote "
        f"{'the same bytes' if ray['identical_files'] else 'DIFFERENT bytes'} (every shard and index.json).",
    ]


if __name__ == "__main__":
    main()
