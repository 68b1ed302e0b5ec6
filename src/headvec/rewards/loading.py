"""One registry that turns a reward-model spec (``PREFIX:VALUE``) or a saved directory into a model.

Specs (the text before the first ``:`` picks the loader in :data:`RM_LOADERS`):

- ``judge:MODEL``: a headvec-loaded model (hub id, directory or alias such as ``toy``) as a generative
  judge with a judge template (``RMOptions.template``);
- ``judge-score:MODEL``: the same model's yes/no verdict read as a score, log P(yes) - log P(no)
  (:class:`~headvec.rewards.baselines.TokenProbabilityJudge`), with a yes/no template;
- ``openai:URL:MODEL``: a judge behind an OpenAI-compatible endpoint, e.g.
  ``openai:http://127.0.0.1:8000/v1:toy``;
- ``artifact:DIR``: a saved reward model; the ``kind`` in its ``headvec_config.json`` picks the loader
  in :data:`ARTIFACT_LOADERS` (a directory with a Hugging Face ``config.json`` instead is a
  sequence-classification reward model);
- ``python:package.module:factory``: ``factory(options)`` returns any Scorer or Judge;
- ``baseline:length`` / ``baseline:first``: model-free floors (:mod:`headvec.rewards.simple`).
- ``implicit:POLICY,REFERENCE[,sum|reweighted|mean]``: an aligned model's implicit reward
  ``log pi(y|x) - log pi_ref(y|x)`` (:mod:`headvec.rewards.implicit`).

A spec is a string so that Ray workers can rebuild the same reward model in their own process. Judge
templates are looked up by name in the ``templates`` mapping the caller passes (the benchmark harness
passes the published prompts); without one only the toy world's yes/no template is known.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headvec.errors import HeadvecError
from headvec.methods.artifacts import CONFIG_NAME
from headvec.rewards.protocol import Judge, Scorer


@dataclass
class RMOptions:
    """Settings for building a reward model; JSON-able, recorded in a run's manifest."""

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


Templates = Mapping[str, Any]
RMLoader = Callable[[str, RMOptions, Templates], Any]
ArtifactLoader = Callable[[Path, Any], Any]


def _default_templates() -> dict[str, Any]:
    from headvec.rewards.judges import TOY_JUDGE_TEMPLATE

    return {TOY_JUDGE_TEMPLATE.name: TOY_JUDGE_TEMPLATE}


def get_template(name: str, templates: Templates | None = None) -> Any:
    """The judge template called ``name`` in ``templates`` (default: the toy world's yes/no template)."""
    known = dict(templates) if templates is not None else _default_templates()
    if name not in known:
        raise HeadvecError(f"unknown judge template {name!r}; choose one of {', '.join(known)}")
    return known[name]


# ------------------------------------------------------------------------------------------------
# Saved reward models


def _activation_rm(path: Path, model: Any) -> Any:
    from headvec.rewards.activation import ActivationRewardModel

    return ActivationRewardModel.from_pretrained(path, model)


ARTIFACT_LOADERS: dict[str, ArtifactLoader] = {"activation_reward_model": _activation_rm}


def register_artifact_loader(kind: str, loader: ArtifactLoader) -> None:
    """Make saved directories whose ``headvec_config.json`` has this ``kind`` load with
    ``loader(path, model)`` (``model``: a LoadedModel or id to run on, or None for the fitted one)."""
    ARTIFACT_LOADERS[kind] = loader


