"""The toy model: a small LLaVA (CLIP-style vision tower + Llama decoder) with a word-level tokenizer.

It uses transformers' own ``LlavaForConditionalGeneration`` and ``LlavaProcessor``, and is saved with
``save_pretrained``, so it loads through the same ``from_pretrained`` path as any hub model. Images are
48 px with 16 px patches: one toy-world grid cell per patch, 9 image tokens per image.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from headvec.toyworld.language import vocabulary

IMAGE_SIZE = 48
PATCH_SIZE = 16
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:")

# LLaVA-1.5 style turns; images go where the content list puts them.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}USER:"
    "{%- if m['content'] is string %} {{ m['content'] }}"
    "{%- else -%}{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'image' %} <image>"
    "{%- elif part['type'] == 'text' %} {{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif %} "
    "{%- elif m['role'] == 'assistant' -%}ASSISTANT:"
    "{%- if m['content'] is string %} {{ m['content'] }}"
    "{%- else -%}{%- for part in m['content'] if part['type'] == 'text' %} {{ part['text'] }}{%- endfor -%}"
    "{%- endif %} </s> "
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the toy world's closed vocabulary (both languages)."""
    words = list(SPECIAL_TOKENS) + [w for w in vocabulary() if w not in SPECIAL_TOKENS]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    # the same split as headvec.toyworld.tokenize_words: '**', words, single digits, single symbols
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(r"\*\*|[A-Za-z]+|\d|[^\sA-Za-z\d]"), behavior="isolated"),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<image>", "USER:", "ASSISTANT:"],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=512,
    )


def build_processor() -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_config(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    n_layers: int = 6,
    n_heads: int = 8,
    vision_hidden_size: int = 96,
    vision_layers: int = 2,
) -> LlavaConfig:
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=vision_hidden_size * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=vision_hidden_size,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=IMAGE_TOKENS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )


def build_model(config: LlavaConfig) -> LlavaForConditionalGeneration:
    model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = config.text_config.bos_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model


def save_toy_model(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, out_dir: str | Path
) -> Path:
    """Save as a standard Hugging Face model directory, weights in fp16 to keep the package small."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
