"""The benchmark models and inputs, all built offline (no Hugging Face hub)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertForMaskedLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from headvec import LoadedModel, discover_architecture, load
from headvec.models import resolve_model_path

SEED = 0
BATCH, SEQ_LEN = 16, 128

# A ~110M-parameter Llama (12 x 768, 12 heads, SwiGLU 2048, 32k vocabulary, tied embeddings).
LLAMA_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "intermediate_size": 2048,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}

MODEL_NAMES = ("minilm", "llama")


def use_all_cores() -> int:
    """Give torch every core this process may run on; returns that number."""
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    return cores


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A whitespace tokenizer over ``w3 .. w{vocab_size-1}``: enough for a random-weight model."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def build_llama(directory: Path) -> LoadedModel:
    """Save a seeded random Llama and its tokenizer to ``directory``, then load it like any checkpoint."""
    torch.manual_seed(SEED)
    config = LlamaConfig(**LLAMA_CONFIG)
    LlamaForCausalLM(config).save_pretrained(directory)
    word_tokenizer(config.vocab_size).save_pretrained(directory)
    return load(directory, device="cpu")


def load_model(name: str, workdir: Path) -> LoadedModel:
    if name == "minilm":
        return load("minilm", device="cpu")
    if name == "llama":
        return build_llama(workdir / "llama")
    raise ValueError(f"unknown benchmark model {name!r}; choose from {MODEL_NAMES}")


def minilm_with_mlm_head() -> LoadedModel:
    """MiniLM's encoder under a (seeded, random) masked-LM head: TransformerLens only bridges
    ``BertForMaskedLM``, not the bare ``BertModel`` that MiniLM ships as."""
    path = resolve_model_path("minilm")
    torch.manual_seed(SEED)
    model = BertForMaskedLM.from_pretrained(path).eval()
    base = load("minilm", device="cpu")
    return LoadedModel(
        model=model,
        tokenizer=base.tokenizer,
        processor=None,
        arch=discover_architecture(model),
        name_or_path=path,
    )


def random_inputs(vocab_size: int, batch: int = BATCH, seq_len: int = SEQ_LEN) -> dict[str, torch.Tensor]:
    """Random token ids (avoiding the first 1000, where special tokens live) and a full mask."""
    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(1000, vocab_size, (batch, seq_len), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def forward_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """``use_cache=False`` where the model takes it: headvec passes it too, so both forwards match."""
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
