"""A small OpenAI-compatible chat-completions server for a headvec-loaded model (FastAPI + uvicorn).

Enough of the API for judges and tests: ``POST /v1/chat/completions`` (text and ``image_url`` data-URL
parts, ``max_tokens``, ``temperature``, ``top_p``, ``seed``; no streaming) and ``GET /v1/models``. It binds
to 127.0.0.1 unless told otherwise, and generates one request at a time.
"""

from __future__ import annotations

import base64
import io
import threading
import time
import uuid
from typing import Any

from PIL import Image


def _decode_image(url: str) -> Image.Image:
    from fastapi import HTTPException

    if not url.startswith("data:") or ";base64," not in url:
        raise HTTPException(status_code=400, detail="only data: URLs with base64 images are supported")
    try:
        return Image.open(io.BytesIO(base64.b64decode(url.split(";base64,", 1)[1]))).convert("RGB")
    except Exception as exc:  # any undecodable payload is the client's error
        raise HTTPException(status_code=400, detail=f"cannot decode image: {exc}") from None


def _user_text_and_images(messages: list[dict[str, Any]]) -> tuple[str, list[Image.Image], str | None]:
    """The last user message's text and images, and a system prompt if one was sent."""
    from fastapi import HTTPException

    system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise HTTPException(status_code=400, detail="no user message")
    content = users[-1].get("content")
    if isinstance(content, str):
        return content, [], system if isinstance(system, str) else None
    texts, images = [], []
    for part in content or []:
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            url = part.get("image_url", {})
            images.append(_decode_image(url.get("url", "") if isinstance(url, dict) else str(url)))
    return "\n".join(texts), images, system if isinstance(system, str) else None


def create_app(loaded, model_name: str = "headvec", default_max_tokens: int = 256):
    """The FastAPI app serving ``loaded`` under ``model_name``."""
    import torch
    from fastapi import FastAPI, HTTPException

    from headvec.engine import HeadEngine
    from headvec.errors import HeadvecError

    app = FastAPI(title="headvec chat server")
    engine = HeadEngine(loaded)
    lock = threading.Lock()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "headvec"}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("model") not in (None, model_name):
            raise HTTPException(
                status_code=404, detail=f"model {body.get('model')!r} not served; use {model_name!r}"
            )
        if body.get("stream"):
            raise HTTPException(status_code=400, detail="streaming is not supported")
        text, images, system = _user_text_and_images(body.get("messages") or [])
        if images and not loaded.is_multimodal:
            images = []
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or default_max_tokens)
        temperature = float(body.get("temperature") or 0.0)
        kwargs: dict[str, Any] = {}
        if temperature > 0:
            kwargs = {"do_sample": True, "temperature": temperature, "top_p": float(body.get("top_p") or 1.0)}
        try:
            prompt = loaded.build_prompt(text, images, system=system)
            with lock:
                if temperature > 0 and body.get("seed") is not None:
                    torch.manual_seed(int(body["seed"]))
                output = engine.generate([prompt], max_tokens, batch_size=1, **kwargs)[0]
        except (HeadvecError, ValueError) as exc:  # too long, bad image: the request is at fault, no retry
            raise HTTPException(status_code=400, detail=str(exc)) from None
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
    model: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None, device: str = "cpu"
) -> None:
    """Load ``model`` and serve it until interrupted."""
    import uvicorn

    from headvec.models import load

    loaded = load(model, device=device)
    uvicorn.run(create_app(loaded, name or model), host=host, port=port, log_level="warning")
