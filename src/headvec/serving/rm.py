"""Serve any reward model over HTTP with dynamic batching (``headvec serve rm``).

RL trainers score many short completions at once from many workers; one forward pass over 32 items costs
little more than over one, so concurrent requests are coalesced into a single ``rewards`` call (see
:class:`~headvec.serving.core.DynamicBatcher`). Failures use the one error envelope
(:func:`~headvec.serving.core.error_body`) and the server stays up: 422 malformed JSON or fields, 413 too
many items / too long text / body too large / an image or a request over its pixel limit (read from the
image headers before decoding) / a prompt longer than the model's context, 400 undecodable or unsupported
image, 401 missing or wrong API key (when one is set), 503 queue full, 500 when the model fails on an
item. A bad item fails only its own request, never the others batched with it; the items of a client that
hung up are dropped before they reach the model.

Authentication is optional (``api_key``), so the server binds to 127.0.0.1 unless told otherwise.
"""

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from headvec.errors import HeadvecError
from headvec.rewards.protocol import Scorer
from headvec.serving import DEFAULT_HOST
from headvec.serving.core import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    ApiKeyMiddleware,
    DynamicBatcher,
    ImageLimits,
    RequestError,
    check_api_key,
    check_positive,
    decode_images,
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


@dataclass
class ScoreJob:
    """One item in the batcher: what to score, and where it came from (for error messages)."""

    prompt: str
    response: str
    image: Image.Image | None
    where: str


def rewards_of(scorer: Scorer) -> Callable[[list[ScoreJob]], list[float | None]]:
    """The batch function: one ``rewards`` call per batch; NaN/inf become null (JSON has neither)."""

    def process(batch: list[ScoreJob]) -> list[float | None]:
        prompts = [job.prompt for job in batch]
        responses = [job.response for job in batch]
        images = [job.image for job in batch]
        has_images = any(image is not None for image in images)
        scores = scorer.rewards(prompts, responses, images if has_images else None)
        if len(scores) != len(prompts):
            raise HeadvecError(f"the reward model returned {len(scores)} rewards for {len(prompts)} items")
        return [float(s) if math.isfinite(float(s)) else None for s in scores]

    return process


class ContextCheck:
    """Refuses (413) an item whose model prompt is longer than the context. A text-only item whose UTF-8
    bytes plus the template's own tokens fit is passed without tokenizing it (no tokenizer makes more
    tokens than bytes, save a few specials), so short items cost nothing; images are always counted."""

    MARGIN = 16

    def __init__(self, builder: Any, loaded: Any, limit: int) -> None:
        self.builder, self.loaded, self.limit = builder, loaded, limit
        self.template_tokens: int | None = None

    def tokens(self, prompt: str, response: str, image: Image.Image | None) -> int:
        (built,) = self.builder.prompts([prompt], [response], [image])
        return int(self.loaded.token_count(built))

    def __call__(self, job: ScoreJob) -> None:
        if job.image is None:
            if self.template_tokens is None:
                self.template_tokens = self.tokens("", "", None)
            size = len(job.prompt.encode()) + len(job.response.encode())
            if self.template_tokens + size + self.MARGIN <= self.limit:
                return
        tokens = self.tokens(job.prompt, job.response, job.image)
        if tokens > self.limit:
            raise RequestError(
                413,
                f"{job.where} makes a prompt of {tokens} tokens; {self.loaded.name_or_path} takes at most "
                f"{self.limit}: shorten the prompt or the response",
                job.where,
            )


def context_check(scorer: Any) -> Callable[[ScoreJob], None] | None:
    """Per-item validation for scorers that build model prompts (activation RMs, verdict judges): a
    prompt longer than the model's context is refused with 413 before it can fail a whole batch.

    A scorer may define ``check_item(prompt, response, image)`` itself (raise DataError to refuse)."""
    own = getattr(scorer, "check_item", None)
    if callable(own):

        def check_own(job: ScoreJob) -> None:
            own(job.prompt, job.response, job.image)

        return check_own
    for builder in (scorer, getattr(scorer, "scorer_", None), getattr(scorer, "scorer", None)):
        loaded = getattr(builder, "loaded", None)
        limit = getattr(getattr(loaded, "arch", None), "max_positions", None)
        if callable(getattr(builder, "prompts", None)) and hasattr(loaded, "token_count") and limit:
            return ContextCheck(builder, loaded, int(limit))
    return None


def create_app(
    scorer: Scorer,
    max_batch_size: int = 32,
    max_wait_ms: float = 5,
    max_items_per_request: int = 64,
    max_text_chars: int = 20_000,
    max_body_bytes: int = 32 * 1024 * 1024,
    max_queue_items: int = 10_000,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    api_key: str | None = None,
) -> Any:
    """A FastAPI app serving ``scorer``: ``POST /score`` (dynamically batched) and ``GET /health``.

    ``api_key`` set: every route needs ``Authorization: Bearer <api_key>`` (401 otherwise)."""
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
        max_image_pixels=max_image_pixels,
        max_request_pixels=max_request_pixels,
    )
    check_api_key(api_key)
    batcher = DynamicBatcher(
        rewards_of(scorer),
        max_batch_size,
        max_wait_ms,
        max_queue_items,
        "headvec-rm",
        validate=context_check(scorer),
    )
    image_limits = ImageLimits(max_image_pixels, max_request_pixels)
    model_info = describe(scorer)
    accepts_images = bool(getattr(scorer, "accepts_images", True))
    limits = {
        "max_batch_size": max_batch_size,
        "max_wait_ms": max_wait_ms,
        "max_items_per_request": max_items_per_request,
        "max_text_chars": max_text_chars,
        "max_body_bytes": max_body_bytes,
        "max_queue_items": max_queue_items,
        "max_image_pixels": max_image_pixels,
        "max_request_pixels": max_request_pixels,
        "auth": api_key is not None,
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
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)

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
        encoded = [
            (item.image, f"items.{i}.image") for i, item in enumerate(parsed.items) if item.image is not None
        ]
        if encoded:  # headers checked against the pixel limits before anything is decoded
            decoded = iter(await asyncio.to_thread(decode_images, encoded, image_limits))
            images = [next(decoded) if item.image is not None else None for item in parsed.items]
        jobs = [
            ScoreJob(item.prompt, item.response, image, f"items.{i}")
            for i, (item, image) in enumerate(zip(parsed.items, images, strict=True))
        ]
        scores = await batcher.submit(jobs, receive=request.receive)
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
