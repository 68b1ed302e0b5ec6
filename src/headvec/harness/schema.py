"""Loaders for VL-RewardBench, Multimodal RewardBench and RewardBench into the one pair type.

Each loader turns its benchmark's own rows into :class:`~headvec.rewards.pairs.PreferencePair` (stored
order kept, ``better`` indexing the preferred response) and stops at the first row that does not
fit, naming the file, the row and the field. Sources: a Hugging Face dataset id (needs the network), a
parquet file, a JSONL file, or a JSON list (Multimodal RewardBench's ``all_data.json``); image paths are
resolved against the data file's folder and must exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from headvec.errors import DataError
from headvec.rewards.pairs import PreferencePair, item_uid

BENCHMARKS = ("vlrewardbench", "multimodal-rewardbench", "rewardbench")
HF_IDS = {
    "vlrewardbench": "MMInstruction/VL-RewardBench",
    "rewardbench": "allenai/reward-bench",
    "rewardbench-prior": "allenai/preference-test-sets",
}
DEFAULT_SPLITS = {"vlrewardbench": "test", "rewardbench": "filtered", "multimodal-rewardbench": "test"}

# VL-RewardBench's official scorer (cal.py, after the 2025-05 POVID fix): id prefix -> source dataset.
VLRB_SOURCE_BY_PREFIX = {
    "RLAIF": "rlaif-v",
    "RLHF": "rlhf-v",
    "hallucination": "povid",
    "mathverse": "reasoning_tasks",
    "mmmu": "reasoning_tasks",
    "wildvision": "wildvision-battle",
}
VLRB_CATEGORY_BY_SOURCE = {
    "rlaif-v": "hallucination",
    "rlhf-v": "hallucination",
    "povid": "hallucination",
    "reasoning_tasks": "reasoning",
    "wildvision-battle": "general",
    "vlfeedback": "general",
}

# RewardBench (allenai/reward-bench constants): subset -> section, and the per-subset weights.
REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
REWARDBENCH_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,  # 447 rows, upweighted by the official scorer to weigh as much as the code subsets
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}
REWARDBENCH_SECTION_BY_SUBSET = {s: sec for sec, subs in REWARDBENCH_SECTIONS.items() for s in subs}
# RewardBench's Prior Sets (allenai/preference-test-sets, one split per subset): the unweighted mean of
# these four subsets, weighed at half a section in the final score (the official leaderboard script's
# weights 2, 2, 2, 2, 1 over Chat, Chat Hard, Safety, Reasoning, Prior Sets).
REWARDBENCH_PRIOR_SECTION = "Prior Sets"
REWARDBENCH_PRIOR_SUBSETS = ("anthropic_helpful", "anthropic_hhh", "shp", "summarize")


def vlrb_source(item_id: str) -> str:
    """The official scorer's source dataset for an id: the text before the first ``_`` or ``-``."""
    prefix = item_id.replace("-", "_").split("_", 1)[0]
    return VLRB_SOURCE_BY_PREFIX.get(prefix, "vlfeedback")


# ------------------------------------------------------------------------------------------------
# Official row schemas (only the fields the harness uses; extra fields are kept out of the way)


