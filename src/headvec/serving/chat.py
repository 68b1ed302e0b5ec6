"""A small OpenAI-compatible chat-completions server for a headvec-loaded model (``headvec serve chat``).

Enough of the API for judges and tests: ``POST /v1/chat/completions`` (text and ``image_url`` parts as
base64 data URLs, ``max_tokens``, ``temperature``, ``top_p``, ``seed``; no streaming) and
``GET /v1/models``. Requests go through the same dynamic batcher, error envelope and image decoder as the
reward-model server; by default one request is generated at a time (``max_batch_size=1``), and with a
larger batch greedy requests with the same ``max_tokens`` are generated together. Binds to 127.0.0.1
unless told otherwise.
"""

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from headvec.errors import HeadvecError
from headvec.serving import DEFAULT_HOST
from headvec.serving.core import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    ApiKeyMiddleware,
    DynamicBatcher,
    ImageLimits,
    RequestError,
    check_api_key,
    decode_images,
    install_error_handlers,
    read_body,
    require_fastapi,
    run_server,
    validation_error,
)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False


@dataclass
class ChatJob:
    """One generation: the built prompt and its sampling settings."""

    prompt: Any
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None


def user_text_and_images(
    messages: list[ChatMessage], limits: ImageLimits | None = None
) -> tuple[str, list[Image.Image], str | None]:
    """The last user message's text and images, and a system prompt if one was sent; the images' pixel
    counts are checked from their headers before any is decoded."""
    system = next((m.content for m in messages if m.role == "system"), None)
    users = [(i, m) for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise RequestError(400, "no user message; send at least one message with role 'user'", "messages")
    index, last = users[-1]
    if isinstance(last.content, str):
        return last.content, [], system if isinstance(system, str) else None
    texts, encoded = [], []
    for part_index, part in enumerate(last.content or []):
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            url = part.get("image_url", {})
            where = f"messages.{index}.content.{part_index}.image_url"
            encoded.append((url.get("url", "") if isinstance(url, dict) else str(url), where))
    images = decode_images(encoded, limits) if encoded else []
    return "\n".join(texts), images, system if isinstance(system, str) else None


def generator(loaded: Any) -> Any:
    """The batch function: greedy jobs with equal ``max_tokens`` in one ``generate`` call, sampled ones
    one at a time under their seed."""
    from headvec.engine import HeadEngine

    engine = HeadEngine(loaded)

    def process(jobs: list[ChatJob]) -> list[str]:
        try:
            return generate(jobs)
        except (HeadvecError, ValueError) as exc:  # too long, bad image: the request is at fault, no retry
            raise RequestError(400, str(exc), "messages") from None

    def generate(jobs: list[ChatJob]) -> list[str]:
        import torch

        outputs: list[str | None] = [None] * len(jobs)
        greedy: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            if job.temperature > 0:
                if job.seed is not None:
                    torch.manual_seed(job.seed)
                outputs[i] = engine.generate(
                    [job.prompt],
                    job.max_tokens,
                    batch_size=1,
                    do_sample=True,
                    temperature=job.temperature,
                    top_p=job.top_p,
                )[0]
            else:
                greedy.setdefault(job.max_tokens, []).append(i)
        for max_tokens, indices in greedy.items():
            texts = engine.generate([jobs[i].prompt for i in indices], max_tokens, batch_size=len(indices))
            for i, text in zip(indices, texts, strict=True):
                outputs[i] = text
        return [text or "" for text in outputs]

    return process


def create_app(
    loaded: Any,
    model_name: str = "headvec",
    default_max_tokens: int = 256,
    *,
    max_batch_size: int = 1,
    max_wait_ms: float = 5,
    max_queue_items: int = 1_000,
    max_body_bytes: int = 32 * 1024 * 1024,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    api_key: str | None = None,
) -> Any:
    """The FastAPI app serving ``loaded`` under ``model_name``; with ``api_key`` every route needs
    ``Authorization: Bearer <api_key>`` (401 otherwise)."""
    require_fastapi()
    import asyncio

    from fastapi import FastAPI, Request

    check_api_key(api_key)
    batcher = DynamicBatcher(generator(loaded), max_batch_size, max_wait_ms, max_queue_items, "headvec-chat")
    image_limits = ImageLimits(max_image_pixels, max_request_pixels)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="headvec chat server", lifespan=lifespan)
    app.state.batcher = batcher
    install_error_handlers(app)
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "headvec"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        try:
            body = ChatRequest.model_validate_json(await read_body(request, max_body_bytes))
        except ValidationError as exc:
            raise validation_error(exc.errors(include_url=False, include_input=False)) from None
        if body.model not in (None, model_name):
            raise RequestError(404, f"model {body.model!r} not served; use {model_name!r}", "model")
        if body.stream:
            raise RequestError(400, "streaming is not supported; send stream=false", "stream")
        text, images, system = await asyncio.to_thread(user_text_and_images, body.messages, image_limits)
        if images and not loaded.is_multimodal:
            images = []
        temperature = float(body.temperature or 0.0)
        try:
            prompt = loaded.build_prompt(text, images, system=system)
        except (HeadvecError, ValueError) as exc:  # too long, bad image: the request is at fault, no retry
            raise RequestError(400, str(exc), "messages") from None
        job = ChatJob(
            prompt,
            int(body.max_tokens or body.max_completion_tokens or default_max_tokens),
            temperature,
            float(body.top_p or 1.0),
            body.seed,
        )
        (output,) = await batcher.submit([job], receive=request.receive)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": output}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    return app


def serve(
    model: str,
    host: str = DEFAULT_HOST,
    port: int = 8000,
    name: str | None = None,
    device: str = "cpu",
    *,
    log_level: str = "warning",
    **app_options: Any,
) -> None:
    """Load ``model`` and serve it until interrupted."""
    from headvec.models import load

    loaded = load(model, device=device)
    run_server(create_app(loaded, name or model, **app_options), host, port, log_level)
