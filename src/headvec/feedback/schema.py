"""VLFeedback rows: the official schema (``MMInstruction/VLFeedback``), read and written as JSONL.

One row is one instruction with its image and the responses of four models, each annotated on three
aspects with a rating (a string, "1".."5", sometimes not a number) and a rationale::

    {"id": "...", "prompt": "...", "models": ["m1", ...], "img_path": "svit/123.jpg",
     "completions": [{"model": "m1", "response": "...",
                      "annotations": {"Helpfulness": {"Rating": "4", "Rationale": "..."},
                                      "Ethical Considerations": {...}, "Visual Faithfulness": {...}}}]}

Rows headvec writes keep that shape (``datasets.load_dataset("json", ...)`` reads them like the real
file) and add optional fields the official file does not have: ``meta`` (where the instruction came
from, e.g. the toy world's scene) and, per completion, ``annotator`` / ``raw`` (the judge's reply, kept
when it did not parse). Images are looked up under an image root: a directory or the official
``merged_images.zip``.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from headvec.data import iter_jsonl
from headvec.errors import DataError, HeadvecError

ASPECTS = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")
RATING_RANGE = (1.0, 5.0)


class AspectAnnotation(BaseModel):
    """One aspect of one response: the rating as the annotator wrote it (a string) and the why."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    Rating: str
    Rationale: str = ""


class Completion(BaseModel):
    """One model's response and, once annotated, its three aspects (``annotations`` None before)."""

    model_config = ConfigDict(extra="allow")

    model: str
    response: str
    annotations: dict[str, AspectAnnotation] | None = None


class FeedbackRow(BaseModel):
    """One instruction, its image path and its (up to four) annotated responses."""

    model_config = ConfigDict(extra="allow")

    id: str
    prompt: str
    models: list[str]
    completions: list[Completion]
    img_path: str | None = None
    meta: dict[str, Any] = {}

    @property
    def annotated(self) -> bool:
        return all(c.annotations is not None for c in self.completions)


def rating_value(text: str) -> float | None:
    """A rating string as a number, or None when it is not one (the official code's ``float()`` fails)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if value == value else None  # NaN is not a rating


def check_rating(value: float, where: str) -> float:
    """A rating must lie in 1-5: anything else is an annotator bug, refused with one line."""
    low, high = RATING_RANGE
    if not low <= value <= high:
        raise DataError(f"{where}: rating {value:g} is outside {low:g}-{high:g}; ratings are 1 to 5")
    return value


def mean_rating(completion: Completion) -> float | None:
    """The official pair score: the mean of the three aspects' ratings; None if one is missing or not a
    number (the official code skips those pairs)."""
    annotations = completion.annotations or {}
    values = [rating_value(annotations[a].Rating) if a in annotations else None for a in ASPECTS]
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def read_feedback(path: str | Path, *, limit: int | None = None) -> list[FeedbackRow]:
    """Every row of a VLFeedback JSONL file; a malformed row stops with its line number and field."""
    return list(iter_feedback(path, limit=limit))


def iter_feedback(path: str | Path, *, limit: int | None = None) -> Iterator[FeedbackRow]:
    for count, (number, obj) in enumerate(iter_jsonl(path)):
        if limit is not None and count >= limit:
            return
        try:
            yield FeedbackRow.model_validate(obj)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "row"
            raise DataError(
                f"{path} line {number}: field {field!r}: {error['msg']}; rows need the VLFeedback schema "
                "(id, prompt, models, completions[{model, response, annotations}], img_path)"
            ) from None


def load_as_dataset(path: str | Path) -> Any:
    """The file through ``datasets`` (``load_dataset("json")``), as the official loading script reads it."""
    from headvec._optional import require

    datasets = require("datasets", extra="trl")
    if not Path(path).is_file():
        raise DataError(f"data file not found: {path}")
    return datasets.load_dataset("json", data_files=str(path), split="train")


def append_rows(path: str | Path, rows: Iterable[FeedbackRow]) -> None:
    """Append rows to a JSONL file and flush, so a killed run keeps what it finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row.model_dump(exclude_none=False), ensure_ascii=False) + "\n")
        handle.flush()


def write_rows(path: str | Path, rows: Sequence[FeedbackRow]) -> None:
    """Write rows to a fresh JSONL file (through a temporary file, so a crash leaves the old one)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    append_rows(tmp, rows)
    tmp.replace(path)


def done_ids(path: str | Path) -> set[str]:
    """Ids already written to ``path`` (empty if it does not exist): what a resumed run skips. A last line
    cut by a kill is dropped (and rewritten on resume)."""
    path = Path(path)
    if not path.is_file():
        return set()
    ids, lines = set(), path.read_text(encoding="utf-8").splitlines(keepends=True)
    good = []
    for index, line in enumerate(lines):
        try:
            ids.add(json.loads(line)["id"])
            good.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            if index != len(lines) - 1:
                raise DataError(f"{path}: a row in the middle is not valid JSON; fix or remove it") from None
    if len(good) != len(lines):  # drop the torn last line before appending after it
        path.write_text("".join(good), encoding="utf-8")
    return ids


class ImageStore:
    """Opens ``img_path`` under a root: a directory, or a zip archive (the official ``merged_images.zip``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._zip: zipfile.ZipFile | None = None
        if self.root.suffix == ".zip":
            if not self.root.is_file():
                raise DataError(f"image archive not found: {self.root}")
            self._zip = zipfile.ZipFile(self.root)

    def path(self, img_path: str) -> Path:
        return self.root / img_path

    def open(self, img_path: str | None, row_id: str = "") -> Image.Image:
        """The row's image as RGB; a missing one is a one-line error naming the row and the path."""
        if not img_path:
            raise DataError(f"row {row_id!r} has no img_path; every VLFeedback row needs its image")
        try:
            if self._zip is not None:
                with self._zip.open(img_path) as handle:
                    return Image.open(handle).convert("RGB")
            with Image.open(self.root / img_path) as image:
                return image.convert("RGB")
        except (FileNotFoundError, KeyError):
            raise DataError(
                f"row {row_id!r}: image {img_path!r} not found under {self.root}; pass the image root "
                "(--images) the file's img_path values are relative to"
            ) from None


def require_four(row: FeedbackRow) -> None:
    """The official template rates exactly four texts."""
    if len(row.completions) != 4:
        raise HeadvecError(
            f"row {row.id!r} has {len(row.completions)} responses; the all-in-one template rates exactly 4"
        )
