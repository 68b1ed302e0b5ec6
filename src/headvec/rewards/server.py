"""Serve any reward model over HTTP with dynamic batching (``headvec serve rm``).

RL trainers score many short completions at once from many workers; one forward pass over 32 items costs
little more than over one, so concurrent requests are queued and coalesced into a single
``reward_model.score`` call (up to ``max_batch_size`` items, waiting at most ``max_wait_ms`` for company).
The model runs in one worker thread, so it is never called concurrently and the event loop stays free to
accept requests. Every failure is a JSON ``{"error": "..."}`` with a 4xx/5xx status, and the server stays
up: 422 malformed JSON or fields, 413 too many items / too long text / body too large, 400 undecodable or
unsupported image, 503 queue full, 500 when the model fails on a batch (only that batch's requests).

There is no authentication, so :func:`serve` binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import io
import math
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from headvec.errors import HeadvecError
from headvec.rewards.protocol import RewardModel

DEFAULT_HOST = "127.0.0.1"
IMAGE_FORMATS = frozenset({"PNG", "JPEG"})
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


class RequestError(Exception):
    """A request the server refuses, with the HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


@dataclass
class _Job:
    """One request's items; resolved when its last item is scored, failed when any batch of it fails."""

    n_items: int
    future: asyncio.Future
    scores: list[float | None] = field(default_factory=list)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.scores = [None] * self.n_items
        self.remaining = self.n_items


@dataclass
class _Pending:
    job: _Job
    index: int
    prompt: str
    response: str
    image: Image.Image | None


@dataclass
class BatcherStats:
    requests: int = 0
    items: int = 0
    batches: int = 0
    failed_batches: int = 0
    max_batch: int = 0

    def to_dict(self) -> dict[str, float]:
        mean = self.items / self.batches if self.batches else 0.0
        return {**self.__dict__, "mean_batch": round(mean, 3)}


class DynamicBatcher:
    """Queues items of concurrent requests and scores them in batches on one worker thread."""

    def __init__(
        self, reward_model: RewardModel, max_batch_size: int, max_wait_ms: float, max_queue_items: int
    ) -> None:
        self.reward_model = reward_model
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.max_queue_items = max_queue_items
        self.stats = BatcherStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headvec-rm")
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _ensure_started(self) -> None:
        """Start the batching loop on the running event loop (again, if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self.running and self._loop is loop:
            return
        self._loop, self._wakeup = loop, asyncio.Event()
        self._pending.clear()
        self._task = loop.create_task(self._run(), name="headvec-rm-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self, prompts: Sequence[str], responses: Sequence[str], images: Sequence[Image.Image | None]
    ) -> list[float | None]:
        """Queue one request's items and wait for their scores."""
        if not prompts:
            return []
        self._ensure_started()
        if len(self._pending) + len(prompts) > self.max_queue_items:
            raise RequestError(503, f"server busy: {len(self._pending)} items queued; retry shortly")
        job = _Job(len(prompts), asyncio.get_running_loop().create_future())
        self.stats.requests += 1
        for index, (p, r, i) in enumerate(zip(prompts, responses, images, strict=True)):
            self._pending.append(_Pending(job, index, p, r, i))
        assert self._wakeup is not None
        self._wakeup.set()
        return await job.future

    async def _next_batch(self) -> list[_Pending]:
        """Wait for a first item, then up to ``max_wait`` more for the batch to fill."""
        assert self._wakeup is not None
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = time.perf_counter() + self.max_wait
        while len(self._pending) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        batch: list[_Pending] = []
        while self._pending and len(batch) < self.max_batch_size:
            item = self._pending.popleft()
            if not item.job.future.done():  # skip requests that failed or whose client went away
                batch.append(item)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            prompts = [item.prompt for item in batch]
            responses = [item.response for item in batch]
            images = [item.image for item in batch]
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.max_batch = max(self.stats.max_batch, len(batch))
            try:
                scores = await loop.run_in_executor(self._executor, self._score, prompts, responses, images)
            except Exception as exc:  # the model failed: fail this batch's requests, keep serving
                self.stats.failed_batches += 1
                error = RequestError(
                    500, f"the reward model failed on this batch: {type(exc).__name__}: {exc}"
                )
                for item in batch:
                    if not item.job.future.done():
                        item.job.future.set_exception(error)
                continue
            for item, score in zip(batch, scores, strict=True):
                job = item.job
                if job.future.done():
                    continue
                job.scores[item.index] = score
                job.remaining -= 1
                if job.remaining == 0:
                    job.future.set_result(job.scores)

    def _score(
        self, prompts: list[str], responses: list[str], images: list[Image.Image | None]
    ) -> list[float | None]:
        has_images = any(image is not None for image in images)
        scores = self.reward_model.score(prompts, responses, images if has_images else None)
        if len(scores) != len(prompts):
            raise HeadvecError(f"the reward model returned {len(scores)} scores for {len(prompts)} items")
        # JSON has no NaN/inf: report those as null rather than failing the response.
        return [float(s) if math.isfinite(float(s)) else None for s in scores]


