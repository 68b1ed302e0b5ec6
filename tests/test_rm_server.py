"""The reward-model HTTP server: API, limits, errors, dynamic batching, loopback default, end to end."""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import uvicorn
from checks import TINY_RM_SETTINGS
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from headvec.errors import DataError
from headvec.models import ImageLike
from headvec.serving import DEFAULT_HOST
from headvec.serving.rm import create_app, serve


class FakeRewardModel:
    """Score = len(response) (+100 with an image); records every call; 'boom' makes the call fail,
    'poison' makes it fail as the inputs' fault (DataError)."""

    def __init__(self, delay: float = 0.0, accepts_images: bool = True) -> None:
        self.delay, self.accepts_images = delay, accepts_images
        self.calls: list[int] = []
        self.images_seen: list[object] = []
        self.responses_seen: list[str] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def rewards(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[ImageLike | None] | None = None,
    ) -> list[float]:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.calls.append(len(prompts))
            self.responses_seen += list(responses)
            if self.delay:
                time.sleep(self.delay)
            if "boom" in responses:
                raise RuntimeError("kaboom")
            if "poison" in responses:
                raise DataError("a poison response")
            images = list(images) if images is not None else [None] * len(prompts)
            self.images_seen += [image for image in images if image is not None]
            return [
                float("nan") if r == "nan" else len(r) + (100.0 if i is not None else 0.0)
                for r, i in zip(responses, images, strict=True)
            ]
        finally:
            with self.lock:
                self.active -= 1


def _png(color: str = "red", fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def fake() -> FakeRewardModel:
    return FakeRewardModel()


@pytest.fixture
def client(fake) -> Iterator[TestClient]:
    app = create_app(fake, max_items_per_request=4, max_text_chars=50, max_body_bytes=4000)
    with TestClient(app) as test_client:
        yield test_client


def test_health_and_happy_path(client, fake):
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["model"]["class"] == "FakeRewardModel"
    assert body["limits"]["max_items_per_request"] == 4
    items = [{"prompt": "q", "response": "abc"}, {"prompt": "q", "response": "abcdef"}]
    response = client.post("/score", json={"items": items})
    assert response.status_code == 200
    assert response.json() == {"scores": [3.0, 6.0]}
    assert client.post("/score", json={"items": []}).json() == {"scores": []}
    assert client.post("/score", json={"items": [{"prompt": "q", "response": "nan"}]}).json() == {
        "scores": [None]
    }
    assert client.get("/health").json()["stats"]["requests"] == 2


def test_images_as_base64_and_data_url(client, fake):
    items = [
        {"prompt": "q", "response": "ab", "image": _png()},
        {"prompt": "q", "response": "ab", "image": "data:image/jpeg;base64," + _png("blue", "JPEG")},
        {"prompt": "q", "response": "ab"},
    ]
    response = client.post("/score", json={"items": items})
    assert response.status_code == 200, response.text
    assert response.json()["scores"] == [102.0, 102.0, 2.0]
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" for image in fake.images_seen)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"items": [{"prompt": "q"}]}, 422, "items.0.response: Field required"),
        ({"items": [{"prompt": "q", "response": 3}]}, 422, "items.0.response"),
        ({"items": "q"}, 422, "items"),
        ({"item": []}, 422, "items: Field required"),
        ({"items": [{"prompt": "q", "response": "a", "score": 1}]}, 422, "items.0.score"),
        ({"items": [{"prompt": "q", "response": "a"}] * 5}, 413, "5 items in one request; the limit is 4"),
        ({"items": [{"prompt": "q" * 51, "response": "a"}]}, 413, "items.0.prompt has 51 characters"),
        ({"items": [{"prompt": "q", "response": "a", "image": "not base64!"}]}, 400, "not valid base64"),
        ({"items": [{"prompt": "q", "response": "a", "image": "aGVsbG8="}]}, 400, "cannot decode the image"),
        ({"items": [{"prompt": "q", "response": "a", "image": _png(fmt="GIF")}]}, 400, "GIF images"),
    ],
)
def test_malformed_requests_get_a_4xx_message_and_the_server_stays_up(client, body, status, message):
    response = client.post("/score", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error["code"] == status and set(error) == {"message", "type", "param", "code"}
    assert client.post("/score", json={"items": [{"prompt": "q", "response": "ok"}]}).json() == {
        "scores": [2.0]
    }


def test_invalid_json_and_oversized_body(client):
    response = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "malformed request" in response.json()["error"]["message"]
    big = {"items": [{"prompt": "q", "response": "a" * 5000}]}
    response = client.post("/score", json=big)
    assert response.status_code == 413
    assert "limit is 4000" in response.json()["error"]["message"]
    assert client.get("/health").status_code == 200


def test_text_only_model_refuses_images():
    app = create_app(FakeRewardModel(accepts_images=False))
    with TestClient(app) as test_client:
        response = test_client.post(
            "/score", json={"items": [{"prompt": "q", "response": "a", "image": _png()}]}
        )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "items.0.image: this reward model is text-only; drop the image",
        "type": "BadRequestError",
        "param": "items.0.image",
        "code": 400,
    }


