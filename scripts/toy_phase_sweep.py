"""Try other last phases on a candidate run's checkpoint, side by side (the "last-phase sweep" rows of
the trial table in docs/toyworld.md).

    python scripts/toy_phase_sweep.py CHECKPOINT_DIR OUT_DIR VARIANTS_JSON [DEVICE] [EVERY]

VARIANTS_JSON maps a name to overrides of the checkpoint's own ``TrainConfig`` that change only the
judge phase (``judge_mixture``, ``judge_lr``, ``judge_steps``): the checkpoint's
steps are then exactly the first steps of each variant's recipe, so a variant's result is what that
recipe gives from scratch. Each variant trains in its own process (resumable through its checkpoint)
and appends the pilot measure (first answer token on held-out scenes) every EVERY steps to
OUT_DIR/sweep.jsonl; at the end `evaluate_toy_model` (n=200) goes to OUT_DIR/NAME-eval.json. The runs
themselves go to OUT_DIR/NAME, or to $SWEEP_RUNS/NAME when that is set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_model

HERE = Path(__file__).resolve().parent
JUDGE_PHASE_KEYS = {"judge_mixture", "judge_lr", "judge_steps", "micro_batch_tokens"}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_variant(checkpoint: Path, out: Path, name: str, overrides: dict, device: str, every: int) -> None:
    from headvec.models import load
    from headvec.toyworld.evaluate import evaluate_toy_model
    from headvec.toyworld.model import build_config, build_model, build_processor
    from headvec.toyworld.train import TrainConfig, train

    if set(overrides) - JUDGE_PHASE_KEYS:
        raise SystemExit(f"{name}: only {sorted(JUDGE_PHASE_KEYS)} may change, got {sorted(overrides)}")
    torch.set_num_threads(2)
    saved = json.loads((checkpoint / "state.json").read_text())["config"]
    config = TrainConfig(**{**saved, **overrides})
    run = Path(os.environ.get("SWEEP_RUNS", out)) / name
    if not (run / "checkpoint").exists():
        shutil.copytree(checkpoint, run / "checkpoint")
        state = json.loads((run / "checkpoint/state.json").read_text())
        if state["step"] >= config.steps + config.verify_steps:
            raise SystemExit(f"{checkpoint} is already in the judge phase: its steps differ by variant")
        state["config"] = json.loads(json.dumps(asdict(config)))
        (run / "checkpoint/state.json").write_text(json.dumps(state))
    measure = _script("toy_continue_pilot")
    processor = build_processor()
    sets = measure.held_out_sets()
    while True:
        step = json.loads((run / "checkpoint/state.json").read_text())["step"] + 1
        if step >= config.total_steps:
            break
        target = min(config.total_steps, (step // every + 1) * every)
        pause = target if target < config.total_steps else None
        train(run, config, until_step=pause, progress=False, device=device)
        shape = (config.hidden_size, config.n_layers, config.n_heads)
        model = build_model(build_config(processor.tokenizer, *shape))
        load_model(model, str(run / "checkpoint/model.safetensors"))
        scores = measure.first_token_accuracy(model.to(device), processor, sets)
        with open(out / "sweep.jsonl", "a") as log:
            log.write(json.dumps({"variant": name, "step": target, **scores}) + "\n")
        print(name, target, scores, flush=True)
    loaded = load(str(run / "model"), device=device)
    (out / f"{name}-eval.json").write_text(json.dumps(evaluate_toy_model(loaded, n=200, seed=1), indent=1))


def main(checkpoint: str, out: str, variants: dict, device: str = "cpu", every: int = 1000) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--one", checkpoint, out]
    procs = [
        subprocess.Popen([*command, name, json.dumps(overrides), device, str(every)])
        for name, overrides in variants.items()
    ]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    if sys.argv[1] == "--one":
        _, _, ckpt, out_dir, name, overrides, device, every = sys.argv
        run_variant(Path(ckpt), Path(out_dir), name, json.loads(overrides), device, int(every))
    else:
        main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), *sys.argv[4:5], *map(int, sys.argv[5:6]))
