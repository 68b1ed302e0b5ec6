"""Load-and-abuse test of both servers (issue 13), bounded, on loopback, with the servers' peak RSS.

Each server runs as ``headvec serve ...`` in a subprocess on a free 127.0.0.1 port. While well-formed
clients send requests concurrently, hostile ones send image bombs (12000 x 12000 PNGs of ~140 KB each),
poison items (a prompt longer than the model's context, inside a burst of 32), requests whose client
hangs up at once, and (chat) ``max_tokens=5000``, a 40 MB body and wrong field types. Every well-formed
request must come back 200 with the same answer it gets alone, every hostile one its 4xx, and the
server's resident memory is sampled every 20 ms (and read from ``VmHWM``). Run with::

    OMP_NUM_THREADS=1 .venv/bin/python bench/_server_abuse.py --json /tmp/abuse.json --markdown
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rm_server import _free_port, request_items  # noqa: E402


def bomb_png(width: int = 12000, height: int = 12000) -> str:
    """A black greyscale PNG, compressed row by row: ~140 KB on the wire, 430 MB decoded to RGB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), b"\x00" * (width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Server:
    """A ``headvec serve`` subprocess on a free loopback port, with an RSS sampler; always terminated."""

    def __init__(self, args: list[str], health: str) -> None:
        self.port = _free_port()
        self.command = [sys.executable, "-m", "headvec.cli", "serve", *args, "--port", str(self.port)]
        self.command += ["--threads", "1", "--log-level", "error"]
        self.base, self.health = f"http://127.0.0.1:{self.port}", health
        self.samples: list[int] = []
        self.sampling = False

    def __enter__(self) -> Server:
        import httpx

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        deadline = time.perf_counter() + 180
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}: {shlex.join(self.command)}"
                )
            try:
                if httpx.get(self.base + self.health, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("server did not become healthy within 180 s")

    def sample(self) -> None:
        self.sampling = True

        def loop() -> None:
            while self.sampling and self.process.poll() is None:
                self.samples.append(rss_kib(self.process.pid))
                time.sleep(0.02)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def memory(self) -> dict[str, float]:
        self.sampling = False
        self.thread.join(timeout=5)
        return {
            "rss_before_mib": round(self.samples[0] / 1024, 1),
            "rss_peak_sampled_mib": round(max(self.samples) / 1024, 1),
            "vm_hwm_mib": round(rss_kib(self.process.pid, "VmHWM") / 1024, 1),
        }

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def hang_up(port: int, path: str, body: dict[str, Any], after_s: float = 0.05) -> None:
    """Send a whole request, then close the connection before the answer."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    writer.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    await asyncio.sleep(after_s)
    writer.close()


def fit_small(out: Path) -> dict[str, Any]:
    """A quickly fitted activation RM on the toy model (the serving path is measured, not quality)."""
    import torch

    from headvec.models import load
    from headvec.rewards.activation import TOY_FORMAT, ActivationRewardModel, Judgement
    from headvec.toyworld.export import generate

    torch.set_num_threads(1)
    loaded = load("toy", device="cpu")
    items = generate("judge", 0, 32, "train")
    judgements = [Judgement(i.question, i.candidate, i.answer == "yes", i.image()) for i in items]
    settings = dict(n_shots=2, n_prompts=8, steps=3, samples_per_step=4, n_search_items=8)
    settings |= dict(n_selection_items=4, min_examples_per_verdict=2, seed=0)
    ActivationRewardModel(loaded, TOY_FORMAT, **settings).fit(judgements).save_pretrained(out)  # type: ignore[arg-type]
    return {"context": loaded.arch.max_positions}


async def rm_abuse(server: Server, items: list[dict[str, str]], alone: list[float]) -> dict[str, Any]:
    import httpx

    port, n_clients, rounds = server.port, 32, 4
    bomb = bomb_png()
    poison = {"prompt": "Is the ball red? " * 600, "response": "yes"}
    results: dict[str, list[int]] = {"bomb": [], "poison": []}
    mismatches: list[str] = []

    async with httpx.AsyncClient(base_url=server.base, timeout=120) as client:

        async def good(k: int) -> None:
            for r in range(rounds):
                index = (k * rounds + r) % len(items)
                response = await client.post("/score", json={"items": [items[index]]})
                if response.status_code != 200:
                    mismatches.append(f"{response.status_code}: {response.text[:200]}")
                elif abs(response.json()["scores"][0] - alone[index]) > 1e-4:
                    mismatches.append(f"item {index}: {response.json()['scores'][0]} != {alone[index]}")

        async def hostile(kind: str, body: dict[str, Any]) -> None:
            results[kind].append((await client.post("/score", json=body)).status_code)

        start = time.perf_counter()
        await asyncio.gather(
            *(good(k) for k in range(n_clients)),
            *(
                hostile("bomb", {"items": [{"prompt": "q", "response": "a", "image": bomb}] * 4})
                for _ in range(2)
            ),
            *(hostile("poison", {"items": [poison]}) for _ in range(4)),
            *(hang_up(port, "/score", {"items": items[:32]}) for _ in range(16)),
        )
        seconds = time.perf_counter() - start
        await asyncio.sleep(1.0)
        stats = (await client.get("/health")).json()["stats"]
    return {
        "well_formed_requests": n_clients * rounds,
        "well_formed_wrong_or_failed": mismatches,
        "bomb_statuses": results["bomb"],
        "bomb_request_bytes": len(bomb) * 4,
        "poison_statuses": results["poison"],
        "hung_up_requests": 16,
        "dropped_items": stats["dropped_items"],
        "refused_items": stats["refused_items"],
        "max_batch": stats["max_batch"],
        "seconds": round(seconds, 2),
    }


async def chat_abuse(server: Server) -> dict[str, Any]:
    import httpx

    questions = [f"What colour is the {thing}?" for thing in ("ball", "cube", "cone", "ring")] * 4
    statuses: dict[str, int] = {}
    mismatches: list[str] = []
    async with httpx.AsyncClient(base_url=server.base, timeout=120) as client:

        async def ask(question: str, **extra: Any) -> httpx.Response:
            body = {"messages": [{"role": "user", "content": question}], "max_tokens": 4, **extra}
            return await client.post("/v1/chat/completions", json=body)

        alone = {q: (await ask(q)).json()["choices"][0]["message"]["content"] for q in set(questions)}
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + bomb_png()}}
        hostile = {
            "max_tokens_5000": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000},
            "wrong_type": {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
            "image_bomb": {
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]
            },
            "long_prompt": {"messages": [{"role": "user", "content": "red ball " * 600}]},
        }

        async def good(question: str) -> None:
            response = await ask(question)
            if response.status_code != 200:
                mismatches.append(f"{response.status_code}: {response.text[:200]}")
            elif response.json()["choices"][0]["message"]["content"] != alone[question]:
                mismatches.append(f"{question!r}: answer changed under load")

        async def bad(name: str, body: dict[str, Any]) -> None:
            statuses[name] = (await client.post("/v1/chat/completions", json=body)).status_code

        async def big_body() -> None:
            body = b'{"messages": [{"role": "user", "content": "' + b"x" * 40_000_000 + b'"}]}'
            try:
                response = await client.post(
                    "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
                )
                statuses["body_40MB"] = response.status_code
            except httpx.HTTPError as exc:  # the server may answer 413 and close before reading it all
                statuses["body_40MB"] = -1 if "413" not in str(exc) else 413

        start = time.perf_counter()
        hang = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}
        await asyncio.gather(
            *(good(q) for q in questions),
            *(bad(name, body) for name, body in hostile.items()),
            big_body(),
            *(hang_up(server.port, "/v1/chat/completions", hang) for _ in range(8)),
        )
        seconds = time.perf_counter() - start
    return {
        "well_formed_requests": len(questions),
        "well_formed_wrong_or_failed": mismatches,
        "hostile_statuses": statuses,
        "hung_up_requests": 8,
        "seconds": round(seconds, 2),
    }


def run(timeout: float) -> dict[str, Any]:
    import httpx

    signal.alarm(int(timeout))  # the whole benchmark is bounded
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        artifact = Path(scratch) / "rm"
        result["model"] = fit_small(artifact)
        items, _ = request_items(64, 1, with_images=True)
        with Server(
            ["rm", str(artifact), "--max-batch-size", "32", "--max-wait-ms", "20"], "/health"
        ) as server:
            alone = [
                httpx.post(f"{server.base}/score", json={"items": [i]}, timeout=60).json()["scores"][0]
                for i in items
            ]
            server.sample()
            result["rm"] = asyncio.run(rm_abuse(server, items, alone))
            result["rm"]["memory"] = server.memory()
        with Server(["chat", "toy", "--max-batch-size", "8"], "/v1/models") as server:
            server.sample()
            result["chat"] = asyncio.run(chat_abuse(server))
            result["chat"]["memory"] = server.memory()
    signal.alarm(0)
    return result


def _ok(part: dict[str, Any]) -> str:
    wrong = part["well_formed_wrong_or_failed"]
    return "all correct" if not wrong else f"{len(wrong)} wrong or failed"


def _memory(part: dict[str, Any]) -> str:
    memory = part["memory"]
    peak = f"{memory['rss_peak_sampled_mib']} / {memory['vm_hwm_mib']} MiB"
    return f"{memory['rss_before_mib']} MiB | {peak}"


def render(result: dict[str, Any]) -> str:
    """The markdown table of one run."""
    rm, chat = result["rm"], result["chat"]
    rm_hostile = (
        f"2 requests of 4 image bombs ({rm['bomb_request_bytes'] / 1e6:.2f} MB each): {rm['bomb_statuses']}; "
        f"4 poison prompts: {rm['poison_statuses']}; {rm['hung_up_requests']} hang-ups of 32 items: "
        f"{rm['dropped_items']} items dropped unscored"
    )
    chat_hostile = ", ".join(f"{k}: {v}" for k, v in chat["hostile_statuses"].items())
    chat_hostile += f"; {chat['hung_up_requests']} hang-ups"
    lines = [
        "| server | well-formed requests | hostile requests and their statuses | s | RSS before | "
        "peak RSS (sampled / VmHWM) |",
        "|---|---|---|---|---|---|",
        f"| rm | {rm['well_formed_requests']}: {_ok(rm)} | {rm_hostile} | {rm['seconds']} | {_memory(rm)} |",
        f"| chat | {chat['well_formed_requests']}: {_ok(chat)} | {chat_hostile} | {chat['seconds']} | "
        f"{_memory(chat)} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    result = run(args.timeout)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(render(result) if args.markdown else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
