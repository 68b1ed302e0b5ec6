"""Tiny random-init instances of real Hugging Face architectures, built fully offline.

Tests need real module trees (real attention classes, real processors, real chat templates)
without downloading checkpoints, so every model here is built from a config, gets a locally
trained byte-level BPE tokenizer and is saved with ``save_pretrained`` like a hub checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    BloomConfig,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    DeepseekV3Config,
    FalconConfig,
    Gemma2Config,
    Gemma3Config,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    Idefics2Config,
    Idefics2ImageProcessorPil,
    Idefics2PerceiverConfig,
    Idefics2Processor,
    Idefics2VisionConfig,
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessorPil,
    LlavaProcessor,
    MistralConfig,
    OPTConfig,
    PaddleOCRVLProcessor,
    PaliGemmaConfig,
    PaliGemmaProcessor,
    Phi3Config,
    PhiConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen3Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)
from transformers.utils import logging as hf_logging

__all__ = ["TEXT_ONLY", "TINY_ARCHITECTURES", "build_tiny_model"]

_TEXT_ARCHITECTURES: tuple[str, ...] = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
    "gpt_neox",
    "deepseek_v3",
    "falcon",
    "phi",
    "gptj",
    "opt",
    "bloom",
)
TINY_ARCHITECTURES: tuple[str, ...] = (
    *_TEXT_ARCHITECTURES,
    "llava",
    "llava_onevision",
    "llava_next",
    "gemma3",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics3",
    "idefics2",
    "paligemma",
)
TEXT_ONLY: frozenset[str] = frozenset(_TEXT_ARCHITECTURES)

# ---------------------------------------------------------------------------------------------
# Shared tokenizer
# ---------------------------------------------------------------------------------------------

_CORPUS = """\
The quick brown fox jumps over the lazy dog near the river bank.
A small red cat sleeps on the warm kitchen floor every afternoon.
Scientists measured the temperature of the ocean at twelve different depths.
She opened the old wooden door and walked slowly into the quiet library.
My brother likes to play chess with his friends on Sunday mornings.
The train to the city leaves at seven o'clock and arrives before nine.
Please write a short poem about the moon, the stars and the night sky.
What is the capital of France? The capital of France is Paris.
How many legs does a spider have? A spider has eight legs.
Yesterday we visited a museum full of paintings, statues and ancient coins.
The children laughed while the dog chased a yellow ball across the garden.
Water boils at one hundred degrees Celsius at sea level.
He forgot his umbrella, so he got wet in the sudden summer rain.
Our teacher explained how plants turn sunlight into energy.
I think the answer is correct, but let me check the numbers again.
The mountain road was narrow, steep and covered with fresh white snow.
They built a tiny robot that can sort blue and green blocks.
Describe the image in one sentence. The picture shows a bird on a branch.
Could you translate this sentence into German and Spanish for me?
Music, art and history are my favourite subjects at school.
The market sells apples, oranges, bananas, bread, cheese and fresh fish.
When the sun set, the sky turned orange, pink and finally dark purple.
Good morning! How are you today? I am fine, thank you very much.
Every computer program is a list of instructions for a machine.
The doctor told him to drink more water and sleep eight hours.
A large ship carried cars and containers across the Atlantic Ocean.
We should always be honest, kind and helpful to other people.
The recipe needs two eggs, a cup of flour, sugar and some milk.
Birds fly south in autumn because the winter is cold and long.
Is this statement true or false? Explain your reasoning step by step.
The library closes at six, so we must return the books before then.
In 1969 two astronauts walked on the surface of the moon.
Lions, tigers and bears live in very different parts of the world.
The city park has a lake, a playground and many tall green trees.
Answer the question: what colour is the sky on a clear day? Blue.
She wrote a letter to her grandmother and sent it by post.
Dogs are loyal animals and they love to run, jump and play outside.
The engineer fixed the broken bridge with steel beams and strong cables.
Reading books every day helps you learn new words and ideas.
"""

# Union of the special tokens every family below needs, so all models share one vocabulary.
_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|padding|>",
    "<pad>",
    "<s>",
    "</s>",
    "<bos>",
    "<eos>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<image>",
    "<video>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)
_BPE_VOCAB_SIZE = 768
# PaliGemma's processor always appends these to its tokenizer; pre-adding them keeps the saved
# tokenizer and the model vocabulary in sync.
_PALIGEMMA_EXTRA = tuple(f"<loc{i:0>4}>" for i in range(1024)) + tuple(f"<seg{i:0>3}>" for i in range(128))


@functools.lru_cache(maxsize=1)
def _bpe_json() -> str:
    """Train the shared byte-level BPE once per process; each tokenizer gets a fresh copy."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no UNK ever
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tok.to_str()


