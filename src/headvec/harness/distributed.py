"""The Ray backend: one actor per worker builds the reward model from its spec and judges whole chunks.

The driver keeps every actor busy with one chunk at a time and appends each returned chunk to the
results file as soon as it arrives, so a killed driver keeps everything already returned. With no
``address`` a private local cluster is started on 127.0.0.1 with ``workers`` CPUs and shut down after.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from headvec.errors import HeadvecError
from headvec.harness.schema import PairItem


class _Worker:
    def __init__(self, spec: str, options: dict[str, Any], threads: int):
        import torch

        from headvec.harness.registry import RMOptions, build_reward_model

        torch.set_num_threads(threads)
        self.rm = build_reward_model(spec, RMOptions(**options))

    def evaluate(self, items: list[dict], k: int, seed: int) -> list[dict]:
        from headvec.harness.runner import evaluate_items

        return evaluate_items(self.rm, [PairItem.model_validate(i) for i in items], k, seed)


def run_on_ray(
    chunks: Sequence[Sequence[PairItem]],
    settings: Any,
    sink: Callable[[list[dict]], None],
    *,
    workers: int = 1,
    address: str | None = None,
    threads_per_worker: int = 1,
) -> None:
    """Judge ``chunks`` on Ray actors, handing each finished chunk's records to ``sink`` in arrival order."""
    try:
        import ray
    except ImportError:
        raise HeadvecError("--backend ray needs Ray: pip install 'ray[default]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(
                address="local",
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=100 * 1024 * 1024,
                _node_ip_address="127.0.0.1",
            )
    try:
        actor_cls = ray.remote(num_cpus=1)(_Worker)
        actors = [
            actor_cls.remote(settings.rm, settings.options, threads_per_worker)
            for _ in range(max(1, workers))
        ]
        queue = list(chunks)
        in_flight: dict[Any, Any] = {}

        def submit(actor: Any) -> None:
            if queue:
                chunk = queue.pop(0)
                payload = [item.model_dump() for item in chunk]
                in_flight[actor.evaluate.remote(payload, settings.k, settings.seed)] = actor

        for actor in actors:
            submit(actor)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ready[0])
            try:
                records = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
                if isinstance(cause, HeadvecError):
                    raise HeadvecError(str(cause)) from None
                raise
            sink(records)
            submit(actor)
    finally:
        if started_here:
            ray.shutdown()
