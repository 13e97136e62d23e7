"""Shared memory per process on a real local Ray: every way one process can hold a stored model twice.

The pages of a stored model stay read-only in a process until the last tensor over
them is gone, whichever loads made those tensors; a write through any of them ends the
writer only. Also: writes from torch's worker threads, storages of every element size,
and pipelines that would carry a model by value.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import pytest
import ray
import torch
from environment import assert_stopped_by_a_weight_write
from models import Loaded, identity
from torch import nn

from ray_zerocopy import ActorWrapper, TaskWrapper
from ray_zerocopy_core.errors import PipelineError
from ray_zerocopy_core.inspection import aliases_object_store

pytestmark = pytest.mark.usefixtures("ray_local")


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8)).eval()


def first_weight(model: nn.Module) -> torch.Tensor:
    return next(iter(model.parameters()))


@ray.remote(num_cpus=0.1, max_restarts=0)
class TwoLoads:
    """Loads one wrapper twice (a reload, another option set), as an actor might."""

    def __init__(self, wrapper: ActorWrapper, second_options: dict[str, Any]) -> None:
        self.first = wrapper.load()
        self.second = wrapper.load(**second_options)

    def pid(self) -> int:
        return os.getpid()

    def drop_first(self) -> bool:
        del self.first
        gc.collect()
        return aliases_object_store(first_weight(self.second))

    def write_through_second(self) -> str:
        with torch.no_grad():
            first_weight(self.second).add_(1)
        return "wrote"


def first_weight_copy(model: nn.Module) -> torch.Tensor:
    return first_weight(model).detach().clone()


@pytest.mark.parametrize("second_options", [{}, {"prefault": True}, {"use_fast_load": True}])
def test_dropping_one_of_two_loads_keeps_the_other_read_only(second_options: dict[str, Any]) -> None:
    model = small_model()
    original = first_weight(model).detach().clone()
    wrapper = ActorWrapper(model)
    holder, reader = TwoLoads.remote(wrapper, second_options), Loaded.remote(wrapper)
    assert ray.get(holder.drop_first.remote())
    pid = ray.get(holder.pid.remote())
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(holder.write_through_second.remote(), timeout=60)
    assert_stopped_by_a_weight_write(pid)
    assert torch.equal(ray.get(reader.apply.remote(first_weight_copy)), original)
    fresh = Loaded.remote(wrapper)
    assert torch.equal(ray.get(fresh.apply.remote(first_weight_copy)), original)
    ray.kill(reader)


class Corruptible(nn.Module):
    """A model with a method that writes its own weights, callable in task mode."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def corrupt(self) -> str:
        with torch.no_grad():
            self.linear.weight.add_(1)
        return "wrote"

    def whoami(self) -> tuple[int, int]:
        """The worker process and the model object answering."""
        return os.getpid(), identity(self)


def test_a_task_worker_cache_that_evicts_one_of_two_option_sets_keeps_the_weights_read_only() -> None:
    model = Corruptible().eval()
    x = torch.randn(2, 32)
    expected = model(x)
    one_slot = {
        "runtime_env": {"env_vars": {"RAY_ZEROCOPY_TASK_CACHE_SIZE": "1"}},
        "max_retries": 0,
        "num_cpus": 0.1,
    }
    wrapper = TaskWrapper(model, method_names=["__call__", "corrupt", "whoami"], task_options=one_slot)
    plain, prefaulted = wrapper.load(), wrapper.load(prefault=True)
    # Both option sets on the same worker; each switch evicts the other's cached model.
    seen = []
    for _ in range(3):
        for shim in (plain, prefaulted):
            assert torch.equal(shim(x), expected)
            seen.append(shim.whoami())  # the model the call above rebuilt, still cached
    pids = {pid for pid, _ in seen}
    assert len(pids) == 1, f"the calls ran in {len(pids)} workers, so no cache had to evict: {seen}"
    assert len({model for _, model in seen}) == len(seen), f"a switch found its model still cached: {seen}"
    # The worker dies (SIGSEGV); a Python exception in corrupt() would be a RayTaskError instead.
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        prefaulted.corrupt()
    assert_stopped_by_a_weight_write(pids.pop())
    assert torch.equal(plain(x), expected)
    assert torch.equal(ActorWrapper(model).load()(x), expected)


@ray.remote(num_cpus=2, max_restarts=0)
class ThreadedWriter:
    def __init__(self, wrapper: ActorWrapper) -> None:
        torch.set_num_threads(4)
        self.model = wrapper.load()

    def pid(self) -> int:
        return os.getpid()

    def write(self) -> str:
        with torch.no_grad():
            self.model.weight.mul_(2)  # 64 MiB: split across torch's intra-op threads
        return "wrote"


def test_a_write_from_torch_worker_threads_ends_the_writer_within_seconds() -> None:
    model = nn.Linear(4096, 4096, bias=False)  # 64 MiB
    original_row = model.weight[0].detach().clone()
    wrapper = ActorWrapper(model)
    writer = ThreadedWriter.remote(wrapper)
    pid = ray.get(writer.pid.remote())
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(writer.write.remote(), timeout=60)  # a hang would raise GetTimeoutError
    assert_stopped_by_a_weight_write(pid)
    assert torch.equal(wrapper.load().weight[0], original_row)


class OddSizes(nn.Module):
    """Buffers whose sizes leave a 16-byte dtype misaligned unless the layout aligns it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("flags", torch.tensor([1, 2, 3], dtype=torch.int8))
        self.register_buffer("small", torch.arange(5.0).to(torch.complex128))
        self.register_buffer("other", torch.arange(9.0).to(torch.complex128) * 1j)
        self.register_buffer("halves", torch.arange(7.0).to(torch.bfloat16))

    def forward(self) -> torch.Tensor:
        return self.small.sum() + self.other.sum() + self.flags.sum() + self.halves.float().sum()


@ray.remote(num_cpus=0.1)
def buffers_in_a_worker(wrapper: ActorWrapper) -> dict[str, torch.Tensor]:
    model = wrapper.load()
    assert all(aliases_object_store(t) for t in model.buffers())
    return {name: t.clone() for name, t in model.named_buffers()}


def test_small_buffers_of_every_element_size_load_aligned() -> None:
    model = OddSizes()
    loaded = ray.get(buffers_in_a_worker.remote(ActorWrapper(model)))
    for name, tensor in model.named_buffers():
        assert torch.equal(loaded[name], tensor), name


def test_small_constants_in_a_pipeline_are_fine() -> None:
    class WithConstants:
        def __init__(self) -> None:
            self.model = small_model()
            self.mean = torch.zeros(64)

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x - self.mean)

    x = torch.randn(2, 64)
    pipeline = WithConstants()
    assert torch.equal(ActorWrapper(pipeline).load()(x), pipeline(x))
    with pytest.raises(PipelineError, match="attribute 'lookup'"):
        big = WithConstants()
        big.lookup = torch.zeros(1024, 1024)  # type: ignore[attr-defined]
        ActorWrapper(big)
