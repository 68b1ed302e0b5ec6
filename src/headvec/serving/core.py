"""What both servers share: the dynamic batcher, the error envelope, the image decoder, body limits.

- :class:`DynamicBatcher` queues the items of concurrent requests and hands them to one worker thread in
  batches (up to ``max_batch_size`` items, waiting at most ``max_wait_ms`` for company), so the model is
  never called concurrently and the event loop stays free to accept requests.
- Every failure is one JSON shape, :func:`error_body` (vLLM's envelope): ``{"error": {"message", "type",
  "param", "code"}}`` with ``code`` the HTTP status as an integer and ``param`` the offending field (or
  null). :class:`RequestError` carries it; :func:`install_error_handlers` turns it, FastAPI's validation
  errors and unexpected exceptions into that shape. Stack traces stay in the server log.
- :func:`decode_images`: base64 or ``data:image/...;base64,`` URLs -> RGB PIL images, PNG and JPEG only,
  with per-image and per-request pixel limits checked from the image headers *before* any pixel is
  decoded (a 140 KB PNG can declare 12000 x 12000 pixels: 430 MB once decoded).
- :class:`ApiKeyMiddleware`: an optional Bearer key on every route (401 in the error shape).
- The batcher validates each item on its worker thread before the model call, isolates a failing item
  from the rest of its batch, and drops the items of clients that hung up before they reach the model.

FastAPI and uvicorn are imported inside the functions that need them (``pip install 'headvec[serve]'``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hmac
import io
import json
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from PIL import Image

from headvec.errors import DataError, HeadvecError

IMAGE_FORMATS = frozenset({"PNG", "JPEG"})
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}
OPENAI_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
logger = logging.getLogger("headvec.serving")

T = TypeVar("T")
R = TypeVar("R")


def require_fastapi() -> None:
    """A one-line error naming the extra when FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise HeadvecError("serving needs FastAPI and uvicorn: pip install 'headvec[serve]'") from None


class RequestError(Exception):
    """A request the server refuses: HTTP status, a one-line message, the offending field, and (OpenAI
    style only) a machine-readable code such as ``context_length_exceeded``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The one error shape of every headvec server."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "BadRequestError" if status < 500 else "InternalServerError"),
            "param": param,
            "code": status,
        }
    }


def openai_error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape (what its official client parses): ``type`` a snake-case kind, ``code`` a
    string or null; the HTTP status is the response's."""
    kind = OPENAI_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_builder(style: str) -> Callable[..., dict[str, Any]]:
    """``"vllm"`` (the default: ``code`` is the HTTP status) or ``"openai"``."""
    if style == "openai":
        return openai_error_body
    return lambda status, message, param=None, code=None: error_body(status, message, param)


