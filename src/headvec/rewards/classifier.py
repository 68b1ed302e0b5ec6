"""Hugging Face sequence-classification reward models behind headvec's :class:`Scorer` protocol.

Trained reward models (Skywork-Reward, ArmoRM-style heads, DeBERTa RMs) are the usual baseline for
activation reward models, so the benchmark, the server and TRL take them through the same ``rewards``
interface. The reward is the single logit (``num_labels == 1``) or the logit of the positive
label. Each pair is rendered with the tokenizer's chat template (user = prompt, assistant = response)
because that is how such models were trained; tokenizers without one get ``"prompt\\n\\nresponse"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from headvec.errors import DataError, HeadvecError
from headvec.models import ImageLike


class SequenceClassifierRewardModel:
    """``AutoModelForSequenceClassification`` + ``AutoTokenizer`` as a text-only reward model.

    ``positive_label`` (index or label name) picks the rewarding logit of a multi-label head; with two
    labels it defaults to label 1, with one label to the only logit. Long inputs are truncated from the left
    so the end of the response, which the classifier pools, is kept.
    """

    accepts_images = False

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        device: str = "cpu",
        batch_size: int = 16,
        positive_label: int | str | None = None,
        trust_remote_code: bool = False,
        max_length: int | None = None,
        dtype: str | torch.dtype = "float32",
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1:
            raise HeadvecError(f"batch_size must be >= 1, got {batch_size}")
        self.name_or_path = str(model_name_or_path)
        self.batch_size = batch_size
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.name_or_path, trust_remote_code=trust_remote_code
            )
            self.model = AutoModelForSequenceClassification.from_pretrained(
                self.name_or_path,
                trust_remote_code=trust_remote_code,
                dtype=_torch_dtype(dtype),
            )
        except (OSError, ValueError) as exc:
            raise HeadvecError(
                f"cannot load {self.name_or_path} as a sequence-classification reward model ({exc}); "
                "pass a Hugging Face model directory or hub id with a classification head"
            ) from exc
        self.model.to(self.device).eval()
        self._fix_padding()
        self.label_index = self._label_index(positive_label)
        self.max_length = max_length or self._default_max_length()
        self.tokenizer.truncation_side = "left"

    # ------------------------------------------------------------------------------ setup
    def _fix_padding(self) -> None:
        """Batching needs a pad token, and the model must know its id to pool the last real token."""
        tokenizer, config = self.tokenizer, self.model.config
        if tokenizer.pad_token is None:
            fallback = tokenizer.eos_token or tokenizer.unk_token
            if fallback is None:
                raise HeadvecError(
                    f"the tokenizer of {self.name_or_path} has no pad, eos or unk token to pad batches with; "
                    "add a pad_token to its tokenizer_config.json"
                )
            tokenizer.pad_token = fallback
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        if getattr(text_config, "pad_token_id", None) is None:
            text_config.pad_token_id = tokenizer.pad_token_id
            config.pad_token_id = tokenizer.pad_token_id

    def _label_index(self, positive_label: int | str | None) -> int:
        num_labels = int(self.model.config.num_labels)
        if positive_label is None:
            if num_labels == 1:
                return 0
            if num_labels == 2:
                return 1
            raise HeadvecError(
                f"{self.name_or_path} has {num_labels} labels; pass positive_label= (an index or one of "
                f"{sorted(self.model.config.label2id)}) to say which logit is the reward"
            )
        if isinstance(positive_label, str) and not positive_label.lstrip("-").isdigit():
            label2id = {str(k): int(v) for k, v in (self.model.config.label2id or {}).items()}
            if positive_label not in label2id:
                raise HeadvecError(
                    f"positive_label {positive_label!r} is not a label of {self.name_or_path}; "
                    f"use one of {sorted(label2id)}"
                )
            return label2id[positive_label]
        index = int(positive_label)
        if not -num_labels <= index < num_labels:
            raise HeadvecError(f"positive_label {index} is out of range for a head with {num_labels} labels")
        return index % num_labels

    def _default_max_length(self) -> int:
        limits = [getattr(self.tokenizer, "model_max_length", None)]
        text_config = self.model.config.get_text_config()
        limits.append(getattr(text_config, "max_position_embeddings", None))
        usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
        return min(usable) if usable else 4096

    # ------------------------------------------------------------------------------ scoring
    @property
    def identity(self) -> dict[str, Any]:
        """What the server reports in ``/health``."""
        return {
            "name_or_path": self.name_or_path,
            "model_class": type(self.model).__name__,
            "num_labels": int(self.model.config.num_labels),
            "label_index": self.label_index,
        }

    def render(self, prompt: str, response: str) -> str:
        """The text the classifier sees for one pair."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{prompt}\n\n{response}"

    @torch.no_grad()
    def rewards(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]:
        """The positive logit for each (prompt, response); images are refused (text-only model)."""
        if len(prompts) != len(responses):
            raise DataError(f"{len(prompts)} prompts but {len(responses)} responses; give one response each")
        if images is not None and any(image is not None for image in images):
            raise DataError(
                f"{self.name_or_path} is a text-only reward model; drop the images or use a multimodal one"
            )
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=not templated,  # the chat template already wrote bos etc.
            ).to(self.device)
            logits = self.model(**inputs).logits
            scores += logits[:, self.label_index].float().tolist()
        return [float(s) for s in scores]


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise HeadvecError(f"unknown dtype {dtype!r}; use float32, float16, bfloat16 or auto")
    return table[dtype]
