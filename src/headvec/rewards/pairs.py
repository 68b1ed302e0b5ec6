"""The one pair type every runner takes, and readers for PreferenceHack-style pair and verdict files.

A :class:`PreferencePair` is a prompt (and maybe an image) with two responses, one of them preferred.
Benchmarks keep their stored order and say which one is better; PreferenceHack-style rows store the
chosen response first. ``uid`` (what results are keyed on) hashes id + prompt + both responses, as
VL-RewardBench's scorer does, because ids alone repeat.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from headvec.data import read_rows
from headvec.errors import DataError, HeadvecError
from headvec.rewards.verdicts import Judgement

PREFERENCEHACK_ID = "DarthVaderSenior/PreferenceHack"


def item_uid(item_id: str, prompt: str, responses: Iterable[str]) -> str:
    """VL-RewardBench's item key (id + query + sorted responses), hashed to a short stable string."""
    key = item_id + prompt + "\t".join(sorted(responses))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def png_bytes(image: Image.Image) -> bytes:
    """Lossless PNG bytes of an image (what pairs carry, so they pickle and serialise as JSON)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class PreferencePair(BaseModel):
    """A prompt (and maybe an image) with two responses, ``responses[better]`` the preferred one.

    ``category`` is what accuracies are reported by (a benchmark category, a PreferenceHack split);
    ``subset`` a finer grouping where a benchmark has one. Build pairs from (chosen, rejected) with
    :meth:`from_chosen`.
    """

    model_config = ConfigDict(frozen=True)

    prompt: str
    responses: tuple[str, str]
    better: int = 0
    category: str = "all"
    subset: str = ""
    id: str = ""
    uid: str = ""
    benchmark: str = ""
    image_path: str | None = None
    image_bytes: bytes | None = None

    @field_validator("better")
    @classmethod
    def _zero_or_one(cls, value: int) -> int:
        if value not in (0, 1):
            raise ValueError("must be 0 or 1")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_uid(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("uid") and "prompt" in data and "responses" in data:
            data = {**data, "uid": item_uid(str(data.get("id", "")), data["prompt"], data["responses"])}
        return data

    @classmethod
    def from_chosen(
        cls, prompt: str, chosen: str, rejected: str, category: str = "all", image: Any = None, id: str = ""
    ) -> PreferencePair:
        """A pair from a chosen and a rejected response; ``image`` is a path, PIL image or PNG/JPEG bytes."""
        path, data = None, None
        if isinstance(image, Image.Image):
            data = png_bytes(image)
        elif isinstance(image, bytes):
            data = image
        elif image is not None:
            path = str(image)
        return cls(
            prompt=prompt,
            responses=(chosen, rejected),
            better=0,
            category=category,
            id=id,
            image_path=path,
            image_bytes=data,
        )

    @property
    def chosen(self) -> str:
        return self.responses[self.better]

    @property
    def rejected(self) -> str:
        return self.responses[1 - self.better]

    @property
    def has_image(self) -> bool:
        return self.image_path is not None or self.image_bytes is not None

    def image(self) -> Image.Image | None:
        """The pair's image as RGB, or None for text-only pairs."""
        if self.image_bytes is not None:
            with Image.open(io.BytesIO(self.image_bytes)) as opened:
                return opened.convert("RGB")
        if self.image_path is not None:
            if not Path(self.image_path).is_file():
                raise DataError(f"image file not found: {self.image_path}; fix the path or restore the file")
            with Image.open(self.image_path) as opened:
                return opened.convert("RGB")
        return None


class PairRow(BaseModel):
    """PreferenceHack-like rows: ``prompt`` may be named ``question``/``query``, ``split`` ``category``."""

    model_config = ConfigDict(extra="allow")

    prompt: str
    chosen: str
    rejected: str
    split: str = "all"
    image: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, row: Any) -> Any:
        if isinstance(row, dict):
            row = dict(row)
            for name in ("question", "query", "instruction"):
                if "prompt" not in row and name in row:
                    row["prompt"] = row[name]
            for name in ("category", "bias", "subset"):
                if "split" not in row and name in row:
                    row["split"] = row[name]
        return row


def _image_next_to(path: Path, image: str | None, number: int) -> str | None:
    if not image:
        return None
    file = Path(image) if Path(image).is_absolute() else path.parent / image
    if not file.is_file():
        raise DataError(f"{path} row {number}: image file not found: {file}")
    return str(file)


def read_preference_pairs(path: str | os.PathLike, split: str | None = None) -> list[PreferencePair]:
    """Pairs from a JSONL file (line-numbered errors; image paths relative to the file must exist)."""
    path = Path(path)
    pairs = []
    for number, row in enumerate(read_rows(path, PairRow), start=1):
        image = _image_next_to(path, row.image, number)
        pairs.append(
            PreferencePair.from_chosen(
                row.prompt, row.chosen, row.rejected, split or row.split, image, str(number)
            )
        )
    return pairs


def load_preferencehack(
    source: str = PREFERENCEHACK_ID, splits: Sequence[str] = ("length", "positivity")
) -> list[PreferencePair]:
    """PreferenceHack from the hub (``datasets``) when online, or from a local folder of ``<split>.jsonl``."""
    local = Path(source)
    if local.is_dir():
        return [p for s in splits for p in read_preference_pairs(local / f"{s}.jsonl", split=s)]
    try:
        from datasets import load_dataset

        pairs = []
        for split in splits:
            data = load_dataset(source, data_files=f"data/{split}.jsonl", split="train")
            for i, row in enumerate(data):
                parsed = PairRow.model_validate(row)
                pairs.append(
                    PreferencePair.from_chosen(
                        parsed.prompt, parsed.chosen, parsed.rejected, split, None, str(i)
                    )
                )
        return pairs
    except Exception as exc:  # offline, or the hub is unreachable
        raise HeadvecError(
            f"cannot load {source!r} ({type(exc).__name__}); download it once and pass the local folder of "
            "<split>.jsonl files"
        ) from None


class VerdictRow(BaseModel):
    """A labelled verdict row: ``verdict`` is yes/no, true/false or 1/0."""

    prompt: str
    response: str
    verdict: bool | str
    image: str | None = None

    @field_validator("verdict", mode="before")
    @classmethod
    def _yes_no(cls, value: Any) -> bool:
        text = str(value).strip().lower()
        if text not in ("yes", "no", "true", "false", "1", "0"):
            raise ValueError(f"verdict must be yes/no or true/false, got {value!r}")
        return text in ("yes", "true", "1")


def read_judgements(path: str | os.PathLike) -> list[Judgement]:
    """Labelled verdicts ``{prompt, response, verdict[, image]}``, or preference pairs
    ``{prompt, chosen, rejected}`` (each pair gives a yes and a no), from JSONL."""
    from headvec.data import iter_jsonl

    path = Path(path)
    first = next(iter_jsonl(path), (0, {}))[1]
    if "chosen" in first:
        return judgements_from_pairs(read_preference_pairs(path))
    return [
        Judgement(row.prompt, row.response, bool(row.verdict), _image_next_to(path, row.image, number))
        for number, row in enumerate(read_rows(path, VerdictRow), start=1)
    ]


def judgements_from_pairs(pairs: Sequence[PreferencePair]) -> list[Judgement]:
    """Each pair as two labelled verdicts: the chosen response meets the criterion, the rejected does not."""
    out = []
    for pair in pairs:
        image = pair.image()
        out.append(Judgement(pair.prompt, pair.chosen, True, image))
        out.append(Judgement(pair.prompt, pair.rejected, False, image))
    return out
