"""The OpenAI-compatible chat server (issue 13): OpenAI's error shape, 400 for wrong types, max_tokens
capped by the context, n / stop honoured, real usage and finish_reason, API key, pixel and body limits,
request timeouts. On the shipped toy model (fast on CPU)."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import zlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from headvec.serving.chat import create_app
from headvec.serving.core import DynamicBatcher, RequestError

QUESTION = [{"role": "user", "content": "What colour is the ball?"}]


@pytest.fixture(scope="module")
def toy():
    from headvec.models import load

    return load("toy")


@pytest.fixture(scope="module")
def client(toy) -> Iterator[TestClient]:
    app = create_app(toy, "toy", default_max_tokens=6, max_body_bytes=100_000, max_n=4)
    with TestClient(app) as test_client:
        yield test_client


def _openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] is None or isinstance(error["code"], str)  # OpenAI's shape, not the HTTP status
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": QUESTION, "max_tokens": "x"}, "max_tokens"),
        ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"messages": QUESTION, "temperature": "hot"}, "temperature"),
        ({"messages": QUESTION, "temperature": 3}, "temperature"),
        ({"messages": QUESTION, "top_p": 0}, "top_p"),
        ({"messages": QUESTION, "n": 0}, "n"),
        ({"messages": QUESTION, "n": 5}, "n"),
        ({"messages": QUESTION, "stop": [1]}, "stop"),
        ({"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": QUESTION, "stream": "yes"}, "stream"),
        ({"messages": QUESTION, "seed": 1.5}, "seed"),
        ({"messages": []}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages.0.content.0.text",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages.0.content.0"),
        ({"messages": [{"role": 3, "content": "hi"}]}, "messages.0.role"),
    ],
)
def test_wrong_types_and_values_get_a_400_in_openais_error_shape(client, body, param):
    error = _openai_error(client.post("/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert client.post("/v1/chat/completions", json={"messages": QUESTION}).status_code == 200


def test_max_tokens_is_capped_by_the_context(client, toy):
    """Issue 13: max_tokens=5000 ran 116 s holding the server's one lock."""
    start = time.perf_counter()
    error = _openai_error(
        client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 5000}), 400
    )
    assert time.perf_counter() - start < 5
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert "maximum context length is 512 tokens" in error["message"] and "at most 503" in error["message"]
    long = [{"role": "user", "content": "red ball " * 400}]
    error = _openai_error(client.post("/v1/chat/completions", json={"messages": long}), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    ok = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 503})
    assert ok.status_code == 200, ok.text  # exactly the room left is allowed


def test_usage_finish_reason_n_and_stop_are_real(client, toy):
    prompt_tokens = toy.token_count(toy.build_prompt(QUESTION[0]["content"], []))
    reply = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 5}).json()
    (choice,) = reply["choices"]
    assert choice["finish_reason"] == "length"
    assert reply["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 5,
        "total_tokens": prompt_tokens + 5,
    }
    words = choice["message"]["content"].split()
    assert len(words) >= 2
    stopped = client.post(
        "/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 5, "stop": [" " + words[1]]}
    ).json()["choices"][0]
    assert stopped["finish_reason"] == "stop" and stopped["message"]["content"] == words[0]
    sampled = client.post(
        "/v1/chat/completions",
        json={"messages": QUESTION, "max_tokens": 4, "n": 3, "temperature": 1.0, "seed": 7},
    ).json()
    assert [c["index"] for c in sampled["choices"]] == [0, 1, 2]
    assert sampled["usage"]["completion_tokens"] == 12
    again = client.post(
        "/v1/chat/completions",
        json={"messages": QUESTION, "max_tokens": 4, "n": 3, "temperature": 1.0, "seed": 7},
    ).json()
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in sampled["choices"]]  # seeded


def test_the_official_openai_client_sees_the_message(client):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="toy", messages=QUESTION, max_tokens=5000)
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 512" in caught.value.message
    reply = api.chat.completions.create(model="toy", messages=QUESTION, max_tokens=3)
    assert reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length"


def _bomb_url(width: int, height: int) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_api_key_pixel_and_body_limits_in_openais_shape(toy):
    app = create_app(toy, "toy", default_max_tokens=2, api_key="s3cret", max_body_bytes=5_000)
    good = {"Authorization": "Bearer s3cret"}
    with TestClient(app) as test_client:
        error = _openai_error(test_client.post("/v1/chat/completions", json={"messages": QUESTION}), 401)
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        assert test_client.get("/v1/models").status_code == 401
        assert test_client.get("/v1/models", headers=good).json()["data"][0]["id"] == "toy"
        image = {"type": "image_url", "image_url": {"url": _bomb_url(12000, 12000)}}
        bomb = [{"role": "user", "content": [{"type": "text", "text": "What?"}, image]}]
        error = _openai_error(
            test_client.post("/v1/chat/completions", json={"messages": bomb}, headers=good), 413
        )
        assert "144,000,000 pixels" in error["message"] and "--max-image-pixels" in error["message"]
        big = [{"role": "user", "content": "x" * 6_000}]
        error = _openai_error(
            test_client.post("/v1/chat/completions", json={"messages": big}, headers=good), 413
        )
        assert "limit is 5000" in error["message"]
        assert (
            test_client.post("/v1/chat/completions", json={"messages": QUESTION}, headers=good).status_code
            == 200
        )


def test_a_request_past_its_timeout_gets_504_and_its_queued_work_is_dropped():
    processed: list[int] = []

    def slow(items: list[int]) -> list[int]:
        time.sleep(0.3)
        processed.extend(items)
        return items

    async def scenario() -> tuple[list[int], object]:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(slow, 1, 0, 100)
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.05)
        try:
            await batcher.submit([2], timeout=0.1)
        except RequestError as exc:
            error = exc
        result = await first
        await asyncio.sleep(0.4)
        await batcher.stop()
        return result, error

    result, error = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert result == [1] and processed == [1]
    assert isinstance(error, RequestError) and error.status == 504


def test_a_prompt_beyond_the_context_fails_alone_in_its_batch(toy, client):
    import httpx

    alone = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 3}).json()
    app = create_app(toy, "toy", max_batch_size=8, max_wait_ms=300)
    long = [{"role": "user", "content": "red ball " * 400}]
    bodies = [{"messages": long if i == 2 else QUESTION, "max_tokens": 3} for i in range(6)]

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
            return await asyncio.gather(*(http.post("/v1/chat/completions", json=b) for b in bodies))

    responses = asyncio.run(asyncio.wait_for(send(), 60))
    assert [r.status_code for r in responses] == [200, 200, 400, 200, 200, 200]
    assert _openai_error(responses[2], 400)["code"] == "context_length_exceeded"
    expected = alone["choices"][0]["message"]["content"]
    assert all(
        r.json()["choices"][0]["message"]["content"] == expected for i, r in enumerate(responses) if i != 2
    )
    assert app.state.batcher.stats.refused_items == 1 and app.state.batcher.stats.max_batch == 6