@dataclass(frozen=True)
class _TokSpec:
    """Which shared-vocabulary tokens play which role for one family."""

    bos: str | None
    eos: str
    pad: str
    add_bos: bool = False  # True where the real tokenizer prepends bos on its own
    chat_template: str | None = None
    named: dict[str, str] = field(default_factory=dict)  # e.g. {"image_token": "<image>"}
    extra_tokens: tuple[str, ...] = ()


def _build_tokenizer(spec: _TokSpec) -> PreTrainedTokenizerFast:
    """Wrap the shared BPE in a fast tokenizer with the family's special tokens and template.

    Left padding is the default so batched ``generate`` works out of the box.
    """
    kwargs: dict[str, Any] = {
        "tokenizer_object": Tokenizer.from_str(_bpe_json()),
        "eos_token": spec.eos,
        "pad_token": spec.pad,
        "add_bos_token": spec.add_bos,
        "add_eos_token": False,
        "padding_side": "left",
        "model_max_length": 512,
    }
    if spec.bos is not None:
        kwargs["bos_token"] = spec.bos
    if spec.named:
        kwargs["extra_special_tokens"] = dict(spec.named)
    tokenizer = PreTrainedTokenizerFast(**kwargs)
    if spec.extra_tokens:
        tokenizer.add_tokens(list(spec.extra_tokens))
    if spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    return tokenizer


def _vocab_size(tokenizer: PreTrainedTokenizerFast) -> int:
    """Model vocabulary covering every tokenizer id, rounded up to a multiple of 64 like real models."""
    return -(-len(tokenizer) // 64) * 64


def _token_ids(tokenizer: PreTrainedTokenizerFast, spec: _TokSpec) -> dict[str, int | None]:
    """bos/eos/pad ids for the model config."""
    convert = tokenizer.convert_tokens_to_ids
    return {
        "bos_token_id": convert(spec.bos) if spec.bos is not None else None,
        "eos_token_id": convert(spec.eos),
        "pad_token_id": convert(spec.pad),
    }


# ---------------------------------------------------------------------------------------------
# Chat templates (jinja), imitating each family's real template
# ---------------------------------------------------------------------------------------------

# Renders string content or an OpenAI-style list of parts; `image` is the family's placeholder.
_RENDER = (
    "{%- macro render(content, image) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] in ['image', 'image_url'] -%}{{ image }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)
# Mistral and Gemma have no system role: fold system messages into the first user turn.
_SYSTEM_PREFIX = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- set ns.system = render(m['content'], '') + '\\n\\n' -%}"
    "{%- endfor -%}"
)
_IMAGE_PARTS = "{%- for part in m['content'] if part['type'] in ['image', 'image_url'] -%}"
_TEXT_PARTS = "{%- for part in m['content'] if part['type'] == 'text' -%}"