def _union_tag(part: object) -> bool:
    """Pydantic names the member of a union it tried (``stop.list[str].0``); a client needs the field."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "none"} or "[" in part)


def validation_error(errors: Sequence[dict[str, Any]], prefix: tuple = ()) -> RequestError:
    """422 naming the first bad field (``items.0.response: Field required``) and how many more."""
    first = errors[0]
    loc = [str(part) for part in first["loc"] if part not in prefix and not _union_tag(part)]
    param = ".".join(loc) or None
    where = f"{param}: " if param else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return RequestError(422, f"malformed request: {where}{first['msg']}{more}", param)


def install_error_handlers(app: Any, style: str = "vllm") -> None:
    """Answer RequestError, FastAPI's own validation errors and unexpected errors in one shape
    (:func:`error_body`, or :func:`openai_error_body` with ``style="openai"``)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    body = error_builder(style)

    @app.exception_handler(RequestError)
    async def request_error(request: Any, exc: RequestError) -> JSONResponse:
        return JSONResponse(body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(exc.errors(), prefix=("body",))
        return JSONResponse(body(error.status, error.message, error.param), status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected(request: Any, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error serving %s", request.url.path)
        message = f"internal error: {type(exc).__name__}: {exc}"
        return JSONResponse(body(500, message), status_code=500)


async def read_body(request: Any, max_body_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_body_bytes``."""
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


DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_REQUEST_PIXELS = 2 * DEFAULT_MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class ImageLimits:
    """Pixel budgets checked from image headers before decoding; ``option`` names how to raise each."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    image_option: str = "--max-image-pixels"
    request_option: str = "--max-request-pixels"


def _image_bytes(data: str, where: str) -> bytes:
    payload = data.split(",", 1)[1] if data.startswith("data:") and "," in data else data
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            400, f"{where}: not valid base64; send base64 PNG/JPEG bytes or a data URL", where
        ) from None


def _undecodable(where: str, exc: Exception) -> RequestError:
    return RequestError(400, f"{where}: cannot decode the image ({exc}); send a PNG or JPEG", where)


def image_header(raw: bytes, where: str) -> tuple[int, int]:
    """Width and height from the header alone (PIL reads no pixels in ``open``); PNG and JPEG only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limits follow
            opened = Image.open(io.BytesIO(raw))
        with opened:
            if opened.format not in IMAGE_FORMATS:
                raise RequestError(
                    400, f"{where}: {opened.format} images are not supported; send PNG or JPEG", where
                )
            width, height = opened.size
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:
        raise RequestError(413, f"{where}: refused as a decompression bomb ({exc})", where) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _undecodable(where, exc) from None
    return int(width), int(height)


def decode_images(images: Sequence[tuple[str, str]], limits: ImageLimits | None = None) -> list[Image.Image]:
    """``(data, where)`` pairs -> RGB images; every header is read and checked against ``limits`` (413,
    naming the server option that raises it) before the first image is decoded."""
    limits = limits or ImageLimits()
    raws, total = [], 0
    for data, where in images:
        raw = _image_bytes(data, where)
        width, height = image_header(raw, where)
        pixels = width * height
        if pixels > limits.max_image_pixels:
            raise RequestError(
                413,
                f"{where} is {width}x{height} = {pixels:,} pixels; the limit is {limits.max_image_pixels:,} "
                f"per image: downscale it, or start the server with a larger {limits.image_option}",
                where,
            )
        total += pixels
        if total > limits.max_request_pixels:
            raise RequestError(
                413,
                f"the images of this request have {total:,} pixels up to {where}; the limit is "
                f"{limits.max_request_pixels:,} per request: send fewer or smaller images, or start the "
                f"server with a larger {limits.request_option}",
                where,
            )
        raws.append((raw, where))
    decoded = []
    for raw, where in raws:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limits apply
                with Image.open(io.BytesIO(raw)) as opened:
                    decoded.append(opened.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise _undecodable(where, exc) from None
    return decoded


def decode_image(data: str, where: str, limits: ImageLimits | None = None) -> Image.Image:
    """One image; see :func:`decode_images`."""
    return decode_images([(data, where)], limits)[0]


def check_api_key(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise HeadvecError("the API key is empty; set a non-empty key or leave authentication off")
    return value


class ApiKeyMiddleware:
    """Every HTTP request must carry ``Authorization: Bearer <key>``, else 401 in the error shape
    (a pure ASGI middleware, so client disconnects still reach the endpoint)."""

    def __init__(self, app: Any, api_key: str, style: str = "vllm") -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()
        self.body = error_builder(style)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        what = "wrong API key" if given else "missing API key"
        message = f"{what}: send the header 'Authorization: Bearer <key>' (the server's key)"
        body = json.dumps(self.body(401, message, None, "invalid_api_key")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer"),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def check_positive(**limits: float) -> None:
    for name, value in limits.items():
        if value < 1:
            raise HeadvecError(f"{name} must be >= 1, got {value}")


# ------------------------------------------------------------------------------------------------
# Dynamic batching


@dataclass
class Job:
    """One request's items; resolved when its last item is done, failed when any item of it fails."""

    n_items: int
    future: asyncio.Future
    results: list[Any] = field(default_factory=list)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.results = [None] * self.n_items
        self.remaining = self.n_items


@dataclass
class Pending:
    job: Job
    index: int
    item: Any


@dataclass
class BatcherStats:
    requests: int = 0
    items: int = 0
    batches: int = 0
    failed_batches: int = 0
    max_batch: int = 0
    refused_items: int = 0
    isolated_batches: int = 0
    dropped_requests: int = 0
    dropped_items: int = 0

    def to_dict(self) -> dict[str, float]:
        mean = self.items / self.batches if self.batches else 0.0
        return {**self.__dict__, "mean_batch": round(mean, 3)}


def as_request_error(exc: Exception, what: str) -> RequestError:
    """A RequestError as is; the inputs' fault (DataError) 400; anything else the model's fault, 500."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, DataError):
        return RequestError(400, str(exc))
    return RequestError(500, f"the model failed on {what}: {type(exc).__name__}: {exc}")


class DynamicBatcher(Generic[T, R]):
    """Queues the items of concurrent requests and runs ``process(batch) -> results`` on one worker
    thread, one batch at a time.

    ``validate(item)`` (optional) runs on the worker thread just before the model call, so it may use the
    model's tokenizer safely; an item it refuses (RequestError) fails only its own request. When the model
    call fails on a batch of several items, each is retried alone, so one poison item fails only its own
    request (4xx for a DataError, 500 otherwise). Items of requests that failed, or whose client hung up
    (``submit(..., receive=request.receive)``), are dropped before they reach the model.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_items: int,
        name: str = "headvec",
        validate: Callable[[T], None] | None = None,
    ) -> None:
        check_positive(max_batch_size=max_batch_size, max_queue_items=max_queue_items)
        if max_wait_ms < 0:
            raise HeadvecError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.process, self.validate = process, validate
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.max_queue_items = max_queue_items
        self.name = name
        self.stats = BatcherStats()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.pending: collections.deque[Pending] = collections.deque()
        self.wakeup: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def queued(self) -> int:
        return len(self.pending)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self) -> None:
        """Start the batching loop on the running event loop (again, if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self.running and self.loop is loop:
            return
        self.loop, self.wakeup = loop, asyncio.Event()
        self.pending.clear()
        self.task = loop.create_task(self.run(), name=f"{self.name}-batcher")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.task = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self,
        items: Sequence[T],
        receive: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        timeout: float | None = None,
    ) -> list[R]:
        """Queue one request's items and wait for their results (in the same order).

        ``receive`` is the ASGI receive of a request whose body was already read: its next message is
        ``http.disconnect`` when the client hangs up, and then the request's queued items are dropped.
        After ``timeout`` seconds the request fails with 504 and its queued items are dropped too (an
        item already running finishes: the model cannot be interrupted).
        """
        if not items:
            return []
        self.start()
        if len(self.pending) + len(items) > self.max_queue_items:
            raise RequestError(503, f"server busy: {len(self.pending)} items queued; retry shortly")
        job = Job(len(items), asyncio.get_running_loop().create_future())
        self.stats.requests += 1
        for index, item in enumerate(items):
            self.pending.append(Pending(job, index, item))
        assert self.wakeup is not None
        self.wakeup.set()
        watcher = asyncio.ensure_future(self._watch_disconnect(receive, job)) if receive else None
        try:
            await asyncio.wait({job.future}, timeout=timeout)
            if not job.future.done():
                message = f"no result within {timeout:g} s; retry later or ask for less work"
                job.future.set_exception(RequestError(504, message))
                self.drop(job)
            return job.future.result()
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _watch_disconnect(self, receive: Callable[[], Awaitable[dict[str, Any]]], job: Job) -> None:
        while not job.future.done():
            message = await receive()
            if message.get("type") == "http.disconnect":
                if not job.future.done():  # 499: nginx's "client closed request"; nobody reads it
                    job.future.set_exception(RequestError(499, "the client closed the request"))
                    self.drop(job)
                return

    def drop(self, job: Job) -> None:
        """Remove a cancelled job's queued items (they no longer count against the queue limit)."""
        before = len(self.pending)
        self.pending = collections.deque(entry for entry in self.pending if entry.job is not job)
        self.stats.dropped_requests += 1
        self.stats.dropped_items += before - len(self.pending)
        logger.info("client disconnected: dropped %d queued items", before - len(self.pending))

    async def next_batch(self) -> list[Pending]:
        """Wait for a first item, then up to ``max_wait`` more for the batch to fill."""
        assert self.wakeup is not None
        while not self.pending:
            self.wakeup.clear()
            await self.wakeup.wait()
        deadline = time.perf_counter() + self.max_wait
        while len(self.pending) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), remaining)
            except TimeoutError:
                break
        batch: list[Pending] = []
        while self.pending and len(batch) < self.max_batch_size:
            entry = self.pending.popleft()
            if not entry.job.future.done():  # skip requests that failed or whose client went away
                batch.append(entry)
        return batch

    def work(self, items: list[T]) -> list[tuple[bool, Any]]:
        """On the worker thread: validate each item, run the model on the valid ones, and isolate a
        failure by retrying each item alone. ``(True, result)`` or ``(False, RequestError)`` per item."""
        outcomes: list[tuple[bool, Any]] = [(False, None)] * len(items)
        valid: list[int] = []
        for i, item in enumerate(items):
            try:
                if self.validate is not None:
                    self.validate(item)
                valid.append(i)
            except Exception as exc:
                self.stats.refused_items += 1
                outcomes[i] = (False, as_request_error(exc, "this item"))
        if not valid:
            return outcomes
        try:
            results = self._call([items[i] for i in valid])
            for i, result in zip(valid, results, strict=True):
                outcomes[i] = (True, result)
            return outcomes
        except Exception as exc:
            self.stats.failed_batches += 1
            if len(valid) == 1:
                outcomes[valid[0]] = (False, as_request_error(exc, "this batch"))
                return outcomes
            logger.warning("batch of %d failed (%s); retrying each item alone", len(valid), exc)
        self.stats.isolated_batches += 1
        for i in valid:
            try:
                outcomes[i] = (True, self._call([items[i]])[0])
            except Exception as exc:
                outcomes[i] = (False, as_request_error(exc, "this item"))
        return outcomes

    def _call(self, items: list[T]) -> Sequence[R]:
        results = self.process(items)
        if len(results) != len(items):
            raise HeadvecError(f"the model returned {len(results)} results for {len(items)} items")
        return results

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.next_batch()
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.max_batch = max(self.stats.max_batch, len(batch))
            try:
                outcomes = await loop.run_in_executor(self.executor, self.work, [e.item for e in batch])
            except Exception as exc:  # a bug in work itself: fail this batch's requests, keep serving
                outcomes = [(False, as_request_error(exc, "this batch"))] * len(batch)
            for entry, (ok, value) in zip(batch, outcomes, strict=True):
                job = entry.job
                if job.future.done():
                    continue
                if not ok:
                    job.future.set_exception(value)
                    continue
                job.results[entry.index] = value
                job.remaining -= 1
                if job.remaining == 0:
                    job.future.set_result(job.results)


def run_server(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until interrupted (one process: the model is loaded once)."""
    require_fastapi()
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
