"""Where the attention heads live in a Hugging Face model.

Every method in headvec reads or writes the *input* of each decoder layer's attention output
projection (``o_proj``, ``c_proj``, ``dense``, ``out_proj``): the concatenation of the per-head outputs
``softmax(QK^T)V`` before they are mixed by ``W_O``. This module finds that projection in the language
backbone (never the vision tower), and derives ``head_dim`` from the projection's shape because it is
not always ``hidden_size / num_heads`` (Gemma, small Qwen3).

For the logit lens it also finds what turns a decoder layer's output into next-token logits: the final
norm next to the layer list and the model's output embeddings (:func:`discover_lens`, overridden with
:func:`register_lens` as :func:`register_architecture` overrides the heads).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from headvec.errors import UnknownArchitectureError

# Relative path of the attention output projection inside one decoder layer, most common first.
ATTN_OUT_CANDIDATES: tuple[str, ...] = (
    "self_attn.o_proj",  # Llama, Qwen2/3, Mistral, Gemma, Phi3, OLMo, most VLM language models
    "attn.c_proj",  # GPT-2, Qwen-VL (v1)
    "attention.dense",  # GPT-NeoX, Pythia
    "self_attn.dense",  # Phi-1/2
    "attention.output.dense",  # BERT and its encoders (MiniLM)
    "attn.o_proj",
    "attn.out_proj",  # GPT-J style
    "self_attn.out_proj",  # OPT, Idefics-era encoders
    "self_attention.dense",  # Falcon, Bloom
    "attention.o_proj",
)

# Path components that mark a vision or audio tower: their attention blocks are never the backbone.
NON_TEXT_MARKERS: tuple[str, ...] = (
    "vision",
    "visual",
    "image",
    "vit",
    "projector",
    "connector",
    "audio",
    "perceiver",
    "resampler",
)

# Bidirectional encoders: every position sees every other, so "first" and "last" are both meaningful.
ENCODER_MODEL_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "albert", "deberta", "deberta-v2"}
)

# Models whose attention output projection does not take ``[heads, head_dim]``: refused by name, because
# every shape check would pass and every head would be wrong.
UNSUPPORTED_HEAD_LAYOUTS: dict[str, str] = {
    "diffllama": "differential attention: its o_proj takes num_heads / 2 differential heads of "
    "2 x head_dim each, after a group norm",
}

# model_type -> (layers path, attention-output path inside a layer); wins over discovery.
ARCHITECTURE_OVERRIDES: dict[str, tuple[str, str]] = {}


def register_architecture(model_type: str, layers_path: str, attn_out: str) -> None:
    """Tell headvec where a model's decoder layers and attention output projections live.

    Example: ``register_architecture("my_model", "backbone.blocks", "attn.out")``.
    """
    ARCHITECTURE_OVERRIDES[model_type] = (layers_path, attn_out)


@dataclass(frozen=True)
class Architecture:
    """The head geometry of one loaded model and the module paths headvec hooks."""

    model_type: str
    layers_path: str
    attn_out_name: str
    n_layers: int
    n_heads: int
    head_dim: int
    hidden_size: int
    max_positions: int | None
    is_encoder: bool
    # A mixed stack (cross-attention or state-space layers among the attention layers): the stack
    # positions of the layers headvec hooks, in order (headvec's layer i is stack layer
    # ``layer_indices[i]``), and the (stack position, kind) of the layers it skips. Empty: every layer.
    layer_indices: tuple[int, ...] = ()
    skipped_layers: tuple[tuple[int, str], ...] = ()

    def stack_index(self, layer: int) -> int:
        """The position in the model's layer stack of headvec's layer ``layer``."""
        return self.layer_indices[layer] if self.layer_indices else layer

    def hook_path(self, layer: int) -> str:
        return f"{self.layers_path}.{self.stack_index(layer)}.{self.attn_out_name}"

    @property
    def hook_paths(self) -> list[str]:
        return [self.hook_path(layer) for layer in range(self.n_layers)]

    def layer_module(self, model: nn.Module, layer: int) -> nn.Module:
        return model.get_submodule(f"{self.layers_path}.{self.stack_index(layer)}")

    def attn_out(self, model: nn.Module, layer: int) -> nn.Module:
        return model.get_submodule(self.hook_path(layer))

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _first_attr(obj, names: tuple[str, ...]):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


@functools.cache
def _conv1d() -> type:
    """GPT-2's ``Conv1D``, imported on first use: ``transformers.pytorch_utils`` costs ~0.8 s to import."""
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def _is_projection(module: nn.Module | None) -> bool:
    return isinstance(module, (nn.Linear, _conv1d()))


def projection_in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if isinstance(module, _conv1d()) else module.in_features


def projection_weight(module: nn.Module) -> torch.Tensor:
    """The projection's weight as ``[out_features, in_features]`` (GPT-2's Conv1D stores it transposed)."""
    return module.weight.T if isinstance(module, _conv1d()) else module.weight


