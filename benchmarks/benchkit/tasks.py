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


def measure_task_mode(model: torch.nn.Module, repeats: int = 30, warmup: int = 10) -> dict[str, Any]:
    """Median per-call seconds of the three ways, plus the wrapper's overhead beyond both."""
    from ray_zerocopy_core import TaskWrapper

    ids = make_input()
    threads = torch.get_num_threads()
    with torch.no_grad():
        output_shape = tuple(model(ids).shape)
    wrapper = TaskWrapper(model)
    local: list[float] = []
    bare: list[float] = []
    zerocopy: list[float] = []
    try:
        _timed(lambda: wrapper(ids), warmup)  # every worker that may serve a call builds its cache
        _timed(lambda: ray.get(bare_task.remote(ids, output_shape)), warmup)
        torch.set_num_threads(1)
        for _ in range(repeats):  # interleaved, so drift on a busy machine hits all three alike
            zerocopy += _timed(lambda: wrapper(ids), 1)
            bare += _timed(lambda: ray.get(bare_task.remote(ids, output_shape)), 1)
            with torch.no_grad():
                local += _timed(lambda: model(ids), 1)
    finally:
        torch.set_num_threads(threads)
        wrapper.release()
    result = {
        "local_s": statistics.median(local),
        "bare_task_s": statistics.median(bare),
        "zerocopy_s": statistics.median(zerocopy),
        "raw": {"local": local, "bare_task": bare, "zerocopy": zerocopy},
    }
    result["overhead_s"] = result["zerocopy_s"] - result["local_s"] - result["bare_task_s"]
    return result
