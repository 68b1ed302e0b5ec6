"""Work spread over Ray actors, each holding its own copy of a model (reward models, activation caches).

One actor per worker builds its state once from a picklable factory, then handles tasks one at a time;
the driver keeps every actor busy and hands each result to a sink in arrival order, so a killed driver
keeps everything already returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from headvec.errors import HeadvecError


class _Actor:
    """Builds ``factory()`` once (with ``threads`` torch threads), then calls it on each task."""

    def __init__(self, factory: Callable[[], Callable[[Any], Any]], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.handle = factory()

    def run(self, task: Any) -> Any:
        return self.handle(task)


def run_on_actors(
    factory: Callable[[], Callable[[Any], Any]],
    tasks: Iterable[Any],
    sink: Callable[[Any, Any], None],
    *,
    workers: int = 1,
    address: str | None = None,
    threads_per_worker: int = 1,
) -> None:
    """Run ``factory()(task)`` for every task on ``workers`` Ray actors; ``sink(task, result)`` each.

    With no ``address`` a private local cluster is started on 127.0.0.1 with ``workers`` CPUs and shut
    down after. A :class:`HeadvecError` raised in an actor is raised here as itself (one line).
    """
    try:
        import ray
    except ImportError:
        raise HeadvecError("--backend ray needs Ray: pip install 'headvec[ray]'") from None
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
        actor_cls = ray.remote(num_cpus=1)(_Actor)
        actors = [actor_cls.remote(factory, threads_per_worker) for _ in range(max(1, workers))]
        queue = list(tasks)
        in_flight: dict[Any, tuple[Any, Any]] = {}

        def submit(actor: Any) -> None:
            if queue:
                task = queue.pop(0)
                in_flight[actor.run.remote(task)] = (actor, task)

        for actor in actors:
            submit(actor)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor, task = in_flight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
                if isinstance(cause, HeadvecError):
                    raise HeadvecError(str(cause)) from None
                raise
            sink(task, result)
            submit(actor)
    finally:
        if started_here:
            ray.shutdown()
