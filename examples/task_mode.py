"""Task mode: every model call runs as a Ray task, on a worker that caches the model.

``TaskWrapper`` replaces the pipeline's models with shims. Calling the pipeline runs
its own Python code here, and each model call inside it becomes a Ray task. The worker
that runs the task rebuilds the model zero-copy on first use and keeps it in a small
per-process cache (size: ``RAY_ZEROCOPY_TASK_CACHE_SIZE``, default 4), so later calls
on that worker skip the rebuild.

The script also shows ``method_names`` (expose a model method other than ``__call__``)
and ``task_options`` (Ray options for every task, here ``num_cpus``).

Run: ``python examples/task_mode.py``
"""

from __future__ import annotations

import time

import ray
import torch
from torch import nn

from ray_zerocopy import ModelWrapper, TaskWrapper


class Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)

    def embed_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.proj(x), dim=-1)


class Scorer:
    """A pipeline: plain Python around a model attribute."""

    def __init__(self) -> None:
        self.embedder = Embedder().eval()
        self.scale = 2.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedder(x).sum(dim=-1) * self.scale


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    torch.manual_seed(0)
    x = torch.randn(5, 16)

    # 1. A bare model: the wrapper is called like the model.
    model = Embedder().eval()
    remote_model = ModelWrapper.for_tasks(model, method_names=["__call__", "embed_normalized"])
    with torch.no_grad():
        assert torch.allclose(remote_model(x), model(x))
        assert torch.allclose(remote_model.embed_normalized(x), model.embed_normalized(x))
    print("bare model: __call__ and embed_normalized ran as Ray tasks")

    # 2. A pipeline: its own __call__ runs here, the embedder call runs as a task.
    pipeline = Scorer()
    wrapped = TaskWrapper(pipeline, task_options={"num_cpus": 0.5})
    with torch.no_grad():
        expected = pipeline(x)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        out = wrapped(x)
        timings.append(time.perf_counter() - start)
        assert torch.allclose(out, expected)
    print(f"pipeline: first call {timings[0] * 1e3:.0f} ms (may rebuild), later calls {min(timings[1:]) * 1e3:.0f} ms")
    print(f"plain attributes still reachable through the wrapper: scale={wrapped.scale}")

    ray.shutdown()


if __name__ == "__main__":
    main()