def decode_image(data: str, where: str) -> Image.Image:
    """Base64 (or a ``data:image/...;base64,`` URL) -> RGB PIL image; PNG and JPEG only."""
    payload = data.split(",", 1)[1] if data.startswith("data:") and "," in data else data
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            400, f"{where}: not valid base64; send base64 PNG/JPEG bytes or a data URL"
        ) from None
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            if opened.format not in IMAGE_FORMATS:
                raise RequestError(
                    400, f"{where}: {opened.format} images are not supported; send PNG or JPEG"
                )
            return opened.convert("RGB")
    except RequestError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(400, f"{where}: cannot decode the image ({exc}); send a PNG or JPEG") from None


def describe(reward_model: RewardModel) -> dict[str, Any]:
    """What ``/health`` says about the model: its class and, where known, the weights it runs on."""
    info: dict[str, Any] = {"class": type(reward_model).__name__}
    identity = getattr(reward_model, "identity", None)
    loaded = getattr(reward_model, "model", None)
    if identity is None and loaded is not None and hasattr(loaded, "identity"):
        identity = loaded.identity
    if isinstance(identity, dict):
        info.update(identity)
    heads = getattr(reward_model, "heads_", None) if hasattr(reward_model, "task_vector_") else None
    if heads is not None:
        info["n_heads_patched"] = len(heads)
    return info


def _validation_message(exc: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = [
        {"loc": ".".join(str(part) for part in error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_input=False)
    ]
    first = details[0]
    where = f"{first['loc']}: " if first["loc"] else ""
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"malformed request: {where}{first['msg']}{more}", details


def create_app(
    reward_model: RewardModel,
    max_batch_size: int = 32,
    max_wait_ms: float = 5,
    max_items_per_request: int = 64,
    max_text_chars: int = 20_000,
    max_body_bytes: int = 32 * 1024 * 1024,
    max_queue_items: int = 10_000,
) -> FastAPI:
    """A FastAPI app serving ``reward_model``: ``POST /score`` (dynamically batched) and ``GET /health``."""
    for name, value in {
        "max_batch_size": max_batch_size,
        "max_items_per_request": max_items_per_request,
        "max_text_chars": max_text_chars,
        "max_body_bytes": max_body_bytes,
        "max_queue_items": max_queue_items,
    }.items():
        if value < 1:
            raise HeadvecError(f"{name} must be >= 1, got {value}")
    if max_wait_ms < 0:
        raise HeadvecError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
    batcher = DynamicBatcher(reward_model, max_batch_size, max_wait_ms, max_queue_items)
    model_info = describe(reward_model)
    accepts_images = bool(getattr(reward_model, "accepts_images", True))
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
        batcher._ensure_started()
        yield
        await batcher.stop()

    app = FastAPI(
        title="headvec reward model",
        description="Score (prompt, response[, image]) pairs with a headvec reward model.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.message}
        if exc.detail is not None:
            body["detail"] = exc.detail
        return JSONResponse(body, status_code=exc.status)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise RequestError(413, f"request body is {declared} bytes; the limit is {max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise RequestError(413, f"request body exceeds {max_body_bytes} bytes; send fewer items")
            chunks.append(chunk)
        return b"".join(chunks)

    def check_limits(items: list[ScoreItem]) -> None:
        if len(items) > max_items_per_request:
            raise RequestError(
                413, f"{len(items)} items in one request; the limit is {max_items_per_request}, split it"
            )
        for index, item in enumerate(items):
            for name in ("prompt", "response"):
                length = len(getattr(item, name))
                if length > max_text_chars:
                    raise RequestError(
                        413, f"items.{index}.{name} has {length} characters; the limit is {max_text_chars}"
                    )
            if item.image is not None and not accepts_images:
                raise RequestError(
                    400, f"items.{index}.image: this reward model is text-only; drop the image"
                )

    request_body = {"$ref": SCHEMA_REF.format(model="ScoreRequest")}
    openapi_body = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": request_body}}}
    }

    @app.post("/score", openapi_extra=openapi_body)
    async def score(request: Request) -> dict[str, list[float | None]]:
        """Score each item; ``{"scores": [...]}`` in the same order (null where the score is not finite)."""
        body = await read_body(request)
        try:
            parsed = ScoreRequest.model_validate_json(body)
        except ValidationError as exc:
            message, details = _validation_message(exc)
            raise RequestError(422, message, details) from None
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
            [item.prompt for item in parsed.items], [item.response for item in parsed.items], images
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
    reward_model: RewardModel,
    host: str = DEFAULT_HOST,
    port: int = 8000,
    *,
    log_level: str = "info",
    **app_options: Any,
) -> None:
    """Run the server with uvicorn until interrupted (one process: the model is loaded once)."""
    import uvicorn

    uvicorn.run(create_app(reward_model, **app_options), host=host, port=port, log_level=log_level, workers=1)
