"""Reward-model server load test: 1,000 requests from 32 concurrent clients on loopback, bounded.

Fits an activation reward model on the shipped toy LLaVA (toy-world judge data, small settings; a tiny
random model if the toy weights are missing), saves it, and serves it with ``headvec serve rm`` in a
subprocess (so client and server do not share a GIL) twice: with dynamic batching (``--max-batch-size
32 --max-wait-ms 5``) and with ``--max-batch-size 1``. Each run sends one (prompt, response, image) item
per request from ``--clients`` httpx clients and reports errors, p50/p99 latency and requests/s; the
ratio of the two throughputs is measured in this one run. Every run stops by itself (``--timeout``).
Run alone with::

    .venv/bin/python bench/_rm_server.py --json /tmp/rm_server.json --markdown

``render_rm_server(result)`` gives the markdown section for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODES = {"dynamic": ["--max-batch-size", "32", "--max-wait-ms", "5"], "batch1": ["--max-batch-size", "1"]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _png_b64(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def fit_reward_model(out: Path, n_fit: int, seed: int) -> dict[str, Any]:
    """Fit and save the activation RM; return what the report says about it."""
    import torch

    from headvec.errors import HeadvecError
    from headvec.models import load
    from headvec.rewards.activation import TOY_FORMAT, ActivationRewardModel, Judgement, VerdictFormat
    from headvec.toyworld.export import generate

    torch.set_num_threads(1)
    try:
        loaded, model_name, fmt = load("toy", device="cpu"), "toy LLaVA (shipped weights)", TOY_FORMAT
    except HeadvecError:  # no shipped weights: a tiny random model (speed, not quality, is measured)
        from headvec.testing import build_tiny_model

        path = build_tiny_model("llama", out.parent / "tiny-llama", seed=0)
        loaded, model_name, fmt = load(str(path), device="cpu"), "tiny random llama", VerdictFormat()
    items = generate("judge", seed, n_fit, "train")
    judgements = [
        Judgement(
            item.question,
            item.candidate,
            item.answer == "yes",
            item.image() if loaded.is_multimodal else None,
        )
        for item in items
    ]
    settings = dict(
        n_shots=4,
        n_prompts=16,
        steps=30,
        samples_per_step=8,
        n_search_items=16,
        n_selection_items=8,
        min_examples_per_verdict=4,
        seed=seed,
    )
    start = time.perf_counter()
    rm = ActivationRewardModel(loaded, fmt, **settings).fit(judgements)  # type: ignore[arg-type]
    fit_seconds = time.perf_counter() - start
    rm.save_pretrained(out)
    return {
        "model": model_name,
        "multimodal": loaded.is_multimodal,
        "fit_examples": len(judgements),
        "fit_settings": settings,
        "fit_seconds": round(fit_seconds, 1),
        "heads": len(rm.heads_),
        "rm": rm,
    }


def request_items(n: int, seed: int, with_images: bool) -> tuple[list[dict[str, str]], list[bool]]:
    from headvec.toyworld.export import generate

    items = generate("judge", seed, n, "test")
    bodies = []
    for item in items:
        body = {"prompt": item.question, "response": item.candidate}
        if with_images:
            body["image"] = _png_b64(item.image())
        bodies.append(body)
    return bodies, [item.answer == "yes" for item in items]


class ServerProcess:
    """``headvec serve rm`` in a subprocess on a free loopback port; always terminated on exit."""

    def __init__(self, artifact: Path, options: list[str], threads: int) -> None:
        self.port = _free_port()
        self.command = [
            sys.executable, "-m", "headvec.cli", "serve", "rm", str(artifact),
            "--port", str(self.port), "--threads", str(threads), "--log-level", "warning", *options,
        ]  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        import httpx

        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}: {shlex.join(self.command)}"
                )
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("server did not become healthy within 120 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _httpx_worker(base: str, take, items, latencies, scores, errors) -> None:
    """One client = one httpx.AsyncClient with its own keep-alive connection (a shared pool is slower)."""
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for index in take:
            start = time.perf_counter()
            try:
                response = await client.post("/score", json={"items": [items[index]]})
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies[index] = time.perf_counter() - start
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:200]}")
            else:
                scores[index] = response.json()["scores"][0]


async def _raw_worker(base: str, take, items, latencies, scores, errors) -> None:
    """One client = one keep-alive HTTP/1.1 connection on asyncio streams: almost no client CPU, so
    the server, not the load generator, sets the pace."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for index in take:
            body = json.dumps({"items": [items[index]]}).encode()
            head = f"POST /score HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            start = time.perf_counter()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            payload = await reader.readexactly(int(headers["content-length"]))
            latencies[index] = time.perf_counter() - start
            status = int(lines[0].split()[1])
            if status != 200:
                errors.append(f"{status}: {payload[:200].decode(errors='replace')}")
            else:
                scores[index] = json.loads(payload)["scores"][0]
    except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