def _try_submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _layer_kind(layer: nn.Module) -> str:
    """What a layer without the self-attention projection is, for the list of skipped layers."""
    names = [name for name, _ in layer.named_modules()]
    if any("cross_attn" in name for name in names):
        return "cross-attention"
    if any("mamba" in name.lower() for name in names) or "mamba" in type(layer).__name__.lower():
        return "state-space"
    return f"no attention ({type(layer).__name__})"


def _discover(model: nn.Module) -> tuple[list[tuple[str, str]], list[tuple[str, str, list[bool]]]]:
    """All (layers path, attention-output path) pairs of text decoder stacks in the model, and each
    mixed stack as (layers path, attention-output path, which layers have it): a stack where only some
    layers have an attention output projection."""
    found, mixed = [], []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(marker in part.lower() for part in path.split(".") for marker in NON_TEXT_MARKERS):
            continue
        partial = None
        for name in ATTN_OUT_CANDIDATES:
            has = [_is_projection(_try_submodule(layer, name)) for layer in module]
            if all(has):
                found.append((path, name))
                break
            if any(has) and partial is None:
                partial = (path, name, has)
        else:
            if partial is not None:
                mixed.append(partial)
    return found, mixed


def _register_hint(model_type: str) -> str:
    return f"register it with headvec.register_architecture({model_type!r}, layers_path=..., attn_out=...)"


def discover_architecture(model: nn.Module) -> Architecture:
    """Find the language backbone's layers and attention output projections, and the head geometry."""
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    name = type(model).__name__
    text_type = getattr(_text_config(config), "model_type", model_type)
    for kind in (model_type, text_type):
        if kind in UNSUPPORTED_HEAD_LAYOUTS and kind not in ARCHITECTURE_OVERRIDES:
            raise UnknownArchitectureError(
                f"{name} is not supported: {UNSUPPORTED_HEAD_LAYOUTS[kind]}, so its heads are not the "
                "[heads, head_dim] blocks headvec reads and writes"
            )
    layer_indices: tuple[int, ...] = ()  # every layer, unless the stack is mixed
    skipped: tuple[tuple[int, str], ...] = ()
    if model_type in ARCHITECTURE_OVERRIDES:
        layers_path, attn_out = ARCHITECTURE_OVERRIDES[model_type]
        stack = _try_submodule(model, layers_path)
        if not isinstance(stack, nn.ModuleList) or len(stack) == 0:
            raise UnknownArchitectureError(
                f"override for {model_type!r} names {layers_path!r}, which is not a list of layers in "
                f"{name}; fix it with headvec.register_architecture"
            )
        lacking = [i for i, layer in enumerate(stack) if not _is_projection(_try_submodule(layer, attn_out))]
        if lacking:  # a mixed stack (cross-attention or state-space layers) cannot be hooked uniformly
            shown = ", ".join(map(str, lacking[:8])) + (" ..." if len(lacking) > 8 else "")
            raise UnknownArchitectureError(
                f"override for {model_type!r}: layers {shown} of {layers_path} have no Linear {attn_out} "
                f"(of {len(stack)} layers; cross-attention or state-space layers?); headvec needs an "
                "attention output projection in every layer of the stack it hooks"
            )
    else:
        found, mixed = _discover(model)
        if not found and len(mixed) > 1:
            paths = ", ".join(f"{p}[*].{a}" for p, a, _ in mixed)
            raise UnknownArchitectureError(
                f"ambiguous architecture {name}: several mixed layer stacks ({paths}); "
                f"{_register_hint(model_type)}"
            )
        if not found and mixed:  # hook the attention layers, skip (and list) the others
            layers_path, attn_out, has = mixed[0]
            stack = model.get_submodule(layers_path)
            layer_indices = tuple(i for i, ok in enumerate(has) if ok)
            skipped = tuple((i, _layer_kind(stack[i])) for i, ok in enumerate(has) if not ok)
            found = [(layers_path, attn_out)]
        if not found:
            raise UnknownArchitectureError(
                f"unknown architecture {name} (model_type {model_type!r}): no decoder layers with an "
                f"attention output projection were found; {_register_hint(model_type)}"
            )
        if len(found) > 1:
            paths = ", ".join(f"{p}[*].{a}" for p, a in found)
            raise UnknownArchitectureError(
                f"ambiguous architecture {name}: several layer stacks look like a text decoder ({paths}); "
                f"{_register_hint(model_type)}"
            )
        layers_path, attn_out = found[0]

    text_config = _text_config(config)
    n_heads = _first_attr(text_config, ("num_attention_heads", "n_head", "num_heads"))
    layers = model.get_submodule(layers_path)
    first = layer_indices[0] if layer_indices else 0
    in_features = projection_in_features(layers[first].get_submodule(attn_out))
    if not n_heads or in_features % n_heads:
        raise UnknownArchitectureError(
            f"{name}: the attention output projection takes {in_features} features, which is not a whole "
            f"number of heads for num_attention_heads={n_heads}; {_register_hint(model_type)}"
        )
    head_dim = in_features // n_heads
    # Multi-head latent attention (DeepSeek-V2/V3): heads leave the attention at v_head_dim wide, while
    # head_dim is the rotary part of the query/key.
    declared = _first_attr(text_config, ("v_head_dim", "head_dim"))
    if isinstance(declared, int) and declared != head_dim:
        raise UnknownArchitectureError(
            f"{name}: config head_dim={declared} but the output projection implies {head_dim}; "
            f"{_register_hint(model_type)}"
        )
    hidden = _first_attr(text_config, ("hidden_size", "n_embd", "d_model")) or in_features
    max_positions = _first_attr(text_config, ("max_position_embeddings", "n_positions", "max_seq_len"))
    return Architecture(
        model_type=model_type,
        layers_path=layers_path,
        attn_out_name=attn_out,
        n_layers=len(layer_indices) if layer_indices else len(layers),
        n_heads=int(n_heads),
        head_dim=head_dim,
        hidden_size=int(hidden),
        max_positions=int(max_positions) if max_positions else None,
        is_encoder=model_type in ENCODER_MODEL_TYPES,
        layer_indices=layer_indices,
        skipped_layers=skipped,
    )


