"""Turn a ``--rm`` spec into a reward model, through registries other modules can add to.

Specs (the text before the first ``:`` picks the loader in :data:`RM_LOADERS`):

- ``judge:MODEL``: a headvec-loaded model (hub id, directory or alias such as ``toy``) as a generative
  judge with the benchmark's published prompt (or ``--template``);
- ``judge-score:MODEL``: the same model's yes/no judge read as a score, log P(yes) - log P(no), with a
  pointwise template (``--template toyworld``);
- ``openai:URL:MODEL``: a judge behind an OpenAI-compatible endpoint, e.g.
  ``openai:http://127.0.0.1:8000/v1:toy``;
- ``artifact:DIR``: a saved reward model (``headvec.methods.artifacts.save_artifact``); the ``kind`` in its
  ``headvec_config.json`` picks the loader in :data:`ARTIFACT_LOADERS`, which reward-model modules fill
  with :func:`register_artifact_loader`;
- ``python:package.module:factory``: ``factory(options)`` returns any object with the RewardModel protocol;
- ``baseline:length`` / ``baseline:first``: model-free floors (:mod:`headvec.harness.baselines`).

A spec is a string so that Ray workers can rebuild the same reward model in their own process.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headvec.errors import HeadvecError
from headvec.rewards.protocol import RewardModel


@dataclass
class RMOptions:
    """Settings for building a reward model; JSON-able, recorded in the run manifest."""

    template: str = "vlrewardbench"
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int | None = None
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"
    timeout: float = 60.0
    retries: int = 3
    concurrency: int = 8
    api_key_env: str = "OPENAI_API_KEY"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RMLoader = Callable[[str, RMOptions], RewardModel]
ArtifactLoader = Callable[[Path, dict[str, Any], RMOptions], RewardModel]
RM_LOADERS: dict[str, RMLoader] = {}
ARTIFACT_LOADERS: dict[str, ArtifactLoader] = {}


def register_rm_loader(prefix: str, loader: RMLoader) -> None:
    """Make ``PREFIX:REST`` specs build reward models with ``loader(REST, options)``."""
    RM_LOADERS[prefix] = loader


def register_artifact_loader(kind: str, loader: ArtifactLoader) -> None:
    """Make ``artifact:DIR`` build a reward model when DIR's headvec_config.json has this ``kind``."""
    ARTIFACT_LOADERS[kind] = loader


def build_reward_model(spec: str, options: RMOptions | None = None) -> RewardModel:
    """The reward model a spec names (see the module docstring); unknown specs are one-line errors."""
    options = options or RMOptions()
    prefix, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise HeadvecError(
            f"--rm {spec!r} is not PREFIX:VALUE; use one of "
            f"{', '.join(p + ':...' for p in sorted(RM_LOADERS))}"
        )
    if prefix not in RM_LOADERS:
        raise HeadvecError(
            f"--rm {spec!r}: unknown kind {prefix!r}; use one of {', '.join(sorted(RM_LOADERS))}"
        )
    return RM_LOADERS[prefix](rest, options)


def _judge(model: str, options: RMOptions) -> RewardModel:
    from headvec.harness.judge import LocalJudge, get_template
    from headvec.models import load

    loaded = load(model, dtype=options.dtype, device=options.device)
    return LocalJudge(
        loaded,
        get_template(options.template),
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        batch_size=options.batch_size,
    )


def _judge_score(model: str, options: RMOptions) -> RewardModel:
    from headvec.harness.judge import YesNoScoreJudge, get_template
    from headvec.models import load

    loaded = load(model, dtype=options.dtype, device=options.device)
    return YesNoScoreJudge(loaded, get_template(options.template), batch_size=options.batch_size)


def _openai(rest: str, options: RMOptions) -> RewardModel:
    import os

    from headvec.harness.judge import OpenAIJudge, get_template

    url, sep, model = rest.rpartition(":")
    if not sep or not url.startswith(("http://", "https://")) or not model or model.startswith("//"):
        raise HeadvecError(
            f"--rm openai:{rest!r} must be openai:URL:MODEL, e.g. openai:http://127.0.0.1:8000/v1:toy"
        )
    return OpenAIJudge(
        url,
        model,
        get_template(options.template),
        api_key=os.environ.get(options.api_key_env),
        timeout=options.timeout,
        max_retries=options.retries,
        concurrency=options.concurrency,
        temperature=options.temperature,
        top_p=options.top_p,
        max_tokens=options.max_new_tokens or 2048,
    )


def _artifact(directory: str, options: RMOptions) -> RewardModel:
    from headvec.methods.artifacts import CONFIG_NAME

    path = Path(directory)
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise HeadvecError(f"--rm artifact:{directory}: no {CONFIG_NAME} there; save the reward model first")
    config = json.loads(config_path.read_text())
    kind = config.get("kind")
    _import_artifact_plugins()
    if kind not in ARTIFACT_LOADERS:
        known = ", ".join(sorted(ARTIFACT_LOADERS)) or "none registered"
        raise HeadvecError(
            f"--rm artifact:{directory} holds a {kind!r} artifact and no loader is registered for it "
            f"(known: {known}); register one with headvec.harness.register_artifact_loader"
        )
    return ARTIFACT_LOADERS[kind](path, config, options)


def _import_artifact_plugins() -> None:
    """Give reward-model modules a chance to register their loaders (they may not exist yet)."""
    for module in ("headvec.rewards.loading",):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def _python(target: str, options: RMOptions) -> RewardModel:
    module_name, sep, attr = target.partition(":")
    if not sep:
        raise HeadvecError(f"--rm python:{target!r} must be python:package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise HeadvecError(f"--rm python:{target}: cannot import it ({exc}); check the module path") from None
    model = factory(options)
    if not isinstance(model, RewardModel):
        raise HeadvecError(f"--rm python:{target} returned {type(model).__name__}, which lacks score/compare")
    return model


register_rm_loader("judge", _judge)
register_rm_loader("judge-score", _judge_score)
register_rm_loader("openai", _openai)
register_rm_loader("artifact", _artifact)
register_rm_loader("python", _python)
import headvec.harness.baselines  # noqa: E402, F401  (registers baseline:length and baseline:first)
