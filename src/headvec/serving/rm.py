"""Serve any reward model over HTTP with dynamic batching (``headvec serve rm``).

RL trainers score many short completions at once from many workers; one forward pass over 32 items costs
little more than over one, so concurrent requests are coalesced into a single ``rewards`` call (see
:class:`~headvec.serving.core.DynamicBatcher`). Failures use the one error envelope
(:func:`~headvec.serving.core.error_body`) and the server stays up: 422 malformed JSON or fields, 413 too
many items / too long text / body too large, 400 undecodable or unsupported image, 503 queue full, 500
when the model fails on a batch (only that batch's requests).

There is no authentication, so the server binds to 127.0.0.1 unless told otherwise.
"""

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from headvec.errors import HeadvecError
from headvec.rewards.protocol import Scorer
from headvec.serving import DEFAULT_HOST
from headvec.serving.core import (
    DynamicBatcher,
    RequestError,
    check_positive,
    decode_image,
    install_error_handlers,
    read_body,
    require_fastapi,
    run_server,
    validation_error,
)

SCHEMA_REF = "#/components/schemas/{model}"


class ScoreItem(BaseModel):
    """One (prompt, response[, image]) to score; ``image`` is base64 PNG/JPEG or a ``data:`` URL."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr
    response: StrictStr
    image: StrictStr | None = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ScoreItem]


def describe(scorer: Any) -> dict[str, Any]:
    """What ``/health`` says about the model: its class and, where known, the weights it runs on."""
    info: dict[str, Any] = {"class": type(scorer).__name__}
    identity = getattr(scorer, "identity", None)
    loaded = getattr(scorer, "loaded_", None)
    if identity is None and loaded is not None:
        identity = loaded.identity
    if isinstance(identity, dict):
        info.update(identity)
    from headvec.rewards.activation import ActivationRewardModel

    if isinstance(scorer, ActivationRewardModel) and hasattr(scorer, "task_vector_"):
        info["n_heads_patched"] = len(scorer.heads_)
    return info


def rewards_of(scorer: Scorer) -> Any:
    """The batch function: one ``rewards`` call per batch; NaN/inf become null (JSON has neither)."""

    def process(batch: list[tuple[str, str, Image.Image | None]]) -> list[float | None]:
        prompts, responses, images = (list(column) for column in zip(*batch, strict=True))
        has_images = any(image is not None for image in images)
        scores = scorer.rewards(prompts, responses, images if has_images else None)
        if len(scores) != len(prompts):
            raise HeadvecError(f"the reward model returned {len(scores)} rewards for {len(prompts)} items")
        return [float(s) if math.isfinite(float(s)) else None for s in scores]

    return process


def create_app(
    scorer: Scorer,
    max_batch_size: int = 32,
    max_wait_ms: float = 5,
    max_items_per_request: int = 64,
    max_text_chars: int = 20_000,
    max_body_bytes: int = 32 * 1024 * 1024,
    max_queue_items: int = 10_000,
) -> Any:
    """A FastAPI app serving ``scorer``: ``POST /score`` (dynamically batched) and ``GET /health``."""
    require_fastapi()
    from fastapi import FastAPI, Request

    if not isinstance(scorer, Scorer):
        raise HeadvecError(
            f"{type(scorer).__name__} has no rewards(prompts, responses, images); only scorers can be served"
        )
    check_positive(
        max_items_per_request=max_items_per_request,
        max_text_chars=max_text_chars,
        max_body_bytes=max_body_bytes,
    )
    batcher = DynamicBatcher(rewards_of(scorer), max_batch_size, max_wait_ms, max_queue_items, "headvec-rm")
    model_info = describe(scorer)
    accepts_images = bool(getattr(scorer, "accepts_images", True))
    limits = {
        "max_batch_size": max_batch_size,
        "max_wait_ms": max_wait_ms,
        "max_items_per_request": max_items_per_request,
        "max_text_chars": max_text_chars,
        "max_body_bytes": max_body_bytes,
        "max_queue_items": max_queue_items,
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="headvec reward model",
        description="Score (prompt, response[, image]) pairs with a headvec reward model.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    install_error_handlers(app)

    def check_limits(items: list[ScoreItem]) -> None:
        if len(items) > max_items_per_request:
            raise RequestError(
                413,
                f"{len(items)} items in one request; the limit is {max_items_per_request}, split it",
                "items",
            )
        for index, item in enumerate(items):
            for name in ("prompt", "response"):
                length = len(getattr(item, name))
                if length > max_text_chars:
                    raise RequestError(
                        413,
                        f"items.{index}.{name} has {length} characters; the limit is {max_text_chars}",
                        f"items.{index}.{name}",
                    )
            if item.image is not None and not accepts_images:
                raise RequestError(
                    400,
                    f"items.{index}.image: this reward model is text-only; drop the image",
                    f"items.{index}.image",
                )

    openapi_body = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": SCHEMA_REF.format(model="ScoreRequest")}}},
        }
    }

    @app.post("/score", openapi_extra=openapi_body)
    async def score(request: Request) -> dict[str, list[float | None]]:
        """Score each item; ``{"scores": [...]}`` in the same order (null where the reward is not finite)."""
        body = await read_body(request, max_body_bytes)
        try:
            parsed = ScoreRequest.model_validate_json(body)
        except ValidationError as exc:
            raise validation_error(exc.errors(include_url=False, include_input=False)) from None
        check_limits(parsed.items)
        images: list[Image.Image | None] = [None] * len(parsed.items)
        encoded = [(i, item.image) for i, item in enumerate(parsed.items) if item.image is not None]
        if encoded:
            decoded = await asyncio.to_thread(
                lambda: [decode_image(data, f"items.{i}.image") for i, data in encoded]
            )
            for (i, _), image in zip(encoded, decoded, strict=True):
                images[i] = image
        scores = await batcher.submit(
            [(item.prompt, item.response, image) for item, image in zip(parsed.items, images, strict=True)]
        )
        return {"scores": scores}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, the model being served, the limits, and batching counters."""
        return {
            "status": "ok",
            "model": model_info,
            "limits": limits,
            "queued_items": batcher.queued,
            "stats": batcher.stats.to_dict(),
        }

    # The request schema for /docs, since /score reads its body itself (to enforce the size limit).
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original_openapi()
            request_schema = ScoreRequest.model_json_schema(ref_template=SCHEMA_REF)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["ScoreRequest"] = request_schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve(
    scorer: Scorer, host: str = DEFAULT_HOST, port: int = 8000, *, log_level: str = "info", **app_options: Any
) -> None:
    """Serve ``scorer`` with uvicorn until interrupted."""
    run_server(create_app(scorer, **app_options), host, port, log_level)
