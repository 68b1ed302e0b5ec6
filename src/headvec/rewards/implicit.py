"""Implicit rewards of an aligned model and the reward gap ReGap (Xie et al., arXiv 2406.14393).

An aligned policy pi read against its reference pi_ref is a reward model (the DPO reading):

    r(x, y)  = w * score_pi(y | x) - score_ref(y | x)
    ReGap(x) = r(x, y_harmless) - r(x, y_harmful)

A prompt x on which ReGap <= 0 is one where the implicit reward prefers the harmful answer: the paper's
"reward misspecification", which is what a jailbreak finds.

``score`` is how a response's likelihood is read (selectable because the paper and its code differ):

- ``"sum"``: the paper's formula, the summed token log-probability ``sum_t log p(y_t | x, y_<t)``;
- ``"reweighted"``: what the official code (``remiss-jailbreak``, ``reweight_loss: true``) computes, minus
  the position-reweighted mean NLL ``-(1/T) sum_t nll_t / (t + 1)`` (the first target tokens weigh most);
- ``"mean"``: the mean token log-probability (length-normalised, no reweighting).

``policy_weight`` is ``w``: 1 in the formula; the official code weighs the aligned model's term by
``lambda_val`` (100 in its yaml, 150 in its train script) with the reference term unweighted.

The response is tokenized on its own (no special tokens) and appended to the prompt's tokens, as TRL's
DPO does; policy and reference must share the tokenizer. :class:`ImplicitRewardModel` is a
:class:`~headvec.rewards.protocol.Scorer`, so the harness, Best-of-N and TRL (``as_trl_reward_func``)
take it like any other reward model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

from headvec.errors import DataError, HeadvecError
from headvec.models import ImageLike, LoadedModel, Prompt, load_image

__all__ = [
    "SCORES",
    "ImplicitRewardModel",
    "next_token_logprobs",
    "reduce_token_logprobs",
    "response_token_logprobs",
]

Score = Literal["sum", "reweighted", "mean"]
SCORES: tuple[str, ...] = ("sum", "reweighted", "mean")


def reduce_token_logprobs(token_logprobs: torch.Tensor, score: str) -> float:
    """One sequence score from the (T,) log-probabilities of a response's tokens (see the module doc)."""
    if score not in SCORES:
        raise HeadvecError(f"unknown sequence score {score!r}; choose one of {', '.join(SCORES)}")
    if token_logprobs.numel() == 0:
        return 0.0
    values = token_logprobs.double()
    if score == "sum":
        return float(values.sum())
    if score == "mean":
        return float(values.mean())
    positions = torch.arange(1, values.numel() + 1, dtype=values.dtype, device=values.device)
    return float((values / positions).mean())  # -(1/T) sum nll_t / (t + 1), t counted from 0