class VLRewardBenchRow(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    query: str
    image: Any = None
    response: list[str]
    human_ranking: list[int]
    category: str | None = None  # not official: headvec's toy-world export names its own categories

    @field_validator("response")
    @classmethod
    def _two_responses(cls, value: list[str]) -> list[str]:
        if len(value) != 2:
            raise ValueError(f"must hold exactly 2 responses, got {len(value)}")
        return value

    @field_validator("human_ranking")
    @classmethod
    def _ranking(cls, value: list[int]) -> list[int]:
        if sorted(value) != [0, 1]:
            raise ValueError(f"must be [0, 1] or [1, 0], got {value}")
        return value


class MultimodalRewardBenchRow(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ID: str
    Text: str
    Image: str
    Output1: str
    Output2: str
    Better: str
    Category: str

    @field_validator("Better")
    @classmethod
    def _better(cls, value: str) -> str:
        if value not in ("Output1", "Output2"):
            raise ValueError(f"must be 'Output1' or 'Output2', got {value!r}")
        return value


class RewardBenchRow(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | int
    prompt: str
    chosen: str
    rejected: str
    subset: str


Message = dict[str, Any]


class PriorSetRow(BaseModel):
    """A preference-test-sets row: ``chosen`` / ``rejected`` are whole conversations (or plain texts with
    a ``prompt``)."""

    model_config = ConfigDict(extra="ignore")

    id: str | int | None = None
    prompt: str | None = None
    chosen: str | list[Message]
    rejected: str | list[Message]

    @field_validator("chosen", "rejected")
    @classmethod
    def _ends_with_a_reply(cls, value: str | list[Message]) -> str | list[Message]:
        if isinstance(value, list) and not (value and all("content" in m for m in value)):
            raise ValueError("must be a non-empty list of messages with 'content'")
        return value


def _conversation_text(messages: list[Message]) -> str:
    """Earlier turns of a conversation as one prompt text (``User: ...`` / ``Assistant: ...``)."""
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    if len(messages) == 1:
        return str(messages[0]["content"])
    return "\n\n".join(f"{names.get(m.get('role', 'user'), 'User')}: {m['content']}" for m in messages)


# ------------------------------------------------------------------------------------------------
# Reading raw rows


def _raw_rows(
    source: str | Path, benchmark: str, split: str
) -> tuple[str, Path | None, Iterator[tuple[int, dict]]]:
    """``(label for errors, base folder for images, (row number, dict) pairs)`` from a file or hub id."""
    path = Path(source)
    if path.is_dir():
        path = _find_data_file(path, benchmark, split)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return str(path), path.parent, _parquet_rows(path)
        if suffix == ".jsonl":
            from headvec.data import iter_jsonl

            return str(path), path.parent, iter_jsonl(path)
        if suffix == ".json":
            return str(path), path.parent, _json_list_rows(path)
        raise DataError(
            f"{path}: unsupported data file type {suffix!r}; give a .parquet, .jsonl or .json file"
        )
    looks_like_file = path.suffix.lower() in (".parquet", ".jsonl", ".json")
    if "/" in str(source) and not str(source).startswith((".", "/")) and not looks_like_file:
        return str(source), None, _hub_rows(str(source), split)
    raise DataError(
        f"data not found: {source}; give a parquet/JSONL/JSON file, a folder, or a hub dataset id"
    )


def _find_data_file(folder: Path, benchmark: str, split: str) -> Path:
    patterns = {
        "vlrewardbench": [
            f"data/{split}-*.parquet",
            f"{split}-*.parquet",
            f"vlrewardbench.{split}.en.jsonl",
            f"vlrewardbench.{split}.*.jsonl",
            "*.parquet",
        ],
        "multimodal-rewardbench": ["all_data.json", "data/all_data.json", "*.jsonl"],
        "rewardbench": [f"data/{split}-*.parquet", f"{split}-*.parquet", "*.parquet", "*.jsonl"],
        "rewardbench-prior": [f"data/{split}-*.parquet", f"{split}-*.parquet", f"{split}.jsonl"],
    }[benchmark]
    for pattern in patterns:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    raise DataError(f"no {benchmark} data file in {folder}; expected one of {', '.join(patterns)}")


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read parquet ({exc}); re-download the file") from None
    yield from enumerate(table.to_pylist(), start=1)


def _json_list_rows(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def _hub_rows(dataset_id: str, split: str) -> Iterator[tuple[int, dict]]:
    import datasets

    try:
        dataset = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, unknown id, gated: all one-line errors for the user
        raise DataError(
            f"cannot load hub dataset {dataset_id!r} split {split!r} ({str(exc).splitlines()[0]}); "
            "download it and pass the local parquet/JSONL file instead"
        ) from None
    dataset = (
        dataset.cast_column("image", datasets.Image(decode=False)) if "image" in dataset.features else dataset
    )
    yield from enumerate(dataset, start=1)


def _validate(schema: type[BaseModel], obj: dict, where: str) -> Any:
    try:
        return schema.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "row"
        raise DataError(f"{where}: field {field!r}: {first['msg']}; fix or remove the row") from None


def _image(value: Any, base: Path | None, where: str) -> tuple[str | None, bytes | None]:
    """A row's image as (resolved path, bytes): parquet stores ``{'bytes', 'path'}``, JSONL a path."""
    if value is None:
        return None, None
    if isinstance(value, dict):
        if value.get("bytes"):
            return None, bytes(value["bytes"])
        value = value.get("path")
        if not value:
            raise DataError(f"{where}: field 'image' has neither bytes nor a path; fix or remove the row")
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field 'image' must be a path or {{'bytes': ...}}, got {type(value).__name__}"
        )
    path = Path(value)
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise DataError(f"{where}: image file not found: {path}; fix the path or restore the image folder")
    return str(path), None


# ------------------------------------------------------------------------------------------------
# Loaders


def load_vlrewardbench(
    source: str | Path = HF_IDS["vlrewardbench"], split: str = "test"
) -> list[PreferencePair]:
    """VL-RewardBench rows (parquet, JSONL + image folder, or the hub) as pair items.

    Categories follow the official scorer's id-prefix mapping (POVID ``hallucination_pair-*`` ->
    hallucination); a row with its own ``category`` field (headvec's toy-world export) keeps it.
    """
    label, base, rows = _raw_rows(source, "vlrewardbench", split)
    items = []
    for number, obj in rows:
        where = f"{label} row {number}"
        row = _validate(VLRewardBenchRow, obj, where)
        image_path, image_bytes = _image(row.image, base, where)
        source_name = vlrb_source(row.id)
        items.append(
            PreferencePair(
                benchmark="vlrewardbench",
                uid=item_uid(row.id, row.query, row.response),
                id=row.id,
                prompt=row.query,
                responses=(row.response[0], row.response[1]),
                better=row.human_ranking.index(0),
                category=row.category or VLRB_CATEGORY_BY_SOURCE[source_name],
                subset=source_name,
                image_path=image_path,
                image_bytes=image_bytes,
            )
        )
    return _deduplicated(items, label)


def mrb_category(category: str, item_id: str) -> str:
    """Multimodal RewardBench's reporting category (its scorer splits safety and reasoning by id)."""
    if category == "safety":
        return "safety/bias" if item_id.lower().startswith("pairs") else "safety/toxicity"
    if category == "reasoning":
        return "reasoning/math" if item_id.lower().startswith("math") else "reasoning/coding"
    return category


def load_multimodal_rewardbench(source: str | Path, split: str = "test") -> list[PreferencePair]:
    """Multimodal RewardBench's ``all_data.json`` (or JSONL in its fields); images relative to the file."""
    label, base, rows = _raw_rows(source, "multimodal-rewardbench", split)
    items = []
    for number, obj in rows:
        where = f"{label} row {number}"
        if "Category" not in obj and isinstance(obj.get("Meta"), dict) and "Category" in obj["Meta"]:
            obj = {**obj, "Category": obj["Meta"]["Category"]}
        row = _validate(MultimodalRewardBenchRow, obj, where)
        image_path, image_bytes = _image(row.Image, base, where)
        responses = (row.Output1, row.Output2)
        items.append(
            PreferencePair(
                benchmark="multimodal-rewardbench",
                uid=item_uid(row.ID, row.Text, responses),
                id=row.ID,
                prompt=row.Text,
                responses=responses,
                better=0 if row.Better == "Output1" else 1,
                category=mrb_category(row.Category, row.ID),
                subset=row.Category,
                image_path=image_path,
                image_bytes=image_bytes,
            )
        )
    return _deduplicated(items, label)


def load_rewardbench(
    source: str | Path = HF_IDS["rewardbench"], split: str = "filtered"
) -> list[PreferencePair]:
    """RewardBench (text only): ``prompt, chosen, rejected, subset, id``; chosen is stored first."""
    label, _, rows = _raw_rows(source, "rewardbench", split)
    items = []
    for number, obj in rows:
        where = f"{label} row {number}"
        row = _validate(RewardBenchRow, obj, where)
        if row.subset not in REWARDBENCH_SECTION_BY_SUBSET:
            raise DataError(
                f"{where}: field 'subset': unknown RewardBench subset {row.subset!r}; expected one of "
                f"{', '.join(sorted(REWARDBENCH_SECTION_BY_SUBSET))}"
            )
        responses = (row.chosen, row.rejected)
        items.append(
            PreferencePair(
                benchmark="rewardbench",
                uid=item_uid(str(row.id), row.prompt, responses),
                id=str(row.id),
                prompt=row.prompt,
                responses=responses,
                better=0,
                category=REWARDBENCH_SECTION_BY_SUBSET[row.subset],
                subset=row.subset,
            )
        )
    return _deduplicated(items, label)


def load_rewardbench_prior_sets(
    source: str | Path = HF_IDS["rewardbench-prior"], subsets: tuple[str, ...] = REWARDBENCH_PRIOR_SUBSETS
) -> list[PreferencePair]:
    """RewardBench's Prior Sets from ``allenai/preference-test-sets`` (a hub id, or a folder holding
    ``data/<subset>-*.parquet`` or ``<subset>.jsonl``): one split per subset, chosen stored first. A
    conversation's earlier turns become the prompt and its last turn the response."""
    items = []
    for subset in subsets:
        label, _, rows = _raw_rows(source, "rewardbench-prior", subset)
        for number, obj in rows:
            row = _validate(PriorSetRow, obj, f"{label} row {number}")
            chosen, rejected = row.chosen, row.rejected
            prompt = row.prompt or ""
            if isinstance(chosen, list):
                prompt = row.prompt or _conversation_text(chosen[:-1])
                chosen = str(chosen[-1]["content"])
            if isinstance(rejected, list):
                rejected = str(rejected[-1]["content"])
            item_id = f"{subset}-{row.id if row.id is not None else number}"
            responses = (chosen, rejected)
            items.append(
                PreferencePair(
                    benchmark="rewardbench",
                    uid=item_uid(item_id, prompt, responses),
                    id=item_id,
                    prompt=prompt,
                    responses=responses,
                    better=0,
                    category=REWARDBENCH_PRIOR_SECTION,
                    subset=subset,
                )
            )
    return _deduplicated(items, str(source))


def _deduplicated(items: list[PreferencePair], label: str) -> list[PreferencePair]:
    """Drop exact repeats (same uid), as the official scorer's dict does; an empty file is an error."""
    if not items:
        raise DataError(f"{label} holds no rows")
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.uid not in seen:
            seen.add(item.uid)
            unique.append(item)
    return unique


LOADERS: dict[str, Callable[..., list[PreferencePair]]] = {
    "vlrewardbench": load_vlrewardbench,
    "multimodal-rewardbench": load_multimodal_rewardbench,
    "rewardbench": load_rewardbench,
}


def load_benchmark(
    benchmark: str,
    source: str | Path | None = None,
    split: str | None = None,
    prior_sets: str | Path | None = None,
) -> list[PreferencePair]:
    """Load a benchmark by name from ``source`` (default: its hub id, which needs the network).
    ``prior_sets``: RewardBench only, add its Prior Sets from this source (see
    :func:`load_rewardbench_prior_sets`) so the score is the official weighted one."""
    if prior_sets is not None and benchmark != "rewardbench":
        raise DataError(f"--prior-sets belongs to RewardBench only, not {benchmark}")
    if benchmark not in LOADERS:
        raise DataError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    if source is None:
        if benchmark not in HF_IDS:
            raise DataError(
                f"{benchmark} has no hub copy; download it (facebookresearch/multimodal_rewardbench, "
                "scripts/0_download_data.py) and pass --data data/all_data.json"
            )
        source = HF_IDS[benchmark]
    items = LOADERS[benchmark](source, split or DEFAULT_SPLITS[benchmark])
    return items + load_rewardbench_prior_sets(prior_sets) if prior_sets is not None else items
