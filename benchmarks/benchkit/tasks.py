"""Task mode latency: a call through ``TaskWrapper`` on a warm worker, against a bare
Ray task and against the model called locally (one thread, as in a Ray worker)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import ray
import torch

from benchkit.models import make_input


@ray.remote
def bare_task(ids: torch.Tensor, output_shape: tuple[int, ...]) -> torch.Tensor:
    """A Ray task that takes the same input and returns an output of the same size."""
    return torch.zeros(output_shape)


def _timed(call: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


#: The calls timed: name -> model method. The full forward reads every weight, so its own
#: time (and noise) grows with the model; the embedding lookup isolates the per-call cost.
TASK_CALLS = {"forward": "__call__", "embedding lookup": "embed_tokens"}


def _compare_call(model: torch.nn.Module, remote: Callable[..., Any], method: str, repeats: int, warmup: int) -> dict:
    """Time ``remote`` (a task-mode shim method), a bare task and the local ``method``, interleaved."""
    ids = make_input()
    local_call = getattr(model, method)
    with torch.no_grad():
        output_shape = tuple(local_call(ids).shape)

    def bare() -> Any:
        return ray.get(bare_task.remote(ids, output_shape))

    def local() -> Any:
        with torch.no_grad():
            return local_call(ids)

    def through_wrapper() -> Any:
        return remote(ids)

    _timed(through_wrapper, warmup)  # every worker that may serve a call builds its cache
    _timed(bare, warmup)
    times: dict[str, list[float]] = {"zerocopy": [], "bare_task": [], "local": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(repeats):  # interleaved, so drift on a busy machine hits all three alike
            times["zerocopy"] += _timed(through_wrapper, 1)
            times["bare_task"] += _timed(bare, 1)
            times["local"] += _timed(local, 1)
    finally:
        torch.set_num_threads(threads)
    result: dict[str, Any] = {f"{name}_s": statistics.median(values) for name, values in times.items()}
    result["overhead_s"] = result["zerocopy_s"] - result["local_s"] - result["bare_task_s"]
    result["raw"] = times
    return result


def measure_task_mode(model: torch.nn.Module, repeats: int = 30, warmup: int = 10) -> dict[str, Any]:
    """Per call in :data:`TASK_CALLS`: median seconds of the three ways and the overhead beyond both."""
    from ray_zerocopy_core import TaskWrapper

    wrapper = TaskWrapper(model, method_names=tuple(TASK_CALLS.values()))
    try:
        shim = wrapper.load()
        return {
            name: _compare_call(model, getattr(shim, method), method, repeats, warmup)
            for name, method in TASK_CALLS.items()
        }
    finally:
        wrapper.release()