def weights_fingerprint(model: nn.Module, arch: Architecture) -> str:
    """A short hash of the first and last attention output weights: tells one checkpoint from another."""
    digest = hashlib.sha256()
    for layer in (0, arch.n_layers - 1):
        weight = projection_weight(arch.attn_out(model, layer)).detach().float().cpu().contiguous()
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- logit lens
# Names of the final norm, looked up next to the decoder layer list (its sibling in the same module).
FINAL_NORM_CANDIDATES: tuple[str, ...] = (
    "norm",  # Llama, Qwen, Mistral, Gemma, Phi3, DeepSeek, the VLM language models
    "final_layernorm",  # Phi-1/2
    "final_layer_norm",  # GPT-NeoX, OPT
    "ln_f",  # GPT-2, GPT-J, Falcon, Bloom
    "norm_f",
    "final_norm",
)
# Modules applied after the final norm before the unembedding, when the model has them (OPT's
# ``project_out`` maps hidden_size to word_embed_proj_dim).
POST_NORM_CANDIDATES: tuple[str, ...] = ("project_out",)

# model_type -> (final norm path, unembedding path); wins over discovery. An empty norm path means none.
LENS_OVERRIDES: dict[str, tuple[str, str]] = {}


def register_lens(model_type: str, final_norm: str, unembedding: str) -> None:
    """Tell headvec where a model's final norm and unembedding live, for the logit lens.

    Example: ``register_lens("my_model", "backbone.final_norm", "head")``; ``final_norm=""`` for a model
    that has none.
    """
    LENS_OVERRIDES[model_type] = (final_norm, unembedding)


@dataclass(frozen=True)
class LensModules:
    """What turns a decoder layer's output into next-token logits, as the model's own head does:
    ``unembedding(post_norm(final_norm(h)))``, then ``softcap * tanh(logits / softcap)`` when set."""

    final_norm: str  # module path, "" = no final norm
    post_norm: tuple[str, ...]
    unembedding: str
    softcap: float | None


def _module_path(model: nn.Module, module: nn.Module) -> str:
    for path, candidate in model.named_modules():
        if candidate is module:
            return path
    raise UnknownArchitectureError(
        f"{type(model).__name__}: its output embeddings are not one of its modules; use register_lens"
    )


def discover_lens(model: nn.Module, arch: Architecture) -> LensModules:
    """Find the final norm (a sibling of the decoder layer list) and the unembedding (the model's output
    embeddings), so any layer's output can be read as logits; :func:`register_lens` overrides both."""
    name = type(model).__name__
    softcap = getattr(_text_config(model.config), "final_logit_softcapping", None)
    if arch.model_type in LENS_OVERRIDES:
        norm_path, head_path = LENS_OVERRIDES[arch.model_type]
        for path in (norm_path, head_path):
            if path and _try_submodule(model, path) is None:
                raise UnknownArchitectureError(
                    f"lens override for {arch.model_type!r} names {path!r}, which is not a module of {name}; "
                    "fix it with headvec.arch.register_lens"
                )
        return LensModules(norm_path, (), head_path, softcap)
    hint = f"register it with headvec.arch.register_lens({arch.model_type!r}, final_norm=..., unembedding=..)"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise UnknownArchitectureError(
            f"{name} has no language-model head (an encoder or a base model without output embeddings), so "
            "there is no logit lens; load it with its LM head (AutoModelForCausalLM)"
        )
    parent_path = arch.layers_path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    present = [n for n in FINAL_NORM_CANDIDATES if hasattr(parent, n)]
    if not present:
        raise UnknownArchitectureError(
            f"{name}: no final norm ({', '.join(FINAL_NORM_CANDIDATES)}) next to {arch.layers_path}; {hint}"
        )
    prefix = f"{parent_path}." if parent_path else ""
    norm = getattr(parent, present[0])
    post = tuple(f"{prefix}{n}" for n in POST_NORM_CANDIDATES if getattr(parent, n, None) is not None)
    return LensModules(
        final_norm=f"{prefix}{present[0]}" if norm is not None else "",
        post_norm=post,
        unembedding=_module_path(model, head),
        softcap=float(softcap) if softcap else None,
    )