_LLAMA3_TEMPLATE = _RENDER + (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
    " + render(m['content'], '') | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)

_CHATML_TEMPLATE = _RENDER + (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + render(m['content'], '') + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_MISTRAL_TEMPLATE = (
    _RENDER
    + _SYSTEM_PREFIX
    + (
        "{{- bos_token -}}"
        "{%- for m in messages if m['role'] != 'system' -%}"
        "{%- if m['role'] == 'user' -%}"
        "{{- '[INST] ' + (ns.system if loop.first else '') + render(m['content'], '') + '[/INST]' -}}"
        "{%- else -%}{{- render(m['content'], '') + eos_token -}}{%- endif -%}"
        "{%- endfor -%}"
    )
)

_GEMMA_TEMPLATE = (
    _RENDER
    + _SYSTEM_PREFIX
    + (
        "{{- bos_token -}}"
        "{%- for m in messages if m['role'] != 'system' -%}"
        "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
        "{{- '<start_of_turn>' + role + '\\n' + (ns.system if loop.first else '')"
        " + render(m['content'], '') | trim + '<end_of_turn>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
    )
)

# Gemma 3 marks an image's place with <start_of_image>; its processor expands it into the soft tokens.
_GEMMA3_TEMPLATE = _GEMMA_TEMPLATE.replace(
    "render(m['content'], '')", "render(m['content'], '<start_of_image>')"
)

_PHI3_TEMPLATE = _RENDER + (
    "{%- for m in messages -%}"
    "{{- '<|' + m['role'] + '|>\\n' + render(m['content'], '') + '<|end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

# llava-1.5-hf: "USER: <image>\n<text> ASSISTANT:", all images of a turn before its text.
_LLAVA_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] != 'system' -%}{{- m['role'].upper() + ': ' -}}{%- endif -%}"
    "{%- if m['content'] is string -%}{{- m['content'] + ' ' -}}"
    "{%- else -%}"
    + _IMAGE_PARTS
    + "{{- '<image>\\n' -}}{%- endfor -%}"
    + _TEXT_PARTS
    + "{{- part['text'] + ' ' -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# llava-onevision (Qwen2 backbone): ChatML turns, images first, then "\n" + text.
_LLAVA_ONEVISION_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + ' ' -}}"
    "{%- if m['content'] is string -%}{{- '\\n' + m['content'] -}}"
    "{%- else -%}"
    + _IMAGE_PARTS
    + "{{- '<image>' -}}{%- endfor -%}"
    + _TEXT_PARTS
    + "{{- '\\n' + part['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_QWEN_VL_TEMPLATE = _RENDER + (
    "{%- for m in messages -%}"
    "{%- if loop.first and m['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n'"
    " + render(m['content'], '<|vision_start|><|image_pad|><|vision_end|>') + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Idefics3: "User:<image>text<end_of_utterance>\nAssistant:" (no space after ':' before an image).
_IDEFICS3_TEMPLATE = _RENDER + (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{%- set starts_with_image = m['content'] is not string"
    " and m['content'][0]['type'] in ['image', 'image_url'] -%}"
    "{{- m['role'] | capitalize + (':' if starts_with_image else ': ')"
    " + render(m['content'], '<image>') + '<end_of_utterance>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)

# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------

_HIDDEN = 64
_IMAGE = 32  # vision tower input side (pixels)
_PATCH = 8  # -> 4x4 = 16 patches per tile
# Any-resolution grids (LLaVA-NeXT, LLaVA-OneVision): one to two tiles per side.
_PINPOINTS = [[_IMAGE, _IMAGE], [_IMAGE, 2 * _IMAGE], [2 * _IMAGE, _IMAGE], [2 * _IMAGE, 2 * _IMAGE]]


def _text_dims(vocab_size: int, ids: dict[str, int | None], **overrides: Any) -> dict[str, Any]:
    """Common tiny decoder sizes (64 hidden, 2 layers, 4 heads, GQA with 2 KV heads), overridable."""
    dims: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": _HIDDEN,
        "intermediate_size": 2 * _HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        **ids,
    }
    dims.update(overrides)
    return dims


def _vision_dims(**overrides: Any) -> dict[str, Any]:
    """Common tiny ViT sizes (32 hidden, 2 layers, 4 heads, 32 px images in 8 px patches)."""
    dims: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": _IMAGE,
        "patch_size": _PATCH,
    }
    dims.update(overrides)
    return dims


# ---------------------------------------------------------------------------------------------
# Per-family builders: each returns (config, tokenizer-or-processor)
# ---------------------------------------------------------------------------------------------

_Built = tuple[PreTrainedConfig, PreTrainedTokenizerFast | ProcessorMixin]
_MakeConfig = Callable[[int, dict[str, int | None]], PreTrainedConfig]


def _text_family(spec: _TokSpec, make: _MakeConfig) -> _Built:
    tokenizer = _build_tokenizer(spec)
    return make(_vocab_size(tokenizer), _token_ids(tokenizer, spec)), tokenizer


def _llama() -> _Built:
    spec = _TokSpec(
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|end_of_text|>",
        add_bos=True,
        chat_template=_LLAMA3_TEMPLATE,
    )
    # attention_bias=True gives o_proj a bias too (trap for code assuming bias-free projections).
    return _text_family(spec, lambda v, ids: LlamaConfig(**_text_dims(v, ids, attention_bias=True)))


