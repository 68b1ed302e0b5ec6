"""A head hook that never fires is an error, not a KeyError or a patch that silently does nothing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BloomConfig, BloomForCausalLM

from headvec import HeadEngine, HeadPatch
from headvec.engine import as_prompts
from headvec.errors import HeadvecError
from headvec.models import LoadedModel
from headvec.testing import build_tiny_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(build_tiny_model("gpt2", tmp_path_factory.mktemp("gpt2")))


def _bloom(tokenizer, slow_but_exact: bool) -> LoadedModel:
    config = BloomConfig(
        vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=4,
        pretraining_tp=2, slow_but_exact=slow_but_exact,
    )  # fmt: skip
    torch.manual_seed(0)
    return LoadedModel.from_model(BloomForCausalLM(config), tokenizer, name_or_path="tiny-bloom")


def test_capture_names_the_projection_the_model_never_calls(tokenizer):
    engine = HeadEngine(_bloom(tokenizer, slow_but_exact=True))
    with pytest.raises(HeadvecError, match=r"never called .*self_attention\.dense.*slow_but_exact=False"):
        engine.capture(["The quick brown fox"])


def test_a_patch_that_never_applies_is_an_error(tokenizer):
    loaded = _bloom(tokenizer, slow_but_exact=True)
    engine = HeadEngine(loaded)
    zeros = HeadPatch.from_heads(
        {(0, 0): torch.zeros(loaded.arch.head_dim)}, loaded.arch.n_layers, loaded.arch.n_heads
    )
    inputs = loaded.encode(as_prompts(["The quick brown fox"]))
    with pytest.raises(HeadvecError, match="never called"), engine.patch(zeros), torch.no_grad():
        loaded.model(**inputs)


def test_the_standard_path_captures_and_patches(tokenizer):
    loaded = _bloom(tokenizer, slow_but_exact=False)
    engine = HeadEngine(loaded)
    capture = engine.capture(["The quick brown fox"])
    assert capture.heads.shape == (1, 2, 4, 8)
    patch = HeadPatch.from_heads(
        {(0, h): torch.zeros(8) for h in range(4)}, loaded.arch.n_layers, loaded.arch.n_heads
    )
    inputs = loaded.encode(as_prompts(["The quick brown fox"]))
    with torch.no_grad():
        plain = loaded.model(**inputs).logits
        with engine.patch(patch):
            patched = loaded.model(**inputs).logits
    assert not torch.allclose(plain, patched)  # zeroing every head of layer 0 changes the output


def test_an_override_is_checked_on_every_layer(monkeypatch, tmp_path):
    """A mixed stack (a layer without the projection, like Mllama's cross-attention layers) is refused at
    load, naming the layers, instead of loading and failing at capture."""
    from torch import nn

    from headvec import arch as arch_module
    from headvec.errors import UnknownArchitectureError

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model("llama", tmp_path / "llama"))
    model.model.layers[1].self_attn.o_proj = nn.Identity()
    monkeypatch.setitem(arch_module.ARCHITECTURE_OVERRIDES, "llama", ("model.layers", "self_attn.o_proj"))
    with pytest.raises(UnknownArchitectureError, match=r"layers 1 of model\.layers have no Linear"):
        arch_module.discover_architecture(model)


def test_multi_head_latent_attention_heads_are_v_head_dim_wide(tmp_path):
    """DeepSeek-V3: config.head_dim is the rotary width (4); the heads that reach o_proj are 12 wide."""
    from headvec import load

    loaded = load(build_tiny_model("deepseek_v3", tmp_path / "dsv3"), device="cpu")
    config = loaded.model.config
    assert (config.head_dim, config.v_head_dim) == (4, 12)
    assert (loaded.arch.n_heads, loaded.arch.head_dim) == (4, 12)


def test_a_differential_attention_model_is_refused_by_name():
    """DiffLlama's o_proj takes H/2 differential heads of 2 x head_dim: every shape check would pass."""
    from transformers import DiffLlamaConfig, DiffLlamaForCausalLM

    from headvec.arch import discover_architecture
    from headvec.errors import UnknownArchitectureError

    config = DiffLlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    with pytest.raises(UnknownArchitectureError, match="DiffLlamaForCausalLM is not supported: differential"):
        discover_architecture(DiffLlamaForCausalLM(config))


def _jamba(vocab_size: int):
    from transformers import JambaConfig, JambaForCausalLM

    config = JambaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1,
        expert_layer_period=2, expert_layer_offset=1, num_experts=2, mamba_d_state=4, mamba_expand=2,
        use_mamba_kernels=False,
    )  # fmt: skip
    return JambaForCausalLM(config)


def _mllama_text(vocab_size: int):
    from transformers import MllamaForCausalLM, MllamaTextConfig

    config = MllamaTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=[1], pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return MllamaForCausalLM(config)


@pytest.mark.parametrize(
    ("build", "hooked", "skipped"),
    [
        (_jamba, (1, 3), ((0, "state-space"), (2, "state-space"))),
        (_mllama_text, (0, 2), ((1, "cross-attention"),)),
    ],
    ids=["jamba", "mllama"],
)
def test_a_mixed_stack_hooks_its_attention_layers_and_lists_the_others(tokenizer, build, hooked, skipped):
    """Jamba interleaves state-space layers, Mllama cross-attention layers: headvec's layers are the
    self-attention layers (skipped ones listed with their kind), and every head identity holds."""
    from checks import check_patching, check_reconstruction

    torch.manual_seed(0)
    loaded = LoadedModel.from_model(build(len(tokenizer)).eval(), tokenizer, name_or_path="tiny-mixed")
    arch = loaded.arch
    assert (arch.n_layers, arch.layer_indices, arch.skipped_layers) == (len(hooked), hooked, skipped)
    assert arch.hook_path(1) == f"model.layers.{hooked[1]}.self_attn.o_proj"
    check_reconstruction(loaded, [-1])
    check_patching(loaded, [-1])
