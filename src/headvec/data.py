"""Read JSONL data with errors that name the file, the line and the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from headvec.errors import DataError

Row = TypeVar("Row", bound=BaseModel)


class TextImageRow(BaseModel):
    """One input: a text and, optionally, the path of an image (relative to the JSONL file)."""

    model_config = ConfigDict(extra="allow")

    text: str
    image: str | None = None


class LabelledRow(TextImageRow):
    """An input with its class label (for classifiers such as SAV)."""

    label: str

    @field_validator("label", mode="before")
    @classmethod
    def _label_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float | bool) else value


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {number}: not valid JSON ({exc.msg}); fix or remove the row"
                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"{path} line {number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def read_rows(path: str | Path, schema: type[Row]) -> list[Row]:
    """Parse every row of a JSONL file into ``schema``; the first bad row stops with its line number."""
    rows = []
    for number, obj in iter_jsonl(path):
        try:
            rows.append(schema.model_validate(obj))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "row"
            raise DataError(f"{path} line {number}: field {field!r}: {first['msg']}") from None
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def read_text_image_rows(path: str | Path, schema: type[Row] = TextImageRow) -> list[Row]:
    """Rows of ``{"text": ..., "image": optional path}``; image paths are resolved and must exist."""
    path = Path(path)
    rows = read_rows(path, schema)
    for number, row in enumerate(rows, start=1):
        if row.image is not None:
            image = Path(row.image)
            image = image if image.is_absolute() else path.parent / image
            if not image.is_file():
                raise DataError(f"{path} row {number}: image file not found: {image}")
            row.image = str(image)
    return rows
