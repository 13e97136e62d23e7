"""Load on one node: many actors on one model, many task calls; no errors, memory flat.

Memory is each worker's private memory (``Pss - Pss_Shmem`` from ``smaps_rollup``,
see ``memory.private_bytes``): object-store pages are shmem and not counted, so an
actor that copied its weights, or a worker that leaked per call, would grow here.
The full sizes are marked ``slow`` (``pytest -m slow``); small variants run by default.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
import torch
from models import MIB
from torch import nn

from ray_zerocopy import ActorWrapper, TaskWrapper
from ray_zerocopy_core.inspection import aliases_object_store
from ray_zerocopy_core.process_memory import private_memory_bytes as private_bytes

pytestmark = pytest.mark.usefixtures("ray_local")


class Probed(nn.Module):
    """A model of ``mib`` MiB that can report on the worker process it runs in."""

    def __init__(self, mib: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(256, mib * MIB // (256 * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def probe(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, bool]:
        """The output for ``x``, with the worker's pid, its cache misses, and whether the weights are shared."""
        from ray_zerocopy_core.task_mode import worker_cache

        return self(x), os.getpid(), worker_cache().misses, aliases_object_store(self.linear.weight)


@ray.remote(num_cpus=0.1)
class Replica:
    def __init__(self, wrapper: ActorWrapper) -> None:
        self.before = private_bytes()
        self.model = wrapper.load()
        self.model(torch.ones(1, 256))  # touch every weight page once

    def report(self) -> tuple[int, int, bool]:
        return self.before, private_bytes(), aliases_object_store(self.model.linear.weight)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@pytest.mark.parametrize("n_actors", [4, pytest.param(16, marks=pytest.mark.slow)])
def test_many_actors_share_one_model(n_actors: int) -> None:
    model = Probed(64)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    wrapper = ActorWrapper(model)
    replicas = [Replica.remote(wrapper) for _ in range(n_actors)]
    x = torch.randn(3, 256)
    expected = model(x).detach()
    for output in ray.get([r.predict.remote(x) for r in replicas], timeout=600):
        assert torch.allclose(output, expected)
    reports = ray.get([r.report.remote() for r in replicas], timeout=600)
    growth = [after - before for before, after, _ in reports]
    print(f"{n_actors} actors: private memory growth per actor from load + forward (MiB):", [g // MIB for g in growth])
    assert all(shared for _, _, shared in reports)
    # Loading maps the shared copy: far less private growth than one copy of the weights.
    assert max(growth) < weight_bytes // 2, growth
    for replica in replicas:
        ray.kill(replica)


@pytest.mark.parametrize(
    ("sequential", "concurrent"), [(100, 40), pytest.param(1000, 200, marks=pytest.mark.slow)], ids=["small", "full"]
)
def test_many_task_calls(sequential: int, concurrent: int) -> None:
    model = Probed()
    # One CPU per task: at most two workers on this 2-CPU Ray at a time.
    wrapper = TaskWrapper(model, method_names=["__call__", "probe"])
    x = torch.randn(2, 256)
    expected = model(x).detach()
    for _ in range(20):  # warm the workers and their caches
        assert torch.allclose(wrapper(x), expected)

    misses: dict[int, list[int]] = defaultdict(list)  # pid -> its cache misses, call after call
    first_private: dict[int, int] = {}  # pid -> its private memory when first seen
    lock = threading.Lock()

    def call(_: int) -> bool:
        output, pid, worker_misses, shared = wrapper.probe(x)
        with lock:
            misses[pid].append(worker_misses)
            if pid not in first_private:
                first_private[pid] = private_bytes(pid)  # same machine: read from the driver
        return shared and torch.allclose(output, expected)

    assert all(call(i) for i in range(sequential))
    with ThreadPoolExecutor(max_workers=16) as pool:
        assert all(pool.map(call, range(concurrent)))  # right outputs, weights in the object store

    assert sum(map(len, misses.values())) == sequential + concurrent
    assert max(map(len, misses.values())) >= 10, misses  # some worker answered many calls
    # Rebuilt at most once per worker (on its first call), then served from its cache.
    rebuilt_again = {pid: counts for pid, counts in misses.items() if len(set(counts)) > 1}
    assert not rebuilt_again, rebuilt_again
    alive = [pid for pid in first_private if os.path.exists(f"/proc/{pid}")]
    assert alive, first_private
    growth = {pid: private_bytes(pid) - first_private[pid] for pid in alive}
    print(
        f"{sequential} + {concurrent} calls: private memory growth per worker (KiB):",
        {p: g // 1024 for p, g in growth.items()},
    )
    # Flat: not even 16 KiB per call.
    assert max(growth.values()) < 16 * 1024 * sequential, growth
