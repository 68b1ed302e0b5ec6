"""Speed worker: times headvec, a bare forward, nnsight and TransformerLens on one model.

Run by ``bench/run.py`` as a subprocess (one per model). Each reported ratio comes from its own series
of interleaved rounds in this one process, the two sides running back to back in every round.
Writes its timings and checks as JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import tempfile
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from _setup import (
    MODEL_NAMES,
    forward_kwargs,
    load_model,
    minilm_with_mlm_head,
    n_parameters,
    random_inputs,
    use_all_cores,
)
from _timing import QuietGate, time_interleaved
from torch import nn

from headvec import HeadEngine, LoadedModel
from headvec.models import resolve_model_path

Variant = Callable[[], object]
Capturer = Callable[[], torch.Tensor]  # a library's capture: heads [batch, layers, heads, head_dim]
LibraryResult = tuple[dict[str, Any], dict[str, Variant]]


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def reason(exc: BaseException) -> str:
    """A one-line description of why a library could not run the model."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def bare_forward(model: nn.Module, inputs: dict[str, torch.Tensor], kwargs: dict[str, Any]) -> Variant:
    @torch.no_grad()
    def run() -> object:
        return model(**inputs, **kwargs)

    return run


# ---------------------------------------------------------------------------------------- nnsight
def nnsight_path(path: str) -> str:
    """nnsight serves ``.output``/``.input`` on every module, so it mounts submodules with those names
    (BERT's ``attention.output``) as ``E_output``."""
    from nnsight.intervention.envoy import Envoy

    def part(name: str) -> str:
        clash = not name.startswith("_") and inspect.isdatadescriptor(getattr(Envoy, name, None))
        return f"{Envoy.OVERLOAD_PREFIX}{name}" if clash else name

    return ".".join(part(name) for name in path.split("."))


def nnsight_capture(loaded: LoadedModel, inputs: dict[str, torch.Tensor], kwargs: dict[str, Any]) -> Capturer:
    """Last-token o_proj inputs of every layer through ``nnsight.NNsight``.

    NNsight replaces ``forward`` on every module it wraps, for good, so it gets its own copy of the
    model: the bare-forward and headvec timings must run on an untouched one.
    """
    from nnsight import NNsight

    wrapped = NNsight(copy.deepcopy(loaded.model))
    arch = loaded.arch
    paths = [nnsight_path(arch.hook_path(layer)) for layer in range(arch.n_layers)]

    @torch.no_grad()
    def run() -> torch.Tensor:
        saved: list[Any] = []
        with wrapped.trace(**inputs, **kwargs):
            for path in paths:
                saved.append(wrapped.get(path).input[:, -1].save())
        heads = torch.stack([torch.as_tensor(value) for value in saved], dim=1)
        return heads.reshape(*heads.shape[:2], arch.n_heads, arch.head_dim)

    return run


def setup_nnsight(
    loaded: LoadedModel, inputs: dict[str, torch.Tensor], kwargs: dict[str, Any], reference: torch.Tensor
) -> LibraryResult:
    info: dict[str, Any] = {"version": package_version("nnsight"), "reference": "headvec_all"}
    if info["version"] is None:
        return {**info, "status": "not installed (pip install nnsight)"}, {}
    try:
        run = nnsight_capture(loaded, inputs, kwargs)
        info["max_abs_diff"] = max_abs_diff(run(), reference)
    except Exception as exc:
        return {**info, "status": f"unsupported: {reason(exc)}"}, {}
    return {**info, "status": "ok"}, {"nnsight": run}


# -------------------------------------------------------------------------------- TransformerLens
def transformerlens_capture(loaded: LoadedModel, inputs: dict[str, torch.Tensor]) -> Capturer:
    """Last-token ``hook_z`` of every layer through TransformerLens 4's ``TransformerBridge``.

    TransformerLens 4 removed ``HookedTransformer``; its bridge wraps the Hugging Face model (offline
    here: ``hf_model=`` plus a local tokenizer) and switches it to eager attention in place, so it too
    gets its own copy. The hooks keep only the last position, the cheapest way to ask TL for it.
    """
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        resolve_model_path(loaded.name_or_path),
        hf_model=copy.deepcopy(loaded.model),
        tokenizer=loaded.tokenizer,
        device="cpu",
    )
    n_layers = loaded.arch.n_layers
    store: dict[int, torch.Tensor] = {}

    def keep_last(layer: int) -> Callable[..., None]:
        def hook(z: torch.Tensor, hook: Any) -> None:
            store[layer] = z[:, -1].detach()

        return hook

    hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = [
        (f"blocks.{layer}.attn.hook_z", keep_last(layer)) for layer in range(n_layers)
    ]

    @torch.no_grad()
    def run() -> torch.Tensor:
        store.clear()
        bridge.run_with_hooks(
            inputs["input_ids"], attention_mask=inputs["attention_mask"], fwd_hooks=hooks, return_type=None
        )
        return torch.stack([store[layer] for layer in range(n_layers)], dim=1)

    return run


