"""Where does headvec's capture spend time that a bare forward does not? (torch profiler, by op)

    .venv/bin/python bench/profile_capture.py --model minilm --calls 5

Profiles ``--calls`` all-layer last-token captures (``stop_early=False``) and as many bare forwards,
then lists the ops that run more often in the capture, with the self CPU time they add: the hooks'
own work (for an op the model runs too, the difference also carries that op's noise).
``make bench`` runs it on MiniLM (``--json``) for the report; run it by hand to diagnose an overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _setup import MODEL_NAMES, forward_kwargs, load_model, random_inputs, use_all_cores
from torch.profiler import ProfilerActivity, profile

from headvec import HeadEngine


def self_times_ms(run: Callable[[], object], calls: int) -> dict[str, tuple[float, int]]:
    """Self CPU milliseconds and call count per op over ``calls`` runs (after one warm-up run)."""
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            run()
    return {e.key: (e.self_cpu_time_total / 1000, e.count) for e in prof.key_averages()}


def hook_ops(model: str, calls: int) -> dict[str, Any]:
    """Profile captures and bare forwards; return the ops that only the capture calls (the hooks' work)."""
    with tempfile.TemporaryDirectory(prefix="headvec-profile-") as tmp:
        loaded = load_model(model, Path(tmp))
    engine = HeadEngine(loaded)
    inputs = random_inputs(loaded.model.config.vocab_size)
    kwargs = forward_kwargs(loaded.model)

    def bare() -> object:
        with torch.no_grad():
            return loaded.model(**inputs, **kwargs)

    captured = self_times_ms(lambda: engine.capture_batch(inputs, stop_early=False), calls)
    plain = self_times_ms(bare, calls)
    # The model's own ops run as often in both; an op that runs more often in the capture is the hooks'.
    added = [
        (op, (ms - plain.get(op, (0.0, 0))[0]) / calls, (count - plain.get(op, (0.0, 0))[1]) / calls)
        for op, (ms, count) in captured.items()
        if count > plain.get(op, (0.0, 0))[1]
    ]
    return {
        "model": model,
        "calls": calls,
        "capture_ms": sum(ms for ms, _ in captured.values()) / calls,
        "bare_ms": sum(ms for ms, _ in plain.values()) / calls,
        "ops": sorted(added, key=lambda op: -op[1]),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model", choices=MODEL_NAMES, default="minilm")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the result here instead of printing it")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    threads = use_all_cores()
    result = {**hook_ops(args.model, args.calls), "threads": threads}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        return
    print(
        f"{args.model}, {threads} threads, {args.calls} calls each; self CPU per call: capture "
        f"{result['capture_ms']:.1f} ms, bare forward {result['bare_ms']:.1f} ms. Ops only the hooks run:"
    )
    print(f"{'op':40s} {'extra ms/call':>14s} {'extra calls/call':>17s}")
    for op, ms, count in result["ops"]:
        print(f"{op:40s} {ms:14.3f} {count:17.1f}")


if __name__ == "__main__":
    main()
