"""Engine behaviour beyond the per-architecture checks: early exit, residual/logits, patch modes."""

from __future__ import annotations

import pytest
import torch
from checks import make_prompts, model_output

from headvec import HeadEngine, HeadPatch, HeadvecError, load


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    return load(tiny_model_dir("llama"), device="cpu")


@pytest.fixture(scope="module")
def qwen2_vl(tiny_model_dir):
    return load(tiny_model_dir("qwen2_vl"), device="cpu")


def test_early_exit_skips_later_layers_and_keeps_values(qwen2_vl):
    engine = HeadEngine(qwen2_vl)
    inputs = qwen2_vl.encode(make_prompts(qwen2_vl))
    calls = []
    last = qwen2_vl.arch.layer_module(qwen2_vl.model, qwen2_vl.arch.n_layers - 1)
    handle = last.register_forward_hook(lambda *_: calls.append(1))
    try:
        early = engine.capture_batch(inputs, layers=[0])
        assert calls == [], "the forward pass went past the last requested layer"
        full = engine.capture_batch(inputs, stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()
    assert early.heads.shape == (3, 1, qwen2_vl.arch.n_heads, qwen2_vl.arch.head_dim)
    torch.testing.assert_close(early.heads[:, 0], full.heads[:, 0])


def test_residual_and_logits_match_the_model_outputs(llama):
    engine = HeadEngine(llama)
    inputs = llama.encode(make_prompts(llama))
    with torch.no_grad():
        output = llama.model(**inputs, output_hidden_states=True)
    capture = engine.capture_batch(inputs, residual=True, logits=True)
    last = inputs["attention_mask"].sum(dim=1) - 1
    rows = torch.arange(len(last))
    torch.testing.assert_close(capture.logits, output.logits[rows, last])
    for layer in range(llama.arch.n_layers - 1):  # the model's last hidden state is after the final norm
        torch.testing.assert_close(capture.residual[:, layer], output.hidden_states[layer + 1][rows, last])


def test_add_mode_and_per_example_patches(llama):
    engine = HeadEngine(llama)
    arch = llama.arch
    prompts = make_prompts(llama)[:2]
    inputs = llama.encode(prompts)
    own = engine.capture_batch(inputs).heads  # [2, L, H, D]
    delta = torch.randn(
        arch.n_layers, arch.n_heads, arch.head_dim, generator=torch.Generator().manual_seed(0)
    )
    mask = torch.zeros(arch.n_layers, arch.n_heads, dtype=torch.bool)
    mask[-1, 1] = mask[-1, 2] = True  # one layer: patched heads do not change each other's input

    with engine.patch(HeadPatch(delta, mask, mode="add")):
        added = model_output(llama, inputs)
    with engine.patch(HeadPatch(own + delta, torch.stack([mask, mask]))):
        replaced = model_output(llama, inputs)
    torch.testing.assert_close(added, replaced, atol=1e-5, rtol=1e-5)

    # a different mask per example in one batched forward == each example patched on its own
    other = torch.zeros_like(mask)
    other[0, 0] = other[-1, 3] = True
    masks = torch.stack([mask, other])
    with engine.patch(HeadPatch(delta.expand(2, -1, -1, -1), masks, mode="add")):
        batched = model_output(llama, inputs)
    for row in range(2):
        single_inputs = llama.encode([prompts[row]])
        with engine.patch(HeadPatch(delta, masks[row], mode="add")):
            single = model_output(llama, single_inputs)
        length = int(inputs["attention_mask"][row].sum())
        torch.testing.assert_close(batched[row, :length], single[0, :length], atol=1e-5, rtol=1e-5)


def test_patch_that_does_not_fit_the_model_is_refused(llama):
    engine = HeadEngine(llama)
    wrong = HeadPatch(
        torch.zeros(7, llama.arch.n_heads, llama.arch.head_dim),
        torch.ones(7, llama.arch.n_heads, dtype=torch.bool),
    )
    with pytest.raises(HeadvecError, match="does not fit"), engine.patch(wrong):
        pass


def test_prompts_use_the_chat_template_and_place_images(tiny_model_dir, qwen2_vl):
    prompt = qwen2_vl.build_prompt("What is shown?", [make_prompts(qwen2_vl)[0].images[0]])
    assert prompt.templated and prompt.text.index("<|image_pad|>") < prompt.text.index("What is shown?")
    gpt2 = load(tiny_model_dir("gpt2"))  # a base model: no template, raw text
    assert gpt2.build_prompt("plain text").text == "plain text"


def test_capture_batches_by_length_and_returns_the_given_order(llama, monkeypatch):
    """Sorted batches pad less, and every row still belongs to the prompt at its index."""
    text = "the quick brown fox jumps over the lazy dog near the river bank every day"
    words = text.split(" ")
    prompts = [" ".join(words[: 1 + (i * 7) % len(words)]) for i in range(16)]  # lengths shuffled
    engine = HeadEngine(llama)
    processed: list[int] = []
    real = engine.capture_batch

    def counting(inputs, *args, **kwargs):
        processed.append(int(inputs["input_ids"].numel()))
        return real(inputs, *args, **kwargs)

    monkeypatch.setattr(engine, "capture_batch", counting)
    given = engine.capture(prompts, batch_size=4, residual=True, sort_window=0)
    given_tokens, processed[:] = sum(processed), []
    sorted_ = engine.capture(prompts, batch_size=4, residual=True)
    assert sum(processed) < 0.8 * given_tokens
    torch.testing.assert_close(sorted_.heads, given.heads, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sorted_.residual, given.residual, atol=1e-5, rtol=1e-4)
    one = engine.capture([prompts[5]], residual=True)  # row 5 is prompt 5, alone
    torch.testing.assert_close(sorted_.heads[5], one.heads[0], atol=1e-5, rtol=1e-4)
