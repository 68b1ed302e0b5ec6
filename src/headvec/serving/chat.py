"""A small OpenAI-compatible chat-completions server for a headvec-loaded model (``headvec serve chat``).

Enough of the API for judges and tests: ``POST /v1/chat/completions`` (text and ``image_url`` parts as
base64 data URLs, ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``n``, ``stop``; no streaming)
and ``GET /v1/models``. Requests go through the same dynamic batcher, image decoder (with its pixel
limits) and optional API key as the reward-model server, but errors use OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``, ``type`` e.g. ``invalid_request_error``), which
OpenAI's client shows. Wrong types and out-of-range values get 400 naming the field before the request
is queued; a prompt longer than the context or ``max_tokens`` beyond the room left in it get 400
``context_length_exceeded`` from the check just before batching (that request alone fails). ``usage``
counts real tokens; ``finish_reason`` is ``"length"`` when ``max_tokens`` cut the answer. By default one
request is generated at a time (``max_batch_size=1``); with a larger batch, greedy requests with the
same ``max_tokens`` are generated together. Binds to 127.0.0.1 unless told otherwise.
"""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

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
    check_positive,
    decode_images,
    install_error_handlers,
    read_body,
    require_fastapi,
    run_server,
    validation_error,
)

MAX_STOP_SEQUENCES = 4


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: StrictInt | None = None
    n: StrictInt = Field(default=1, ge=1)
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False


@dataclass
class ChatJob:
    """One generation: the built prompt, the ``max_tokens`` asked for (None: the default) and the sampling
    settings. ``prompt_tokens`` and the final ``max_tokens`` are set on the model's thread (the tokenizer
    is not safe to share between threads) just before the job is batched."""

    prompt: Any
    requested: int | None
    temperature: float
    top_p: float
    seed: int | None
    max_tokens: int = 0
    prompt_tokens: int = 0


@dataclass
class Completion:
    """What one generation produced: the text, its token count, and whether the model stopped itself."""

    text: str
    tokens: int
    finished: bool


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
        where = f"messages.{index}.content.{part_index}"
        if part.get("type") == "text":
            text = part.get("text", "")
            if not isinstance(text, str):
                raise RequestError(400, f"{where}.text must be a string", f"{where}.text")
            texts.append(text)
        elif part.get("type") == "image_url":
            url = part.get("image_url", {})
            url = url.get("url", "") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise RequestError(400, f"{where}.image_url.url must be a string", f"{where}.image_url")
            encoded.append((url, f"{where}.image_url"))
        else:
            raise RequestError(
                400, f"{where}: unknown part type {part.get('type')!r}; use text or image_url", where
            )
    images = decode_images(encoded, limits) if encoded else []
    return "\n".join(texts), images, system if isinstance(system, str) else None