def load_reward_model(
    directory: str | os.PathLike,
    model: Any = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """A saved headvec reward model (loaded by its artifact ``kind``), or a Hugging Face
    sequence-classification reward model directory.

    ``model`` runs a saved reward model on another copy of the model it was fitted on (a LoadedModel or
    an id; default: the one recorded in the artifact). ``device`` / ``dtype`` / ``trust_remote_code``
    say how to load that model (or the classifier); left unset, the loaders' defaults apply.
    """
    path = Path(directory)
    config_path = path / CONFIG_NAME
    options = {"device": device, "dtype": dtype}
    options = {key: value for key, value in options.items() if value is not None}
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        kind = config.get("kind")
        if kind not in ARTIFACT_LOADERS:
            known = ", ".join(sorted(ARTIFACT_LOADERS))
            raise HeadvecError(
                f"{path} holds a {kind!r} artifact, which is not a reward model this registry knows "
                f"(known: {known}); add a loader with headvec.rewards.loading.register_artifact_loader"
            )
        from headvec.models import LoadedModel, load

        if (options or trust_remote_code) and not isinstance(model, LoadedModel):
            name = model or config.get("fitted_on", {}).get("name_or_path")
            model = load(name, trust_remote_code=trust_remote_code, **options)
        return ARTIFACT_LOADERS[kind](path, model)
    if (path / "config.json").is_file():
        from headvec.rewards.classifier import SequenceClassifierRewardModel

        return SequenceClassifierRewardModel(model or path, trust_remote_code=trust_remote_code, **options)
    raise HeadvecError(
        f"{path} is neither a headvec reward model ({CONFIG_NAME}) nor a Hugging Face model (config.json); "
        "fit one with `headvec rm fit` first"
    )


# ------------------------------------------------------------------------------------------------
# Specs


def _judge(model: str, options: RMOptions, templates: Templates) -> Any:
    from headvec.models import load
    from headvec.rewards.judges import LocalJudge

    template = get_template(options.template, templates)
    loaded = load(model, dtype=options.dtype, device=options.device)
    return LocalJudge(
        loaded,
        template,
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        batch_size=options.batch_size,
    )


def _judge_score(model: str, options: RMOptions, templates: Templates) -> Any:
    from headvec.models import load
    from headvec.rewards.baselines import TokenProbabilityJudge

    template = get_template(options.template, templates)
    fmt = getattr(template, "fmt", None)
    if not template.pointwise or fmt is None:
        raise HeadvecError("judge-score needs a pointwise (yes/no) template; use --template toyworld")
    loaded = load(model, dtype=options.dtype, device=options.device)
    # Left padding: how this spec has always read the verdict (the published numbers reproduce bit for bit).
    return TokenProbabilityJudge(
        loaded, fmt, batch_size=options.batch_size, output="log_odds", padding_side="left"
    )


def _openai(rest: str, options: RMOptions, templates: Templates) -> Any:
    from headvec.rewards.judges import OpenAIJudge

    url, sep, model = rest.rpartition(":")
    if not sep or not url.startswith(("http://", "https://")) or not model or model.startswith("//"):
        raise HeadvecError(
            f"--rm openai:{rest!r} must be openai:URL:MODEL, e.g. openai:http://127.0.0.1:8000/v1:toy"
        )
    return OpenAIJudge(
        url,
        model,
        get_template(options.template, templates),
        api_key=os.environ.get(options.api_key_env),
        timeout=options.timeout,
        max_retries=options.retries,
        concurrency=options.concurrency,
        temperature=options.temperature,
        top_p=options.top_p,
        max_tokens=options.max_new_tokens or 2048,
    )


def _artifact(directory: str, options: RMOptions, templates: Templates) -> Any:
    path = Path(directory)
    if not (path / CONFIG_NAME).is_file() and not (path / "config.json").is_file():
        raise HeadvecError(f"--rm artifact:{directory}: no {CONFIG_NAME} there; save the reward model first")
    return load_reward_model(path)


def _python(target: str, options: RMOptions, templates: Templates) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep:
        raise HeadvecError(f"--rm python:{target!r} must be python:package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise HeadvecError(f"--rm python:{target}: cannot import it ({exc}); check the module path") from None
    model = factory(options)
    if not isinstance(model, Scorer | Judge):
        raise HeadvecError(
            f"--rm python:{target} returned {type(model).__name__}, which is neither a Scorer (rewards) "
            "nor a Judge (compare_batch)"
        )
    return model


def _implicit(rest: str, options: RMOptions, templates: Templates) -> Any:
    from headvec.rewards.implicit import from_spec

    return from_spec(rest, options)


def _baseline(name: str, options: RMOptions, templates: Templates) -> Any:
    from headvec.rewards.simple import BASELINES

    if name not in BASELINES:
        raise HeadvecError(f"--rm baseline:{name}: unknown baseline; use one of {', '.join(BASELINES)}")
    return BASELINES[name]()


RM_LOADERS: dict[str, RMLoader] = {
    "judge": _judge,
    "judge-score": _judge_score,
    "openai": _openai,
    "artifact": _artifact,
    "python": _python,
    "baseline": _baseline,
    "implicit": _implicit,
}


def register_rm_loader(prefix: str, loader: RMLoader) -> None:
    """Make ``PREFIX:REST`` specs build reward models with ``loader(REST, options, templates)``."""
    RM_LOADERS[prefix] = loader


def build_reward_model(
    spec: str, options: RMOptions | None = None, templates: Templates | None = None
) -> Any:
    """The Scorer or Judge a spec names (see the module docstring); unknown specs are one-line errors."""
    options = options or RMOptions()
    templates = templates if templates is not None else _default_templates()
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
    return RM_LOADERS[prefix](rest, options, templates)