CLIENTS = {"httpx": _httpx_worker, "raw": _raw_worker}


async def load_test(
    base: str, items: list[dict[str, str]], clients: int, timeout: float, client: str = "httpx"
) -> tuple[list[float], list[float | None], list[str]]:
    """``clients`` concurrent workers each take the next item until none are left; latency in s."""
    latencies: list[float] = [float("nan")] * len(items)
    scores: list[float | None] = [None] * len(items)
    errors: list[str] = []
    take = iter(range(len(items)))
    workers = (CLIENTS[client](base, take, items, latencies, scores, errors) for _ in range(clients))
    await asyncio.wait_for(asyncio.gather(*workers), timeout)
    missing = sum(x != x for x in latencies) - len(errors)
    if missing > 0:
        errors.append(f"{missing} requests never answered")
    return latencies, scores, errors


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_mode(
    artifact: Path, mode: str, client: str, items: list[dict[str, str]], args: argparse.Namespace
) -> dict[str, Any]:
    import httpx

    with ServerProcess(artifact, MODES[mode], args.server_threads) as server:
        warm = items[: args.clients]
        asyncio.run(load_test(server.base, warm, args.clients, args.timeout, client))
        before = httpx.get(f"{server.base}/health").json()["stats"]
        server_cpu, client_cpu = _cpu_seconds(server.process.pid), time.process_time()
        start = time.perf_counter()
        latencies, scores, errors = asyncio.run(
            load_test(server.base, items, args.clients, args.timeout, client)
        )
        wall = time.perf_counter() - start
        server_cpu = _cpu_seconds(server.process.pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
        after = httpx.get(f"{server.base}/health").json()["stats"]
    done = [x for x in latencies if x == x]
    batches = after["batches"] - before["batches"]
    return {
        "mode": mode,
        "client": client,
        "server_options": MODES[mode],
        "requests": len(items),
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_seconds": round(wall, 3),
        "throughput_rps": round(len(items) / wall, 2),
        "p50_ms": round(_percentile(done, 0.50) * 1000, 2) if done else None,
        "p99_ms": round(_percentile(done, 0.99) * 1000, 2) if done else None,
        "mean_ms": round(statistics.fmean(done) * 1000, 2) if done else None,
        "model_calls": batches,
        "mean_batch": round((after["items"] - before["items"]) / batches, 2) if batches else 0.0,
        "server_cpu_ms_per_request": round(server_cpu / len(items) * 1000, 2),
        "client_cpu_ms_per_request": round(client_cpu / len(items) * 1000, 2),
        "scores": scores,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--client", choices=["httpx", "raw", "both"], default="both")
    parser.add_argument("--fit-examples", type=int, default=64)
    parser.add_argument("--server-threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a load-test run may take")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    clients = ["httpx", "raw"] if args.client == "both" else [args.client]
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="headvec-rm-server-") as tmp:
        artifact = Path(tmp) / "rm"
        fitted = fit_reward_model(artifact, args.fit_examples, args.seed)
        rm = fitted.pop("rm")
        items, labels = request_items(args.requests, args.seed + 1, fitted["multimodal"])
        runs = {
            f"{client}/{mode}": run_mode(artifact, mode, client, items, args)
            for client in clients
            for mode in ("batch1", "dynamic")
        }
    # Correctness: served scores equal direct rm.rewards on a sample; the RM's accuracy on these items.
    sample = items[:32]
    images = None
    if fitted["multimodal"]:
        from PIL import Image

        images = [Image.open(io.BytesIO(base64.b64decode(item["image"]))).convert("RGB") for item in sample]
    direct = rm.rewards([i["prompt"] for i in sample], [i["response"] for i in sample], images)
    served = runs[f"{clients[0]}/dynamic"]["scores"]
    diffs = [abs(a - b) for a, b in zip(direct, served, strict=False) if b is not None]
    scored = [(s, y) for s, y in zip(served, labels, strict=True) if s is not None]
    accuracy = sum((s > 0.5) == y for s, y in scored) / len(scored) if scored else float("nan")
    for run in runs.values():
        run.pop("scores")
    result = {
        **fitted,
        "clients": args.clients,
        "requests": args.requests,
        "server_threads": args.server_threads,
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in (*load_start, *os.getloadavg())],
        "runs": runs,
        "throughput_ratio": {
            client: round(
                runs[f"{client}/dynamic"]["throughput_rps"] / runs[f"{client}/batch1"]["throughput_rps"], 2
            )
            for client in clients
        },
        "max_abs_diff_vs_direct": max(diffs) if diffs else None,
        "accuracy_at_0_5": round(accuracy, 4),
        "command": ".venv/bin/python bench/_rm_server.py --json out.json --markdown",
    }
    args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        print("\n".join(render_rm_server(result)))