def eos_ids(loaded: Any) -> set[int]:
    """The token ids that end a generation (the generation config's eos, else the tokenizer's)."""
    config = getattr(loaded.model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    if ids is None:
        ids = loaded.tokenizer.eos_token_id
    if ids is None:
        return set()
    return {int(i) for i in ids} if isinstance(ids, list | tuple) else {int(ids)}


def generator(loaded: Any) -> Callable[[list[ChatJob]], list[Completion]]:
    """The batch function: greedy jobs with equal ``max_tokens`` in one ``generate`` call, sampled ones
    one at a time under their seed. Keeps the token ids, so ``usage`` and ``finish_reason`` are real."""
    import torch

    from headvec.engine import iter_batches

    tokenizer = loaded.tokenizer
    stops = eos_ids(loaded)

    def run(prompts: list[Any], max_tokens: int, **sampling: Any) -> list[Completion]:
        completions = []
        for batch in iter_batches(prompts, len(prompts)):
            inputs = loaded.encode(batch, padding_side="left")
            with torch.no_grad():
                output = loaded.model.generate(
                    **inputs, max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
                )
            for row in output[:, inputs["input_ids"].shape[1] :].tolist():
                end = next((i for i, token in enumerate(row) if token in stops), None)
                kept = row if end is None else row[:end]
                text = tokenizer.decode(kept, skip_special_tokens=True)
                completions.append(Completion(text, len(kept) + (end is not None), end is not None))
        return completions

    def process(jobs: list[ChatJob]) -> list[Completion]:
        try:
            return generate(jobs)
        except (HeadvecError, ValueError) as exc:  # too long, bad image: the request is at fault, no retry
            raise RequestError(400, str(exc), "messages") from None

    def generate(jobs: list[ChatJob]) -> list[Completion]:
        outputs: list[Completion | None] = [None] * len(jobs)
        greedy: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            if job.temperature > 0:
                if job.seed is not None:
                    torch.manual_seed(job.seed)
                sampling = {"do_sample": True, "temperature": job.temperature, "top_p": job.top_p}
                outputs[i] = run([job.prompt], job.max_tokens, **sampling)[0]
            else:
                greedy.setdefault(job.max_tokens, []).append(i)
        for max_tokens, indices in greedy.items():
            done = run([jobs[i].prompt for i in indices], max_tokens, do_sample=False)
            for i, completion in zip(indices, done, strict=True):
                outputs[i] = completion
        return [c if c is not None else Completion("", 0, True) for c in outputs]

    return process


def apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """The text up to the first stop sequence (excluded, as OpenAI does) and whether one was found."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


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
    max_n: int = 8,
    max_tokens_limit: int | None = None,
    request_timeout_s: float | None = 600,
    api_key: str | None = None,
) -> Any:
    """The FastAPI app serving ``loaded`` under ``model_name``.

    ``max_tokens`` is capped by the room the prompt leaves in the context and by ``max_tokens_limit``
    (400 above either); a request waits at most ``request_timeout_s`` (504); with ``api_key`` every route
    needs ``Authorization: Bearer <api_key>`` (401 otherwise)."""
    require_fastapi()
    from fastapi import FastAPI, Request

    check_api_key(api_key)
    check_positive(default_max_tokens=default_max_tokens, max_n=max_n, max_body_bytes=max_body_bytes)
    if max_tokens_limit is not None:
        check_positive(max_tokens_limit=max_tokens_limit)
    image_limits = ImageLimits(max_image_pixels, max_request_pixels)
    context = getattr(getattr(loaded, "arch", None), "max_positions", None)

    def fit_in_context(job: ChatJob) -> None:
        """On the model's thread, before batching: count the prompt's tokens and settle ``max_tokens``."""
        job.prompt_tokens = int(loaded.token_count(job.prompt))
        job.max_tokens = max_tokens_for(job.requested, job.prompt_tokens)

    def max_tokens_for(requested: int | None, prompt_tokens: int) -> int:
        """The requested (or default) max_tokens, refused when it does not fit in the context."""
        if max_tokens_limit is not None and requested is not None and requested > max_tokens_limit:
            raise RequestError(
                400,
                f"max_tokens is {requested}; this server generates at most {max_tokens_limit} "
                "(server option max_tokens_limit)",
                "max_tokens",
            )
        room = None if context is None else context - prompt_tokens
        if room is not None and room < 1:
            raise RequestError(
                400,
                f"this model's maximum context length is {context} tokens; the messages have "
                f"{prompt_tokens}: shorten them",
                "messages",
                "context_length_exceeded",
            )
        if requested is None:
            caps = [default_max_tokens, room, max_tokens_limit]
            return min(c for c in caps if c is not None)
        if room is not None and requested > room:
            raise RequestError(
                400,
                f"this model's maximum context length is {context} tokens; you requested "
                f"{prompt_tokens + requested} ({prompt_tokens} in the messages, {requested} in the "
                f"completion): lower max_tokens to at most {room} or shorten the messages",
                "max_tokens",
                "context_length_exceeded",
            )
        return requested

    batcher = DynamicBatcher(
        generator(loaded),
        max_batch_size,
        max_wait_ms,
        max_queue_items,
        "headvec-chat",
        validate=fit_in_context,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="headvec chat server", lifespan=lifespan)
    app.state.batcher = batcher
    install_error_handlers(app, style="openai")
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key, style="openai")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "headvec"}]}

    def check_request(body: ChatRequest) -> list[str]:
        """Refusals that need no model: the model name, streaming, ``n`` and ``stop``."""
        if body.model not in (None, model_name):
            raise RequestError(
                404, f"model {body.model!r} not served; use {model_name!r}", "model", "model_not_found"
            )
        if body.stream:
            raise RequestError(400, "streaming is not supported; send stream=false", "stream")
        if body.n > max_n:
            raise RequestError(400, f"n is {body.n}; this server generates at most {max_n} choices", "n")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_SEQUENCES:
            raise RequestError(400, f"stop has {len(stop)} sequences; at most {MAX_STOP_SEQUENCES}", "stop")
        return stop

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        try:
            body = ChatRequest.model_validate_json(await read_body(request, max_body_bytes))
        except ValidationError as exc:
            error = validation_error(exc.errors(include_url=False, include_input=False))
            raise RequestError(400, error.message, error.param) from None
        stop = check_request(body)
        text, images, system = await asyncio.to_thread(user_text_and_images, body.messages, image_limits)
        if images and not loaded.is_multimodal:
            images = []

        try:
            prompt = loaded.build_prompt(text, images, system=system)  # a template; nothing is tokenized
        except (HeadvecError, ValueError) as exc:  # a bad image or template: the request is at fault
            raise RequestError(400, str(exc), "messages") from None
        requested = body.max_tokens or body.max_completion_tokens
        temperature = float(body.temperature or 0.0)
        top_p = float(body.top_p or 1.0)
        jobs = [
            ChatJob(prompt, requested, temperature, top_p, None if body.seed is None else body.seed + i)
            for i in range(body.n)
        ]
        outputs = await batcher.submit(jobs, receive=request.receive, timeout=request_timeout_s)
        prompt_tokens = jobs[0].prompt_tokens
        choices, completion_tokens = [], 0
        for index, completion in enumerate(outputs):
            content, stopped = apply_stop(completion.text, stop)
            finish = "stop" if stopped or completion.finished else "length"
            completion_tokens += completion.tokens
            message = {"role": "assistant", "content": content}
            choices.append({"index": index, "message": message, "finish_reason": finish, "logprobs": None})
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
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
