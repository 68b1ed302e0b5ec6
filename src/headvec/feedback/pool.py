"""The response pool: answers to image instructions from several generators, four per instruction.

As in VLFeedback, each instruction gets the responses of ``k`` (4) generators drawn from the pool with a
seeded RNG (seeded per instruction id, so a resumed run draws the same ones), and each row records which
models answered. A generator is anything with ``name`` and ``generate(prompts, images, ids)``:

- :class:`LocalGenerator`: a headvec-loaded model through ``HeadEngine.generate`` with its own decoding
  settings, optionally under a :class:`~headvec.engine.HeadPatch` (a task vector, an ablation), so one
  checkpoint yields several behaviours;
- :class:`OpenAIGenerator`: any OpenAI-compatible chat endpoint.

:func:`build_pool` writes rows (VLFeedback schema, not yet annotated) in chunks and skips ids already in
the output, so a generator that fails mid-run stops with one line and the rerun continues where it
stopped.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from headvec.errors import HeadvecError
from headvec.feedback.schema import Completion, FeedbackRow, ImageStore, append_rows, done_ids


@dataclass(frozen=True)
class Instruction:
    """An image instruction: ``img_path`` relative to the image root, ``meta`` carried into the row."""

    id: str
    prompt: str
    img_path: str | None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], images: Sequence[Any], ids: Sequence[str]) -> list[str]: ...


def stable_seed(*parts: object) -> int:
    """A seed from text, the same in every process (``hash()`` is salted per process)."""
    text = "|".join(map(str, parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


class LocalGenerator:
    """A local model answering through ``HeadEngine.generate``: greedy (``temperature=0``) or sampled
    (seeded per batch from ``seed`` and the batch's first id), optionally under a head ``patch``."""

    def __init__(
        self,
        loaded: Any,
        name: str,
        *,
        max_new_tokens: int = 40,
        temperature: float = 0.0,
        top_p: float = 1.0,
        patch: Any = None,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        from headvec.engine import HeadEngine

        self.loaded, self.name, self.engine = loaded, name, HeadEngine(loaded)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.patch, self.batch_size, self.seed = patch, batch_size, seed

    def generate(self, prompts: Sequence[str], images: Sequence[Any], ids: Sequence[str]) -> list[str]:
        import contextlib

        import torch

        built = [
            self.loaded.build_prompt(p, [im] if im is not None and self.loaded.is_multimodal else [])
            for p, im in zip(prompts, images, strict=True)
        ]
        sampling: dict[str, Any] = {}
        if self.temperature > 0:
            sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        outputs: list[str] = []
        for start in range(0, len(built), self.batch_size):
            torch.manual_seed(stable_seed(self.seed, self.name, ids[start]))
            patched = self.engine.patch(self.patch) if self.patch is not None else contextlib.nullcontext()
            with patched:
                outputs += self.engine.generate(
                    built[start : start + self.batch_size],
                    self.max_new_tokens,
                    batch_size=self.batch_size,
                    **sampling,
                )
        return [o.strip() for o in outputs]


class OpenAIGenerator:
    """Responses from an OpenAI-compatible chat endpoint (through ``OpenAIJudge``'s client: timeouts,
    retries, backoff)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        name: str | None = None,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 256,
        api_key: str | None = None,
        seed: int = 0,
    ) -> None:
        from headvec.rewards.judges import OpenAIJudge, PairwiseTemplate

        template = PairwiseTemplate("plain", build=lambda *a: "", parse=lambda s: None)
        self.client = OpenAIJudge(
            base_url,
            model,
            template,
            api_key=api_key,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
        )
        self.name, self.seed = name or model, seed

    def generate(self, prompts: Sequence[str], images: Sequence[Any], ids: Sequence[str]) -> list[str]:
        return [
            self.client.chat(p, im, stable_seed(self.seed, i)).strip()
            for p, im, i in zip(prompts, images, ids, strict=True)
        ]


def draw_generators(instruction_id: str, names: Sequence[str], k: int, seed: int) -> list[str]:
    """The ``k`` generators answering one instruction: a seeded draw without replacement, in drawn order."""
    if k > len(names):
        raise HeadvecError(
            f"cannot draw {k} responses per instruction from a pool of {len(names)} generators"
        )
    return random.Random(stable_seed(seed, instruction_id)).sample(list(names), k)


@dataclass
class PoolStats:
    written: int = 0
    skipped: int = 0


def build_pool(
    instructions: Sequence[Instruction],
    generators: Sequence[Generator],
    out: str | Path,
    *,
    images: str | Path,
    k: int = 4,
    seed: int = 0,
    chunk: int = 64,
    progress: bool = True,
) -> PoolStats:
    """Answer every instruction with ``k`` drawn generators and append the rows to ``out`` chunk by chunk;
    ids already in ``out`` are skipped, so a failed run resumes where it stopped."""
    names = [g.name for g in generators]
    if len(set(names)) != len(names):
        raise HeadvecError(f"generator names must differ, got {names}")
    by_name = {g.name: g for g in generators}
    store = ImageStore(images)
    done = done_ids(out)
    todo = [ins for ins in instructions if ins.id not in done]
    stats = PoolStats(skipped=len(instructions) - len(todo))
    with tqdm(total=len(todo), desc="response pool", disable=not progress) as bar:
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            drawn = {ins.id: draw_generators(ins.id, names, k, seed) for ins in batch}
            pictures = {ins.id: store.open(ins.img_path, ins.id) if ins.img_path else None for ins in batch}
            answers: dict[tuple[str, str], str] = {}
            for name in names:
                mine = [ins for ins in batch if name in drawn[ins.id]]
                if not mine:
                    continue
                try:
                    texts = by_name[name].generate(
                        [i.prompt for i in mine], [pictures[i.id] for i in mine], [i.id for i in mine]
                    )
                except HeadvecError:
                    raise
                except Exception as exc:
                    raise HeadvecError(
                        f"generator {name!r} failed on instructions {mine[0].id}..{mine[-1].id} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
                        f"{stats.written + stats.skipped} rows are saved in {out}, rerun to resume"
                    ) from exc
                if len(texts) != len(mine):
                    raise HeadvecError(
                        f"generator {name!r} returned {len(texts)} answers for {len(mine)} prompts"
                    )
                answers |= {(name, ins.id): text for ins, text in zip(mine, texts, strict=True)}
            rows = [
                FeedbackRow(
                    id=ins.id,
                    prompt=ins.prompt,
                    models=drawn[ins.id],
                    completions=[Completion(model=m, response=answers[(m, ins.id)]) for m in drawn[ins.id]],
                    img_path=ins.img_path,
                    meta=ins.meta,
                )
                for ins in batch
            ]
            append_rows(out, rows)
            stats.written += len(rows)
            bar.update(len(rows))
    return stats
