"""Memory worker: the peak RSS of one process that captures last-token heads of MiniLM.

Modes (one process each, started by ``bench/run.py``):

* ``one-batch``: load the model and capture a single batch (the floor any capture needs);
* ``extract``: stream ``--n`` prompts to disk with :func:`headvec.cache.extract_to_disk`;
* ``in-memory``: the same prompts through ``HeadEngine.capture``, which keeps every row in memory;
  it shows that the measurement can see activations that are held.

Every mode builds the same ``--n`` prompts first, so the modes differ only in what they capture.
Writes ``ru_maxrss`` (the process's peak resident set) as JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from _setup import use_all_cores

from headvec import HeadEngine, Prompt, load
from headvec.cache import extract_to_disk

MODES = ("one-batch", "extract", "in-memory")
WORDS = (
    "the", "a", "model", "reads", "every", "head", "of", "each", "layer", "and", "writes", "what", "it",
    "finds", "on", "disk", "while", "cache", "grows", "one", "shard", "at", "time", "so", "memory", "stays",
    "flat", "across", "many", "short", "prompts", "about", "cats", "dogs", "rivers", "cities", "numbers",
    "colours", "music", "science", "history", "weather", "food", "travel", "sport",
)  # fmt: skip


def short_prompts(n: int, seed: int = 0) -> list[Prompt]:
    """``n`` seeded prompts of 6 to 14 words (about 8 to 18 MiniLM tokens)."""
    rng = random.Random(seed)
    return [Prompt(text=" ".join(rng.choices(WORDS, k=rng.randint(6, 14)))) for _ in range(n)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@contextmanager
def rss_samples(every: float = 0.1) -> Iterator[list[float]]:
    """Sample this process's current RSS (MiB) in the background while the block runs."""
    samples: list[float] = []
    done = threading.Event()
    process = psutil.Process()

    def sample() -> None:
        while not done.is_set():
            samples.append(process.memory_info().rss / 2**20)
            done.wait(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def quarters(samples: list[float]) -> list[float]:
    """RSS a quarter, half, three quarters of the way through the run, and at its end."""
    if not samples:
        return []
    return [samples[min(len(samples) - 1, round(len(samples) * q) - 1)] for q in (0.25, 0.5, 0.75, 1.0)]


def measure_memory(mode: str, n: int, batch_size: int, out: Path) -> dict[str, Any]:
    prompts = short_prompts(n)
    engine = HeadEngine(load("minilm", device="cpu"))
    start = time.perf_counter()
    with rss_samples() as samples:
        if mode == "one-batch":
            rows = engine.capture_batch(engine.loaded.encode(prompts[:batch_size])).heads.shape[0]
        elif mode == "extract":
            extract_to_disk(engine, prompts, out, batch_size=batch_size, progress=False)
            rows = n
        else:
            rows = engine.capture(prompts, batch_size=batch_size).heads.shape[0]
    return {
        "mode": mode,
        "rows": rows,
        "batch_size": batch_size,
        "peak_rss_mib": peak_rss_mib(),
        "rss_quarters_mib": quarters(samples),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True, help="cache directory (extract mode)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    use_all_cores()
    warnings.filterwarnings("ignore")
    result = measure_memory(args.mode, args.n, args.batch_size, args.out)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