def _qwen2() -> _Built:
    spec = _TokSpec(bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=_CHATML_TEMPLATE)
    return _text_family(spec, lambda v, ids: Qwen2Config(**_text_dims(v, ids)))


def _qwen3() -> _Built:
    spec = _TokSpec(bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=_CHATML_TEMPLATE)
    # head_dim 32 != 64 / 4, so o_proj.in_features (128) differs from hidden_size.
    return _text_family(spec, lambda v, ids: Qwen3Config(**_text_dims(v, ids, head_dim=32)))


def _mistral() -> _Built:
    spec = _TokSpec(bos="<s>", eos="</s>", pad="<pad>", add_bos=True, chat_template=_MISTRAL_TEMPLATE)
    return _text_family(spec, lambda v, ids: MistralConfig(**_text_dims(v, ids)))


def _deepseek_v3() -> _Built:
    spec = _TokSpec(bos="<s>", eos="</s>", pad="<pad>", add_bos=True, chat_template=_MISTRAL_TEMPLATE)

    def make(v: int, ids: dict[str, int | None]) -> PreTrainedConfig:
        # Multi-head latent attention: heads leave the attention v_head_dim (12) wide, while the config's
        # head_dim is the rotary part of query and key (4); layer 1 is a mixture of experts.
        dims = _text_dims(v, ids, num_key_value_heads=4, moe_intermediate_size=32)
        mla = {"kv_lora_rank": 16, "q_lora_rank": None, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8}
        experts = {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 1}
        return DeepseekV3Config(
            **dims, **mla, **experts, v_head_dim=12, topk_group=1, first_k_dense_replace=1
        )

    return _text_family(spec, make)


def _falcon() -> _Built:
    spec = _TokSpec(bos=None, eos="<|endoftext|>", pad="<|endoftext|>", chat_template=_CHATML_TEMPLATE)

    def make(v: int, ids: dict[str, int | None]) -> PreTrainedConfig:
        # New decoder architecture, grouped KV heads and parallel attention / MLP: self_attention.dense.
        sizes = {"hidden_size": _HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4, "num_kv_heads": 2}
        return FalconConfig(vocab_size=v, **sizes, new_decoder_architecture=True, **ids)

    return _text_family(spec, make)


def _phi() -> _Built:
    spec = _TokSpec(bos=None, eos="<|endoftext|>", pad="<|endoftext|>", chat_template=_CHATML_TEMPLATE)
    # Phi-1/2: self_attn.dense with a bias, partial rotary.
    return _text_family(spec, lambda v, ids: PhiConfig(**_text_dims(v, ids, partial_rotary_factor=0.5)))


