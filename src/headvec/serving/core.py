"""What both servers share: the dynamic batcher, the error envelope, the image decoder, body limits.

- :class:`DynamicBatcher` queues the items of concurrent requests and hands them to one worker thread in
  batches (up to ``max_batch_size`` items, waiting at most ``max_wait_ms`` for company), so the model is
  never called concurrently and the event loop stays free to accept requests.
- Every failure is one JSON shape, :func:`error_body` (vLLM's envelope): ``{"error": {"message", "type",
  "param", "code"}}`` with ``code`` the HTTP status as an integer and ``param`` the offending field (or
  null). :class:`RequestError` carries it; :func:`install_error_handlers` turns it, FastAPI's validation
  errors and unexpected exceptions into that shape. Stack traces stay in the server log.
- :func:`decode_image`: base64 or a ``data:image/...;base64,`` URL -> RGB PIL image, PNG and JPEG only.

FastAPI and uvicorn are imported inside the functions that need them (``pip install 'headvec[serve]'``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from PIL import Image

from headvec.errors import HeadvecError

IMAGE_FORMATS = frozenset({"PNG", "JPEG"})
ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}
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
    """A request the server refuses: HTTP status, a one-line message, and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


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


def validation_error(errors: Sequence[dict[str, Any]], prefix: tuple = ()) -> RequestError:
    """422 naming the first bad field (``items.0.response: Field required``) and how many more."""
    first = errors[0]
    loc = [str(part) for part in first["loc"] if part not in prefix]
    param = ".".join(loc) or None
    where = f"{param}: " if param else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return RequestError(422, f"malformed request: {where}{first['msg']}{more}", param)


def install_error_handlers(app: Any) -> None:
    """Answer RequestError, FastAPI's own validation errors and unexpected errors with :func:`error_body`."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestError)
    async def request_error(request: Any, exc: RequestError) -> JSONResponse:
        return JSONResponse(error_body(exc.status, exc.message, exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(exc.errors(), prefix=("body",))
        return JSONResponse(error_body(error.status, error.message, error.param), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Any, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error serving %s", request.url.path)
        message = f"internal error: {type(exc).__name__}: {exc}"
        return JSONResponse(error_body(500, message), status_code=500)


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


def decode_image(data: str, where: str) -> Image.Image:
    """Base64 (or a ``data:image/...;base64,`` URL) -> RGB PIL image; PNG and JPEG only."""
    payload = data.split(",", 1)[1] if data.startswith("data:") and "," in data else data
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            400, f"{where}: not valid base64; send base64 PNG/JPEG bytes or a data URL", where
        ) from None
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            if opened.format not in IMAGE_FORMATS:
                raise RequestError(
                    400, f"{where}: {opened.format} images are not supported; send PNG or JPEG", where
                )
            return opened.convert("RGB")
    except RequestError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(
            400, f"{where}: cannot decode the image ({exc}); send a PNG or JPEG", where
        ) from None


def check_positive(**limits: float) -> None:
    for name, value in limits.items():
        if value < 1:
            raise HeadvecError(f"{name} must be >= 1, got {value}")


# ------------------------------------------------------------------------------------------------
# Dynamic batching


@dataclass
class Job:
    """One request's items; resolved when its last item is done, failed when any batch of it fails."""

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

    def to_dict(self) -> dict[str, float]:
        mean = self.items / self.batches if self.batches else 0.0
        return {**self.__dict__, "mean_batch": round(mean, 3)}


class DynamicBatcher(Generic[T, R]):
    """Queues the items of concurrent requests and runs ``process(batch) -> results`` on one worker
    thread, one batch at a time. A batch that raises fails only its own requests (500)."""

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_items: int,
        name: str = "headvec",
    ) -> None:
        check_positive(max_batch_size=max_batch_size, max_queue_items=max_queue_items)
        if max_wait_ms < 0:
            raise HeadvecError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.process = process
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

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Queue one request's items and wait for their results (in the same order)."""
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
        return await job.future

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
                results = await loop.run_in_executor(self.executor, self.process, [e.item for e in batch])
                if len(results) != len(batch):
                    raise HeadvecError(f"the model returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # the model failed: fail this batch's requests, keep serving
                self.stats.failed_batches += 1
                if isinstance(exc, RequestError):
                    error = exc
                else:
                    error = RequestError(500, f"the model failed on this batch: {type(exc).__name__}: {exc}")
                for entry in batch:
                    if not entry.job.future.done():
                        entry.job.future.set_exception(error)
                continue
            for entry, result in zip(batch, results, strict=True):
                job = entry.job
                if job.future.done():
                    continue
                job.results[entry.index] = result
                job.remaining -= 1
                if job.remaining == 0:
                    job.future.set_result(job.results)


def run_server(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until interrupted (one process: the model is loaded once)."""
    require_fastapi()
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
