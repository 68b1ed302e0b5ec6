"""load() passes Hugging Face options through; LoadedModel wraps models already in memory."""

from __future__ import annotations

import pytest
import torch
from checks import random_image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from headvec import HeadEngine, HeadvecError, LoadedModel, load
from headvec.methods.sav import SparseAttentionVectors


class _Sentinel:
    """Stands for a quantization config: passed through untouched."""


@pytest.fixture
def spy(monkeypatch, tiny_model_dir):
    """Replace AutoModelForCausalLM.from_pretrained: record its kwargs, return the real tiny model
    with ``.to`` disabled (so a move after loading fails the test)."""
    calls: list[dict] = []
    real = AutoModelForCausalLM.from_pretrained

    def from_pretrained(path, **kwargs):
        calls.append(kwargs)
        model = real(tiny_model_dir("llama"))

        def refuse_to_move(*args, **kwargs):
            raise AssertionError(f"a placed model was moved with .to{args}")

        model.to = refuse_to_move
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    return calls


def test_loading_options_reach_from_pretrained_and_a_placed_model_is_not_moved(spy, tiny_model_dir):
    quantization = _Sentinel()
    loaded = load(
        tiny_model_dir("llama"),
        revision="main",
        device_map={"": "cpu"},
        quantization_config=quantization,
        attn_implementation="eager",
        low_cpu_mem_usage=True,
        max_memory={"cpu": "1GiB"},
        trust_remote_code=False,
    )
    (kwargs,) = spy
    assert kwargs["revision"] == "main" and kwargs["device_map"] == {"": "cpu"}
    assert kwargs["quantization_config"] is quantization and kwargs["attn_implementation"] == "eager"
    assert kwargs["low_cpu_mem_usage"] is True and kwargs["max_memory"] == {"cpu": "1GiB"}
    assert kwargs["dtype"] is torch.float32 and kwargs["trust_remote_code"] is False
    assert isinstance(loaded, LoadedModel) and loaded.arch.n_layers == 2


def test_torch_dtype_is_read_as_dtype_and_unset_options_are_not_sent(spy, tiny_model_dir):
    with pytest.raises(AssertionError, match=r"moved with \.to"):  # no device_map: load() moves the model
        load(tiny_model_dir("llama"), torch_dtype="bfloat16")
    (kwargs,) = spy
    assert kwargs["dtype"] is torch.bfloat16 and "torch_dtype" not in kwargs
    assert not {"device_map", "quantization_config", "attn_implementation", "revision"} & set(kwargs)


def test_a_real_device_map_places_the_model(tiny_model_dir):
    loaded = load(tiny_model_dir("qwen2"), device_map="cpu", device=None)
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"} and loaded.device.type == "cpu"
    with pytest.raises(HeadvecError, match="give one"):
        load(tiny_model_dir("qwen2"), device="cpu", device_map="auto")


def test_from_model_wraps_a_text_model_and_gives_the_same_heads_as_load(tiny_model_dir):
    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path)
    model.train()
    wrapped = LoadedModel.from_model(model, AutoTokenizer.from_pretrained(path))
    assert wrapped.model is model and not model.training and not wrapped.is_multimodal
    assert wrapped.name_or_path == str(path) and wrapped.tokenizer.pad_token is not None
    loaded = load(path, device="cpu")
    prompts = [wrapped.build_prompt("red apple"), wrapped.build_prompt("blue sky")]
    assert torch.equal(HeadEngine(wrapped).capture(prompts).heads, HeadEngine(loaded).capture(prompts).heads)
    assert wrapped.identity == loaded.identity
    sav = SparseAttentionVectors(wrapped, n_heads=2).fit(["a", "b", "c", "d"], ["x", "y", "x", "y"])
    assert sav.loaded_ is wrapped


def test_from_model_with_a_processor_is_multimodal(tiny_model_dir):
    path = tiny_model_dir("llava")
    model = AutoModelForImageTextToText.from_pretrained(path)
    wrapped = LoadedModel.from_model(model, AutoProcessor.from_pretrained(path), name_or_path="mine")
    assert wrapped.is_multimodal and wrapped.name_or_path == "mine"
    prompt = wrapped.build_prompt("what is it ?", [random_image(32, 32, seed=0)])
    assert HeadEngine(wrapped).capture([prompt]).heads.shape[1:] == (
        wrapped.arch.n_layers,
        wrapped.arch.n_heads,
        wrapped.arch.head_dim,
    )
    with pytest.raises(HeadvecError, match="tokenizer or processor"):
        LoadedModel.from_model(model, None)


def test_repr_is_short():
    text = repr(load("minilm", device="cpu"))
    assert text.startswith("LoadedModel('minilm', BertModel, 6 layers x 12 heads x 32") and len(text) < 100


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ImportError(
                "\nPixtralImageProcessorFast requires the Torchvision library but it was not found in your "
                "environment. Check out the instructions on the\ninstallation page: "
                "https://pytorch.org/get-started/locally/ and follow the ones that match your environment.\n"
            ),
            r"PixtralImageProcessorFast requires the Torchvision library .*\(pip install torchvision\)$",
        ),
        (ModuleNotFoundError("No module named 'timm.layers'", name="timm.layers"), r"\(pip install timm\)$"),
    ],
)
def test_a_missing_optional_package_is_one_line_naming_it(monkeypatch, tiny_model_dir, error, expected):
    """transformers raises a paragraph (Pixtral's processor without torchvision); load says one line."""

    def missing(*args, **kwargs):
        raise error

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", missing)
    with pytest.raises(HeadvecError, match=expected) as caught:
        load(tiny_model_dir("llama"), device="cpu")
    assert "\n" not in str(caught.value)
