"""``device="cuda:N"``: one host-to-device copy after a zero-copy fetch (skipped without a GPU)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import torch
from environment import local_ray
from models import tied_lm, trace
from torch import nn

from ray_zerocopy import ActorWrapper, ModelWrapper, TaskWrapper

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def ray_gpu() -> Iterator[None]:
    with local_ray(num_cpus=4, num_gpus=1):
        yield


@ray.remote(num_gpus=0.25, num_cpus=0.5)
class GpuHolder:
    def __init__(self, wrapper: ModelWrapper, **load_options: Any) -> None:
        start = time.perf_counter()
        self.model = wrapper.load(**load_options)
        torch.cuda.synchronize()
        self.load_seconds = time.perf_counter() - start

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        with torch.no_grad():
            return self.model(tokens.to(device)).cpu()

    def facts(self) -> dict[str, Any]:
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return {
            "devices": {str(t.device) for t in tensors},
            "tied": hasattr(self.model, "head") and self.model.head.weight is self.model.embed.weight,
            "load_seconds": self.load_seconds,
        }

    def write(self) -> float:
        with torch.no_grad():
            self.model.block.weight.add_(1.0)
        return float(self.model.block.weight.sum())


def reference(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The model's output computed on the GPU here (on a copy: the model stays on the CPU)."""
    with torch.no_grad():
        return copy.deepcopy(model).cuda()(tokens.cuda()).cpu()


def test_actor_loads_onto_the_gpu_with_ties_kept(ray_gpu: None) -> None:
    model = tied_lm(0, vocab=1000, dim=64)
    tokens = torch.randint(0, 1000, (4, 16))
    wrapper = ActorWrapper(model, device="cuda:0")
    actor = GpuHolder.remote(wrapper)
    facts = ray.get(actor.facts.remote())
    assert facts["devices"] == {"cuda:0"} and facts["tied"]
    assert torch.allclose(ray.get(actor.run.remote(tokens)), reference(model, tokens), atol=1e-5)


def test_gpu_copy_is_private_and_writable(ray_gpu: None) -> None:
    model = tied_lm(1, vocab=1000, dim=64)
    wrapper = ActorWrapper(model)
    writer = GpuHolder.remote(wrapper, device="cuda:0")
    reader = GpuHolder.remote(wrapper)  # CPU, zero-copy
    before = float(model.block.weight.detach().sum())
    assert ray.get(writer.write.remote()) == pytest.approx(before + 64 * 64, rel=1e-4)
    tokens = torch.randint(0, 1000, (2, 8))
    with torch.no_grad():
        assert torch.equal(ray.get(reader.run.remote(tokens)), model(tokens))
    holder = GpuHolder.remote(wrapper, device="cuda:0")
    assert ray.get(holder.facts.remote())["devices"] == {"cuda:0"}


def test_task_mode_on_the_gpu(ray_gpu: None) -> None:
    model = tied_lm(2, vocab=1000, dim=64)
    tokens = torch.randint(0, 1000, (3, 5)).cuda()
    wrapped = TaskWrapper(model, device="cuda:0", task_options={"num_gpus": 0.25, "num_cpus": 0.5})
    out = wrapped(tokens)
    assert torch.allclose(out.cpu(), reference(model, tokens.cpu()), atol=1e-5)


def test_large_model_load_time_to_gpu(ray_gpu: None) -> None:
    layers = [nn.Linear(4096, 4096, bias=False, device="meta").to_empty(device="cpu") for _ in range(16)]
    for layer in layers:
        layer.weight.data.normal_(0, 0.01)
    model = nn.Sequential(*layers).eval()  # 1 GiB of float32
    wrapper = ModelWrapper.from_model(model, mode="actor", device="cuda:0")
    actors = [GpuHolder.remote(wrapper) for _ in range(2)]
    seconds = [ray.get(a.facts.remote())["load_seconds"] for a in actors]
    print(f"1 GiB model to cuda:0, per actor load seconds: {seconds}")
    x = torch.randn(2, 4096)
    expected = reference(model, x)
    for actor in actors:
        assert torch.allclose(ray.get(actor.run.remote(x)), expected, atol=1e-4)


def test_torchscript_model_loads_onto_the_gpu(ray_gpu: None) -> None:
    from ray_zerocopy import JITActorWrapper

    torch.manual_seed(3)
    eager = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    traced = trace(eager, torch.randn(1, 32))
    x = torch.randn(4, 32)
    actor = GpuHolder.remote(JITActorWrapper(traced, device="cuda:0"))
    assert ray.get(actor.facts.remote())["devices"] == {"cuda:0"}
    assert torch.allclose(ray.get(actor.run.remote(x)), reference(eager, x), atol=1e-5)