def _gptj() -> _Built:
    spec = _TokSpec(bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>")

    def make(v: int, ids: dict[str, int | None]) -> PreTrainedConfig:
        # attn.out_proj without bias; rotary on the first 8 of each head's 16 dimensions.
        sizes = {"n_embd": _HIDDEN, "n_layer": 2, "n_head": 4, "rotary_dim": 8, "n_positions": 512}
        return GPTJConfig(vocab_size=v, **sizes, **ids)

    return _text_family(spec, make)


def _opt() -> _Built:
    spec = _TokSpec(bos="</s>", eos="</s>", pad="<pad>", add_bos=True)

    def make(v: int, ids: dict[str, int | None]) -> PreTrainedConfig:
        # self_attn.out_proj with a bias; learned positions offset by 2.
        sizes = {"hidden_size": _HIDDEN, "ffn_dim": 2 * _HIDDEN, "num_hidden_layers": 2}
        return OPTConfig(vocab_size=v, **sizes, num_attention_heads=4, word_embed_proj_dim=_HIDDEN, **ids)

    return _text_family(spec, make)


def _bloom() -> _Built:
    spec = _TokSpec(bos="<s>", eos="</s>", pad="<pad>", add_bos=True)

    def make(v: int, ids: dict[str, int | None]) -> PreTrainedConfig:
        # ALiBi positions, fused query_key_value, self_attention.dense.
        return BloomConfig(vocab_size=v, hidden_size=_HIDDEN, n_layer=2, n_head=4, **ids)

    return _text_family(spec, make)


_GEMMA_SPEC = _TokSpec(bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True, chat_template=_GEMMA_TEMPLATE)


def _gemma2() -> _Built:
    def make(v: int, ids: dict[str, int | None]) -> PreTrainedConfig:
        # head_dim 32 != 64 / 4; 3 layers alternate sliding / full attention.
        dims = _text_dims(v, ids, num_hidden_layers=3, head_dim=32)
        return Gemma2Config(**dims, query_pre_attn_scalar=32, sliding_window=128)

    return _text_family(_GEMMA_SPEC, make)


def _gemma3_text() -> _Built:
    def make(v: int, ids: dict[str, int | None]) -> PreTrainedConfig:
        dims = _text_dims(v, ids, num_hidden_layers=3, head_dim=32)
        layer_types = ["sliding_attention", "sliding_attention", "full_attention"]
        return Gemma3TextConfig(**dims, query_pre_attn_scalar=32, sliding_window=128, layer_types=layer_types)

    return _text_family(_GEMMA_SPEC, make)


def _phi3() -> _Built:
    spec = _TokSpec(bos="<s>", eos="<|end|>", pad="<|endoftext|>", add_bos=True, chat_template=_PHI3_TEMPLATE)

    def make(v: int, ids: dict[str, int | None]) -> PreTrainedConfig:
        # Fused qkv_proj / gate_up_proj and no GQA, like Phi-3-mini.
        dims = _text_dims(v, ids, num_key_value_heads=4)
        return Phi3Config(**dims, original_max_position_embeddings=512)

    return _text_family(spec, make)


def _gpt2() -> _Built:
    spec = _TokSpec(bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>")

    def make(v: int, ids: dict[str, int | None]) -> PreTrainedConfig:
        # Conv1D projections (weight stored as [in, out]) with biases; absolute positions.
        sizes = {"n_embd": _HIDDEN, "n_inner": 2 * _HIDDEN, "n_layer": 2, "n_head": 4, "n_positions": 512}
        return GPT2Config(vocab_size=v, **sizes, **ids)

    return _text_family(spec, make)


def _gpt_neox() -> _Built:
    spec = _TokSpec(bos="<|endoftext|>", eos="<|endoftext|>", pad="<|padding|>")

    def make(v: int, ids: dict[str, int | None]) -> PreTrainedConfig:
        # Fused query_key_value, attention.dense with bias, partial rotary like Pythia.
        dims = _text_dims(v, ids)
        del dims["num_key_value_heads"]
        rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}
        return GPTNeoXConfig(**dims, rope_parameters=rope)

    return _text_family(spec, make)


def _llava() -> _Built:
    spec = _TokSpec(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        add_bos=True,
        chat_template=_LLAVA_TEMPLATE,
        named={"image_token": "<image>"},
    )
    tokenizer = _build_tokenizer(spec)
    # CLIP keeps its CLS token; the "default" strategy drops it -> 16 image tokens per image.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": _IMAGE}, crop_size={"height": _IMAGE, "width": _IMAGE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_LLAVA_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**_vision_dims(projection_dim=32)),
        text_config=LlamaConfig(**_text_dims(_vocab_size(tokenizer), _token_ids(tokenizer, spec))),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(_IMAGE // _PATCH) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return config, processor


def _llava_onevision() -> _Built:
    spec = _TokSpec(
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=_LLAVA_ONEVISION_TEMPLATE,
        named={"image_token": "<image>", "video_token": "<video>"},
    )
    tokenizer = _build_tokenizer(spec)
    pinpoints = _PINPOINTS
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": _IMAGE, "width": _IMAGE}, image_grid_pinpoints=pinpoints
    )
    # LlavaOnevisionProcessor requires a video processor, and video processors require
    # torchvision. LlavaNextProcessor counts image tokens identically for one image per prompt
    # (SigLIP has no CLS, "full" strategy, and a grid too small for anyres_max_9 to downscale).
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_PATCH,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=_LLAVA_ONEVISION_TEMPLATE,
    )
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**_vision_dims()),
        text_config=Qwen2Config(**_text_dims(_vocab_size(tokenizer), _token_ids(tokenizer, spec))),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    return config, processor