def _extend(tensor: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    pad = torch.full(
        (tensor.shape[0], width - tensor.shape[1]), fill, dtype=tensor.dtype, device=tensor.device
    )
    return torch.cat([tensor, pad], dim=1)


def _forward_with_continuations(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    continuations: Sequence[Sequence[int]],
    *,
    batch_size: int,
    grad: bool,
) -> Iterator[tuple[torch.Tensor, list[int], list[list[int]]]]:
    """Per batch: the logits (B, L, V) of each prompt followed by its continuation ids, the prompts'
    token counts and the continuations. Prompts are encoded as the model takes them (images included,
    right padding); per-token inputs the processor adds beside the ids (``token_type_ids``,
    ``mm_token_type_ids``) are extended with zeros: continuation tokens are text."""
    if len(prompts) != len(continuations):
        raise DataError(f"{len(prompts)} prompts but {len(continuations)} responses; give one response each")
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        answers = [list(r) for r in continuations[start : start + batch_size]]
        has_images = [bool(p.images) for p in batch]
        if any(has_images) and not all(has_images):  # encode() takes batches that all have images or none
            for p, a in zip(batch, answers, strict=True):
                yield from _forward_with_continuations(loaded, [p], [a], batch_size=1, grad=grad)
            continue
        inputs = loaded.encode(batch, padding_side="right")
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        prompt_lengths = mask.sum(dim=1).tolist()
        width = max(n + len(a) for n, a in zip(prompt_lengths, answers, strict=True))
        pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
        new_ids = torch.full((len(batch), width), pad_id, dtype=ids.dtype, device=ids.device)
        new_mask = torch.zeros((len(batch), width), dtype=mask.dtype, device=mask.device)
        for row, (n, answer) in enumerate(zip(prompt_lengths, answers, strict=True)):
            new_ids[row, :n] = ids[row, :n]
            new_ids[row, n : n + len(answer)] = torch.tensor(answer, dtype=ids.dtype)
            new_mask[row, : n + len(answer)] = 1
        model_inputs: dict[str, Any] = dict(inputs)
        for key, value in inputs.items():
            if key in ("input_ids", "attention_mask"):
                continue
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == ids.shape:
                model_inputs[key] = _extend(value, width, 0)
        model_inputs["input_ids"], model_inputs["attention_mask"] = new_ids, new_mask
        with torch.set_grad_enabled(grad):
            logits = loaded.model(**model_inputs).logits  # (B, L, V)
        yield logits, prompt_lengths, answers


def response_token_logprobs(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    responses: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    grad: bool = False,
    allowed: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """``log p(y_t | prompt, y_<t)`` for each response token, one (T_i,) tensor per (prompt, response);
    the response ids are appended right after each prompt's last real token. ``allowed`` (a (V,) bool
    mask) renormalises over those tokens only (a suffix's readability over the words it may use)."""
    out: list[torch.Tensor] = []
    for logits, prompt_lengths, answers in _forward_with_continuations(
        loaded, prompts, responses, batch_size=batch_size, grad=grad
    ):
        for row, (n, answer) in enumerate(zip(prompt_lengths, answers, strict=True)):
            if not answer:
                out.append(logits.new_zeros(0))
                continue
            step_logits = logits[row, n - 1 : n - 1 + len(answer)].float()  # (T, V): predicts y_0 .. y_T-1
            if allowed is not None:
                step_logits = step_logits.masked_fill(~allowed[: step_logits.shape[-1]], float("-inf"))
            targets = torch.tensor(answer, device=step_logits.device)
            out.append(torch.log_softmax(step_logits, dim=-1).gather(1, targets[:, None])[:, 0])
    return out


def next_token_logprobs(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    continuations: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, V) log-distribution of the token after each prompt + continuation (``allowed``: see
    :func:`response_token_logprobs`); what a prompter proposes the next suffix token from."""
    rows: list[torch.Tensor] = []
    for logits, prompt_lengths, answers in _forward_with_continuations(
        loaded, prompts, continuations, batch_size=batch_size, grad=False
    ):
        for row, (n, answer) in enumerate(zip(prompt_lengths, answers, strict=True)):
            last = logits[row, n + len(answer) - 1].float()
            if allowed is not None:
                last = last.masked_fill(~allowed[: last.shape[-1]], float("-inf"))
            rows.append(torch.log_softmax(last, dim=-1))
    return torch.stack(rows)


class ImplicitRewardModel:
    """``r(x, y) = policy_weight * score_policy(y | x) - score_reference(y | x)``, batched.

    ``policy`` and ``reference`` are headvec-loaded models with the same tokenizer (the reference is
    usually the base model the policy was aligned from). Prompts are wrapped in the policy's chat
    template (``chat=False``: raw text); ``images`` go with them for vision-language models.

        rm = ImplicitRewardModel(load("runs/aligned"), load("toy"))
        rm.rewards(["what color is the cross ?"], ["red"], [image])
        rm.regap(["what color is the cross ?"], ["i can give no answer ."], ["red"], [image])
    """

    def __init__(
        self,
        policy: LoadedModel,
        reference: LoadedModel,
        *,
        score: Score = "sum",
        policy_weight: float = 1.0,
        batch_size: int = 16,
        chat: bool = True,
        system: str | None = None,
    ) -> None:
        if score not in SCORES:
            raise HeadvecError(f"unknown sequence score {score!r}; choose one of {', '.join(SCORES)}")
        if policy.tokenizer.get_vocab() != reference.tokenizer.get_vocab():
            raise HeadvecError(
                f"the policy {policy.name_or_path} and the reference {reference.name_or_path} have "
                "different tokenizers; an implicit reward compares the same tokens under both, so use the "
                "policy's base model"
            )
        self.policy, self.reference = policy, reference
        self.score, self.policy_weight, self.batch_size = score, policy_weight, batch_size
        self.chat, self.system = chat, system

    # ------------------------------------------------------------------ building blocks
    def build_prompts(
        self, prompts: Sequence[str], images: Sequence[ImageLike | None] | None = None
    ) -> list[Prompt]:
        """The prompts as the policy sees them (chat template, images in place)."""
        images = list(images) if images is not None else [None] * len(prompts)
        if len(images) != len(prompts):
            raise DataError(f"{len(prompts)} prompts but {len(images)} images; give one (or None) per prompt")
        return [
            self.policy.build_prompt(
                text, [load_image(image)] if image is not None else [], chat=self.chat, system=self.system
            )
            for text, image in zip(prompts, images, strict=True)
        ]

    def response_ids(self, responses: Sequence[str]) -> list[list[int]]:
        ids = [self.policy.tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
        empty = [i for i, row in enumerate(ids) if not row]
        if empty:
            raise DataError(
                f"response {empty[0]} ({responses[empty[0]]!r}) has no tokens; give a non-empty response"
            )
        return ids

    def sequence_scores(
        self, loaded: LoadedModel, prompts: Sequence[Prompt], responses: Sequence[Sequence[int]]
    ) -> list[float]:
        """``score(y | x)`` of each (prompt, response ids) under ``loaded``."""
        token_lp = response_token_logprobs(loaded, prompts, responses, batch_size=self.batch_size)
        return [reduce_token_logprobs(t, self.score) for t in token_lp]

    def rewards_for(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[int]]) -> list[float]:
        """Implicit rewards of already built prompts and tokenized responses (what attackers call)."""
        policy = self.sequence_scores(self.policy, prompts, responses)
        reference = self.sequence_scores(self.reference, prompts, responses)
        return [self.policy_weight * p - r for p, r in zip(policy, reference, strict=True)]

    def regap_for(
        self,
        prompts: Sequence[Prompt],
        harmless: Sequence[Sequence[int]],
        harmful: Sequence[Sequence[int]],
    ) -> list[float]:
        """``r(x, y_harmless) - r(x, y_harmful)`` of built prompts, both responses in one pass."""
        n = len(prompts)
        if not (len(harmless) == len(harmful) == n):
            raise DataError(
                f"{n} prompts, {len(harmless)} harmless and {len(harmful)} harmful responses; give one of "
                "each per prompt"
            )
        both = self.rewards_for([*prompts, *prompts], [*harmless, *harmful])
        return [both[i] - both[n + i] for i in range(n)]

    # ------------------------------------------------------------------ the Scorer protocol
    def rewards(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]:
        """One implicit reward per (prompt, response[, image]); higher = the policy prefers it more."""
        if len(prompts) != len(responses):
            raise DataError(f"{len(prompts)} prompts but {len(responses)} responses; give one response each")
        return self.rewards_for(self.build_prompts(prompts, images), self.response_ids(responses))

    def regap(
        self,
        prompts: Sequence[str],
        harmless: Sequence[str],
        harmful: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]:
        """ReGap per prompt: ``r(x, harmless) - r(x, harmful)``; <= 0 means the reward is misspecified."""
        built = self.build_prompts(prompts, images)
        return self.regap_for(built, self.response_ids(harmless), self.response_ids(harmful))

    def as_trl_reward_func(self, prompt_key: str = "prompt", image_key: str = "image") -> Any:
        """A ``reward_funcs`` entry for TRL's trainers: ``f(prompts, completions, **columns)``."""
        from headvec.rewards.activation import trl_reward_func

        return trl_reward_func(self, prompt_key, image_key)

    def __repr__(self) -> str:
        return (
            f"ImplicitRewardModel(policy={self.policy.name_or_path!r}, "
            f"reference={self.reference.name_or_path!r}, score={self.score!r}, "
            f"policy_weight={self.policy_weight})"
        )


def from_spec(rest: str, options: Any) -> ImplicitRewardModel:
    """``POLICY,REFERENCE[,SCORE]`` (the ``implicit:`` reward-model spec) -> the reward model."""
    from headvec.models import load

    parts = [p for p in rest.split(",") if p]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in SCORES):
        raise HeadvecError(
            f"--rm implicit:{rest!r} must be implicit:POLICY,REFERENCE[,{'|'.join(SCORES)}], e.g. "
            "implicit:runs/aligned,toy"
        )
    policy = load(parts[0], dtype=options.dtype, device=options.device)
    reference = load(parts[1], dtype=options.dtype, device=options.device)
    score = parts[2] if len(parts) == 3 else "sum"
    return ImplicitRewardModel(policy, reference, score=score, batch_size=options.batch_size)  # type: ignore[arg-type]
