"""Internal consistency: weight sampled reasoning paths by how much their layers agree with the answer.

Xie et al., "Calibrating Reasoning in Language Models with Internal Consistency" (NeurIPS 2024; official
code ``zhxieml/internal-consistency``, ``extract.py`` and ``eval_sc.py``). For each question, N reasoning
paths are sampled; each path loses its last sentence (the one that states the answer), the answer trigger
(``so the answer is``) is appended, and one forward pass reads the distribution over the label tokens at
every layer through the logit lens (the last layer is the model's own logits). Each layer's probability
of each label is thresholded at that label's dataset quantile ``(K-1)/K`` (the de-biasing that makes
layers comparable); the prediction is the calibrated argmax at the last layer, and the internal
consistency (IC) of a path is the number of layers whose calibrated score agrees with it. Voting with IC
weights is compared with plain self-consistency (weight 1) and with confidence weights.

Where this differs from the official code, and why:

- label token ids come from the tokenizer (each label alone and with a leading space, every variant that
  is one token), never hard-coded; a label's variants are pooled with logsumexp (their probability
  mass), where the official code adds raw logits;
- votes are cast for answers (labels), which is the official vote over correctness indicators for two
  labels and the sensible generalisation for more;
- the confidence weight is ``sum_k |p_k - q_k|`` at the last layer with each label's own quantile (the
  official code, binary only, uses one threshold for both labels);
- the lens reads the outputs of the decoder layers (``L`` distributions, the last one the logits), not the
  embedding output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from headvec.errors import DataError, HeadvecError
from headvec.stats import bootstrap_ci

VOTE_METHODS = ("self_consistency", "confidence", "internal_consistency", "self_consistency_stated")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class ICQuestion:
    """One question: its prompt (ready to generate from), the label set the lens reads, the gold label.

    Questions with the same ``labels`` are calibrated together (one dataset quantile per layer and label).
    """

    prompt: Any  # headvec.models.Prompt
    labels: tuple[str, ...]
    gold: str
    kind: str = ""  # a free tag for per-kind tables (e.g. the toy world's qtype)

    def __post_init__(self) -> None:
        if self.gold not in self.labels:
            raise DataError(f"gold answer {self.gold!r} is not one of the labels {self.labels}")


# ------------------------------------------------------------------------------------------- tokens


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> list[list[int]]:
    """For each label, the ids of its single-token spellings: the label alone and with a leading space.

    A label that no spelling makes into one token is an error naming it (the lens reads one position).
    """
    ids: list[list[int]] = []
    for label in labels:
        found: list[int] = []
        for spelling in (label, f" {label}"):
            encoded = tokenizer(spelling, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1 and encoded[0] not in found and encoded[0] != tokenizer.unk_token_id:
                found.append(int(encoded[0]))
        if not found:
            raise HeadvecError(
                f"label {label!r} is not a single token in this tokenizer's vocabulary (tried {label!r} and "
                f"{' ' + label!r}); choose labels that are, e.g. one word"
            )
        ids.append(found)
    shared = set.intersection(*(set(i) for i in ids)) if len(ids) > 1 else set()
    if shared or len({tuple(i) for i in ids}) < len(ids):
        raise HeadvecError(f"labels {list(labels)} share token ids; give distinct labels")
    return ids


def truncate_path(path: str, trigger: str) -> str:
    """Drop a path's last sentence (where it states its answer) and append the answer trigger.

    ``"a . b . so the answer is two ."`` -> ``"a . b . so the answer is"``; a path of one sentence keeps
    only the trigger.
    """
    sentences = [s for s in _SENTENCE_END.split(path.strip()) if s]
    kept = " ".join(sentences[:-1])
    return f"{kept} {trigger}".strip()


def stated_answer(path: str, trigger: str, labels: Sequence[str]) -> str | None:
    """The label a path states after its last answer trigger (``... so the answer is two .`` -> ``two``),
    or None when it states none of the labels: what plain self-consistency votes on."""
    _, found, tail = path.rpartition(trigger)
    if not found:
        return None
    answer = re.split(r"[.!?\n]", tail, maxsplit=1)[0].strip()
    return answer if answer in labels else None


# ------------------------------------------------------------------------------------------ sampling


def sample_paths(
    engine: Any,
    questions: Sequence[ICQuestion],
    n_paths: int,
    *,
    max_new_tokens: int = 80,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: int = 64,
    cache: str | Path | None = None,
    progress: bool = True,
) -> list[list[str]]:
    """``n_paths`` sampled reasoning paths per question (official defaults: T 0.7, top-p 0.95).

    Each batch of questions is seeded from ``seed`` and its first question's index, so a run that resumes
    from ``cache`` (a JSONL of ``{"index", "paths"}`` rows, written batch by batch) draws the same paths.
    """
    import hashlib

    import torch

    done: dict[int, list[str]] = {}
    cache_path = Path(cache) if cache is not None else None
    settings = {
        "n_paths": n_paths,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "batch_size": batch_size,
        "prompts": hashlib.sha256("\n".join(q.prompt.text for q in questions).encode()).hexdigest()[:16],
    }
    if cache_path is not None:
        settings_path = cache_path.with_suffix(".settings.json")
        if settings_path.is_file() and json.loads(settings_path.read_text()) != settings:
            raise DataError(
                f"{cache_path} holds paths sampled with other settings or questions ({settings_path}); "
                "delete it or use another cache directory"
            )
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        settings_path.write_text(json.dumps(settings))
    if cache_path is not None and cache_path.is_file():
        for number, line in enumerate(cache_path.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
                done[int(row["index"])] = list(row["paths"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise DataError(f"{cache_path} line {number} is not a paths row; delete the file") from None
        if any(len(paths) != n_paths for paths in done.values()):
            raise DataError(f"{cache_path} holds paths for another --paths; delete it or use another --out")
    per_batch = max(1, batch_size // n_paths)
    todo = [i for i in range(len(questions)) if i not in done]
    chunks = [todo[start : start + per_batch] for start in range(0, len(todo), per_batch)]
    for chunk in tqdm(chunks, desc="sample paths", disable=not progress):
        torch.manual_seed(seed * 1_000_003 + chunk[0])
        prompts = [questions[i].prompt for i in chunk for _ in range(n_paths)]
        texts = engine.generate(
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=len(prompts),
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
        )
        rows = []
        for k, index in enumerate(chunk):
            done[index] = [t.strip() for t in texts[k * n_paths : (k + 1) * n_paths]]
            rows.append(json.dumps({"index": index, "paths": done[index]}))
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            with cache_path.open("a") as handle:
                handle.write("\n".join(rows) + "\n")
    return [done[i] for i in range(len(questions))]


# --------------------------------------------------------------------------------------- the reading


def read_label_probs(
    engine: Any,
    prompts: Sequence[Any],
    label_ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 32,
    progress: bool = True,
    tolerance: float | None = None,
) -> np.ndarray:
    """The distribution over the labels at the last position, at every layer, one forward pass per batch.

    Returns ``[prompts, layers, labels]``: softmax over the labels of the logit lens at each decoder
    layer's output; the last layer is the model's own logits. The first batch checks that the lens at the
    last layer reproduces those logits (an unknown head would otherwise give silently wrong layers),
    within ``tolerance`` of the largest logit (default 1e-3 in float32, 3e-2 in half precision).
    """
    import torch

    if tolerance is None:
        dtype = next(engine.model.parameters()).dtype
        tolerance = 1e-3 if dtype == torch.float32 else 3e-2

    flat = [token for ids in label_ids for token in ids]
    owner = [k for k, ids in enumerate(label_ids) for _ in ids]
    n_labels = len(label_ids)
    out: list[np.ndarray] = []
    batches = [list(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    for number, batch in enumerate(tqdm(batches, desc="logit lens", disable=not progress)):
        capture = engine.capture_batch(engine.loaded.encode(batch), positions=-1, residual=True, logits=True)
        lens = engine.logit_lens(capture.residual, flat)  # [batch, layers, tokens]
        final = capture.logits[:, flat]
        scale = 1.0 + float(final.abs().max())
        if number == 0 and float((lens[:, -1] - final).abs().max()) > tolerance * scale:
            gap = float((lens[:, -1] - final).abs().max())
            raise HeadvecError(
                f"the logit lens at the last layer differs from {engine.loaded.name_or_path}'s logits by "
                f"{gap:.3g}: its final norm or head is not the one found; fix it with "
                "headvec.arch.register_lens"
            )
        lens[:, -1] = final
        pooled = torch.full((*lens.shape[:2], n_labels), -torch.inf)
        for k in range(n_labels):
            columns = [j for j, o in enumerate(owner) if o == k]
            pooled[..., k] = torch.logsumexp(lens[..., columns], dim=-1)
        out.append(pooled.softmax(dim=-1).numpy())
    return np.concatenate(out).astype(np.float64)


# ----------------------------------------------------------------------------------- the statistics


def calibrate(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer, per-label quantile calibration over the dataset.

    ``probs`` is ``[paths, layers, labels]``; each (layer, label) is thresholded at its ``(K-1)/K``
    quantile over the paths: score 1 above it, ``1/K`` at it, 0 below. Returns the scores and the
    quantiles ``[layers, labels]``.
    """
    n_labels = probs.shape[-1]
    quantiles = np.quantile(probs, (n_labels - 1) / n_labels, axis=0)
    scores = (probs > quantiles).astype(float) + (probs == quantiles) / n_labels
    return scores, quantiles