def setup_transformerlens(
    name: str, loaded: LoadedModel, engine: HeadEngine, inputs: dict[str, torch.Tensor]
) -> LibraryResult:
    info: dict[str, Any] = {"version": package_version("transformer-lens"), "reference": "headvec_all"}
    if info["version"] is None:
        return {**info, "status": "not installed (pip install transformer-lens)"}, {}
    variants: dict[str, Variant] = {}
    target, target_engine = loaded, engine
    if name == "minilm":
        # Same weights, plus the MLM head TL needs; headvec is timed on this very model for the ratio.
        target = minilm_with_mlm_head()
        target_engine = HeadEngine(target)
        info["reference"] = "headvec_all_mlm"
        info["model_note"] = "BertForMaskedLM (MiniLM encoder + random MLM head) for both TL and headvec"
        variants["headvec_all_mlm"] = lambda: target_engine.capture_batch(inputs, stop_early=False)
    info["attn_implementation"] = "eager (the bridge forces it)"
    try:
        run = transformerlens_capture(target, inputs)
        reference = target_engine.capture_batch(inputs, stop_early=False).heads
        info["max_abs_diff"] = max_abs_diff(run(), reference)
    except Exception as exc:
        return {**info, "status": f"unsupported: {reason(exc)}"}, {}
    return {**info, "status": "ok"}, {**variants, "transformerlens": run}


# ----------------------------------------------------------------------------------------- checks
def untouched(model: nn.Module) -> bool:
    """True if no module of the model has hooks or a patched ``forward`` and no global hooks exist."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    return all(
        "forward" not in sub.__dict__ and not sub._forward_hooks and not sub._forward_pre_hooks
        for sub in model.modules()
    )


def measure_speed(name: str, workdir: Path, reps: int, warmup: int) -> dict[str, Any]:
    loaded = load_model(name, workdir)
    model, arch = loaded.model, loaded.arch
    engine = HeadEngine(loaded)
    inputs = random_inputs(model.config.vocab_size)
    kwargs = forward_kwargs(model)
    early = arch.n_layers // 2 - 1

    full = engine.capture_batch(inputs, stop_early=False).heads
    early_heads = engine.capture_batch(inputs, layers=[early]).heads
    variants: dict[str, Variant] = {
        "bare": bare_forward(model, inputs, kwargs),
        "headvec_all": lambda: engine.capture_batch(inputs, stop_early=False),
        "headvec_early": lambda: engine.capture_batch(inputs, layers=[early]),
        "headvec_all_default": lambda: engine.capture_batch(inputs),  # stop_early=True
    }
    nnsight_info, nnsight_variants = setup_nnsight(loaded, inputs, kwargs, full)
    tl_info, tl_variants = setup_transformerlens(name, loaded, engine, inputs)
    variants.update(nnsight_variants)
    variants.update(tl_variants)
    libraries = {"nnsight": nnsight_info, "transformerlens": tl_info}

    # (numerator, denominator) of each reported ratio; each pair gets its own interleaved series so
    # that the two sides of a ratio always run back to back.
    pairs = {
        "overhead": ("headvec_all", "bare"),
        "early_exit": ("bare", "headvec_early"),
        "stop_early": ("headvec_all", "headvec_all_default"),
    }
    pairs |= {key: (key, info["reference"]) for key, info in libraries.items() if info["status"] == "ok"}
    # The capture overhead (a few %) is finer than one round's noise: it gets twice the rounds.
    pair_reps = {key: 2 * reps if key == "overhead" else reps for key in pairs}
    comparisons = {}
    gate = QuietGate()  # one waiting budget for the whole process
    for key, (numerator, denominator) in pairs.items():
        chosen = {numerator: variants[numerator], denominator: variants[denominator]}
        busy_before = gate.busy_rounds
        timings = time_interleaved(chosen, reps=pair_reps[key], warmup=warmup, before_round=gate)
        comparisons[key] = {
            "numerator": numerator,
            "denominator": denominator,
            "seconds": timings.to_dict(),
            "busy_rounds": gate.busy_rounds - busy_before,
        }

    return {
        "model": name,
        "model_class": type(model).__name__,
        "attn_implementation": model.config._attn_implementation,
        "parameters": n_parameters(model),
        "n_layers": arch.n_layers,
        "n_heads": arch.n_heads,
        "head_dim": arch.head_dim,
        "early_layer": early,
        "batch": list(inputs["input_ids"].shape),
        "reps": reps,
        "warmup": warmup,
        "comparisons": comparisons,
        "waiting": gate.to_dict(),
        "libraries": libraries,
        "checks": {
            "heads_shape": list(full.shape),
            "early_exit_max_abs_diff": max_abs_diff(early_heads[:, 0], full[:, early]),
            "baseline_model_untouched": untouched(model),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=MODEL_NAMES, required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    use_all_cores()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="headvec-bench-") as tmp:
        result = measure_speed(args.model, Path(tmp), args.reps, args.warmup)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