def _llava_next() -> _Built:
    spec = _TokSpec(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        add_bos=True,
        chat_template=_LLAVA_TEMPLATE,
        named={"image_token": "<image>"},
    )
    tokenizer = _build_tokenizer(spec)
    # LLaVA-1.6: any-resolution tiles (a base view plus a grid of crops) through a CLIP tower that keeps
    # its CLS token, a Mistral language model.
    pinpoints = _PINPOINTS
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": _IMAGE},
        crop_size={"height": _IMAGE, "width": _IMAGE},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_LLAVA_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**_vision_dims(projection_dim=32)),
        text_config=MistralConfig(**_text_dims(_vocab_size(tokenizer), _token_ids(tokenizer, spec))),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return config, processor


def _gemma3() -> _Built:
    spec = _TokSpec(
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        add_bos=True,
        chat_template=_GEMMA3_TEMPLATE,
        named={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    tokenizer = _build_tokenizer(spec)
    # SigLIP tower; the projector average-pools its 4x4 patches to 2x2 = 4 soft tokens per image.
    image_processor = Gemma3ImageProcessorPil(size={"height": _IMAGE, "width": _IMAGE}, do_pan_and_scan=False)
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=_GEMMA3_TEMPLATE,
        image_seq_length=4,
    )
    ids = _token_ids(tokenizer, spec)
    dims = _text_dims(_vocab_size(tokenizer), ids, num_hidden_layers=2, head_dim=32)
    text = Gemma3TextConfig(
        **dims,
        query_pre_attn_scalar=32,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"],
    )
    convert = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(**_vision_dims()),
        mm_tokens_per_image=4,
        boi_token_index=convert("<start_of_image>"),
        eoi_token_index=convert("<end_of_image>"),
        image_token_index=convert("<image_soft_token>"),
    )
    return config, processor


def _qwen_vl(config_cls: type[Qwen2VLConfig] | type[Qwen2_5_VLConfig]) -> _Built:
    spec = _TokSpec(
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=_QWEN_VL_TEMPLATE,
        named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    tokenizer = _build_tokenizer(spec)
    # 8 px patches, 2x2 merge: a 32x32 image is a 4x4 patch grid -> 4 <|image_pad|> tokens.
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": _IMAGE * _IMAGE, "longest_edge": 4 * _IMAGE * _IMAGE},
        patch_size=_PATCH,
        temporal_patch_size=2,
        merge_size=2,
    )
    # Qwen2VLProcessor requires a video processor (torchvision). PaddleOCRVLProcessor expands
    # <|image_pad|> exactly like it (grid_thw.prod() // merge_size**2) and also returns the
    # mm_token_type_ids that M-RoPE needs, without any video processor.
    processor = PaddleOCRVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=_QWEN_VL_TEMPLATE
    )
    # M-RoPE sections (temporal, height, width) must sum to head_dim / 2 = 8.
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]}
    text = _text_dims(_vocab_size(tokenizer), _token_ids(tokenizer, spec), rope_parameters=rope)
    vision: dict[str, Any] = {
        "depth": 2,
        "num_heads": 4,
        "patch_size": _PATCH,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if config_cls is Qwen2VLConfig:
        vision.update(embed_dim=32, hidden_size=_HIDDEN, mlp_ratio=2)
    else:
        # window_size 32 px = 2x2 merged tokens per window; block 1 uses full attention.
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=_HIDDEN)
        vision.update(window_size=32, fullatt_block_indexes=[1])
    convert = tokenizer.convert_tokens_to_ids
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=convert("<|image_pad|>"),
        video_token_id=convert("<|video_pad|>"),
        vision_start_token_id=convert("<|vision_start|>"),
        vision_end_token_id=convert("<|vision_end|>"),
    )
    return config, processor


def _idefics3() -> _Built:
    spec = _TokSpec(
        bos="<|begin_of_text|>",
        eos="<end_of_utterance>",
        pad="<|end_of_text|>",
        add_bos=True,
        chat_template=_IDEFICS3_TEMPLATE,
        named={"image_token": "<image>"},
    )
    tokenizer = _build_tokenizer(spec)
    # Images are resized to <= 64 px and split into up to 2x2 tiles of 32 px plus a global tile.
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * _IMAGE}, max_image_size={"longest_edge": _IMAGE}, do_image_splitting=True
    )
    scale_factor = 2  # pixel shuffle: 16 patches -> 4 tokens per tile
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(_IMAGE // _PATCH) ** 2 // scale_factor**2,
        chat_template=_IDEFICS3_TEMPLATE,
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**_vision_dims()),
        text_config=LlamaConfig(**_text_dims(_vocab_size(tokenizer), _token_ids(tokenizer, spec))),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
    )
    return config, processor