def test_model_error_fails_only_its_batch(fake):
    app = create_app(fake, max_batch_size=1, max_wait_ms=0)
    with TestClient(app) as test_client:
        failed = test_client.post("/score", json={"items": [{"prompt": "q", "response": "boom"}]})
        assert failed.status_code == 500
        assert "kaboom" in failed.json()["error"]["message"]
        assert (
            test_client.post("/score", json={"items": [{"prompt": "q", "response": "ok"}]}).status_code == 200
        )
        assert test_client.get("/health").json()["stats"]["failed_batches"] == 1


async def _concurrent(app, bodies: list[dict]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await asyncio.gather(*(client.post("/score", json=body) for body in bodies))


def test_concurrent_requests_are_coalesced_into_fewer_model_calls():
    fake = FakeRewardModel(delay=0.02)
    app = create_app(fake, max_batch_size=8, max_wait_ms=20)
    bodies = [{"items": [{"prompt": "q", "response": "x" * (n % 7)}]} for n in range(24)]
    responses = asyncio.run(_concurrent(app, bodies))
    assert [r.status_code for r in responses] == [200] * 24
    assert [r.json()["scores"] for r in responses] == [[float(n % 7)] for n in range(24)]
    assert sum(fake.calls) == 24 and len(fake.calls) < 24 and max(fake.calls) <= 8
    assert fake.max_active == 1  # the model is never called concurrently


def test_a_failing_request_does_not_fail_concurrent_batches():
    fake = FakeRewardModel(delay=0.01)
    app = create_app(fake, max_batch_size=1, max_wait_ms=0)
    bodies = [{"items": [{"prompt": "q", "response": "boom" if n == 3 else "ok"}]} for n in range(8)]
    statuses = [r.status_code for r in asyncio.run(_concurrent(app, bodies))]
    assert statuses == [200, 200, 200, 500, 200, 200, 200, 200]


def test_requests_larger_than_a_batch_are_split():
    fake = FakeRewardModel()
    app = create_app(fake, max_batch_size=3, max_wait_ms=0, max_items_per_request=10)
    body = {"items": [{"prompt": "q", "response": "x" * n} for n in range(7)]}
    (response,) = asyncio.run(_concurrent(app, [body]))
    assert response.json()["scores"] == [float(n) for n in range(7)]
    assert max(fake.calls) <= 3


def test_default_host_is_loopback(tmp_path, monkeypatch):
    assert DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    from headvec.cli import app
    from headvec.rewards import loading
    from headvec.serving import core

    seen: dict = {}
    monkeypatch.setattr(loading, "load_reward_model", lambda *args, **kwargs: FakeRewardModel())
    monkeypatch.setattr(
        core, "run_server", lambda app, host, port, log_level: seen.update(app=app, host=host, port=port)
    )
    result = CliRunner().invoke(app, ["serve", "rm", str(tmp_path), "--max-batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000
    assert seen["app"].state.batcher.max_batch_size == 4
    monkeypatch.setattr(core, "run_server", lambda app, host, port, log_level: seen.update(chat_host=host))
    monkeypatch.setattr("headvec.models.load", lambda *args, **kwargs: None)
    monkeypatch.setattr("headvec.serving.chat.create_app", lambda *args, **kwargs: None)
    result = CliRunner().invoke(app, ["serve", "chat", "toy"])
    assert result.exit_code == 0, result.output
    assert seen["chat_host"] == "127.0.0.1"
    assert "serve" not in CliRunner().invoke(app, ["bench", "--help"]).output.split("Commands")[-1]


def test_cli_refuses_a_directory_without_a_model(tmp_path):
    from headvec.cli import app

    result = CliRunner().invoke(app, ["serve", "rm", str(tmp_path)])
    assert result.exit_code == 2
    assert "neither a headvec reward model" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def activation_rm(tiny_model_dir):
    from headvec.models import load
    from headvec.rewards.activation import ActivationRewardModel, Judgement, VerdictFormat

    loaded = load(str(tiny_model_dir("llama")))
    rm = ActivationRewardModel(loaded, VerdictFormat(), **TINY_RM_SETTINGS)
    facts = [("What colour is the sky?", "Blue"), ("How many legs does a spider have?", "Eight")]
    wrong = ["Green", "Six"]
    judgements = [Judgement(q, a, True) for q, a in facts] + [
        Judgement(q, w, False) for (q, _), w in zip(facts, wrong, strict=True)
    ]
    return rm.fit(judgements * 2)


def test_end_to_end_activation_rm_over_real_uvicorn(activation_rm, tmp_path):
    """A saved activation RM, loaded like the CLI does, served on a loopback port; scores match."""
    from headvec.rewards.loading import load_reward_model

    activation_rm.save_pretrained(tmp_path / "rm")
    rm = load_reward_model(Path(tmp_path / "rm"), None, device="cpu", dtype="float32")
    port = _free_port()
    config = uvicorn.Config(create_app(rm), host=DEFAULT_HOST, port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        health = httpx.get(f"{base}/health").json()
        assert health["model"]["class"] == "ActivationRewardModel"
        assert health["model"]["name_or_path"] == activation_rm.loaded_.name_or_path
        prompts, responses = ["What colour is the sky?", "What colour is the sky?"], ["Blue", "Green"]
        items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
        scores = httpx.post(f"{base}/score", json={"items": items}).json()["scores"]
        assert scores == pytest.approx(activation_rm.rewards(prompts, responses), abs=1e-5)
        assert all(0.0 <= s <= 1.0 for s in scores)
        bad = httpx.post(f"{base}/score", json={"items": [{"prompt": "q"}]})
        assert bad.status_code == 422
        assert bad.json()["error"]["param"] == "items.0.response"
        assert httpx.get(f"{base}/health").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------------------------------------------------
# Hardening (issue 13): image bombs, poison items, clients that hang up, API keys


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width: int, height: int, with_pixels: bool = True) -> str:
    """A greyscale PNG of ``width x height`` black pixels, compressed row by row (about 140 KB for
    12000 x 12000, 430 MB once decoded to RGB); ``with_pixels=False`` sends the header alone."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data = b""
    if with_pixels:
        compressor, row, parts = zlib.compressobj(9), b"\x00" * (width + 1), []
        for _ in range(height):
            parts.append(compressor.compress(row))
        parts.append(compressor.flush())
        data = _png_chunk(b"IDAT", b"".join(parts))
    png = b"\x89PNG\r\n\x1a\n" + header + data + _png_chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def test_an_image_bomb_is_refused_from_its_header_with_a_413_naming_the_option(monkeypatch):
    """Issue 13: four 12000 x 12000 PNGs of 140 KB took 60 s and 8.5 GB; now nothing is decoded."""
    from PIL import ImageFile

    decoded: list[object] = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original_load(self))
    fake = FakeRewardModel()
    bomb = _bomb_png(12000, 12000)
    assert len(bomb) < 300_000
    with TestClient(create_app(fake, max_body_bytes=2_000_000)) as test_client:
        start = time.perf_counter()
        items = [{"prompt": "q", "response": "a", "image": bomb}] * 4
        response = test_client.post("/score", json={"items": items})
        assert time.perf_counter() - start < 5
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["param"] == "items.0.image" and error["type"] == "RequestTooLargeError"
        assert "12000x12000 = 144,000,000 pixels" in error["message"]
        assert "--max-image-pixels" in error["message"]
        assert decoded == [] and fake.calls == []
        # beyond PIL's own decompression-bomb limit: refused as such, still from the header
        huge = {"prompt": "q", "response": "a", "image": _bomb_png(30000, 30000, with_pixels=False)}
        response = test_client.post("/score", json={"items": [huge]})
        assert response.status_code == 413 and "items.0.image" in response.json()["error"]["message"]
        ok = {"prompt": "q", "response": "ab", "image": _png()}
        assert test_client.post("/score", json={"items": [ok]}).json() == {"scores": [102.0]}
        assert test_client.get("/health").json()["limits"]["max_image_pixels"] == 4096 * 4096


def test_the_request_pixel_budget_is_checked_before_any_image_is_decoded(monkeypatch):
    fake = FakeRewardModel()
    app = create_app(fake, max_image_pixels=200 * 200, max_request_pixels=300 * 200)
    small = _bomb_png(200, 150)  # 30,000 pixels each: two fit, three do not
    with TestClient(app) as test_client:
        two = [{"prompt": "q", "response": "a", "image": small}] * 2
        assert test_client.post("/score", json={"items": two}).json() == {"scores": [101.0, 101.0]}
        response = test_client.post("/score", json={"items": two + two[:1]})
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["param"] == "items.2.image"
        assert "90,000 pixels" in error["message"] and "--max-request-pixels" in error["message"]
        too_wide = [{"prompt": "q", "response": "a", "image": _bomb_png(201, 200, with_pixels=False)}]
        response = test_client.post("/score", json={"items": too_wide})
        assert response.status_code == 413 and "--max-image-pixels" in response.json()["error"]["message"]
    assert len(fake.images_seen) == 2


def test_a_poison_item_fails_only_its_own_request_not_its_batch():
    """Issue 13: one bad item made the whole dynamic batch (101 of 155 requests) fail with 500."""
    fake = FakeRewardModel(delay=0.01)
    app = create_app(fake, max_batch_size=8, max_wait_ms=200)
    bodies = [{"items": [{"prompt": "q", "response": "poison" if n == 3 else "x" * n}]} for n in range(8)]
    responses = asyncio.run(_concurrent(app, bodies))
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 200, 200, 200, 200]
    assert "a poison response" in responses[3].json()["error"]["message"]
    assert [r.json()["scores"] for i, r in enumerate(responses) if i != 3] == [
        [float(n)] for n in range(8) if n != 3
    ]
    assert fake.calls[0] == 8  # they were batched together, and the batch was split to isolate the poison


def test_a_prompt_longer_than_the_context_gets_its_own_413_and_its_batch_is_unaffected(activation_rm):
    prompts = ["What colour is the sky?", "How many legs does a spider have?"] * 4
    responses = ["Blue", "Green", "Eight", "Six", "Blue", "Six", "Eight", "Green"]
    expected = activation_rm.rewards(prompts, responses)
    long_prompt = "Is the sky blue? " * 400  # far beyond the tiny model's 512 positions
    prompts[5] = long_prompt
    app = create_app(activation_rm, max_batch_size=8, max_wait_ms=300, max_text_chars=50_000)
    bodies = [{"items": [{"prompt": p, "response": r}]} for p, r in zip(prompts, responses, strict=True)]
    results = asyncio.run(_concurrent(app, bodies))
    assert [r.status_code for r in results] == [200] * 5 + [413] + [200] * 2
    error = results[5].json()["error"]
    assert error["param"] == "items.0" and "takes at most 512" in error["message"]
    scores = [r.json()["scores"][0] for i, r in enumerate(results) if i != 5]
    assert scores == pytest.approx([s for i, s in enumerate(expected) if i != 5], abs=1e-5)
    assert app.state.batcher.stats.refused_items == 1 and app.state.batcher.stats.failed_batches == 0


def _serve_in_thread(app) -> tuple[uvicorn.Server, threading.Thread, int]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=DEFAULT_HOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started
    return server, thread, port


def test_requests_of_clients_that_hung_up_never_reach_the_model():
    """Issue 13: 1,280 items of disconnected clients were still scored (40 s of model time)."""
    fake = FakeRewardModel(delay=0.5)
    app = create_app(fake, max_batch_size=1, max_wait_ms=0)
    server, thread, port = _serve_in_thread(app)
    base = f"http://127.0.0.1:{port}"
    try:
        first = threading.Thread(
            target=lambda: httpx.post(f"{base}/score", json={"items": [{"prompt": "q", "response": "a"}]})
        )
        first.start()  # keeps the model busy while the others queue
        deadline = time.time() + 10
        while not fake.calls and time.time() < deadline:
            time.sleep(0.01)
        sockets = []
        for k in range(5):
            body = (
                f'{{"items": [{{"prompt": "q", "response": "gone{k}"}}, {{"prompt": "q", "response": "x"}}]}}'
            )
            request = (
                f"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            )
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(request.encode())
            sockets.append(sock)
        while httpx.get(f"{base}/health").json()["queued_items"] < 10 and time.time() < deadline:
            time.sleep(0.01)
        for sock in sockets:
            sock.close()
        while httpx.get(f"{base}/health").json()["queued_items"] > 0 and time.time() < deadline:
            time.sleep(0.01)
        last = httpx.post(f"{base}/score", json={"items": [{"prompt": "q", "response": "last"}]}, timeout=10)
        first.join(timeout=10)
        assert last.json() == {"scores": [4.0]}
        assert fake.responses_seen == ["a", "last"]
        stats = httpx.get(f"{base}/health").json()["stats"]
        assert stats["dropped_requests"] == 5 and stats["dropped_items"] == 10
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_an_api_key_guards_every_route_with_a_401_in_the_error_shape():
    fake = FakeRewardModel()
    body = {"items": [{"prompt": "q", "response": "ab"}]}
    with TestClient(create_app(fake, api_key="s3cret")) as test_client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = test_client.post("/score", json=body, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            error = response.json()["error"]
            assert error["type"] == "AuthenticationError" and error["code"] == 401
            assert "Authorization: Bearer" in error["message"]
            assert test_client.get("/health", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert test_client.post("/score", json=body, headers=good).json() == {"scores": [2.0]}
        assert test_client.get("/health", headers=good).json()["limits"]["auth"] is True
    assert fake.calls == [1]
    with TestClient(create_app(FakeRewardModel())) as open_client:  # off by default
        assert open_client.post("/score", json=body).status_code == 200


def test_cli_api_key_env_and_pixel_options(tmp_path, monkeypatch):
    from headvec.cli import app
    from headvec.rewards import loading
    from headvec.serving import core

    seen: dict = {}
    monkeypatch.setattr(loading, "load_reward_model", lambda *args, **kwargs: FakeRewardModel())
    monkeypatch.setattr(core, "run_server", lambda app, host, port, log_level: seen.update(app=app))
    monkeypatch.delenv("HEADVEC_TEST_KEY", raising=False)
    command = ["serve", "rm", str(tmp_path), "--api-key-env", "HEADVEC_TEST_KEY"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and "HEADVEC_TEST_KEY is unset or empty" in result.output
    monkeypatch.setenv("HEADVEC_TEST_KEY", "k3y")
    result = CliRunner().invoke(app, [*command, "--max-image-pixels", "1000", "--max-request-pixels", "2000"])
    assert result.exit_code == 0, result.output
    with TestClient(seen["app"]) as test_client:
        assert test_client.get("/health").status_code == 401
        limits = test_client.get("/health", headers={"Authorization": "Bearer k3y"}).json()["limits"]
    assert (limits["max_image_pixels"], limits["max_request_pixels"], limits["auth"]) == (1000, 2000, True)


def test_the_context_check_tokenizes_only_items_that_might_not_fit(activation_rm, monkeypatch):
    from headvec.serving.core import RequestError
    from headvec.serving.rm import ScoreJob, context_check

    check = context_check(activation_rm)
    counted: list[object] = []
    original = check.loaded.token_count
    monkeypatch.setattr(
        check.loaded, "token_count", lambda prompt: counted.append(prompt) or original(prompt)
    )
    check(ScoreJob("What colour is the sky?", "Blue", None, "items.0"))
    check(ScoreJob("How many legs does a spider have?", "Eight", None, "items.0"))
    assert len(counted) == 1  # the template alone, once; short items are not tokenized
    check(ScoreJob("sky " * 120, "Blue", None, "items.0"))  # might not fit by its bytes: counted, fits
    assert len(counted) == 2
    with pytest.raises(RequestError, match="takes at most 512") as caught:
        check(ScoreJob("sky " * 600, "Blue", None, "items.3"))
    assert caught.value.status == 413 and caught.value.param == "items.3"