def internal_consistency(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each path's prediction (calibrated argmax at the last layer, first label on ties) and its IC:
    the sum over layers of the calibrated score of that prediction."""
    prediction = scores[:, -1].argmax(axis=-1)
    ic = scores[np.arange(len(scores)), :, prediction].sum(axis=1)
    return prediction, ic


def confidence(probs: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """The confidence baseline's weight: how far the last layer's label probabilities sit from their
    quantiles, ``sum_k |p_k - q_k|``."""
    return np.abs(probs[:, -1] - quantiles[-1]).sum(axis=-1)


def weighted_vote(answers: Sequence[str], weights: Sequence[float], rng: np.random.Generator) -> str:
    """The answer with the largest total weight; ties broken at random (seeded ``rng``)."""
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, weights, strict=True):
        totals[answer] = totals.get(answer, 0.0) + float(weight)
    best = max(totals.values())
    ties = sorted(a for a, total in totals.items() if total == best)
    return ties[0] if len(ties) == 1 else ties[int(rng.integers(len(ties)))]


def vote_accuracy(
    answers: Sequence[Sequence[str]],
    weights: dict[str, np.ndarray],
    gold: Sequence[str],
    *,
    n_permutations: int = 100,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Accuracy of each weighted vote over the first 1..N paths, averaged over seeded permutations.

    ``answers`` is ``[questions][N]``; ``weights[name]`` is ``[questions, N]``. Every method sees the same
    permutations. Returns ``{name: [N, questions]}``: each question's correctness with n votes, averaged
    over the permutations (the mean over questions is the curve; its bootstrap is over questions).
    """
    n_questions, n_paths = len(answers), len(answers[0])
    rng = np.random.default_rng(seed)
    tally = {name: np.zeros((n_paths, n_questions)) for name in weights}
    for _ in range(n_permutations):
        for q in range(n_questions):
            order = rng.permutation(n_paths)
            ordered = [answers[q][i] for i in order]
            for name, w in weights.items():
                ordered_w = w[q][order]
                for n in range(1, n_paths + 1):
                    tally[name][n - 1, q] += weighted_vote(ordered[:n], ordered_w[:n], rng) == gold[q]
    return {name: t / n_permutations for name, t in tally.items()}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling positives from negatives (ties count half);
    NaN when one class is missing."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def auroc_ci(
    scores: np.ndarray, positive: np.ndarray, groups: np.ndarray, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC and a 95% bootstrap interval that resamples whole questions (``groups``): the paths of one
    question are not independent."""
    scores, positive, groups = np.asarray(scores, float), np.asarray(positive, bool), np.asarray(groups)
    unique = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in unique]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        picked = np.concatenate([members[i] for i in rng.integers(0, len(unique), len(unique))])
        value = auroc(scores[picked], positive[picked])
        if not np.isnan(value):
            values.append(value)
    low, high = np.quantile(values, [0.025, 0.975]) if values else (float("nan"), float("nan"))
    return auroc(scores, positive), float(low), float(high)


# --------------------------------------------------------------------------------------- end to end


@dataclass
class ICResult:
    """Everything one evaluation measured (``to_dict`` is the JSON the CLI writes)."""

    n_questions: int
    n_paths: int
    n_layers: int
    curves: dict[str, list[float]]  # method -> accuracy with 1..N votes
    at_n: dict[str, tuple[float, float, float]]  # method -> (mean, low, high) with N votes
    path_accuracy: tuple[float, float, float]  # one path's calibrated prediction
    raw_path_accuracy: tuple[float, float, float]  # one path's uncalibrated last-layer argmax
    stated_path_accuracy: tuple[float, float, float]  # the answer the path wrote itself
    no_label_above_quantile: float  # share of paths where no label clears its quantile at the last layer
    auroc_ic: tuple[float, float, float]
    auroc_confidence: tuple[float, float, float]
    per_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    ic_by_layer_agreement: list[float] = field(default_factory=list)  # share of paths agreeing, per layer

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_internal_consistency(
    loaded: Any,
    questions: Sequence[ICQuestion],
    *,
    trigger: str,
    n_paths: int = 10,
    max_new_tokens: int = 80,
    temperature: float = 0.7,
    top_p: float = 0.95,
    n_permutations: int = 100,
    seed: int = 0,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    paths: Sequence[Sequence[str]] | None = None,
) -> ICResult:
    """Sample, read every layer, calibrate, and compare the three votes and the AUROC of IC.

    ``trigger`` is the answer cue appended after the truncated path (``"so the answer is"``). ``paths``
    skips sampling (given paths, ``[questions][n_paths]``). ``cache_dir`` keeps the sampled paths so an
    interrupted run resumes.
    """
    from headvec.engine import HeadEngine
    from headvec.models import Prompt

    if not questions:
        raise DataError("no questions to evaluate")
    engine = HeadEngine(loaded)
    label_ids = {q.labels: None for q in questions}
    for labels in label_ids:  # before sampling: a label that is not one token fails fast
        label_ids[labels] = label_token_ids(loaded.tokenizer, labels)
    if paths is None:
        cache = Path(cache_dir) / "paths.jsonl" if cache_dir is not None else None
        paths = sample_paths(
            engine,
            questions,
            n_paths,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            cache=cache,
            progress=progress,
        )
    n_paths = len(paths[0])
    n_layers = loaded.arch.n_layers
    path_answer = [[""] * n_paths for _ in questions]
    path_ic = np.zeros((len(questions), n_paths))
    path_conf = np.zeros((len(questions), n_paths))
    raw_correct = np.zeros((len(questions), n_paths), bool)
    stated = [
        [stated_answer(p, trigger, q.labels) or "(none)" for p in ps]
        for q, ps in zip(questions, paths, strict=True)
    ]
    below = 0
    agreement = np.zeros(n_layers)
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, question in enumerate(questions):
        groups.setdefault(question.labels, []).append(index)
    for labels, members in groups.items():
        ids = label_ids[labels]
        prompts = []
        for q in members:
            base = questions[q].prompt
            for path in paths[q]:
                text = truncate_path(path, trigger)
                joined = base.text + ("" if base.text.endswith((" ", "\n")) else " ") + text
                prompts.append(Prompt(text=joined, images=base.images, templated=base.templated))
        probs = read_label_probs(engine, prompts, ids, batch_size=batch_size, progress=progress)
        scores, quantiles = calibrate(probs)
        prediction, ic = internal_consistency(scores)
        conf = confidence(probs, quantiles)
        raw = probs[:, -1].argmax(axis=-1)
        below += int((scores[:, -1].max(axis=-1) == 0).sum())
        agreement += (scores.argmax(axis=-1) == prediction[:, None]).sum(axis=0)
        for row, (q, k) in enumerate((q, k) for q in members for k in range(n_paths)):
            path_answer[q][k] = labels[prediction[row]]
            path_ic[q, k], path_conf[q, k] = ic[row], conf[row]
            raw_correct[q, k] = labels[raw[row]] == questions[q].gold
    gold = [q.gold for q in questions]
    correct = np.array([[a == g for a in row] for row, g in zip(path_answer, gold, strict=True)])
    weights = {
        "self_consistency": np.ones_like(path_ic),
        "confidence": path_conf,
        "internal_consistency": path_ic,
    }
    per_question = vote_accuracy(path_answer, weights, gold, n_permutations=n_permutations, seed=seed)
    # the usual self-consistency: a vote over the answers the paths wrote (no lens, no calibration)
    per_question |= vote_accuracy(
        stated,
        {"self_consistency_stated": np.ones_like(path_ic)},
        gold,
        n_permutations=n_permutations,
        seed=seed,
    )
    stated_correct = np.array([[a == g for a in row] for row, g in zip(stated, gold, strict=True)])
    question_of = np.repeat(np.arange(len(questions)), n_paths)
    per_kind: dict[str, dict[str, float]] = {}
    for kind in sorted({q.kind for q in questions}):
        chosen = [i for i, q in enumerate(questions) if q.kind == kind]
        per_kind[kind] = {
            "questions": len(chosen),
            "path_accuracy": float(correct[chosen].mean()),
            **{f"{name}@{n_paths}": float(v[-1, chosen].mean()) for name, v in per_question.items()},
        }
    return ICResult(
        n_questions=len(questions),
        n_paths=n_paths,
        n_layers=n_layers,
        curves={name: v.mean(axis=1).tolist() for name, v in per_question.items()},
        at_n={name: bootstrap_ci(v[-1]) for name, v in per_question.items()},
        path_accuracy=bootstrap_ci(correct.mean(axis=1)),
        raw_path_accuracy=bootstrap_ci(raw_correct.mean(axis=1)),
        stated_path_accuracy=bootstrap_ci(stated_correct.mean(axis=1)),
        no_label_above_quantile=below / correct.size,
        auroc_ic=auroc_ci(path_ic.ravel(), correct.ravel(), question_of, seed=seed),
        auroc_confidence=auroc_ci(path_conf.ravel(), correct.ravel(), question_of, seed=seed),
        per_kind=per_kind,
        ic_by_layer_agreement=(agreement / correct.size).tolist(),
    )