def _idefics2() -> _Built:
    spec = _TokSpec(
        bos="<s>",
        eos="<end_of_utterance>",
        pad="<pad>",
        add_bos=True,
        chat_template=_IDEFICS3_TEMPLATE,
        named={"image_token": "<image>", "image_boundary_token": "<fake_token_around_image>"},
    )
    tokenizer = _build_tokenizer(spec)
    tokenizer.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    # A perceiver resampler turns each image's 16 patches into 4 latents (the <image> tokens).
    image_processor = Idefics2ImageProcessorPil(
        size={"longest_edge": _IMAGE, "shortest_edge": _IMAGE}, do_image_splitting=False
    )
    processor = Idefics2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=4,
        chat_template=_IDEFICS3_TEMPLATE,
    )
    perceiver = Idefics2PerceiverConfig(
        hidden_size=_HIDDEN, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
        resampler_head_dim=16, num_key_value_heads=1,
    )  # fmt: skip
    config = Idefics2Config(
        vision_config=Idefics2VisionConfig(**_vision_dims()),
        perceiver_config=perceiver,
        text_config=MistralConfig(**_text_dims(_vocab_size(tokenizer), _token_ids(tokenizer, spec))),
        image_token_id=tokenizer.image_token_id,
    )
    return config, processor


def _paligemma() -> _Built:
    # No chat template: the processor itself builds "<image>*N<bos>prompt\n".
    spec = _TokSpec(
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        named={"image_token": "<image>"},
        extra_tokens=_PALIGEMMA_EXTRA,
    )
    tokenizer = _build_tokenizer(spec)
    image_processor = SiglipImageProcessorPil(
        size={"height": _IMAGE, "width": _IMAGE}, image_seq_length=(_IMAGE // _PATCH) ** 2
    )
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vocab = _vocab_size(tokenizer)
    # Gemma backbone with multi-query attention (1 KV head), like PaliGemma-3B.
    text = GemmaConfig(**_text_dims(vocab, _token_ids(tokenizer, spec), num_key_value_heads=1, head_dim=16))
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(**_vision_dims(projection_dim=_HIDDEN)),
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vocab_size=vocab,
        projection_dim=_HIDDEN,
        hidden_size=_HIDDEN,
    )
    return config, processor


_BUILDERS: dict[str, Callable[[], _Built]] = {
    "llama": _llama,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "mistral": _mistral,
    "gemma2": _gemma2,
    "gemma3_text": _gemma3_text,
    "phi3": _phi3,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "deepseek_v3": _deepseek_v3,
    "falcon": _falcon,
    "phi": _phi,
    "gptj": _gptj,
    "opt": _opt,
    "bloom": _bloom,
    "llava": _llava,
    "llava_onevision": _llava_onevision,
    "llava_next": _llava_next,
    "gemma3": _gemma3,
    "qwen2_vl": functools.partial(_qwen_vl, Qwen2VLConfig),
    "qwen2_5_vl": functools.partial(_qwen_vl, Qwen2_5_VLConfig),
    "idefics3": _idefics3,
    "idefics2": _idefics2,
    "paligemma": _paligemma,
}


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """Silence the 'Writing model shards' bar that save_pretrained prints for every tiny model."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def build_tiny_model(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny random-init instance of a real HF architecture, save it with a locally built
    tokenizer (and processor for VLMs) to out_dir, return out_dir. Deterministic for a seed."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny architecture {name!r}; choose from {TINY_ARCHITECTURES}")
    out = Path(out_dir)
    config, preprocessor = _BUILDERS[name]()
    auto_cls = AutoModelForCausalLM if name in TEXT_ONLY else AutoModelForImageTextToText
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model: PreTrainedModel = auto_cls.from_config(config, dtype=torch.float32)
    tokenizer = getattr(preprocessor, "tokenizer", preprocessor)
    # generate() should stop on the family's eos and pad with its pad token, without warnings.
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    with _no_progress_bar():
        model.save_pretrained(out)
    preprocessor.save_pretrained(out)
    return out
