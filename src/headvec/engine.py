"""The activation engine: capture and patch per-head outputs of any loaded model.

A head's output is its slice of the attention output projection's *input* (``[heads, head_dim]`` per
token). Capturing reads it with a forward pre-hook; patching returns an edited input from the same
pre-hook, so the projection itself (bias included) runs unchanged and patching a head with its own value
is exact. Positions are counted over the real (non-pad) tokens of each sequence, so left and right
padding, and every step of ``generate`` with a KV cache, hit the same token.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from headvec.errors import DataError, HeadvecError
from headvec.models import LoadedModel, Prompt

Positions = int | Sequence[int]


class _StopForward(Exception):
    """Raised after the deepest needed layer to skip the rest of the forward pass."""


@dataclass
class Capture:
    """Activations read from one or more forward passes.

    ``heads`` is ``[batch, layers, heads, head_dim]`` for a single position, and
    ``[batch, positions, layers, heads, head_dim]`` when several positions were asked for.
    ``residual`` (decoder-layer outputs) and ``logits`` follow the same position convention.
    """

    heads: torch.Tensor
    layers: list[int]
    positions: Positions
    residual: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class HeadPatch:
    """Values written into chosen ``(layer, head)`` slots at chosen positions.

    ``values``: ``[n_layers, n_heads, head_dim]``, or ``[batch, n_layers, n_heads, head_dim]`` for a
    different patch per example. ``mask``: bool ``[n_layers, n_heads]`` or ``[batch, n_layers, n_heads]``,
    True where a head is written. ``mode``: ``"replace"`` the head output, or ``"add"`` to it.
    ``positions`` count real tokens (``-1`` = last, so every new token during ``generate``).
    """

    values: torch.Tensor
    mask: torch.Tensor
    mode: Literal["replace", "add"] = "replace"
    positions: Positions = -1

    def __post_init__(self) -> None:
        if self.mode not in ("replace", "add"):
            raise HeadvecError(f"unknown patch mode {self.mode!r}; use 'replace' or 'add'")
        self.mask = self.mask.bool()
        if self.values.shape[-3:-1] != self.mask.shape[-2:]:
            raise HeadvecError(
                f"patch values {tuple(self.values.shape)} do not match mask {tuple(self.mask.shape)}"
            )

    @classmethod
    def from_heads(
        cls,
        heads: Mapping[tuple[int, int], torch.Tensor],
        n_layers: int,
        n_heads: int,
        mode: Literal["replace", "add"] = "replace",
        positions: Positions = -1,
    ) -> HeadPatch:
        """Build a patch from ``{(layer, head): vector}``."""
        head_dim = next(iter(heads.values())).shape[-1]
        values = torch.zeros(n_layers, n_heads, head_dim)
        mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
        for (layer, head), vector in heads.items():
            values[layer, head] = vector.detach().float().cpu()
            mask[layer, head] = True
        return cls(values=values, mask=mask, mode=mode, positions=positions)

    @property
    def layers(self) -> list[int]:
        per_layer = self.mask.reshape(-1, *self.mask.shape[-2:]).any(dim=0).any(dim=-1)
        return per_layer.nonzero().flatten().tolist()


def _as_list(positions: Positions) -> list[int]:
    return [positions] if isinstance(positions, int) else list(positions)


def _locate(mask: torch.Tensor, chunk_len: int, positions: list[int]) -> tuple[torch.Tensor, ...]:
    """Map positions over real tokens to coordinates in the current chunk of the sequence.

    ``mask`` is the attention mask over past + current tokens. Returns ``valid`` ``[batch, P]`` and the
    chunk index ``[batch, P]`` of each requested position.
    """
    past = mask.shape[1] - chunk_len
    real = mask.bool()
    n_real = real.sum(dim=1, keepdim=True)
    wanted = torch.tensor(positions, device=mask.device).unsqueeze(0)
    rank = torch.where(wanted < 0, n_real + wanted, wanted)
    valid = (rank >= 0) & (rank < n_real)
    cumulative = real.long().cumsum(dim=1)
    full_index = torch.searchsorted(cumulative, (rank + 1).clamp(min=1).contiguous())
    chunk_index = full_index - past
    valid &= (chunk_index >= 0) & (chunk_index < chunk_len)
    return valid, chunk_index.clamp(0, chunk_len - 1)


class HeadEngine:
    """Capture and patch attention-head outputs of a :class:`~headvec.models.LoadedModel`."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.arch = loaded.arch
        self._mask: torch.Tensor | None = None
        self._locations: dict[tuple[int, tuple[int, ...]], tuple[torch.Tensor, ...]] = {}
        self._tracking_depth = 0
        self._tracking_handle: Any = None
        self._calls = 0  # top-level forward calls, so a hook that never fired can be told apart
        self._lens: Any = None  # the logit lens's modules, found on first use
        # No KV cache for single forwards: it only costs memory when nothing is generated.
        accepts_cache = "use_cache" in inspect.signature(self.model.forward).parameters
        self._forward_kwargs = {"use_cache": False} if accepts_cache else {}

    # ------------------------------------------------------------------ call state
    def _record_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        self._locations = {}
        self._calls += 1

    def _never_fired(self, layers: Sequence[int]) -> HeadvecError:
        """The error for attention output projections the forward pass did not call."""
        shown = ", ".join(str(layer) for layer in layers[:8]) + (" ..." if len(layers) > 8 else "")
        return HeadvecError(
            f"{self.loaded.name_or_path}: the forward pass never called {self.arch.hook_path(layers[0])} "
            f"(layers {shown}), so those heads cannot be read or written; the model computes that "
            "projection another way (e.g. Bloom with pretraining_tp > 1 and slow_but_exact=True: load it "
            "with slow_but_exact=False), or register_architecture() names a module it does not call"
        )

    @contextmanager
    def _tracking(self) -> Iterator[None]:
        """Record each top-level call's attention mask, so hooks can find real-token positions."""
        if self._tracking_depth == 0:
            self._tracking_handle = self.model.register_forward_pre_hook(self._record_call, with_kwargs=True)
        self._tracking_depth += 1
        try:
            yield
        finally:
            self._tracking_depth -= 1
            if self._tracking_depth == 0:
                self._tracking_handle.remove()
                self._mask = None

    def _locations_for(self, x: torch.Tensor, positions: list[int]) -> tuple[torch.Tensor, ...]:
        key = (x.shape[1], tuple(positions))
        if key not in self._locations:
            mask = self._mask
            if mask is None or mask.shape[0] != x.shape[0]:
                mask = torch.ones(x.shape[0], x.shape[1], dtype=torch.long, device=x.device)
            self._locations[key] = _locate(mask.to(x.device), x.shape[1], positions)
        return self._locations[key]

    def resolve_layers(self, layers: Sequence[int] | None) -> list[int]:
        if layers is None:
            return list(range(self.arch.n_layers))
        chosen = sorted({int(layer) for layer in layers})
        bad = [layer for layer in chosen if not 0 <= layer < self.arch.n_layers]
        if bad:
            raise HeadvecError(f"layers {bad} do not exist; the model has layers 0..{self.arch.n_layers - 1}")
        return chosen

    # ------------------------------------------------------------------ capture
    @torch.no_grad()
    def capture_batch(
        self,
        inputs: Mapping[str, torch.Tensor],
        layers: Sequence[int] | None = None,
        positions: Positions = -1,
        *,
        residual: bool = False,
        logits: bool = False,
        stop_early: bool = True,
    ) -> Capture:
        """One forward pass over encoded inputs; returns head outputs at ``positions`` (on the CPU).

        Unless logits are wanted, the forward pass stops right after the deepest requested layer.
        """
        chosen = self.resolve_layers(layers)
        wanted = _as_list(positions)
        deepest = chosen[-1]
        stop = stop_early and not logits
        heads: dict[int, torch.Tensor] = {}
        resid: dict[int, torch.Tensor] = {}
        n_heads, head_dim = self.arch.n_heads, self.arch.head_dim

        def gather(x: torch.Tensor) -> torch.Tensor:
            valid, index = self._locations_for(x, wanted)
            if not bool(valid.all()):
                row = int((~valid).any(dim=1).nonzero()[0])
                raise DataError(f"position(s) {wanted} fall outside prompt {row} of the batch")
            rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
            return x[rows, index]  # [batch, P, features]

        def head_hook(layer: int):
            def hook(module: nn.Module, args: tuple) -> None:
                picked = gather(args[0])
                heads[layer] = picked.reshape(*picked.shape[:2], n_heads, head_dim).detach()
                if stop and layer == deepest and not residual:
                    raise _StopForward

            return hook

        def layer_hook(layer: int):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                hidden = output[0] if isinstance(output, tuple) else output
                resid[layer] = gather(hidden).detach()
                if stop and layer == deepest:
                    raise _StopForward

            return hook

        handles = []
        with self._tracking():
            try:
                for layer in chosen:
                    module = self.arch.attn_out(self.model, layer)
                    handles.append(module.register_forward_pre_hook(head_hook(layer)))
                    if residual:
                        layer_module = self.arch.layer_module(self.model, layer)
                        handles.append(layer_module.register_forward_hook(layer_hook(layer)))
                output = None
                with suppress(_StopForward):
                    output = self.model(**inputs, **self._forward_kwargs)
                missing = [layer for layer in chosen if layer not in heads]
                if missing:
                    raise self._never_fired(missing)
                picked_logits = None
                if logits:
                    if getattr(output, "logits", None) is None:
                        raise HeadvecError(
                            f"{self.loaded.name_or_path} has no language-model head (no logits)"
                        )
                    picked_logits = gather(output.logits).float().cpu()
            finally:
                for handle in handles:
                    handle.remove()

        def stack(parts: dict[int, torch.Tensor]) -> torch.Tensor:
            stacked = torch.stack([parts[layer] for layer in chosen], dim=2).cpu()  # [B, P, L, ...]
            return stacked[:, 0] if isinstance(positions, int) else stacked

        return Capture(
            heads=stack(heads),
            layers=chosen,
            positions=positions,
            residual=stack(resid) if residual else None,
            logits=(picked_logits[:, 0] if isinstance(positions, int) else picked_logits)
            if picked_logits is not None
            else None,
        )

    def capture(
        self,
        prompts: Sequence[Prompt | str],
        layers: Sequence[int] | None = None,
        positions: Positions = -1,
        *,
        batch_size: int = 8,
        residual: bool = False,
        logits: bool = False,
        progress: bool = False,
        sort_window: int = 1024,
    ) -> Capture:
        """Capture head outputs for many prompts, in batches (strings are used as raw text).

        Within each window of ``sort_window`` prompts, batches are formed from prompts of similar length
        (less padding to compute), and the results come back in the order of ``prompts``; 0 keeps the
        given order.
        """
        prompts = as_prompts(prompts)
        order = length_order(prompts, sort_window)
        parts = [
            self.capture_batch(self.loaded.encode(batch), layers, positions, residual=residual, logits=logits)
            for batch in tqdm(
                list(iter_batches([prompts[i] for i in order], batch_size)),
                desc="capture",
                disable=not progress,
            )
        ]
        restore = torch.argsort(torch.tensor(order))

        def joined(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(tensors)[restore]

        return Capture(
            heads=joined([p.heads for p in parts]),
            layers=parts[0].layers,
            positions=positions,
            residual=joined([p.residual for p in parts]) if residual else None,
            logits=joined([p.logits for p in parts]) if logits else None,
        )

    # ------------------------------------------------------------------ logit lens
    def logit_lens(
        self, residual: torch.Tensor, token_ids: Sequence[int] | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Read captured residuals (decoder-layer outputs, ``[..., hidden]``) as next-token logits through
        the model's own final norm and unembedding: the logit lens, fp32 on the CPU.

        Capture the residual stream of every layer in one forward pass (``capture(..., residual=True)``)
        and pass it here; at the last layer this reproduces the model's logits. ``token_ids`` keeps only
        those vocabulary columns. The modules come from :func:`headvec.arch.discover_lens`
        (override: :func:`headvec.arch.register_lens`).
        """
        from headvec.arch import discover_lens

        if self._lens is None:
            self._lens = discover_lens(self.model, self.arch)
        lens, model = self._lens, self.model

        def run(path: str, x: torch.Tensor) -> torch.Tensor:
            module = model.get_submodule(path)
            weight = next(module.parameters(), None)
            if weight is not None:
                x = x.to(weight.device, weight.dtype if weight.is_floating_point() else x.dtype)
            return module(x)

        with torch.no_grad():
            x = residual
            for path in ([lens.final_norm] if lens.final_norm else []) + list(lens.post_norm):
                x = run(path, x)
            logits = run(lens.unembedding, x)
            if token_ids is not None:
                logits = logits[..., torch.as_tensor(token_ids, dtype=torch.long, device=logits.device)]
            logits = logits.float()
            if lens.softcap:
                logits = torch.tanh(logits / lens.softcap) * lens.softcap
        return logits.cpu()

    # ------------------------------------------------------------------ patch
    @contextmanager
    def patch(self, patch: HeadPatch) -> Iterator[HeadPatch]:
        """Write ``patch`` into the heads on every forward pass (and every ``generate`` step) inside."""
        wanted = _as_list(patch.positions)
        n_heads, head_dim = self.arch.n_heads, self.arch.head_dim
        if patch.mask.shape[-2:] != (self.arch.n_layers, n_heads) or patch.values.shape[-1] != head_dim:
            raise HeadvecError(
                f"patch of shape {tuple(patch.values.shape)} does not fit this model "
                f"({self.arch.n_layers} layers x {n_heads} heads x {head_dim})"
            )
        per_example = patch.mask.dim() == 3
        cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

        def on_device(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            key = (x.device, x.dtype)
            if key not in cache:
                cache[key] = (patch.values.to(x.device, x.dtype), patch.mask.to(x.device))
            return cache[key]

        fired: set[int] = set()

        def hook_for(layer: int):
            def hook(module: nn.Module, args: tuple) -> tuple:
                fired.add(layer)
                x = args[0]
                valid, index = self._locations_for(x, wanted)
                rows, slot = valid.nonzero(as_tuple=True)
                if rows.numel() == 0:
                    return args
                values, mask = on_device(x)
                if per_example:
                    if values.shape[0] != x.shape[0]:
                        raise HeadvecError(
                            f"a per-example patch for {values.shape[0]} examples was applied to a batch "
                            f"of {x.shape[0]}; give one patch row per example"
                        )
                    values, mask = values[rows, layer], mask[rows, layer]
                else:
                    values, mask = values[layer], mask[layer]
                edited = x.clone()
                view = edited.view(*x.shape[:2], n_heads, head_dim)
                cols = index[rows, slot]
                current = view[rows, cols]
                if patch.mode == "replace":
                    view[rows, cols] = torch.where(mask.unsqueeze(-1), values, current)
                else:
                    view[rows, cols] = current + mask.unsqueeze(-1) * values
                return (edited, *args[1:])

            return hook

        handles = []
        with self._tracking():
            calls_before = self._calls
            try:
                for layer in patch.layers:
                    module = self.arch.attn_out(self.model, layer)
                    handles.append(module.register_forward_pre_hook(hook_for(layer)))
                yield patch
            finally:
                for handle in handles:
                    handle.remove()
            # reached only when the body succeeded: a patch that ran but never applied is an error
            missing = [layer for layer in patch.layers if layer not in fired]
            if self._calls > calls_before and missing:
                raise self._never_fired(missing)

    # ------------------------------------------------------------------ generate
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Prompt | str],
        max_new_tokens: int = 20,
        *,
        batch_size: int = 8,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Greedy generation (by default) for a list of prompts; active patches apply at every step."""
        if self.arch.is_encoder:
            raise HeadvecError(f"{self.loaded.name_or_path} is an encoder and cannot generate text")
        tokenizer = self.loaded.tokenizer
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        texts: list[str] = []
        with self._tracking():
            for batch in iter_batches(as_prompts(prompts), batch_size):
                inputs = self.loaded.encode(batch, padding_side="left")
                output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
                new_tokens = output[:, inputs["input_ids"].shape[1] :]
                texts.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return texts


def as_prompts(prompts: Sequence[Prompt | str]) -> list[Prompt]:
    return [p if isinstance(p, Prompt) else Prompt(text=p) for p in prompts]


def length_order(prompts: Sequence[Prompt], window: int) -> list[int]:
    """Indices of ``prompts`` sorted by length (characters; prompts with images apart) within each
    consecutive ``window``, so a batch pads little; ``window`` 0 or 1 keeps the order."""
    if window <= 1:
        return list(range(len(prompts)))
    order: list[int] = []
    for start in range(0, len(prompts), window):
        chunk = range(start, min(start + window, len(prompts)))
        order += sorted(chunk, key=lambda i: (bool(prompts[i].images), len(prompts[i].text)))
    return order


def iter_batches(prompts: Sequence[Prompt], batch_size: int) -> Iterator[list[Prompt]]:
    """Consecutive batches of at most ``batch_size`` that never mix prompts with and without images."""
    batch: list[Prompt] = []
    for prompt in prompts:
        if batch and (len(batch) == batch_size or bool(batch[0].images) != bool(prompt.images)):
            yield batch
            batch = []
        batch.append(prompt)
    if batch:
        yield batch