CLIENT_LABELS = {
    "httpx": "httpx.AsyncClient per client",
    "raw": "raw asyncio HTTP/1.1 (near-zero client CPU)",
}
MODE_LABELS = {"dynamic": "dynamic batching (≤ 32 items, ≤ 5 ms)", "batch1": "batch size 1"}


def render_rm_server(result: dict[str, Any]) -> list[str]:
    """The reward-model server section of docs/benchmarks.md."""
    runs = result["runs"]
    total_errors = sum(run["errors"] for run in runs.values())
    load = result["load_avg"]
    lines = [
        "## Reward-model server: load test on loopback",
        "",
        f"Activation RM on the {result['model']} ({result['heads']} patched heads, fitted on "
        f"{result['fit_examples']} toy-world judge examples in {result['fit_seconds']:.0f} s), served by "
        f"`headvec serve rm` in its own process (torch threads {result['server_threads']}). Each run: "
        f"{result['requests']:,} requests from {result['clients']} concurrent clients, one item "
        f"{'(prompt, response, base64 PNG) ' if result['multimodal'] else ''}per request, after a "
        f"{result['clients']}-request warm-up; a fresh server per run. {result['cpus']} CPUs shared with "
        f"other jobs, load average {load[0]:.2f} before / {load[3]:.2f} after. "
        f"Command: `{result['command']}`.",
        "",
        "| client | server | errors | p50 | p99 | throughput | model calls | mean batch "
        "| server CPU / req | client CPU / req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs.values():
        lines.append(
            f"| {CLIENT_LABELS[run['client']]} | {MODE_LABELS[run['mode']]} | {run['errors']} "
            f"| {run['p50_ms']:.1f} ms | {run['p99_ms']:.1f} ms | {run['throughput_rps']:.1f} req/s "
            f"| {run['model_calls']} | {run['mean_batch']:.1f} | {run['server_cpu_ms_per_request']:.1f} ms "
            f"| {run['client_cpu_ms_per_request']:.1f} ms |"
        )
    ratios = ", ".join(
        f"**{ratio:.1f}×** with the {client} client" for client, ratio in result["throughput_ratio"].items()
    )
    diff = result["max_abs_diff_vs_direct"]
    lines += [
        "",
        f"Throughput, dynamic batching / batch size 1 (same run): {ratios}. Errors: **{total_errors}** of "
        f"{len(runs) * result['requests']:,} requests. Served scores match `rm.rewards` on the same items "
        f"within {diff:.1e}; the RM's accuracy on these held-out items (reward > 0.5 = yes): "
        f"{result['accuracy_at_0_5']:.3f}.",
    ]
    return lines


if __name__ == "__main__":
    main()
