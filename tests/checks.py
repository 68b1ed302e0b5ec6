"""Engine checks shared by every architecture test: capture is faithful, patching is exact."""

from __future__ import annotations

import torch
from PIL import Image

from headvec import HeadEngine, HeadPatch, LoadedModel, Prompt
from headvec.arch import projection_weight

TEXTS = [
    "The red square is left of the blue circle.",
    "How many green triangles are there in the picture?",
    "Yes, it is there.",
]


def random_image(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def make_prompts(loaded: LoadedModel) -> list[Prompt]:
    """Prompts of different lengths, with an image each for vision-language models."""
    sizes = [(40, 32), (32, 48), (36, 36)]
    return [
        loaded.build_prompt(text, [random_image(*sizes[i], seed=i)] if loaded.is_multimodal else [])
        for i, text in enumerate(TEXTS)
    ]


def model_output(loaded: LoadedModel, inputs) -> torch.Tensor:
    with torch.no_grad():
        output = loaded.model(**inputs)
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


def check_reconstruction(loaded: LoadedModel, positions) -> None:
    """(i) captured heads times W_O (+ bias) equal the projection's own output at those positions."""
    engine = HeadEngine(loaded)
    prompts = make_prompts(loaded)
    inputs = loaded.encode(prompts)
    outputs: dict[int, torch.Tensor] = {}
    handles = [
        loaded.arch.attn_out(loaded.model, layer).register_forward_hook(
            lambda m, a, o, layer=layer: outputs.__setitem__(layer, o.detach())
        )
        for layer in range(loaded.arch.n_layers)
    ]
    try:
        model_output(loaded, inputs)
    finally:
        for handle in handles:
            handle.remove()
    capture = engine.capture_batch(inputs, positions=positions, stop_early=False)
    lengths = inputs["attention_mask"].sum(dim=1)
    for slot, position in enumerate(positions):
        for layer in range(loaded.arch.n_layers):
            module = loaded.arch.attn_out(loaded.model, layer)
            heads = capture.heads[:, slot, layer].flatten(1)  # [batch, heads * head_dim]
            rebuilt = heads @ projection_weight(module).T.detach()
            if module.bias is not None:
                rebuilt = rebuilt + module.bias.detach()
            for row in range(len(prompts)):
                index = position if position >= 0 else int(lengths[row]) + position
                torch.testing.assert_close(rebuilt[row], outputs[layer][row, index], atol=1e-5, rtol=1e-4)


def check_patching(loaded: LoadedModel, positions) -> None:
    """(ii) writing every head's own value changes nothing; (iii) zeroing one head changes the output."""
    engine = HeadEngine(loaded)
    inputs = loaded.encode(make_prompts(loaded))
    baseline = model_output(loaded, inputs)
    captured = engine.capture_batch(inputs, positions=positions).heads  # [batch, P, L, H, D]
    arch = loaded.arch
    for slot, position in enumerate(positions):
        own = HeadPatch(
            values=captured[:, slot],
            mask=torch.ones(len(captured), arch.n_layers, arch.n_heads, dtype=torch.bool),
            positions=position,
        )
        with engine.patch(own):
            patched = model_output(loaded, inputs)
        torch.testing.assert_close(patched, baseline, atol=1e-5, rtol=0)

        layer, head = arch.n_layers // 2, arch.n_heads - 1
        zero = HeadPatch.from_heads(
            {(layer, head): torch.zeros(arch.head_dim)}, arch.n_layers, arch.n_heads, positions=position
        )
        with engine.patch(zero):
            zeroed = model_output(loaded, inputs)
        assert (zeroed - baseline).abs().max() > 1e-4, "zeroing a head did not change the output"
    # hooks are gone after the context: the model is back to its own output
    torch.testing.assert_close(model_output(loaded, inputs), baseline, atol=0, rtol=0)


def check_batched_equals_single(loaded: LoadedModel, positions) -> None:
    """(iv) a padded batch captures the same heads as one prompt at a time."""
    engine = HeadEngine(loaded)
    prompts = make_prompts(loaded)
    batched = engine.capture(prompts, positions=positions, batch_size=len(prompts)).heads
    single = engine.capture(prompts, positions=positions, batch_size=1).heads
    assert batched.shape == (
        len(prompts),
        len(positions),
        loaded.arch.n_layers,
        loaded.arch.n_heads,
        loaded.arch.head_dim,
    )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def check_patch_every_generate_step(loaded: LoadedModel, max_new_tokens: int = 4) -> None:
    """(v) during generate the patched head holds the patch value at the newest token of every step."""
    engine = HeadEngine(loaded)
    arch = loaded.arch
    layer, head = arch.n_layers - 1, 1
    vector = torch.linspace(-3.0, 3.0, arch.head_dim)
    seen: list[torch.Tensor] = []

    def record(module, args):
        heads = args[0].view(*args[0].shape[:2], arch.n_heads, arch.head_dim)
        seen.append(heads[:, -1, head].detach().clone())  # left padding: the newest token is last

    patch = HeadPatch.from_heads({(layer, head): vector}, arch.n_layers, arch.n_heads)
    prompts = make_prompts(loaded)[:2]
    with engine.patch(patch):
        # registered after the patch hook, so it sees the patched input
        handle = arch.attn_out(loaded.model, layer).register_forward_pre_hook(record)
        try:
            engine.generate(prompts, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
        finally:
            handle.remove()
    assert len(seen) == max_new_tokens, f"expected {max_new_tokens} forward calls, saw {len(seen)}"
    for step in seen:
        torch.testing.assert_close(step, vector.expand_as(step))
    # and without the patch the head holds something else
    seen.clear()
    handle = arch.attn_out(loaded.model, layer).register_forward_pre_hook(record)
    try:
        engine.generate(prompts, max_new_tokens=1)
    finally:
        handle.remove()
    assert not torch.allclose(seen[0], vector.expand_as(seen[0]))


# The smallest activation-RM search that still exercises every step (means, REINFORCE, selection).
TINY_RM_SETTINGS = dict(
    n_shots=2,
    n_prompts=8,
    steps=3,
    samples_per_step=4,
    n_search_items=4,
    n_selection_items=2,
    min_examples_per_verdict=2,
)
